import { rename, rm, writeFile } from 'node:fs/promises';
import type { CloudInitDisk } from '../../core/ports.js';
import { fatImage } from './fat.js';

/**
 * The NoCloud seed as a FAT disk labelled CIDATA (cloud-init matches the label case-insensitively),
 * built in process (./fat.ts): no mkfs.vfat or mcopy process per VM, no mount, no root needed.
 * Written under a temporary name and renamed, so a seed that exists is complete.
 */
export class VfatCloudInitDisk implements CloudInitDisk {
  async write(path: string, files: Record<string, Buffer>): Promise<void> {
    const tmp = `${path}.tmp`;
    try {
      await writeFile(tmp, fatImage(files, { label: 'CIDATA' }), { mode: 0o600 });
      await rename(tmp, path);
    } finally {
      await rm(tmp, { force: true });
    }
  }
}
