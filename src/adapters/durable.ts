import { open, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { run } from './exec.js';

/**
 * Files written under a temporary name and renamed into place, made to survive a power cut.
 *
 * Code that finds such a file later trusts it as complete because it exists. Without an fsync
 * before the rename, a crash can leave the new name pointing at a file of zero or partial
 * length (delayed allocation on xfs, and on ext4 for a new name, where auto_da_alloc does not
 * apply), and that file would be used for ever. So: the content is flushed first (fsync(2)),
 * then the rename, then the directory is flushed so the rename itself is on disk before the
 * caller goes on (a later step, such as a reference naming a blob, may rely on it).
 */

/**
 * fsyncs the file or directory at `path` through a read-only descriptor of its own. Any
 * descriptor will do: on Linux fsync(2) writes back the inode's dirty pages whichever
 * descriptor wrote them (a program that wrote the file, a stream closed earlier), and a
 * directory's fsync writes back the names made or renamed in it.
 */
async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * How the temporary's content reaches the disk before the rename:
 * - `file` (default): fsync of the file;
 * - `synced`: the caller already fsync'd it (FileHandle.sync on the handle it wrote with);
 * - `tree`: a directory of many files, flushed with one syncfs(2) of its filesystem
 *   (coreutils `sync -f`), since an fsync per file of an unpacked image (tens of thousands of
 *   files) would cost a journal commit each.
 */
export type Content = 'file' | 'synced' | 'tree';

/** Flushes `tmp` as `content` says, renames it to `final`, and fsyncs `final`'s directory. */
export async function renameDurably(tmp: string, final: string, content: Content = 'file'): Promise<void> {
  if (content === 'file') await fsyncPath(tmp);
  else if (content === 'tree') await run('sync', ['-f', tmp], { timeoutMs: 10 * 60_000 });
  await rename(tmp, final);
  await fsyncPath(dirname(final));
}

/**
 * Writes `data` to `tmp` (created with `mode`), fsyncs it, renames it to `final` and fsyncs the
 * directory. The caller removes `tmp` after a failure.
 */
export async function writeFileDurably(tmp: string, final: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await renameDurably(tmp, final, 'synced');
}
