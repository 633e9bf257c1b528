import Database from 'better-sqlite3';
import { accessSync, chmodSync, chownSync, closeSync, constants, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import { utimesSeconds } from '../adapters/system/files.js';

/** Mode of the state dir: the store and each VM's user-data (which holds secrets) are not for other users. */
export const STATE_DIR_MODE = 0o750;
export const LOCK_FILE = 'matchlockd.lock';
export const PID_FILE = 'matchlockd.pid';

function refuse(message: string, cause?: unknown): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message, cause === undefined ? {} : { cause });
}

/**
 * The refusal of a state dir whose lock another process holds: that process uses the directory
 * (whoever made it), so a start refused so removes nothing there.
 */
export class StateDirInUse extends MatchlockError {
  constructor(message: string, cause: unknown) {
    super(ErrorCode.FailedPrecondition, message, { cause });
  }
}

/**
 * Removes what makeStateDir made (`created`: the state dir or its first missing ancestor) for a
 * start that failed. The state dir goes with what is in it only when `held` (its lock is this
 * process's, so nobody else can be using it); otherwise only when empty, as any other start
 * that found it would first make its lock file there. The ancestors it made go only when empty
 * (another start may have made its own state dir beside this one meanwhile), nearest first,
 * stopping at the first that stays.
 */
export function removeMadeStateDir(path: string, created: string, held: boolean): void {
  const top = resolve(created);
  let dir = resolve(path);
  try {
    if (held) rmSync(dir, { recursive: true, force: true });
    else rmdirSync(dir);
    while (dir !== top && dirname(dir) !== dir) {
      dir = dirname(dir);
      rmdirSync(dir);
    }
  } catch {
    // not empty (someone else's now), or already gone: left as it is
  }
}

/** An entry of an existing state dir as a start found it, for a refused start to put back. */
interface EntryState {
  mode: number;
  uid: number;
  gid: number;
  /** Seconds, from the nanoseconds stat gives (utimes(2) through Node takes seconds as a double). */
  atime: number;
  mtime: number;
  /** The bytes of a file start-up rewrites (KEPT). */
  content?: Buffer;
}

/**
 * The files start-up writes over in a state dir it did not make: the pid file a killed daemon
 * left (daemon-id is only made when missing, and the lock file is only locked). The store is
 * never put back byte for byte: its -wal holds what the file does not.
 */
const KEPT: ReadonlySet<string> = new Set([PID_FILE]);
/** A kept file larger than this is no pid file and is not kept. */
const KEPT_BYTES = 64 * 1024;

export interface StateDirSnapshot {
  dir: EntryState;
  entries: Map<string, EntryState>;
}

function entryState(path: string, keep: boolean): EntryState {
  const st = lstatSync(path, { bigint: true });
  const content = keep && st.isFile() && st.size <= BigInt(KEPT_BYTES) ? readFileSync(path) : undefined;
  return { mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), atime: utimesSeconds(st.atimeNs), mtime: utimesSeconds(st.mtimeNs), ...(content ? { content } : {}) };
}

/**
 * An existing state dir as it is (its mode, owner and times, and each top-level entry's, with
 * the bytes of the files start-up writes over), for restoreStateDir; undefined when there is none or
 * it cannot be read. Reads only.
 */
export function snapshotStateDir(path: string): StateDirSnapshot | undefined {
  try {
    if (!statSync(path).isDirectory()) return undefined;
    const entries = new Map<string, EntryState>();
    for (const name of readdirSync(path)) {
      try {
        entries.set(name, entryState(join(path, name), KEPT.has(name)));
      } catch {
        // gone meanwhile
      }
    }
    return { dir: entryState(path, false), entries };
  } catch {
    return undefined;
  }
}

/**
 * Puts an existing state dir back as snapshotStateDir found it, for a start refused once it had
 * the lock (so nobody else was using it): what the start added goes, a file it wrote over or
 * removed (the pid file a killed daemon left) gets its bytes, mode, owner and times back, and
 * the directory its mode, owner and times (last, as each change above moves its mtime). Best
 * effort: what cannot be put back is left as it is.
 */
export function restoreStateDir(path: string, before: StateDirSnapshot): void {
  const attempt = (fn: () => void) => {
    try {
      fn();
    } catch {
      // the start's own failure is the one to report
    }
  };
  for (const name of readdirSync(path)) {
    if (!before.entries.has(name)) attempt(() => rmSync(join(path, name), { recursive: true, force: true }));
  }
  for (const [name, was] of before.entries) {
    if (was.content === undefined) continue;
    const file = join(path, name);
    attempt(() => {
      const now = existsSync(file) ? entryState(file, true) : undefined;
      const same = now?.content?.equals(was.content as Buffer) && now.mode === was.mode && now.uid === was.uid && now.gid === was.gid && now.mtime === was.mtime;
      if (same) return;
      if (!now?.content?.equals(was.content as Buffer)) writeFileSync(file, was.content as Buffer, { mode: was.mode });
      chownSync(file, was.uid, was.gid);
      chmodSync(file, was.mode);
      utimesSync(file, was.atime, was.mtime);
    });
  }
  attempt(() => chownSync(path, before.dir.uid, before.dir.gid));
  attempt(() => chmodSync(path, before.dir.mode));
  attempt(() => utimesSync(path, before.dir.atime, before.dir.mtime));
}

/**
 * Makes the state dir (0750, with its missing parents) or checks, without writing in it, that
 * the one there is a directory this user may write (access(2) W_OK): a path that is a file (or
 * under one), a read-only mount (EROFS) or missing permissions are refused here, naming the
 * path, instead of failing later inside SQLite or a VM's plan. Nothing in an existing state dir
 * is changed before lockStateDir has taken it (see tightenStateDir): another daemon may hold it.
 * `created` is the first directory this call made (the state dir or an ancestor), for a start
 * that fails later to remove; undefined when the state dir was there.
 */
export function makeStateDir(path: string): { created: string | undefined } {
  // Before mkdir, whose EEXIST (the state dir is a file) or ENOTDIR (an ancestor is) would read
  // as an unwritable directory.
  const file = nonDirectory(path);
  if (file !== undefined) {
    throw refuse(`state-dir ${file === path ? `${path} is not a directory` : `${path}: ${file} is not a directory`}: matchlockd keeps its store, images and VM directories in a directory; move the file away or set --state-dir`);
  }
  try {
    if (existsSync(path)) {
      accessSync(path, constants.W_OK);
      return { created: undefined };
    }
    return { created: mkdirSync(path, { recursive: true, mode: STATE_DIR_MODE }) };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // A recursive mkdir reports ENOENT when the real refusal (EROFS, EACCES) was for an ancestor
    // it had to make: ask the nearest ancestor that exists for the reason.
    if (e.code === 'ENOENT') e.code = ancestorRefusal(path) ?? e.code;
    throw unwritable(path, err);
  }
}

/**
 * Once the state dir is this process's (lockStateDir): takes away what other users could do in
 * it and proves it is writable by writing and removing a file. A full file system (ENOSPC,
 * EDQUOT) is not refused: `full` is then true.
 */
export function tightenStateDir(path: string): { full: boolean } {
  const probe = join(path, `.write-probe-${process.pid}`);
  try {
    const st = statSync(path);
    if (st.mode & 0o007) chmodSync(path, st.mode & 0o7770);
    const fd = openSync(probe, 'wx', 0o600);
    try {
      // One byte, not an empty file: a full tmpfs or ext4 still has inodes for empty files.
      writeSync(fd, Buffer.from([0]));
    } finally {
      closeSync(fd);
      rmSync(probe, { force: true });
    }
    return { full: false };
  } catch (err) {
    // A state dir on a full file system is served read-only rather than refused: the operator
    // needs the API to list and delete VMs to free space (see lockStateDir and SqliteStore's
    // fallback for what start-up would otherwise write).
    if (ROOM_CODES.has((err as NodeJS.ErrnoException).code ?? '')) return { full: true };
    throw unwritable(path, err);
  }
}

function unwritable(path: string, err: unknown): MatchlockError {
  const e = err as NodeJS.ErrnoException;
  const why = e.code === 'EROFS' ? 'is on a read-only file system' : e.code === 'ENOSPC' ? 'is on a full file system' : e.code === 'EACCES' || e.code === 'EPERM' ? 'is not writable by this user' : 'cannot be written';
  return refuse(`state-dir ${path} ${why} (${e.code ?? e.message}): matchlockd keeps its store, images and VM directories there; make it writable or set --state-dir`, err);
}

/** `path`, or the nearest of its ancestors that exists, when that is not a directory. */
function nonDirectory(path: string): string | undefined {
  for (let p = path; ; p = dirname(p)) {
    try {
      return statSync(p).isDirectory() ? undefined : p;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Anything else (EACCES on an ancestor) is for mkdir or access to report.
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || dirname(p) === p) return undefined;
    }
  }
}

/** errno of a write into the nearest existing ancestor of `path` (access(2) W_OK), if refused. */
function ancestorRefusal(path: string): string | undefined {
  let dir = dirname(path);
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  try {
    accessSync(dir, constants.W_OK);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

/**
 * The pid holding a POSIX record lock on `file`, from /proc/locks (proc(5): `POSIX ADVISORY
 * WRITE <pid> <major>:<minor>:<inode> <start> <end>`, major and minor in hex, inode in
 * decimal), matched by the file's device and inode; undefined when none is found.
 */
export function lockHolder(file: string, locks = '/proc/locks'): number | undefined {
  try {
    const st = statSync(file);
    // Linux's new_encode_dev: minor's low 8 bits, major at 8..19, minor's upper bits at 20..31.
    const major = Math.floor(st.dev / 256) & 0xfff;
    const minor = (st.dev & 0xff) | ((Math.floor(st.dev / 4096) & 0xfffff00));
    for (const line of readFileSync(locks, 'utf8').split('\n')) {
      const m = /^\d+:\s+POSIX\s+\S+\s+\S+\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/i.exec(line);
      if (m?.[4] && parseInt(m[2] ?? '', 16) === major && parseInt(m[3] ?? '', 16) === minor && Number(m[4]) === st.ino) return Number(m[1]);
    }
  } catch {
    // no lock file or no /proc: the holder stays unknown
  }
  return undefined;
}

export interface StateDirLock {
  /** False when the pid file could not be written for want of space (ENOSPC, EDQUOT). */
  pidWritten: boolean;
  release(): void;
}

/** errno codes of a file system with no room left: no space, the quota reached. */
export const ROOM_CODES: ReadonlySet<string> = new Set(['ENOSPC', 'EDQUOT']);

/**
 * Takes the state dir for this process alone. The lock is SQLite's (a POSIX record lock held by
 * an exclusive-mode connection), so the kernel drops it when the holder dies, however it dies:
 * there is no stale lock to guess about. The pid file beside it only names the holder for the
 * refusal. Two daemons on one state dir would both start every VM and fight over its files.
 */
export function lockStateDir(path: string): StateDirLock {
  // A lock taken on a file another start has just unlinked (it failed and removed what it
  // made, lock file included, while holding the lock) locks nothing anyone else will find:
  // the next start makes a new file. The lock is taken again on what the path names now.
  for (let attempt = 1; ; attempt++) {
    const lock = lockOnce(path);
    if (lock.onLiveFile || attempt >= 5) {
      if (lock.onLiveFile) return lock;
      lock.release();
      throw refuse(`state-dir ${path}: its lock file ${join(path, LOCK_FILE)} was removed each time it was locked (another start keeps failing there); start again`);
    }
    lock.drop();
  }
}

/**
 * Whether this process holds an open descriptor of the file `file` names now (same device and
 * inode): a descriptor of an unlinked or replaced file does not count.
 */
function holdsOpen(file: string): boolean {
  const live = statSync(file, { throwIfNoEntry: false });
  if (!live) return false;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const st = fstatSync(Number(fd));
      if (st.ino === live.ino && st.dev === live.dev) return true;
    } catch {
      // closed meanwhile (the readdir's own descriptor)
    }
  }
  return false;
}

function lockOnce(path: string): StateDirLock & { onLiveFile: boolean; drop(): void } {
  const lockPath = join(path, LOCK_FILE);
  const pidPath = join(path, PID_FILE);
  const lockExisted = existsSync(lockPath);
  const db = new Database(lockPath, { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    // BEGIN EXCLUSIVE takes the file's exclusive lock at once and the transaction is never
    // ended, so the lock is held until the connection closes. On a lock file that has its
    // first page nothing is written (no page, no journal): the lock is taken on a full file
    // system too, where the daemon must still start. A new, empty file gets that page first,
    // in a transaction of its own (SQLite would write it on the first write lock anyway).
    if ((db.pragma('page_count', { simple: true }) as number) === 0) db.exec('BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS lock (unused INTEGER); COMMIT');
    db.exec('BEGIN EXCLUSIVE');
  } catch (err) {
    db.close();
    const code = (err as { code?: string }).code ?? '';
    if (code === 'SQLITE_BUSY') {
      let holder = 'pid unknown';
      try {
        const pid = Number(readFileSync(pidPath, 'utf8').trim());
        if (Number.isInteger(pid) && pid > 0) holder = `pid ${pid}`;
      } catch {
        // The holder may not have written its pid yet, or could not (a full disk): the kernel
        // knows who holds the record lock.
        const pid = lockHolder(lockPath);
        if (pid !== undefined) holder = `pid ${pid}`;
      }
      throw new StateDirInUse(`state-dir ${path} is in use by another matchlockd (${holder}); stop it first or give this one its own --state-dir`, err);
    }
    // A lock file this start made and could not fill is not left behind, unless another process
    // holds a lock on it meanwhile: removing it then would let a third daemon lock a new one.
    if (!lockExisted && lockHolder(lockPath) === undefined) rmSync(lockPath, { force: true });
    if (code === 'SQLITE_FULL' || ROOM_CODES.has(code)) {
      throw refuse(`state-dir ${path} is on a full file system (ENOSPC): its lock file ${lockPath} cannot be made; free space in the state dir and start again`, err);
    }
    throw refuse(`state-dir ${path}: cannot take ${lockPath}: ${(err as Error).message}`, err);
  }
  if (!holdsOpen(lockPath)) {
    // Unlinked under us: nothing here is this start's to write or remove.
    return { pidWritten: false, onLiveFile: false, drop: () => db.close(), release: () => db.close() };
  }
  let pidWritten = true;
  try {
    writeFileSync(pidPath, `${process.pid}\n`, { mode: 0o640 });
  } catch (err) {
    // Only a name for the refusal of a second daemon: a full disk must not stop this one. A
    // pid file left by a killed daemon is removed (unlinking needs no space) so that no
    // refusal names the wrong process.
    if (!ROOM_CODES.has((err as NodeJS.ErrnoException).code ?? '')) {
      // While the lock is still held, so that nobody else has started on it.
      if (!lockExisted) rmSync(lockPath, { force: true });
      db.close();
      throw refuse(`state-dir ${path}: cannot write ${pidPath}: ${(err as Error).message}`, err);
    }
    rmSync(pidPath, { force: true });
    pidWritten = false;
  }
  return {
    pidWritten,
    onLiveFile: true,
    drop: () => db.close(),
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
