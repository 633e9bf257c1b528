import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
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
 * matchlock's Firecracker provider keeps the same names, so they tell flintlock's directories
 * apart only in a state dir without matchlock.db: one matchlockd has never used.
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
 * store) with the fix that fits: directories in flintlockd's layout in a state dir matchlockd
 * never used (no matchlock.db, no daemon-id) point to docs/migrating-from-flintlock.md; a store that is missing or lost records
 * is restored from a backup; either way VMMs still running are named by pid.
 */
export function describeUnrecorded(stateDir: string, dirs: readonly VmDirEntry[], storeExisted: boolean): UnrecordedFinding {
  const db = join(stateDir, 'matchlock.db');
  const running = dirs.flatMap((d) => {
    const pid = liveVmm(d.dir);
    return pid === undefined ? [] : [`${d.dir} (pid ${pid})`];
  });
  // A daemon id or a store: matchlockd has run here, and the directories are its own.
  const used = storeExisted || existsSync(join(stateDir, 'daemon-id'));
  const flintlockFiles = used ? [] : [...new Set(dirs.flatMap((d) => FLINTLOCK_FILES.filter((f) => existsSync(join(d.dir, f)))))];
  const n = dirs.length;
  const missing = storeExisted ? '' : used ? ' (matchlock.db is missing)' : ' (no matchlock.db and no daemon-id: matchlockd has not used this state dir)';
  const what = `${n} VM director${n === 1 ? 'y has' : 'ies have'} no record in ${db}${missing} (${dirs.map((d) => d.dir).join(', ')})`;
  const live = running.length ? `; VMMs still running in ${running.join(', ')}` : '; their guests may still be running';
  if (flintlockFiles.length) {
    return {
      evidence: `${what}${live}; they are in flintlockd's layout (${flintlockFiles.join(', ')}): this is flintlock's state dir`,
      fix: `matchlockd does not adopt flintlock's VMs: give matchlockd a state dir of its own (the default /var/lib/matchlock), and drain or remove flintlock's VMs as docs/migrating-from-flintlock.md describes`,
    };
  }
  return {
    evidence: `${what}${live}`,
    fix: `restore ${db} from a backup, or stop those VMMs and remove their directories`,
  };
}

/** The start-up refusal for `dirs`: MatchlockError FailedPrecondition (exit 1) with the finding and its fix. */
export function unrecordedRefusal(stateDir: string, dirs: readonly VmDirEntry[], storeExisted: boolean): MatchlockError {
  const f = describeUnrecorded(stateDir, dirs, storeExisted);
  return new MatchlockError(ErrorCode.FailedPrecondition, `refusing to start: ${f.evidence}. Fix: ${f.fix}, then start matchlockd again; nothing in ${stateDir} was changed`);
}
