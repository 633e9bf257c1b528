import { parseDocument, stringify } from 'yaml';
import type { MicroVM } from './types.js';

/**
 * Kernel command line: the provider's defaults in their order, the spec's values replacing them
 * in place, then the spec's new keys sorted. An empty value is a bare flag. Deterministic, so
 * the same spec always yields the same command line.
 */
export function mergeCmdline(defaults: readonly [string, string][], overrides: Record<string, string>): string {
  const out = defaults.map(([k, v]): [string, string] => [k, Object.hasOwn(overrides, k) ? (overrides[k] ?? '') : v]);
  const known = new Set(defaults.map(([k]) => k));
  for (const k of Object.keys(overrides).sort()) if (!known.has(k)) out.push([k, overrides[k] ?? '']);
  return out.map(([k, v]) => (v === '' ? k : `${k}=${v}`)).join(' ');
}

export interface GuestInterface {
  deviceId: string;
  /** The MAC the guest sees (guest_mac for TAP, the macvtap's own for MACVTAP). */
  mac: string;
}

/** netplan v2 network-config, as flintlock generates it for add_network_config. */
export function networkConfig(vm: MicroVM, guests: GuestInterface[]): string {
  const ethernets: Record<string, unknown> = {};
  vm.spec.interfaces.forEach((iface, n) => {
    const g = guests[n];
    if (!g) return;
    const entry: Record<string, unknown> = { match: { macaddress: g.mac } };
    if (iface.address) {
      entry.addresses = [iface.address.address];
      entry.dhcp4 = false;
      entry.dhcp6 = false;
      if (iface.address.gateway) entry[iface.address.gateway.includes(':') ? 'gateway6' : 'gateway4'] = iface.address.gateway;
      if (iface.address.nameservers.length) entry.nameservers = { addresses: iface.address.nameservers };
    } else {
      entry.dhcp4 = true;
      entry.dhcp6 = true;
      entry['dhcp-identifier'] = 'mac';
    }
    ethernets[iface.deviceId] = entry;
  });
  return stringify({ version: 2, ethernets });
}

/** vd<letter> for the n-th disk: root is vda, additional volumes follow in order. */
export function diskLetter(n: number): string {
  return `vd${String.fromCharCode(97 + n)}`;
}

/**
 * vendor-data with a cloud-init `mounts` entry for each additional volume that names a mount
 * point (CAPMVM's kernel-modules volume relies on it). Existing vendor-data keys are kept.
 */
export function vendorDataWithMounts(vm: MicroVM, vendorData: Buffer | undefined): Buffer | undefined {
  const firstAdditional = vm.spec.rootVolume ? 1 : 0;
  const mounts = vm.spec.additionalVolumes
    .map((v, n) => (v.mountPoint ? [diskLetter(firstAdditional + n), v.mountPoint] : undefined))
    .filter((m): m is string[] => m !== undefined);
  if (mounts.length === 0) return vendorData;
  const text = vendorData?.toString('utf8') ?? '';
  const doc = text.trim() === '' ? parseDocument('{}') : parseDocument(text);
  const current: unknown = doc.errors.length === 0 ? doc.toJS() : undefined;
  if (current !== undefined && current !== null && (typeof current !== 'object' || Array.isArray(current))) return vendorData;
  const existing = (current as { mounts?: unknown } | null)?.mounts;
  const merged = [...(Array.isArray(existing) ? (existing as unknown[]) : []), ...mounts];
  const obj = { ...((current as Record<string, unknown> | null) ?? {}), mounts: merged };
  return Buffer.from(`#cloud-config\n${stringify(obj)}`, 'utf8');
}
