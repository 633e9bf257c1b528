import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { CloudInitDisk } from '../../core/ports.js';
import { run } from '../exec.js';

/**
 * The NoCloud seed as a FAT disk labelled CIDATA (cloud-init matches the label case-insensitively),
 * made with mkfs.vfat and filled with mtools, so no mount and no root is needed.
 */
export class VfatCloudInitDisk implements CloudInitDisk {
  async write(path: string, files: Record<string, Buffer>): Promise<void> {
    const total = Object.values(files).reduce((n, b) => n + b.length, 0);
    const kib = Math.max(1024, Math.ceil((total * 1.25) / 1024) + 512);
    const staging = await mkdtemp(join(dirname(path), '.cidata-'));
    const tmp = `${path}.tmp`;
    try {
      await rm(tmp, { force: true });
      await run('mkfs.vfat', ['-n', 'CIDATA', '-C', tmp, String(kib)]);
      const names = Object.keys(files).sort();
      for (const name of names) await writeFile(join(staging, name), files[name] ?? Buffer.alloc(0), { mode: 0o600 });
      if (names.length) await run('mcopy', ['-i', tmp, ...names.map((n) => join(staging, n)), '::/']);
      await rename(tmp, path);
    } finally {
      await rm(staging, { recursive: true, force: true });
      await rm(tmp, { force: true });
    }
  }
}
