import { open, unlink, type FileHandle } from 'node:fs/promises';
import { renameDurably } from '../durable.js';
import type { CloudInitDisk } from '../../core/ports.js';
import { fatLayout } from './fat.js';

/**
 * The NoCloud seed as a FAT disk labelled CIDATA (cloud-init matches the label case-insensitively),
 * built in process (./fat.ts): no mkfs.vfat or mcopy process per VM, no mount, no root needed.
 * Written under a temporary name, fsync'd and renamed (../durable.ts), so a seed that exists is
 * complete, also after a power cut: a seed that exists is never written again. Only its bytes
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
        // Parts that follow each other on disk (the metadata area and the files' clusters of a
        // small seed) go in one writev: each write is a trip through libuv's thread pool.
        for (let i = 0; i < parts.length; ) {
          const offset = parts[i]?.offset ?? 0;
          const run: Buffer[] = [];
          for (let end = offset; i < parts.length && parts[i]?.offset === end; i++) {
            const data = parts[i]?.data ?? Buffer.alloc(0);
            run.push(data);
            end += data.length;
          }
          await writeAll(fh, run, offset);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await renameDurably(tmp, path, 'synced');
    } catch (err) {
      // Renamed, the temporary name is gone: it is removed only after a failure.
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }
}

/** Writes `buffers` one after the other from `position`, going on after a short write. */
async function writeAll(fh: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let rest = buffers.filter((b) => b.length > 0);
  while (rest.length > 0) {
    let { bytesWritten } = await fh.writev(rest, position);
    if (bytesWritten === 0) throw new Error(`write of the seed made no progress at offset ${position}`);
    position += bytesWritten;
    while (rest.length > 0 && bytesWritten >= (rest[0]?.length ?? 0)) bytesWritten -= rest.shift()?.length ?? 0;
    if (bytesWritten > 0 && rest[0]) rest = [rest[0].subarray(bytesWritten), ...rest.slice(1)];
  }
}
