import type { MicroVM } from './types.js';

/**
 * Host device names are derived from the VM, never random, so a VM's devices can be found again
 * without its status (flintlock's random names leak when status is lost, its ADR 0005). Linux
 * allows 15 bytes: "ml" + kind (t: TAP, v: MACVTAP) + 10 characters of the uid's random part +
 * the interface position. The link alias carries the full owner: "matchlock:<uid>:<device_id>".
 */
export function hostDeviceName(vm: MicroVM, index: number): string {
  const iface = vm.spec.interfaces[index];
  const kind = iface?.type === 'MACVTAP' ? 'v' : 't';
  return `ml${kind}${vm.uid.slice(-10).toLowerCase()}${index.toString(36)}`;
}

export const ALIAS_PREFIX = 'matchlock:';

export function deviceAlias(uid: string, deviceId: string): string {
  return `${ALIAS_PREFIX}${uid}:${deviceId}`;
}

/** The uid in an alias matchlock wrote, or undefined for anything else. */
export function aliasOwner(alias: string | undefined): string | undefined {
  if (!alias?.startsWith(ALIAS_PREFIX)) return undefined;
  return alias.slice(ALIAS_PREFIX.length).split(':')[0];
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

export function guestMac(vm: MicroVM, index: number): string {
  const iface = vm.spec.interfaces[index];
  if (!iface) throw new RangeError(`interface ${index} does not exist`);
  return (iface.guestMac ?? generatedMac(vm.uid, iface.deviceId)).toLowerCase();
}
