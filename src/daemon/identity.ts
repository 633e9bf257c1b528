import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DAEMON_ID_PATTERN } from '../core/microvm/host-names.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';

export const DAEMON_ID_FILE = 'daemon-id';

/**
 * This daemon's identity: 16 random hex digits made on first start and kept in
 * `<state-dir>/daemon-id`. It marks every host object the daemon makes (link aliases), so two
 * daemons with their own state dirs in one network namespace each touch only their own.
 * Created with O_EXCL, so two daemons starting on one state dir agree on one id.
 */
export function daemonIdentity(stateDir: string): string {
  const path = join(stateDir, DAEMON_ID_FILE);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  try {
    writeFileSync(path, randomBytes(8).toString('hex') + '\n', { flag: 'wx', mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const id = readFileSync(path, 'utf8').trim();
  if (!DAEMON_ID_PATTERN.test(id)) {
    throw new MatchlockError(ErrorCode.FailedPrecondition, `${path} holds ${JSON.stringify(id)}, not a daemon id (16 hex digits); restore it from a backup, or remove it only if no VM of this state dir runs`);
  }
  return id;
}
