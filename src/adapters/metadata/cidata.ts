import { closeSync, ftruncateSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import type { CloudInitDisk } from '../../core/ports.js';
import { fatLayout } from './fat.js';

/**
 * The NoCloud seed as a FAT disk labelled CIDATA (cloud-init matches the label case-insensitively),
 * built in process (./fat.ts): no mkfs.vfat or mcopy process per VM, no mount, no root needed.
 * Written under a temporary name and renamed, so a seed that exists is complete; only its bytes
 * that are not zero are written (a sparse file), not the whole megabyte.
 */
export class VfatCloudInitDisk implements CloudInitDisk {
  async write(path: string, files: Record<string, Buffer>): Promise<void> {
    const tmp = `${path}.tmp`;
    try {
      const { size, parts } = fatLayout(files, { label: 'CIDATA' });
      // In place: a few KiB into a page-cache file, no fsync. As promises the open, truncate,
      // each part's write, close and rename were a thread-pool round trip each, per VM.
      const fd = openSync(tmp, 'w', 0o600);
      try {
        ftruncateSync(fd, size);
        for (const p of parts) writeSync(fd, p.data, 0, p.data.length, p.offset);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, path);
    } catch (err) {
      // Renamed, the temporary name is gone: it is removed only after a failure.
      try {
        unlinkSync(tmp);
      } catch {
        // never created, or already gone
      }
      throw err;
    }
  }
}
