// Firecracker's configuration rules as data plus code, shared by the firecracker stand-in and
// the tests that check matchlock's output. The shapes come from the swagger file beside the
// checkout (../shared/specs/firecracker), loaded with a YAML 1.2 parser (the Logger level enum
// holds `Off`, which YAML 1.1 turns into false); the rules Firecracker applies in code are
// written out below with the Firecracker source they come from.
import { Buffer } from 'node:buffer';
import { accessSync, constants, existsSync, openSync, readSync, closeSync, readFileSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { parse } from 'yaml';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The Firecracker version the stand-in claims to be and whose swagger it reads. */
export const FC_VERSION = '1.16.1';

/** The swagger file: $MATCHLOCK_SPECS/firecracker/… or ../shared/specs/firecracker/… beside the checkout. */
export function swaggerPath(version = FC_VERSION) {
  const specs = process.env.MATCHLOCK_SPECS ?? join(ROOT, '..', 'shared', 'specs');
  return join(specs, 'firecracker', `firecracker-v${version}.yaml`);
}

export function swaggerAvailable(version = FC_VERSION) {
  return existsSync(swaggerPath(version));
}

/**
 * JSON Schema for each swagger definition with serde's behaviour: every object that lists its
 * properties is closed (Firecracker's structs are `deny_unknown_fields`), and an optional
 * property may be `null` (serde reads it as `Option::None`, as in the upstream example file).
 */
function closedSchema(node) {
  if (Array.isArray(node)) return node.map((n) => closedSchema(n));
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'properties') {
      out.properties = {};
      for (const [p, s] of Object.entries(v)) {
        const inner = closedSchema(s);
        out.properties[p] = (node.required ?? []).includes(p) ? inner : { anyOf: [{ type: 'null' }, inner] };
      }
    } else if (k === 'example' || k === 'readOnly') {
      // swagger annotations, not validation keywords
    } else {
      out[k] = closedSchema(v);
    }
  }
  if (node.type === 'object' && node.properties && node.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

let cached;
/** Validators for the swagger's definitions, by name. */
export function loadDefinitions(version = FC_VERSION) {
  if (cached?.version === version) return cached.api;
  const swagger = parse(readFileSync(swaggerPath(version), 'utf8'));
  const definitions = closedSchema(swagger.definitions);
  const ajv = new Ajv({ allErrors: false, strict: false });
  ajv.addFormat('int32', { type: 'number', validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n) => Number.isSafeInteger(n) });
  // MmdsConfig.ipv4_address carries its rule as a regular expression in `format`.
  for (const f of formatsIn(swagger.definitions)) if (!['int32', 'int64'].includes(f)) ajv.addFormat(f, new RegExp(`^${f.replaceAll('.', '\\.')}$`));
  ajv.addSchema({ $id: 'fc', definitions });
  const api = {
    names: Object.keys(definitions),
    /** Undefined when `value` fits definition `name`, else a serde-style message naming the field. */
    check(name, value, path = '') {
      const validate = ajv.getSchema(`fc#/definitions/${name}`);
      if (!validate) throw new Error(`no definition ${name} in the swagger`);
      if (validate(value)) return undefined;
      return describe(validate.errors, path);
    },
  };
  cached = { version, api };
  return api;
}

function formatsIn(node, acc = new Set()) {
  if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'format' && typeof v === 'string') acc.add(v);
      else formatsIn(v, acc);
    }
  }
  return acc;
}

/** `/drives/0/path_on_host` -> `drives[0].path_on_host` */
function fieldPath(prefix, pointer) {
  let out = prefix;
  for (const part of pointer.split('/').slice(1)) out += /^\d+$/.test(part) ? `[${part}]` : out ? `.${part}` : part;
  return out || '(top level)';
}

function describe(errors, prefix) {
  // anyOf [null, X] reports the null branch first; the error inside X is the useful one.
  const e = errors.find((x) => x.keyword !== 'anyOf' && !(x.keyword === 'type' && x.params.type === 'null')) ?? errors[0];
  const at = fieldPath(prefix, e.instancePath);
  switch (e.keyword) {
    case 'additionalProperties':
      return `${at}: unknown field \`${e.params.additionalProperty}\``;
    case 'required':
      return `${at}: missing field \`${e.params.missingProperty}\``;
    case 'enum':
      return `${at}: unknown variant, expected one of ${e.params.allowedValues.map((v) => `\`${v}\``).join(', ')}`;
    case 'type':
      return `${at}: invalid type, expected ${e.params.type}`;
    default:
      return `${at}: ${e.message}`;
  }
}

/** Top-level keys of the config file (kebab-case) and the definition each holds. */
export const CONFIG_KEYS = {
  'boot-source': 'BootSource',
  'machine-config': 'MachineConfiguration',
  logger: 'Logger',
  metrics: 'Metrics',
  'mmds-config': 'MmdsConfig',
  vsock: 'Vsock',
  balloon: 'Balloon',
  entropy: 'EntropyDevice',
  'memory-hotplug': 'MemoryHotplugConfig',
};
export const CONFIG_ARRAYS = { drives: 'Drive', 'network-interfaces': 'NetworkInterface', pmem: 'Pmem' };

/**
 * The config file's shape, as Firecracker's `VmmConfig` deserialises it: `boot-source` and
 * `drives` are required, unknown top-level keys are ignored (the struct is not
 * deny_unknown_fields), every inner object is closed. Returns the first error or undefined.
 */
export function configShapeError(config) {
  const defs = loadDefinitions();
  if (config === null || typeof config !== 'object' || Array.isArray(config)) return 'invalid type, expected struct VmmConfig';
  for (const k of ['boot-source', 'drives']) if (!(k in config) || config[k] === null) return `missing field \`${k}\``;
  for (const [k, def] of Object.entries(CONFIG_ARRAYS)) {
    const v = config[k];
    if (v === undefined || (v === null && k !== 'drives')) continue;
    if (!Array.isArray(v)) return `${k}: invalid type, expected a sequence`;
    for (let i = 0; i < v.length; i++) {
      const err = defs.check(def, v[i], `${k}[${i}]`);
      if (err) return err;
    }
  }
  for (const [k, def] of Object.entries(CONFIG_KEYS)) {
    const v = config[k];
    if (v === undefined || v === null) continue;
    const err = defs.check(def, v, k);
    if (err) return err;
  }
  return undefined;
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** True when the file starts with the ELF magic and is a 64-bit x86-64 executable. */
export function isX86Elf(path) {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(20);
    readSync(fd, b, 0, 20, 0);
    return b.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])) && b[4] === 2 && b.readUInt16LE(18) === 62;
  } finally {
    closeSync(fd);
  }
}

function openable(path, writable) {
  try {
    accessSync(path, writable ? constants.R_OK | constants.W_OK : constants.R_OK);
    return statSync(path).isFile() || statSync(path).isBlockDevice() ? undefined : 'not a regular file or block device';
  } catch (err) {
    const os = { ENOENT: 'No such file or directory (os error 2)', EPERM: 'Operation not permitted (os error 1)', EACCES: 'Permission denied (os error 13)', EROFS: 'Read-only file system (os error 30)' };
    return os[err.code] ?? err.message;
  }
}

function creatable(path) {
  if (existsSync(path)) return openable(path, true);
  return existsSync(dirname(path)) ? undefined : 'No such file or directory (os error 2)';
}

/** What `ip -d -j link show` says about a link in this network namespace. */
export function linkKind(name) {
  try {
    const [link] = JSON.parse(execFileSync('ip', ['-d', '-j', 'link', 'show', 'dev', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
    const info = link?.linkinfo;
    if (info?.info_kind === 'tun') return info.info_data?.type === 'tap' ? 'tap' : 'tun';
    return info?.info_kind ?? 'device';
  } catch {
    return undefined;
  }
}

/**
 * The rules Firecracker applies in code once the shape is right, in the order it applies the
 * sections (vmm/src/resources.rs: logger, metrics, machine-config, boot-source, drives,
 * network interfaces, vsock, then --metadata, then mmds-config). Returns the first error in
 * Firecracker's wording, or undefined. `opts.tapExists` can be replaced in unit tests.
 */
export function configRuleError(config, opts = {}) {
  const tapKind = opts.linkKind ?? linkKind;
  // Inside a jail every path is relative to the jail root: `resolve` maps it to the host.
  const r = opts.resolve ?? ((p) => p);
  const logger = config.logger;
  if (logger?.log_path) {
    const e = creatable(r(logger.log_path));
    if (e) return `logger.log_path: Failed to open target file: ${e}`;
  }
  if (config.metrics?.metrics_path) {
    const e = creatable(r(config.metrics.metrics_path));
    if (e) return `metrics.metrics_path: Failed to open target file: ${e}`;
  }
  const mc = config['machine-config'];
  if (mc) {
    // vmm/src/vmm_config/machine_config.rs: MAX_SUPPORTED_VCPUS = 32; with SMT only 1 or even.
    if (mc.vcpu_count < 1 || mc.vcpu_count > 32) return 'machine-config.vcpu_count: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.';
    if (mc.smt === true && mc.vcpu_count > 1 && mc.vcpu_count % 2 === 1) return `machine-config.vcpu_count: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled (vcpu_count ${mc.vcpu_count}, smt true).`;
    if (mc.mem_size_mib <= 0) return 'machine-config.mem_size_mib: The memory size (MiB) is invalid.';
  }
  const boot = config['boot-source'];
  {
    const e = openable(r(boot.kernel_image_path), false);
    if (e) return `boot-source.kernel_image_path: The kernel file cannot be opened: ${e}`;
    if (boot.initrd_path) {
      const i = openable(r(boot.initrd_path), false);
      if (i) return `boot-source.initrd_path: The initrd file cannot be opened: ${i}`;
    }
    // vmm_config/boot_source.rs: Cmdline::try_from(boot_args, CMDLINE_MAX_SIZE) checks only the
    // length, NUL included (linux-loader 0.13 src/cmdline/mod.rs); any other byte passes.
    if (Buffer.byteLength(bootArgs(boot)) + 1 > CMDLINE_MAX_SIZE) return 'boot-source.boot_args: The kernel command line is invalid: Invalid cmdline capacity provided.';
  }
  const drives = config.drives ?? [];
  const driveIds = new Set();
  let root;
  for (const [n, d] of drives.entries()) {
    const at = `drives[${n}]`;
    // Firecracker would replace a drive with a repeated id; matchlock treats that as an error.
    if (driveIds.has(d.drive_id)) return `${at}.drive_id: drive id ${d.drive_id} is used twice`;
    driveIds.add(d.drive_id);
    if (d.is_root_device) {
      if (root !== undefined) return `${at}.is_root_device: A root block device already exists! (${root})`;
      root = d.drive_id;
    }
    if (d.socket != null && d.path_on_host != null) return `${at}: a drive is either virtio-block (path_on_host) or vhost-user (socket), not both`;
    if (d.socket == null) {
      if (d.path_on_host == null) return `${at}.path_on_host: missing field \`path_on_host\` for a virtio-block drive`;
      if (d.is_read_only == null) return `${at}.is_read_only: missing field \`is_read_only\` for a virtio-block drive`;
      const e = openable(r(d.path_on_host), !d.is_read_only);
      if (e) return `${at}.path_on_host: Unable to create the virtio block device ${d.drive_id}: Error manipulating the backing file: ${e} ${d.path_on_host}`;
    }
  }
  const ifaces = config['network-interfaces'] ?? [];
  const ifaceIds = new Set();
  const devs = new Set();
  const macs = new Set();
  for (const [n, i] of ifaces.entries()) {
    const at = `network-interfaces[${n}]`;
    if (ifaceIds.has(i.iface_id)) return `${at}.iface_id: interface id ${i.iface_id} is used twice`;
    ifaceIds.add(i.iface_id);
    if (i.guest_mac != null) {
      if (!MAC.test(i.guest_mac)) return `${at}.guest_mac: invalid MAC address ${i.guest_mac}`;
      if (macs.has(i.guest_mac.toLowerCase())) return `${at}.guest_mac: The MAC address is already in use: ${i.guest_mac}`;
      macs.add(i.guest_mac.toLowerCase());
    }
    if (devs.has(i.host_dev_name)) return `${at}.host_dev_name: The host device name is already in use: ${i.host_dev_name}`;
    devs.add(i.host_dev_name);
    // The name goes into an ifreq (IFNAMSIZ 16 with the NUL); TUNSETIFF attaches to a TAP.
    if (i.host_dev_name === '' || i.host_dev_name.length > 15) return `${at}.host_dev_name: Could not create the network device: Open tap device failed: Invalid TAP name ${JSON.stringify(i.host_dev_name)}`;
    const kind = tapKind(i.host_dev_name);
    if (kind !== 'tap') return `${at}.host_dev_name: Could not create the network device: Open tap device failed: ${kind === undefined ? 'no such device' : `${i.host_dev_name} is a ${kind} device, not a TAP`} (${i.host_dev_name})`;
  }
  if (config.vsock) {
    if (existsSync(r(config.vsock.uds_path))) return `vsock.uds_path: Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98) ${config.vsock.uds_path}`;
    if (!existsSync(dirname(r(config.vsock.uds_path)))) return `vsock.uds_path: Cannot create backend for vsock device: No such file or directory (os error 2) ${config.vsock.uds_path}`;
  }
  const mmds = config['mmds-config'];
  if (mmds) {
    if (mmds.network_interfaces.length === 0) return 'mmds-config.network_interfaces: The list of network interface IDs that allow forwarding MMDS requests is empty.';
    for (const id of mmds.network_interfaces) {
      if (!ifaceIds.has(id)) return `mmds-config.network_interfaces: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface (${id}).`;
    }
  }
  return undefined;
}

/** x86_64 CMDLINE_MAX_SIZE (src/vmm/src/arch/x86_64/layout.rs): the command line's capacity, NUL included. */
export const CMDLINE_MAX_SIZE = 2048;
/** GSIs 5..=23 for MMIO devices on x86_64 (arch/x86_64/layout.rs GSI_LEGACY_START..GSI_LEGACY_END). */
const GSI_FIRST = 5;
const GSI_COUNT = 19;
/** vmm_config/boot_source.rs DEFAULT_KERNEL_CMDLINE (v1.16.1), used when boot_args is absent. */
const DEFAULT_KERNEL_CMDLINE = 'reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce';

const bootArgs = (boot) => (boot.boot_args ?? DEFAULT_KERNEL_CMDLINE).trim();

/**
 * What fails when the VM is built after the configuration was accepted (builder.rs
 * build_microvm_for_boot, v1.16.1, in its order):
 * - on x86_64 the kernel must be an uncompressed ELF vmlinux (a bzImage is refused);
 * - `pci=off` is appended (no --enable-pci), then `root=/dev/vda` and `ro`|`rw` for the root
 *   drive, then one `virtio_mmio.device=4K@0x<addr>:<gsi>` per virtio device as it is attached
 *   (drives, network interfaces, vsock): each append is refused once the line with its NUL
 *   would pass CMDLINE_MAX_SIZE (linux-loader insert_str, "Inserting string would make
 *   command line too long.");
 * - each virtio device takes one of the 19 GSIs, then VMGenID and VMClock one each.
 */
export function buildError(config, resolve = (p) => p) {
  const kernel = config['boot-source'].kernel_image_path;
  if (!isX86Elf(resolve(kernel))) return `boot-source.kernel_image_path: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image (${kernel} is not an x86_64 ELF vmlinux)`;
  let line = bootArgs(config['boot-source']);
  const fits = (s) => Buffer.byteLength(line) + 1 + (line === '' ? 0 : 1) + Buffer.byteLength(s) <= CMDLINE_MAX_SIZE;
  const insert = (s) => {
    if (!fits(s)) return false;
    line = line === '' ? s : `${line} ${s}`;
    return true;
  };
  const TOO_LONG = 'Inserting string would make command line too long.';
  if (!insert('pci=off')) return `Invalid kernel command line: ${TOO_LONG}`;
  let gsi = GSI_FIRST;
  const NO_GSI = 'The requested resource is not available.';
  const attach = (what) => {
    if (gsi >= GSI_FIRST + GSI_COUNT) return `${what}: Could not attach device: MMIO transport error: Failed to allocate requested resource: ${NO_GSI}`;
    const addr = 0xc0001000 + (gsi - GSI_FIRST) * 0x1000;
    // "resourc" is Firecracker's own spelling (device_manager/mmio.rs MmioError::Cmdline).
    if (!insert(`virtio_mmio.device=4K@0x${addr.toString(16)}:${gsi}`)) return `${what}: Could not attach device: MMIO transport error: Failed to allocate requested resourc: ${TOO_LONG}`;
    gsi++;
    return undefined;
  };
  for (const [n, d] of (config.drives ?? []).entries()) {
    if (d.is_root_device) {
      if (!insert(d.partuuid ? `root=PARTUUID=${d.partuuid}` : 'root=/dev/vda') || !insert(d.is_read_only ? 'ro' : 'rw')) return `Invalid kernel command line: ${TOO_LONG}`;
    }
    const e = attach(`drives[${n}]`);
    if (e) return e;
  }
  for (const n of (config['network-interfaces'] ?? []).keys()) {
    const e = attach(`network-interfaces[${n}]`);
    if (e) return e;
  }
  if (config.vsock) {
    const e = attach('vsock');
    if (e) return e;
  }
  for (const acpi of ['VMGenID', 'VMClock']) {
    if (gsi >= GSI_FIRST + GSI_COUNT) return `Could not attach device: Error while registering ACPI with KVM: ${acpi}: Could not allocate GSI: ${NO_GSI}`;
    gsi++;
  }
  return undefined;
}
