import { existsSync, lstatSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { checkStoreReadOnly } from '../adapters/store/sqlite/store.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';

/** One `<state-dir>/vm/<namespace>/<name>/<uid>` directory on disk. */
export interface VmDirEntry {
  uid: string;
  namespace: string;
  name: string;
  dir: string;
}

/** `<state-dir>/vm/<namespace>/<name>/<uid>` directories on disk; none when there is no vm/. Reads only. */
export function vmDirs(stateDir: string): VmDirEntry[] {
  const list = (d: string) => {
    try {
      return readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    } catch {
      return [];
    }
  };
  const out: VmDirEntry[] = [];
  const root = join(stateDir, 'vm');
  for (const ns of list(root)) {
    for (const name of list(join(root, ns))) {
      for (const uid of list(join(root, ns, name))) out.push({ uid, namespace: ns, name, dir: join(root, ns, name, uid) });
    }
  }
  return out;
}

/**
 * Files flintlockd writes in each VM directory (flintlock's infrastructure/firecracker/state.go:
 * firecracker.cfg, metadata.json, firecracker.pid, and the Cloud Hypervisor provider's pid file).
 * matchlock's Firecracker and Cloud Hypervisor providers keep the same names, so in a state dir
 * matchlockd has used they say only that flintlockd may have made the directories.
 */
const FLINTLOCK_FILES = ['firecracker.cfg', 'metadata.json', 'firecracker.pid', 'cloudhypervisor.pid'] as const;
const PID_FILES = ['firecracker.pid', 'cloudhypervisor.pid', 'qemu.pid'] as const;

/** The pid in one of the directory's pid files whose process is alive, if any. */
function liveVmm(dir: string): number | undefined {
  for (const f of PID_FILES) {
    let pid: number;
    try {
      pid = Number(readFileSync(join(dir, f), 'utf8').trim());
    } catch {
      continue;
    }
    if (!Number.isInteger(pid) || pid <= 0) continue;
    try {
      process.kill(pid, 0);
      return pid;
    } catch (err) {
      // EPERM: the process exists and belongs to someone else.
      if ((err as NodeJS.ErrnoException).code === 'EPERM') return pid;
    }
  }
  return undefined;
}

/** What an operator needs to know of VM directories no record stands for, and what to do. */
export interface UnrecordedFinding {
  evidence: string;
  fix: string;
}

/**
 * Describes `dirs` (VM directories with neither a record nor a tombstone in the state dir's
 * store) with the fix that fits: directories holding flintlockd's files are named as possibly
 * flintlock's and point to docs/migrating-from-flintlock.md, never to stopping their VMMs
 * (flintlock's guests); in a state dir matchlockd never used (no matchlock.db, no daemon-id)
 * they are flintlock's. Others are matchlockd's own with a missing or lost store: restore it
 * from a backup, or stop their VMMs. Either way VMMs still running are named by pid.
 */
export function describeUnrecorded(stateDir: string, dirs: readonly VmDirEntry[], storeExisted: boolean): UnrecordedFinding {
  const db = join(stateDir, 'matchlock.db');
  const running = dirs.flatMap((d) => {
    const pid = liveVmm(d.dir);
    return pid === undefined ? [] : [`${d.dir} (pid ${pid})`];
  });
  // A daemon id or a store: matchlockd has run here, and the directories are its own.
  const used = storeExisted || existsSync(join(stateDir, 'daemon-id'));
  const flintlockFiles = [...new Set(dirs.flatMap((d) => FLINTLOCK_FILES.filter((f) => existsSync(join(d.dir, f)))))];
  const n = dirs.length;
  const missing = storeExisted ? '' : used ? ' (matchlock.db is missing)' : ' (no matchlock.db and no daemon-id: matchlockd has not used this state dir)';
  const what = `${n} VM director${n === 1 ? 'y has' : 'ies have'} no record in ${db}${missing} (${dirs.map((d) => d.dir).join(', ')})`;
  const live = running.length ? `; VMMs still running in ${running.join(', ')}` : '; their guests may still be running';
  const migrate = "matchlockd does not adopt flintlock's VMs: give matchlockd a state dir of its own (the default /var/lib/matchlock), and drain or remove flintlock's VMs as docs/migrating-from-flintlock.md describes";
  if (flintlockFiles.length && used) {
    return {
      evidence: `${what}${live}; they hold flintlockd's files (${flintlockFiles.join(', ')}): flintlockd may have made them (flintlock's state dir), or they are matchlockd's own whose records were lost`,
      fix: `if flintlockd made them, leave its VMs running: ${migrate}; if matchlockd made them, restore ${db} from a backup`,
    };
  }
  if (flintlockFiles.length) {
    return {
      evidence: `${what}${live}; they are in flintlockd's layout (${flintlockFiles.join(', ')}): this is flintlock's state dir`,
      fix: migrate,
    };
  }
  return {
    evidence: `${what}${live}`,
    fix: `restore ${db} from a backup, or stop those VMMs and remove their directories`,
  };
}

/**
 * The start-up refusal for `dirs`: MatchlockError FailedPrecondition (exit 1) with the finding
 * and its fix. `unchanged`: the refusal comes before matchlockd made or changed anything in the
 * state dir (only then does the message say so); otherwise it names what start-up had made.
 */
export function unrecordedRefusal(stateDir: string, dirs: readonly VmDirEntry[], storeExisted: boolean, unchanged: boolean): MatchlockError {
  const f = describeUnrecorded(stateDir, dirs, storeExisted);
  const changed = unchanged
    ? `nothing in ${stateDir} was changed`
    : `what matchlockd had made or changed there (daemon-id, matchlockd.lock, its pid file, the state dir's mode) is undone; no VM directory was touched`;
  return new MatchlockError(ErrorCode.FailedPrecondition, `refusing to start: ${f.evidence}. Fix: ${f.fix}, then start matchlockd again; ${changed}`);
}

/**
 * The VM directories of `stateDir` no record or tombstone of its store stands for, read without
 * making or changing anything; a store that is damaged or of a newer schema is refused here
 * (checkStoreReadOnly), an older one read as it is. `undefined` when the store cannot be read
 * that way (held by another process, no room for its -shm), for the later open to report. No
 * store: every directory.
 */
export function findUnrecorded(stateDir: string): { dirs: VmDirEntry[]; storeExisted: boolean } | undefined {
  const dirs = vmDirs(stateDir);
  const db = join(stateDir, 'matchlock.db');
  // A dangling symbolic link is a store that cannot be opened, not a missing one.
  if (!existsSync(db) && !isLink(db)) return { dirs, storeExisted: false };
  const known = checkStoreReadOnly(db);
  return known && { dirs: dirs.filter((d) => !known.has(d.uid)), storeExisted: true };
}

/** Whether `path` is a symbolic link (one to nothing included); false when it cannot be looked at. */
function isLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}
