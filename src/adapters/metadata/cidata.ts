import { open, rename, unlink } from 'node:fs/promises';
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
    // Asynchronous on purpose: creating and renaming a file can wait for the file system's
    // journal, which the store's fsync'd commits keep busy during a burst; on the main thread
    // that wait would hold up every request.
    try {
      const { size, parts } = fatLayout(files, { label: 'CIDATA' });
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.truncate(size);
        for (const p of parts) await fh.write(p.data, 0, p.data.length, p.offset);
      } finally {
        await fh.close();
      }
      await rename(tmp, path);
    } catch (err) {
      // Renamed, the temporary name is gone: it is removed only after a failure.
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }
}
