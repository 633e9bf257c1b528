import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Temporary files and directories of the image store and volumes. Each is named
 * `<final name>.tmp-<pid>-<random>` by the process that writes it and is renamed to its final
 * name only when complete. A temporary is owned while its process lives and, in this process,
 * while the operation that made it runs; everything else is debris of a killed process (or of
 * a full disk) and is removed by `sweepTemporaries` (at start-up and in every GC).
 */
const live = new Set<string>();

/**
 * Removes a file or a whole tree, however deep. An image tree may hold paths longer than
 * PATH_MAX from the host's root (the applier works relative to the image root), which
 * fs.rm cannot reach (it names every entry by its full path: ENAMETOOLONG); GNU rm descends
 * with openat(2) and removes any depth (coreutils' fts), so it takes over whenever fs.rm fails.
 * `--one-file-system` leaves alone a file system mounted inside the tree. Rejects with rm's
 * own message (one line) when even that fails (EBUSY, EIO, EROFS…).
 */
export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
    return;
  } catch {
    // on to GNU rm
  }
  await new Promise<void>((resolve, reject) => {
    execFile('rm', ['-rf', '--one-file-system', '--', path], { env: { ...process.env, LC_ALL: 'C' } }, (err, _out, stderr) => {
      if (!err) resolve();
      else reject(new Error(`removing ${path}: ${String(stderr).trim().replace(/\s*\n\s*/g, '; ') || err.message}`));
    });
  });
}

/**
 * The most a temporary's name adds to its final name: `.tmp-`, a pid (Linux's PID_MAX_LIMIT,
 * 2^22, has 7 digits), `-` and 8 hex digits.
 */
export const TEMPORARY_SUFFIX_MAX = '.tmp-4194304-00000000'.length;

/** A fresh temporary path for `final`, owned by this process until `release`d. */
export function claimTemporary(final: string): string {
  const tmp = `${final}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  live.add(tmp);
  return tmp;
}

export function releaseTemporary(tmp: string): void {
  live.delete(tmp);
}

/**
 * Runs `fn` with a temporary for `final`; on any failure the temporary is removed. `fn` must
 * rename it into place itself (its last step) when everything was written.
 */
export async function withTemporary<T>(final: string, fn: (tmp: string) => Promise<T>): Promise<T> {
  const tmp = claimTemporary(final);
  try {
    return await fn(tmp);
  } finally {
    // A failure here leaves the temporary to the sweep (it is not live any more).
    await removeTree(tmp).catch(() => undefined);
    releaseTemporary(tmp);
  }
}

// Names earlier versions used carry only a pid (`<x>.<pid>.tmp`, `<x>.<pid>.<attempt>.part`)
// or no owner at all (mkdtemp's `<x>.tmp-XXXXXX` and `.import-XXXXXX`).
const CURRENT = /\.tmp-(\d+)-[0-9a-f]{8}$/;
const WITH_PID = /^[0-9a-f]{64}(?:\.ext4)?\.(\d+)\.(?:tmp|\d+\.part)$/;
const LEGACY = /^(?:[0-9a-f]{64}\.tmp-[A-Za-z0-9]{6}|\.import-[A-Za-z0-9]{6})$/;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether `name` (in `dir`) is a temporary no live operation owns. */
export function isOrphanTemporary(dir: string, name: string): boolean {
  const m = CURRENT.exec(name) ?? WITH_PID.exec(name);
  if (m) {
    const pid = Number(m[1]);
    if (pid === process.pid) return !live.has(join(dir, name));
    return !alive(pid);
  }
  return LEGACY.test(name);
}

/** Removes the orphaned temporaries directly inside each of `dirs`; resolves the paths removed. */
export async function sweepTemporaries(dirs: readonly string[]): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of dirs) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!isOrphanTemporary(dir, name)) continue;
      // A process that was just killed may leave a child finishing its last write: retry.
      const path = join(dir, name);
      const ok = await rm(path, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }).then(() => true, () => removeTree(path).then(() => true, () => false));
      if (ok) removed.push(path);
    }
  }
  return removed;
}
