import { invalid, quote } from '../errors.js';
import { parseReference } from '../images/reference.js';
import { isCidr, ipFamily, macProblem } from './net.js';
import { canonicalBase64Length, decodeMetadataValue, cloudInitMetaData } from './metadata.js';
import { SEED_FILES, fatFold, fatNameProblem } from './seed-names.js';
import type { ReadMetaData } from '../ports.js';
import type { IfaceType, MicroVMSpec, NetworkInterface, Volume } from './types.js';

/** What a client sent, after the wire adapter has turned it into plain data. */
export interface VolumeInput {
  id: string;
  isReadOnly: boolean;
  mountPoint?: string | undefined;
  source?: { containerSource?: string | undefined; virtiofsSource?: string | undefined } | undefined;
  partitionId?: string | undefined;
  sizeInMb?: number | undefined;
}

export interface InterfaceInput {
  deviceId: string;
  /** The wire enum number, so that unknown values can be refused. */
  type: number;
  guestMac?: string | undefined;
  address?: { address: string; gateway?: string | undefined; nameservers: string[] } | undefined;
  overrides?: { bridgeName?: string | undefined } | undefined;
}

export interface SpecInput {
  id: string;
  namespace: string;
  labels: Record<string, string>;
  vcpu: number;
  memoryInMb: number;
  kernel?: { image: string; filename?: string | undefined; cmdline: Record<string, string>; addNetworkConfig: boolean } | undefined;
  initrd?: { image: string; filename?: string | undefined } | undefined;
  rootVolume?: VolumeInput | undefined;
  additionalVolumes: VolumeInput[];
  interfaces: InterfaceInput[];
  metadata: Record<string, string>;
  provider?: string | undefined;
  allowGuestAgent: boolean;
}

export const LIMITS = {
  vcpu: { min: 1, max: 64, default: 2 },
  memoryInMb: { min: 1024, max: 32768, default: 1024 },
  nameLength: 253,
  labels: 64,
  labelKeyLength: 317,
  labelValueLength: 1024,
  interfaces: 8,
  additionalVolumes: 16,
  nameservers: 3,
  sizeInMb: 2 * 1024 * 1024,
  metadataKeys: 16,
  /** Total decoded metadata; the wire's own default message limit is 4 MiB. */
  metadataBytes: 1024 * 1024,
  cmdlineEntries: 64,
  /**
   * The spec's kernel.cmdline entries as written on the command line ("k=v" or "k", one space
   * between). Linux keeps at most COMMAND_LINE_SIZE bytes of it (2048 on x86 and arm64,
   * arch/x86/include/asm/setup.h, arch/arm64/include/uapi/asm/setup.h): a longer one cannot
   * reach the guest whole.
   */
  cmdlineBytes: 2048,
  pathLength: 1024,
} as const;

export const DEFAULT_NAMESPACE = 'default';
export const DEFAULT_INITRD_FILENAME = 'initrd';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const DEVICE_ID = /^[a-z][a-z0-9_]*$/;
const METADATA_KEY = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const CMDLINE_KEY = /^[A-Za-z0-9_][A-Za-z0-9_.,:\-/]*$/;
/** Longest Linux interface name (IFNAMSIZ 16 with its NUL). */
const GUEST_IFNAME_MAX = 15;
const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
// Control characters (C0, DEL, C1) never belong in names, paths or labels.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function checkName(field: string, value: string): void {
  if (value.length === 0) throw invalid(field, 'is required');
  if (value.length > LIMITS.nameLength) throw invalid(field, `must be at most ${LIMITS.nameLength} characters`);
  if (CONTROL.test(value)) throw invalid(field, 'must not contain control characters');
  if (!NAME.test(value)) {
    throw invalid(field, 'must start with a letter or digit and contain only letters, digits, ".", "_" and "-" (no "/" or "..")');
  }
}

/** A path inside an image: relative or absolute, never leaving the image through "..". */
function checkImagePath(field: string, value: string): string {
  if (value.length === 0) throw invalid(field, 'is required');
  if (value.length > LIMITS.pathLength) throw invalid(field, `must be at most ${LIMITS.pathLength} characters`);
  if (CONTROL.test(value)) throw invalid(field, 'must not contain control characters');
  const parts = value.split('/').filter((p, i) => !(i === 0 && p === ''));
  if (parts.some((p) => p === '..' || p === '.' || p === '')) {
    throw invalid(field, 'must be a path inside the image without ".", ".." or empty components');
  }
  return parts.join('/');
}

function checkReference(field: string, value: string): void {
  const parsed = parseReference(value);
  if (typeof parsed === 'string') throw invalid(field, parsed);
}

function checkCount(field: string, n: number, max: number): void {
  if (n > max) throw invalid(field, `must have at most ${max} entries`);
}

function checkInt(field: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) throw invalid(field, `must be between ${min} and ${max}`);
}

function checkLabels(field: string, labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  checkCount(field, entries.length, LIMITS.labels);
  for (const [k, v] of entries) {
    const f = `${field}[${quote(k)}]`;
    if (k.length === 0 || k.length > LIMITS.labelKeyLength || !LABEL_KEY.test(k)) {
      throw invalid(f, `key must be an optional DNS prefix and "/" then a name of letters, digits, "-", "_" and "." (at most ${LIMITS.labelKeyLength} characters)`);
    }
    if (v.length > LIMITS.labelValueLength) throw invalid(f, `value must be at most ${LIMITS.labelValueLength} characters`);
    if (CONTROL.test(v)) throw invalid(f, 'value must not contain control characters');
  }
}

function checkCmdline(field: string, cmdline: Record<string, string>): Record<string, string> {
  const entries = Object.entries(cmdline);
  checkCount(field, entries.length, LIMITS.cmdlineEntries);
  for (const [k, v] of entries) {
    const f = `${field}[${quote(k)}]`;
    if (!CMDLINE_KEY.test(k)) throw invalid(f, 'key must be a kernel parameter name without spaces, quotes or "="');
    if (CONTROL.test(v) || /[\s"]/.test(v)) throw invalid(f, 'value must not contain spaces, quotes or control characters');
  }
  const bytes = entries.reduce((n, [k, v], i) => n + (i > 0 ? 1 : 0) + Buffer.byteLength(k) + (v === '' ? 0 : 1 + Buffer.byteLength(v)), 0);
  if (bytes > LIMITS.cmdlineBytes) {
    throw invalid(field, `must be at most ${LIMITS.cmdlineBytes} bytes written as "k=v" entries separated by spaces, the kernel's COMMAND_LINE_SIZE (here ${bytes})`);
  }
  return { ...cmdline };
}

function checkVolume(field: string, v: VolumeInput, isRoot: boolean): Volume {
  if (v.id.length === 0) throw invalid(`${field}.id`, 'is required');
  if (!DEVICE_ID.test(v.id) || v.id.length > 64) {
    throw invalid(`${field}.id`, 'must start with a lowercase letter and contain only lowercase letters, digits and "_" (at most 64)');
  }
  const container = v.source?.containerSource;
  const virtiofs = v.source?.virtiofsSource;
  if (!container && !virtiofs) throw invalid(`${field}.source`, 'needs container_source (an OCI image) or virtiofs_source');
  if (container && virtiofs) throw invalid(`${field}.source`, 'must name only one of container_source and virtiofs_source');
  if (container) checkReference(`${field}.source.container_source`, container);
  if (virtiofs) {
    if (isRoot) throw invalid(`${field}.source.virtiofs_source`, 'is only allowed on additional volumes');
    if (!virtiofs.startsWith('/') || CONTROL.test(virtiofs) || virtiofs.split('/').includes('..')) {
      throw invalid(`${field}.source.virtiofs_source`, 'must be an absolute host path without ".." or control characters');
    }
  }
  const out: Volume = { id: v.id, isReadOnly: v.isReadOnly, source: {} };
  if (container) out.source.containerSource = container;
  if (virtiofs) out.source.virtiofsSource = virtiofs;
  if (v.mountPoint !== undefined && v.mountPoint !== '') {
    if (isRoot) throw invalid(`${field}.mount_point`, 'applies only to additional volumes');
    const mp = v.mountPoint;
    if (!mp.startsWith('/') || mp.length > LIMITS.pathLength || CONTROL.test(mp) || mp.split('/').includes('..') || /\s/.test(mp)) {
      throw invalid(`${field}.mount_point`, 'must be an absolute guest path without "..", spaces or control characters');
    }
    out.mountPoint = mp;
  }
  if (v.partitionId !== undefined && v.partitionId !== '') {
    if (!/^[0-9A-Za-z-]{1,64}$/.test(v.partitionId)) throw invalid(`${field}.partition_id`, 'must be a partition UUID');
    out.partitionId = v.partitionId;
  }
  if (v.sizeInMb !== undefined && v.sizeInMb !== 0) {
    checkInt(`${field}.size_in_mb`, v.sizeInMb, 1, LIMITS.sizeInMb);
    out.sizeInMb = v.sizeInMb;
  }
  return out;
}

const IFACE_TYPES: readonly IfaceType[] = ['MACVTAP', 'TAP'];

function checkInterface(field: string, i: InterfaceInput): NetworkInterface {
  if (i.deviceId.length === 0) throw invalid(`${field}.device_id`, 'is required');
  if (!DEVICE_ID.test(i.deviceId) || i.deviceId.length > 32) {
    throw invalid(`${field}.device_id`, 'must match ^[a-z][a-z0-9_]*$ (at most 32 characters)');
  }
  const type = IFACE_TYPES[i.type];
  if (type === undefined) throw invalid(`${field}.type`, 'must be MACVTAP (0) or TAP (1)');
  const out: NetworkInterface = { deviceId: i.deviceId, type };
  if (i.guestMac !== undefined && i.guestMac !== '') {
    const problem = macProblem(i.guestMac);
    if (problem) throw invalid(`${field}.guest_mac`, problem);
    out.guestMac = i.guestMac;
  }
  if (i.address !== undefined) {
    const a = i.address;
    if (!isCidr(a.address)) throw invalid(`${field}.address.address`, 'must be an IP address in CIDR form, like 192.168.10.30/25');
    const family = ipFamily(a.address.slice(0, a.address.indexOf('/')));
    out.address = { address: a.address, nameservers: [] };
    if (a.gateway !== undefined && a.gateway !== '') {
      const gw = ipFamily(a.gateway);
      if (gw === undefined) throw invalid(`${field}.address.gateway`, 'must be an IP address');
      if (gw !== family) throw invalid(`${field}.address.gateway`, 'must be of the same IP family as the address');
      out.address.gateway = a.gateway;
    }
    checkCount(`${field}.address.nameservers`, a.nameservers.length, LIMITS.nameservers);
    a.nameservers.forEach((ns, n) => {
      if (ipFamily(ns) === undefined) throw invalid(`${field}.address.nameservers[${n}]`, 'must be an IP address');
    });
    out.address.nameservers = [...a.nameservers];
  }
  const bridge = i.overrides?.bridgeName;
  if (bridge !== undefined && bridge !== '') {
    if (!IFNAME.test(bridge) || bridge === '.' || bridge === '..') {
      throw invalid(`${field}.overrides.bridge_name`, 'must be a Linux interface name: 1 to 15 letters, digits, "_", "." or "-"');
    }
    out.overrides = { bridgeName: bridge };
  }
  return out;
}

/** The request field of the meta-data entry, as validateSpec names it in its refusals. */
export const META_DATA_FIELD = `microvm.metadata[${quote('meta-data')}]`;

/** cloudInitMetaData of `decoded`, or what a reading ahead (ReadMetaData) of the same value and uid made or threw. */
function metaDataOf(decoded: Buffer, value: string, uid: string, field: string, ahead: ReadMetaData | undefined): Buffer {
  if (ahead === undefined || ahead.value !== value || ahead.uid !== uid) return cloudInitMetaData(decoded, uid, field);
  if (ahead.outcome instanceof Error) throw ahead.outcome;
  return ahead.outcome;
}

function checkMetadata(field: string, metadata: Record<string, string>, uid: string, ahead: ReadMetaData | undefined): Record<string, string> {
  const entries = Object.entries(metadata);
  checkCount(field, entries.length, LIMITS.metadataKeys);
  let total = 0;
  const out: Record<string, string> = {};
  // Each key is a file on the seed's FAT filesystem, which compares names without case; the
  // seed's own files count too (a "META-DATA" key would meet the injected meta-data).
  const seedNames = new Map<string, string>(SEED_FILES.map((n) => [fatFold(n), n]));
  for (const [k, v] of entries) {
    const f = `${field}[${quote(k)}]`;
    if (k.length > 64 || !METADATA_KEY.test(k)) {
      throw invalid(f, 'key must start with a letter or digit and contain only letters, digits, ".", "_" and "-" (at most 64)');
    }
    const fatProblem = fatNameProblem(k);
    if (fatProblem) throw invalid(f, `key ${fatProblem}`);
    const other = entries.find(([o]) => o !== k && fatFold(o) === fatFold(k))?.[0] ?? seedNames.get(fatFold(k));
    if (other !== undefined && other !== k) {
      throw invalid(f, `key collides with ${quote(other)}: the seed's FAT filesystem compares names without case and cannot hold both`);
    }
    // Stored base64 as sent when decoding and encoding again would give the same text back.
    const size = k === 'meta-data' ? undefined : canonicalBase64Length(v);
    const decoded = size === undefined ? decodeMetadataValue(v) : undefined;
    total += size ?? decoded?.length ?? 0;
    if (total > LIMITS.metadataBytes) throw invalid(f, `metadata must total at most ${LIMITS.metadataBytes} bytes once decoded`);
    if (!decoded) out[k] = v;
    else out[k] = (k === 'meta-data' ? metaDataOf(decoded, v, uid, f, ahead) : decoded).toString('base64');
  }
  if (out['meta-data'] === undefined) out['meta-data'] = cloudInitMetaData(undefined, uid, `${field}["meta-data"]`).toString('base64');
  return out;
}

/**
 * Checks a create request and applies flintlock's defaults. Every refusal names the wire field
 * and the rule. The provider is resolved by the caller (it depends on the host), so it is an
 * argument here. `metaData`, a reading of the meta-data entry made ahead (off the event loop),
 * stands for this call's own when it is of the same value and uid; its refusal is thrown where
 * this call's own would be, so a request's first fault is still the one named.
 */
export function validateSpec(input: SpecInput | undefined, uid: string, provider: string, metaData?: ReadMetaData): MicroVMSpec {
  const root = 'microvm';
  if (input === undefined) throw invalid(root, 'is required');
  checkName(`${root}.id`, input.id);
  const namespace = input.namespace === '' ? DEFAULT_NAMESPACE : input.namespace;
  checkName(`${root}.namespace`, namespace);
  checkLabels(`${root}.labels`, input.labels);

  const vcpu = input.vcpu === 0 ? LIMITS.vcpu.default : input.vcpu;
  checkInt(`${root}.vcpu`, vcpu, LIMITS.vcpu.min, LIMITS.vcpu.max);
  const memoryInMb = input.memoryInMb === 0 ? LIMITS.memoryInMb.default : input.memoryInMb;
  checkInt(`${root}.memory_in_mb`, memoryInMb, LIMITS.memoryInMb.min, LIMITS.memoryInMb.max);

  if (input.kernel === undefined) throw invalid(`${root}.kernel`, 'is required: a MicroVM boots a kernel file from an OCI image');
  checkReference(`${root}.kernel.image`, input.kernel.image);
  const kernel = {
    image: input.kernel.image,
    filename: checkImagePath(`${root}.kernel.filename`, input.kernel.filename ?? ''),
    cmdline: checkCmdline(`${root}.kernel.cmdline`, input.kernel.cmdline),
    addNetworkConfig: input.kernel.addNetworkConfig,
  };

  let initrd: MicroVMSpec['initrd'];
  if (input.initrd !== undefined) {
    checkReference(`${root}.initrd.image`, input.initrd.image);
    const filename = input.initrd.filename === undefined || input.initrd.filename === '' ? DEFAULT_INITRD_FILENAME : input.initrd.filename;
    initrd = { image: input.initrd.image, filename: checkImagePath(`${root}.initrd.filename`, filename) };
  }

  const rootVolume = input.rootVolume === undefined ? undefined : checkVolume(`${root}.root_volume`, input.rootVolume, true);
  if (rootVolume === undefined && initrd === undefined) throw invalid(`${root}.root_volume`, 'is required when there is no initrd');

  checkCount(`${root}.additional_volumes`, input.additionalVolumes.length, LIMITS.additionalVolumes);
  const seenVolumes = new Set(rootVolume ? [rootVolume.id] : []);
  const additionalVolumes = input.additionalVolumes.map((v, n) => {
    const vol = checkVolume(`${root}.additional_volumes[${n}]`, v, false);
    if (seenVolumes.has(vol.id)) throw invalid(`${root}.additional_volumes[${n}].id`, `must be unique; ${quote(vol.id)} is used twice`);
    seenVolumes.add(vol.id);
    return vol;
  });

  if (input.interfaces.length === 0) throw invalid(`${root}.interfaces`, 'must have at least one network interface');
  checkCount(`${root}.interfaces`, input.interfaces.length, LIMITS.interfaces);
  const seenIfaces = new Set<string>();
  const seenMacs = new Set<string>();
  const interfaces = input.interfaces.map((i, n) => {
    const iface = checkInterface(`${root}.interfaces[${n}]`, i);
    if (seenIfaces.has(iface.deviceId)) throw invalid(`${root}.interfaces[${n}].device_id`, `must be unique; ${quote(iface.deviceId)} is used twice`);
    seenIfaces.add(iface.deviceId);
    if (kernel.addNetworkConfig && iface.deviceId.length > GUEST_IFNAME_MAX) {
      throw invalid(`${root}.interfaces[${n}].device_id`, `must be at most ${GUEST_IFNAME_MAX} characters with kernel.add_network_config: it becomes the guest's interface name (Linux IFNAMSIZ)`);
    }
    if (iface.guestMac !== undefined) {
      const mac = iface.guestMac.toLowerCase();
      if (seenMacs.has(mac)) throw invalid(`${root}.interfaces[${n}].guest_mac`, 'must be unique within the VM');
      seenMacs.add(mac);
    }
    return iface;
  });

  const spec: MicroVMSpec = {
    name: input.id,
    namespace,
    labels: { ...input.labels },
    vcpu,
    memoryInMb,
    kernel,
    additionalVolumes,
    interfaces,
    metadata: checkMetadata(`${root}.metadata`, input.metadata, uid, metaData),
    provider,
    allowGuestAgent: input.allowGuestAgent,
  };
  if (initrd) spec.initrd = initrd;
  if (rootVolume) spec.rootVolume = rootVolume;
  return spec;
}
