import { Document, Scalar, visit } from 'yaml';
import { PY_DOUBLE_QUOTED_ONLY, cloudInitMetaData, pyYamlEscaped } from './metadata.js';
import type { MicroVM } from './types.js';

/**
 * A YAML document for cloud-init, which reads it with PyYAML's safe_load: YAML 1.1, where plain
 * `52:54:00:12:34:56` is a base-60 integer and `on`, `yes`, `n` are booleans. Written with the
 * yaml library's 1.1 schema, every string such a reader would take for another type is quoted
 * (a YAML 1.2 reader reads the quoted form alike). The library's schema lacks two of PyYAML's
 * implicit resolvers (yaml/resolver.py: `=` is a value, `<<` a merge key), which safe_load
 * then refuses to construct: those two strings are quoted here. A string holding characters
 * PyYAML takes only escaped or quoted (PY_DOUBLE_QUOTED_ONLY: a tab, C1 controls, U+FFFE,
 * U+FFFF, NEL, LS, PS) is double-quoted with them escaped.
 */
export function cloudInitYaml(doc: unknown): string {
  const out = new Document(doc, { version: '1.1' });
  visit(out, {
    Scalar(_, node) {
      if (typeof node.value === 'string' && PY_DOUBLE_QUOTED_ONLY.test(node.value)) node.type = Scalar.QUOTE_DOUBLE;
      if (node.value !== '=' && node.value !== '<<') return;
      node.type = Scalar.QUOTE_DOUBLE;
      // The library writes a merge key plain whatever its type; a tag makes it a string.
      if (node.value === '<<') node.tag = 'tag:yaml.org,2002:str';
    },
  });
  return pyYamlEscaped(out.toString());
}

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

/**
 * user-data written when the client sent none. cloud-init's NoCloud datasource takes a seed
 * only when both meta-data and user-data exist (22.4: DataSourceNoCloud, "required":
 * ["user-data", "meta-data"]); without it the whole seed, network-config and vendor-data
 * included, is "not a valid seed". An empty mapping changes nothing (a cloud-config with no
 * mapping at all is logged as "empty cloud config").
 */
export const EMPTY_USER_DATA = '#cloud-config\n{}\n';

/**
 * The NoCloud seed for a VM, file name -> bytes, as the guest's cloud-init must read it:
 * - every metadata entry of the spec, decoded, as a file of that name;
 * - `meta-data` with the instance id and hyphen/underscore keys (cloudInitMetaData; a record
 *   stored before those rules whose meta-data no longer passes them keeps its bytes);
 * - `user-data`, EMPTY_USER_DATA when the client sent none;
 * - `vendor-data` with cloud-init `mounts` for additional volumes that name a mount point;
 * - `network-config` when kernel.add_network_config is set.
 * Pure and deterministic: the same VM and interfaces give the same bytes.
 */
export function noCloudSeed(vm: Pick<MicroVM, 'uid' | 'spec'>, guests: GuestInterface[]): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(vm.spec.metadata)) files[k] = Buffer.from(v, 'base64');
  try {
    files['meta-data'] = cloudInitMetaData(files['meta-data'], vm.uid, 'meta-data');
  } catch {
    // Checked at create; an older record keeps what it has rather than losing its VM.
  }
  files['user-data'] ??= Buffer.from(EMPTY_USER_DATA, 'utf8');
  const vendor = vendorDataWithMounts(vm, files['vendor-data']);
  if (vendor) files['vendor-data'] = vendor;
  if (vm.spec.kernel.addNetworkConfig) files['network-config'] = Buffer.from(networkConfig(vm, guests), 'utf8');
  return files;
}

/**
 * netplan v2 network-config, as flintlock generates it for add_network_config, plus `set-name`:
 * each entry matches its NIC by MAC and names it after device_id. The guest kernel names NICs
 * eth0, eth1... in device order, so without set-name an entry keyed `eth1` configures whatever
 * NIC happens to be eth1 on the eni and networkd renderers (only netplan matches by MAC alone);
 * with it cloud-init renames the NIC with that MAC before any renderer's config applies.
 */
export function networkConfig(vm: Pick<MicroVM, 'spec'>, guests: GuestInterface[]): string {
  const ethernets: Record<string, unknown> = {};
  vm.spec.interfaces.forEach((iface, n) => {
    const g = guests[n];
    if (!g) return;
    const entry: Record<string, unknown> = { match: { macaddress: g.mac.toLowerCase() }, 'set-name': iface.deviceId };
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
  return cloudInitYaml({ version: 2, ethernets });
}

/** vd<letter> for the n-th disk: root is vda, additional volumes follow in order. */
export function diskLetter(n: number): string {
  return `vd${String.fromCharCode(97 + n)}`;
}

/**
 * How the mounts part merges into the client's cloud-config: lists are appended, so a client's
 * own `mounts` stay and ours follow (cloud-init's default merge would replace the list).
 */
export const MOUNTS_MERGE_TYPE = 'dict(recurse_array,no_replace)+list(append)';

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);

/**
 * vendor-data with a cloud-init `mounts` entry for each additional volume that names a mount
 * point (CAPMVM's kernel-modules volume relies on it). Without such a volume the client's
 * vendor-data is returned as it is. Without client vendor-data it is a cloud-config of just
 * the mounts. Otherwise it is a MIME multipart (which cloud-init takes in vendor-data as in
 * user-data): first the client's bytes unchanged, then a text/cloud-config part with the
 * mounts and MOUNTS_MERGE_TYPE. A client document that is MIME itself (cloud-init's test: it
 * says "mime-version:" in its first 4096 bytes) becomes a nested multipart part with its own
 * headers; anything else becomes a base64 part whose type cloud-init detects from its first
 * line (text/x-not-multipart), or application/x-gzip when it is gzip'd.
 */
export function vendorDataWithMounts(vm: Pick<MicroVM, 'spec'>, vendorData: Buffer | undefined): Buffer | undefined {
  const firstAdditional = vm.spec.rootVolume ? 1 : 0;
  const mounts = vm.spec.additionalVolumes
    .map((v, n) => (v.mountPoint ? [diskLetter(firstAdditional + n), v.mountPoint] : undefined))
    .filter((m): m is string[] => m !== undefined);
  if (mounts.length === 0) return vendorData;
  const mountsConfig = `#cloud-config\n${cloudInitYaml({ mounts })}`;
  if (vendorData === undefined || vendorData.length === 0) return Buffer.from(mountsConfig, 'utf8');
  let boundary = 'matchlock-vendor-data';
  for (let n = 1; vendorData.includes(boundary); n++) boundary = `matchlock-vendor-data-${n}`;
  const isMime = vendorData.subarray(0, 4096).toString('latin1').toLowerCase().includes('mime-version:');
  const client = isMime
    ? Buffer.concat([vendorData, Buffer.from(vendorData.at(-1) === 0x0a ? '' : '\n')])
    : Buffer.from(
        `Content-Type: ${vendorData.subarray(0, 2).equals(GZIP_MAGIC) ? 'application/x-gzip' : 'text/x-not-multipart'}\n` +
          'Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="vendor-data"\n\n' +
          `${(vendorData.toString('base64').match(/.{1,76}/g) ?? []).join('\n')}\n`,
        'utf8',
      );
  return Buffer.concat([
    Buffer.from(`Content-Type: multipart/mixed; boundary="${boundary}"\nMIME-Version: 1.0\n\n--${boundary}\n`, 'utf8'),
    client,
    Buffer.from(
      `--${boundary}\nContent-Type: text/cloud-config\nMerge-Type: ${MOUNTS_MERGE_TYPE}\n` +
        `Content-Disposition: attachment; filename="matchlock-mounts"\n\n${mountsConfig}--${boundary}--\n`,
      'utf8',
    ),
  ]);
}
