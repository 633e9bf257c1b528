import { execFileSync } from 'node:child_process';
import { run } from '../exec.js';

export interface Account {
  name: string;
  uid: number;
  gid: number;
}

function getent(db: 'passwd' | 'group', key: string): string[] | undefined {
  try {
    // getent goes through NSS, so users from LDAP/sssd resolve as they would for QEMU itself.
    return execFileSync('getent', [db, key], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split(':');
  } catch {
    return undefined;
  }
}

/**
 * A user by name, or `uid:gid` given as numbers (which needs no account; QEMU's -runas takes
 * that form too). Undefined when no such user exists.
 */
export function lookupUser(user: string): Account | undefined {
  const numeric = /^(\d+):(\d+)$/.exec(user);
  if (numeric) return { name: user, uid: Number(numeric[1]), gid: Number(numeric[2]) };
  const f = getent('passwd', user);
  if (!f || f.length < 4) return undefined;
  return { name: user, uid: Number(f[2]), gid: Number(f[3]) };
}

/**
 * What of an account that is not root makes it root after all: uid 0, or gid 0 (root's group,
 * which reads the state dir and store, 0750 root:root); undefined for an unprivileged one.
 */
export function rootIds(account: { uid: number; gid: number }): string | undefined {
  if (account.uid === 0) return 'uid 0';
  if (account.gid === 0) return "gid 0 (root's group)";
  return undefined;
}

/** A group's gid by name or number; undefined when no such group exists. */
export function lookupGroup(group: string): number | undefined {
  if (/^\d+$/.test(group)) return Number(group);
  const f = getent('group', group);
  return f && f.length >= 3 ? Number(f[2]) : undefined;
}

/**
 * The named user, created as a system account with its own group, no home and no login shell
 * when it does not exist yet (what a package's postinst would do).
 */
export async function ensureSystemUser(user: string): Promise<{ account: Account; created: boolean }> {
  const found = lookupUser(user);
  if (found) return { account: found, created: false };
  await run('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--comment', 'matchlock VMM processes', user]);
  const made = lookupUser(user);
  if (!made) throw new Error(`useradd ${user} succeeded but the user does not resolve`);
  return { account: made, created: true };
}
