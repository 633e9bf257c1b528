import type { MicroVM } from './types.js';
import { ULID_PATTERN } from './ulid.js';

/**
 * Host device names are derived from the VM, never random, so a VM's devices can be found again
 * without its status (flintlock's random names leak when status is lost, its ADR 0005). Linux
 * allows 15 bytes: "ml" + kind (t: TAP, v: MACVTAP) + 10 characters of the uid's random part +
 * the interface position. The name alone does not say which daemon made the device: its alias
 * does (see deviceAlias).
 */
export function hostDeviceName(vm: MicroVM, index: number): string {
  const iface = vm.spec.interfaces[index];
  const kind = iface?.type === 'MACVTAP' ? 'v' : 't';
  return `ml${kind}${vm.uid.slice(-10).toLowerCase()}${index.toString(36)}`;
}

export const ALIAS_PREFIX = 'matchlock:';

/** A daemon's identity: 16 lowercase hex digits, made once and kept in its state dir. */
export const DAEMON_ID_PATTERN = /^[0-9a-f]{16}$/;

/**
 * The alias a daemon writes on each link it makes: "matchlock:<daemon-id>:<uid>:<device_id>",
 * at most 10 + 16 + 1 + 26 + 1 + 63 bytes, well inside Linux's IFALIASZ (256). Several daemons
 * with their own state dirs may share one network namespace; the daemon id says which of them
 * owns the link, so none ever removes another's.
 */
export function deviceAlias(daemonId: string, uid: string, deviceId: string): string {
  if (!DAEMON_ID_PATTERN.test(daemonId)) throw new RangeError(`daemon id ${JSON.stringify(daemonId)} must be 16 lowercase hex digits`);
  return `${ALIAS_PREFIX}${daemonId}:${uid}:${deviceId}`;
}

/**
 * Who owns a link, read from its alias; undefined for an alias matchlock did not write.
 * `daemonId` is undefined for the form written before daemons had an identity
 * ("matchlock:<uid>:<device_id>"), whose owner cannot be told from the link alone.
 */
export function parseAlias(alias: string | undefined): { daemonId: string | undefined; uid: string; deviceId: string } | undefined {
  if (!alias?.startsWith(ALIAS_PREFIX)) return undefined;
  const parts = alias.slice(ALIAS_PREFIX.length).split(':');
  const [first = '', second = ''] = parts;
  if (ULID_PATTERN.test(first)) return { daemonId: undefined, uid: first, deviceId: parts.slice(1).join(':') };
  if (DAEMON_ID_PATTERN.test(first) && ULID_PATTERN.test(second)) return { daemonId: first, uid: second, deviceId: parts.slice(2).join(':') };
  return undefined;
}

/**
 * The VM interface daemon `daemonId` may take a link for, read from the link's alias: the one
 * rule of what is a daemon's own link, which a VM's link steps and the orphan sweep both follow.
 * - With `vm` (a VM's steps, which found the link by the name they derive from the VM and
 *   interface, hostDeviceName): `vm` when the alias is this daemon's for it, none (a create cut
 *   short before its alias line), or the form without a daemon id naming the same VM and
 *   interface; undefined for any other alias.
 * - Without `vm` (the sweep, which finds links by alias alone): the VM and interface an alias
 *   carrying `daemonId` names; undefined for another daemon's alias, the form without a daemon
 *   id (its owner cannot be proven) or an alias matchlock did not write.
 */
export function ownLink(alias: string | undefined, daemonId: string, vm?: { uid: string; deviceId: string }): { uid: string; deviceId: string } | undefined {
  if (vm && (alias === undefined || alias === '')) return vm;
  const owner = parseAlias(alias);
  if (!owner || (owner.daemonId !== daemonId && !(vm && owner.daemonId === undefined))) return undefined;
  if (vm && (owner.uid !== vm.uid || owner.deviceId !== vm.deviceId)) return undefined;
  return { uid: owner.uid, deviceId: owner.deviceId };
}

/** FNV-1a, enough to spread MACs; not a security boundary. */
function fnv1a(s: string, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** A locally administered unicast MAC that is the same every time for this VM and interface. */
export function generatedMac(uid: string, deviceId: string): string {
  const a = fnv1a(`${uid}/${deviceId}`, 0);
  const b = fnv1a(`${uid}/${deviceId}`, 0x5bd1e995);
  const bytes = [0x02, (a >>> 24) & 0xff, (a >>> 16) & 0xff, (a >>> 8) & 0xff, a & 0xff, b & 0xff];
  return bytes.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function guestMac(vm: Pick<MicroVM, 'uid' | 'spec'>, index: number): string {
  const iface = vm.spec.interfaces[index];
  if (!iface) throw new RangeError(`interface ${index} does not exist`);
  return (iface.guestMac ?? generatedMac(vm.uid, iface.deviceId)).toLowerCase();
}
