import Database from 'better-sqlite3';
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCode, MatchlockError } from '../core/errors.js';

/** Mode of the state dir: the store and each VM's user-data (which holds secrets) are not for other users. */
export const STATE_DIR_MODE = 0o750;
export const LOCK_FILE = 'matchlockd.lock';
export const PID_FILE = 'matchlockd.pid';

function refuse(message: string, cause?: unknown): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message, cause === undefined ? {} : { cause });
}

/**
 * Makes the state dir (0750) or takes away what other users could do in an existing one, then
 * proves it is writable by creating and removing a file: a read-only mount (EROFS), a full disk
 * or missing permissions are refused here, naming the path, instead of failing later inside
 * SQLite or a VM's plan.
 */
export function prepareStateDir(path: string): void {
  try {
    mkdirSync(path, { recursive: true, mode: STATE_DIR_MODE });
    const st = statSync(path);
    if (!st.isDirectory()) throw refuse(`state-dir ${path} is not a directory`);
    if (st.mode & 0o007) chmodSync(path, st.mode & 0o7770);
    const probe = join(path, `.write-probe-${process.pid}`);
    closeSync(openSync(probe, 'wx', 0o600));
    rmSync(probe);
  } catch (err) {
    if (err instanceof MatchlockError) throw err;
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'EROFS' ? 'is on a read-only file system' : e.code === 'ENOSPC' ? 'is on a full file system' : e.code === 'EACCES' || e.code === 'EPERM' ? 'is not writable by this user' : 'cannot be written';
    throw refuse(`state-dir ${path} ${why} (${e.code ?? e.message}): matchlockd keeps its store, images and VM directories there; make it writable or set --state-dir`, err);
  }
}

export interface StateDirLock {
  release(): void;
}

/**
 * Takes the state dir for this process alone. The lock is SQLite's (a POSIX record lock held by
 * an exclusive-mode connection), so the kernel drops it when the holder dies, however it dies:
 * there is no stale lock to guess about. The pid file beside it only names the holder for the
 * refusal. Two daemons on one state dir would both start every VM and fight over its files.
 */
export function lockStateDir(path: string): StateDirLock {
  const lockPath = join(path, LOCK_FILE);
  const pidPath = join(path, PID_FILE);
  const db = new Database(lockPath, { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // The first write takes the exclusive lock; in EXCLUSIVE locking mode it is never released.
    db.exec('BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS holder (pid INTEGER); DELETE FROM holder; INSERT INTO holder VALUES (' + process.pid + '); COMMIT;');
  } catch (err) {
    db.close();
    if ((err as { code?: string }).code === 'SQLITE_BUSY') {
      let holder = 'pid unknown';
      try {
        const pid = Number(readFileSync(pidPath, 'utf8').trim());
        if (Number.isInteger(pid) && pid > 0) holder = `pid ${pid}`;
      } catch {
        // the holder may not have written its pid yet
      }
      throw refuse(`state-dir ${path} is in use by another matchlockd (${holder}); stop it first or give this one its own --state-dir`, err);
    }
    throw refuse(`state-dir ${path}: cannot take ${lockPath}: ${(err as Error).message}`, err);
  }
  writeFileSync(pidPath, `${process.pid}\n`, { mode: 0o640 });
  return {
    release() {
      if (!db.open) return;
      try {
        if (readFileSync(pidPath, 'utf8').trim() === String(process.pid)) rmSync(pidPath, { force: true });
      } catch {
        // already gone
      }
      db.close();
    },
  };
}
