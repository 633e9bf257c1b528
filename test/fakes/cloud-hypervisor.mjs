#!/usr/bin/env node
// A stand-in for the cloud-hypervisor binary on machines without KVM. It is spawned exactly like
// the real one and fails where the real one would: it parses the command line with the real
// binary's grammar (clap: options taking several values, a VM option needs a payload; option
// values are comma-separated key=value lists with known keys only), opens what the real VMM
// opens at boot (kernel, initramfs, disks read-write unless readonly, TAP devices by name,
// inherited fd= descriptors, which must be open character devices, a running virtiofsd behind
// every --fs socket), binds the API socket and the vsock socket, and serves the REST API of
// Cloud Hypervisor v53 (or v41 with FAKE_CH_VERSION=41) over it: request bodies are checked
// against the OpenAPI document, the VM follows the real state machine, errors use the version's
// convention (v53: JSON array of the error chain, v41: plain text 500). No guest runs.
//
// Environment:
//   FAKE_CH_VERSION   53 (default) or 41. v41 refuses an existing API socket path; v53 removes it.
//   FAKE_CH_SPEC      the OpenAPI YAML (default: the version's file in the shared specs).
//   FAKE_CH_RECORD    a directory: <pid>.json there records argv, the parsed VmConfig, the
//                     inherited descriptors and every API request, for tests to inspect.
//   FAKE_CH_GUEST     qemu: boot the described VM under QEMU (TCG), so a guest really runs.
//   FAKE_CH_FAULTS    comma-separated switches: exit-after=<ms> (die with status 1),
//                     poweroff-after=<ms> (the guest powers off: exit 0), no-api (never bind the
//                     API socket), hang=<verb> (never answer that endpoint), ignore-power-button
//                     (a guest without ACPI handling), ignore-sigterm.
import { accessSync, closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import Ajv from 'ajv';
import { Buffer } from 'node:buffer';
import { setInterval, setTimeout } from 'node:timers';

// Asked over netlink, not /sys: /sys shows the namespace it was mounted in, which is not the
// VMM's when it was entered with nsenter --net.
function isTap(name) {
  try {
    const [link] = JSON.parse(execFileSync('ip', ['-json', '-details', 'link', 'show', 'dev', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
    return link?.linkinfo?.info_kind === 'tun';
  } catch {
    return false;
  }
}

const started = Date.now();
let logFile;
const VERSION = process.env.FAKE_CH_VERSION ?? '53';
if (VERSION !== '53' && VERSION !== '41') die(`FAKE_CH_VERSION must be 41 or 53, not ${VERSION}`);
const here = dirname(fileURLToPath(import.meta.url));
const SPEC = process.env.FAKE_CH_SPEC ?? findSpec(`cloud-hypervisor-v${VERSION}.0.yaml`);

/** The reference specs live in shared/specs beside the checkout (or beside one of its parents). */
function findSpec(file) {
  for (let dir = join(here, '..', '..'); ; dir = dirname(dir)) {
    const candidate = join(dirname(dir), 'shared', 'specs', 'cloud-hypervisor', file);
    if (existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) return die(`stand-in: ${file} not found in shared/specs beside the checkout; set FAKE_CH_SPEC`);
  }
}
const FAULTS = new Map((process.env.FAKE_CH_FAULTS ?? '').split(',').filter(Boolean).map((f) => {
  const i = f.indexOf('=');
  return i < 0 ? [f, ''] : [f.slice(0, i), f.slice(i + 1)];
}));

function log(line) {
  const text = `cloud-hypervisor: ${((Date.now() - started) / 1000).toFixed(6)}s: <vmm> ${line}\n`;
  if (logFile !== undefined) writeSync(logFile, text);
  else process.stderr.write(text);
}

/** The real binary's fatal error: the chain on stderr, exit 1. */
function die(...chain) {
  const text = `Error: Cloud Hypervisor exited with the following error:\n${chain.map((c, i) => `${'  '.repeat(i + 1)}${c}`).join('\n')}\n`;
  process.stderr.write(text);
  if (logFile !== undefined) writeSync(logFile, text);
  process.exit(1);
}

/** clap's usage errors: exit 2. */
function usage(msg) {
  process.stderr.write(`error: ${msg}\n\nFor more information, try '--help'.\n`);
  process.exit(2);
}

// ---- command line (cloud-hypervisor/src/main.rs) ----

// kind: 'flag' (no value), 'one' (exactly one value), 'many' (num_args(1..), Append), 'count'.
// group: 'payload' creates the VM; 'vm' options need a payload (ArgGroup vm-config requires vm-payload).
const OPTIONS = {
  'api-socket': { kind: 'one' },
  'event-monitor': { kind: 'one' },
  'log-file': { kind: 'one' },
  'seccomp': { kind: 'one' },
  'landlock': { kind: 'flag' },
  'restore': { kind: 'one' },
  'no-shutdown': { kind: 'flag' },
  'kernel': { kind: 'one', group: 'payload' },
  'firmware': { kind: 'one', group: 'payload' },
  'igvm': { kind: 'one', group: 'payload' },
  'initramfs': { kind: 'one', group: 'vm' },
  'cmdline': { kind: 'one', group: 'vm' },
  'cpus': { kind: 'one', group: 'vm' },
  'memory': { kind: 'one', group: 'vm' },
  'memory-zone': { kind: 'many', group: 'vm' },
  'disk': { kind: 'many', group: 'vm' },
  'net': { kind: 'many', group: 'vm' },
  'fs': { kind: 'many', group: 'vm' },
  'pmem': { kind: 'many', group: 'vm' },
  'device': { kind: 'many', group: 'vm' },
  'vsock': { kind: 'one', group: 'vm' },
  'rng': { kind: 'one', group: 'vm' },
  'serial': { kind: 'one', group: 'vm' },
  'console': { kind: 'one', group: 'vm' },
  'balloon': { kind: 'one', group: 'vm' },
  'watchdog': { kind: 'flag', group: 'vm' },
  'pvpanic': { kind: 'flag', group: 'vm' },
  'log-format': { kind: 'one' },
};

function parseArgv(argv) {
  const got = {};
  let verbose = 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-V' || a === '--version') {
      process.stdout.write(`cloud-hypervisor v${VERSION}.0\n`);
      process.exit(0);
    }
    if (/^-v+$/.test(a)) {
      verbose += a.length - 1;
      continue;
    }
    if (!a.startsWith('--')) usage(`unexpected argument '${a}' found`);
    const eq = a.indexOf('=');
    const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const opt = OPTIONS[name];
    if (!opt) usage(`unexpected argument '--${name}' found`);
    if (opt.kind === 'flag') {
      if (eq >= 0) usage(`unexpected value '${a.slice(eq + 1)}' for '--${name}' found; no more were expected`);
      got[name] = true;
      continue;
    }
    const values = [];
    if (eq >= 0) values.push(a.slice(eq + 1));
    else while (i + 1 < argv.length && !argv[i + 1].startsWith('-') && (opt.kind === 'many' || values.length === 0)) values.push(argv[++i]);
    if (values.length === 0) usage(`a value is required for '--${name} <${name.toUpperCase()}>' but none was supplied`);
    if (opt.kind === 'one') {
      if (name in got) usage(`the argument '--${name} <${name.toUpperCase()}>' cannot be used multiple times`);
      got[name] = values[0];
    } else {
      got[name] = [...(got[name] ?? []), ...values];
    }
  }
  const hasPayload = Object.keys(got).some((k) => OPTIONS[k].group === 'payload');
  const vmOption = Object.keys(got).find((k) => OPTIONS[k].group === 'vm');
  if (vmOption && !hasPayload) usage(`the following required arguments were not provided:\n  <--kernel <KERNEL>|--firmware <FIRMWARE>|--igvm <IGVM>>\n(needed by '--${vmOption}')`);
  return { got, verbose, hasPayload };
}

/** vmm/src/config.rs OptionParser: commas split options except inside [] or "". */
function splitOptions(text) {
  const parts = [];
  let cur = '';
  let depth = 0;
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    else if (ch === '[' && !quoted) depth++;
    else if (ch === ']' && !quoted) depth--;
    if (ch === ',' && depth === 0 && !quoted) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  parts.push(cur);
  return parts;
}

function options(flag, text, known, bare) {
  const out = {};
  for (const part of splitOptions(text)) {
    const eq = part.indexOf('=');
    if (eq < 0) {
      if (bare) {
        out[bare] = part;
        continue;
      }
      die('Error parsing config', `Error parsing --${flag}: unknown option: ${part}`);
    }
    const key = part.slice(0, eq);
    if (!known.includes(key)) die('Error parsing config', `Error parsing --${flag}: unknown option: ${key}`);
    out[key] = part.slice(eq + 1).replace(/^"(.*)"$/, '$1');
  }
  return out;
}

function toggle(flag, key, v) {
  if (v === undefined) return undefined;
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  return die('Error parsing config', `Error parsing --${flag}: invalid value for ${key}: ${v} (on, off, true or false)`);
}

function int(flag, key, v) {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) die('Error parsing config', `Error parsing --${flag}: invalid value for ${key}: ${v}`);
  return Number(v);
}

function bytes(flag, key, v) {
  const m = /^(\d+)([KMG]?)$/.exec(v ?? '');
  if (!m) return die('Error parsing config', `Error parsing --${flag}: invalid size for ${key}: ${v}`);
  return Number(m[1]) * { '': 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 }[m[2]];
}

function intList(flag, key, v) {
  if (v === undefined) return undefined;
  const body = v.replace(/^\[(.*)\]$/, '$1');
  return body.split(',').map((x) => int(flag, key, x));
}

const RATE = ['bw_size', 'bw_one_time_burst', 'bw_refill_time', 'ops_size', 'ops_one_time_burst', 'ops_refill_time'];
const DISK_KEYS = ['path', 'readonly', 'direct', 'iommu', 'queue_size', 'num_queues', 'vhost_user', 'socket', 'id', 'pci_segment', 'serial', 'rate_limit_group', 'queue_affinity', 'image_type', 'sparse', '_disable_io_uring', '_disable_aio', ...RATE];
const NET_KEYS = ['tap', 'ip', 'mask', 'mac', 'host_mac', 'mtu', 'iommu', 'queue_size', 'num_queues', 'vhost_user', 'socket', 'vhost_mode', 'id', 'fd', 'pci_segment', 'offload_tso', 'offload_ufo', 'offload_csum', ...RATE];
const MAC = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;

function consoleConfig(flag, text, extraKeys = []) {
  if (['off', 'null', 'pty', 'tty'].includes(text)) return { mode: text[0].toUpperCase() + text.slice(1) };
  const o = options(flag, text, ['file', 'socket', 'iommu', ...extraKeys]);
  if (o.file !== undefined) return { mode: 'File', file: o.file };
  if (o.socket !== undefined) return { mode: 'Socket', socket: o.socket };
  return die('Error parsing config', `Error parsing --${flag}: expected off, null, pty, tty, file=<path> or socket=<path>: ${text}`);
}

/** The VmConfig the real binary builds from its command line (vm.info echoes it). */
function vmConfigFromArgs(got) {
  const cfg = { payload: {} };
  if (got.kernel) cfg.payload.kernel = got.kernel;
  if (got.firmware) cfg.payload.firmware = got.firmware;
  if (got.igvm) cfg.payload.igvm = got.igvm;
  if (got.initramfs) cfg.payload.initramfs = got.initramfs;
  if (got.cmdline !== undefined) cfg.payload.cmdline = got.cmdline;
  const cpus = options('cpus', got.cpus ?? 'boot=1', ['boot', 'max', 'topology', 'kvm_hyperv', 'max_phys_bits', 'affinity', 'features', 'nested']);
  const boot = int('cpus', 'boot', cpus.boot ?? '1');
  cfg.cpus = { boot_vcpus: boot, max_vcpus: int('cpus', 'max', cpus.max) ?? boot };
  const mem = options('memory', got.memory ?? 'size=512M', ['size', 'file', 'mergeable', 'shared', 'hugepages', 'hugepage_size', 'prefault', 'thp', 'hotplug_method', 'hotplug_size', 'hotplugged_size']);
  cfg.memory = { size: bytes('memory', 'size', mem.size ?? '512M'), shared: toggle('memory', 'shared', mem.shared) ?? false, hugepages: toggle('memory', 'hugepages', mem.hugepages) ?? false };
  cfg.disks = (got.disk ?? []).map((d) => {
    const o = options('disk', d, DISK_KEYS);
    const disk = { path: o.path, readonly: toggle('disk', 'readonly', o.readonly) ?? false, direct: toggle('disk', 'direct', o.direct) ?? false };
    if (o.id) disk.id = o.id;
    if (o.num_queues) disk.num_queues = int('disk', 'num_queues', o.num_queues);
    if (o.queue_size) disk.queue_size = int('disk', 'queue_size', o.queue_size);
    if (toggle('disk', 'vhost_user', o.vhost_user)) {
      disk.vhost_user = true;
      disk.vhost_socket = o.socket;
    }
    return disk;
  });
  cfg.net = (got.net ?? []).map((n) => {
    const o = options('net', n, NET_KEYS);
    const net = {};
    if (o.tap) net.tap = o.tap;
    if (o.fd !== undefined) net.fds = intList('net', 'fd', o.fd);
    if (o.mac !== undefined) {
      if (!MAC.test(o.mac)) die('Error parsing config', `Error parsing --net: invalid MAC address: ${o.mac}`);
      net.mac = o.mac;
    }
    if (o.id) net.id = o.id;
    if (o.mtu) net.mtu = int('net', 'mtu', o.mtu);
    if (o.num_queues) net.num_queues = int('net', 'num_queues', o.num_queues);
    if (o.queue_size) net.queue_size = int('net', 'queue_size', o.queue_size);
    return net;
  });
  cfg.fs = (got.fs ?? []).map((f) => {
    const o = options('fs', f, ['tag', 'socket', 'num_queues', 'queue_size', 'id', 'pci_segment']);
    if (!o.tag) die('Error parsing config', 'Error parsing --fs: missing parameter: tag');
    if (!o.socket) die('Error parsing config', 'Error parsing --fs: missing parameter: socket');
    const fs = { tag: o.tag, socket: o.socket, num_queues: int('fs', 'num_queues', o.num_queues ?? '1'), queue_size: int('fs', 'queue_size', o.queue_size ?? '1024') };
    if (o.id) fs.id = o.id;
    return fs;
  });
  if (got.vsock) {
    const o = options('vsock', got.vsock, ['cid', 'socket', 'iommu', 'id', 'pci_segment']);
    if (o.cid === undefined) die('Error parsing config', 'Error parsing --vsock: missing parameter: cid');
    if (!o.socket) die('Error parsing config', 'Error parsing --vsock: missing parameter: socket');
    cfg.vsock = { cid: int('vsock', 'cid', o.cid), socket: o.socket };
  }
  cfg.serial = got.serial ? consoleConfig('serial', got.serial) : { mode: 'Null' };
  cfg.console = got.console ? consoleConfig('console', got.console) : { mode: 'Tty' };
  cfg.rng = { src: got.rng ? options('rng', got.rng, ['src', 'iommu']).src ?? '/dev/urandom' : '/dev/urandom' };
  return cfg;
}

// ---- VmConfig rules (vmm/src/vm_config.rs VmConfig::validate) and what boot opens ----

function validate(cfg) {
  const p = cfg.payload ?? {};
  if (!p.kernel && !p.firmware && !p.igvm) return 'No kernel, firmware or IGVM payload specified';
  if (cfg.cpus && cfg.cpus.max_vcpus < cfg.cpus.boot_vcpus) return 'Max CPUs lower than boot CPUs';
  if (cfg.cpus && (cfg.cpus.boot_vcpus < 1 || cfg.cpus.max_vcpus > 254)) return 'Number of CPUs out of range (1 to 254)';
  if (cfg.memory && !(cfg.memory.size > 0)) return 'Memory size must be greater than zero';
  for (const [name, c] of [['serial', cfg.serial], ['console', cfg.console]]) {
    if (c?.mode === 'File' && !c.file) return `Path missing when using file ${name} mode`;
    if (c?.mode === 'Socket' && !c.socket) return `Path missing when using socket ${name} mode`;
  }
  const shared = cfg.memory?.shared || cfg.memory?.hugepages;
  for (const d of cfg.disks ?? []) {
    if (d.path && d.vhost_socket) return 'Disk path and vhost socket both provided';
    if (d.vhost_user && !shared) return 'Using vhost-user requires using shared memory or huge pages';
    if (!d.path && !d.vhost_user) return 'Disk path missing';
  }
  for (const n of cfg.net ?? []) {
    if (n.vhost_user && !shared) return 'Using vhost-user requires using shared memory or huge pages';
    if (!n.tap && !n.fds && !n.vhost_user) return 'Net device needs tap=<name> or fd=<n> (creating TAP devices needs CAP_NET_ADMIN, which the stand-in never assumes)';
  }
  if ((cfg.fs ?? []).length && !shared) return 'Using vhost-user requires using shared memory or huge pages';
  if (cfg.vsock && cfg.vsock.cid < 3) return 'Invalid vsock CID (must be 3 or more)';
  const ids = new Set();
  for (const d of [...(cfg.disks ?? []), ...(cfg.net ?? []), ...(cfg.fs ?? [])]) {
    if (d.id && ids.has(d.id)) return `Identifier ${d.id} is not unique`;
    if (d.id) ids.add(d.id);
  }
  return undefined;
}

const fsConnections = [];
let vsockServer;

/** What vm.boot opens; throws the error chain the real binary would report. */
async function openDevices(cfg) {
  // The real VMM checks the command line after making the devices; checked first here, so a
  // refused boot leaves no vsock socket bound behind it.
  checkCmdline(cfg);
  const p = cfg.payload;
  for (const [what, path] of [['kernel', p.kernel], ['firmware', p.firmware], ['initramfs', p.initramfs]]) {
    if (path === undefined) continue;
    try {
      accessSync(path, constants.R_OK);
      if (!statSync(path).isFile()) throw new Error('not a regular file');
    } catch (err) {
      throw ['Error booting VM', `Cannot load ${what}`, `Error opening ${what} file ${path}: ${err.message}`];
    }
  }
  for (const d of cfg.disks) {
    if (!d.path) continue;
    try {
      accessSync(d.path, d.readonly ? constants.R_OK : constants.R_OK | constants.W_OK);
    } catch (err) {
      throw ['Error booting VM', 'Error creating virtio devices', `Failed to open disk image ${d.path}: ${err.message}`];
    }
  }
  for (const n of cfg.net) {
    for (const fd of n.fds ?? []) {
      let st;
      try {
        st = fstatSync(fd);
      } catch (err) {
        throw ['Error booting VM', 'Error creating virtio devices', `Cannot open tap device from fd ${fd}: ${err.code ?? err.message}`];
      }
      if (!st.isCharacterDevice()) throw ['Error booting VM', 'Error creating virtio devices', `Cannot open tap device from fd ${fd}: not a character device (${fdTarget(fd)})`];
    }
    // The real binary does TUNSETIFF on /dev/net/tun with the name: only an existing TUN/TAP
    // device (or, with CAP_NET_ADMIN, a new one) works; a macvtap or bridge name fails.
    if (n.tap && !isTap(n.tap)) throw ['Error booting VM', 'Error creating virtio devices', `Open tap device failed: ${n.tap} is not an existing TAP device`];
  }
  for (const f of cfg.fs) {
    const sock = await new Promise((resolve, reject) => {
      const s = connect(f.socket);
      s.once('connect', () => resolve(s));
      s.once('error', (err) => reject(err));
    }).catch((err) => {
      throw ['Error booting VM', 'Error creating virtio devices', `Cannot create virtio-fs device: Failed connecting the backend ${f.socket}: ${err.code ?? err.message}`];
    });
    // The backend serves one front end for the VM's whole life, as it would for the real VMM.
    sock.on('error', () => undefined);
    fsConnections.push(sock);
  }
  if (cfg.vsock) {
    if (existsSync(cfg.vsock.socket)) throw ['Error booting VM', 'Error creating virtio devices', `Cannot create virtio-vsock backend: Error binding to UNIX socket ${cfg.vsock.socket}: Address in use`];
    vsockServer = createNetServer((c) => c.destroy());
    await new Promise((resolve, reject) => vsockServer.listen(cfg.vsock.socket, resolve).once('error', reject));
  }
  for (const c of [cfg.serial, cfg.console]) {
    if (c.mode === 'File') {
      try {
        // File::create, as CH opens a serial or console file (v41.0 and v53.0
        // vmm/src/vm.rs): created, or truncated when it exists.
        closeSync(openSync(c.file, 'w'));
      } catch (err) {
        throw ['Error booting VM', `Error opening console/serial file ${c.file}: ${err.message}`];
      }
    }
  }
}

/** x86_64 CMDLINE_MAX_SIZE (arch/src/x86_64/layout.rs, v41 and v53): the command line's capacity, NUL included. */
const CMDLINE_MAX_SIZE = 0x10000;

/**
 * What configure_system refuses once the devices exist: the payload's cmdline goes into a
 * linux-loader Cmdline with insert_str (vmm/src/vm.rs generate_cmdline), which trims it, allows
 * only printable ASCII (' ' to '~') and refuses a line that with its NUL passes the capacity.
 * Throws the error chain the version reports.
 */
function checkCmdline(cfg) {
  const line = (cfg.payload.cmdline ?? '').trim();
  let cause;
  if (/[^ -~]/u.test(line)) cause = 'String contains a non-printable ASCII character.';
  else if (Buffer.byteLength(line) + 1 > CMDLINE_MAX_SIZE) cause = 'Inserting string would make command line too long.';
  if (cause === undefined) return;
  throw VERSION === '41' ? ['Error booting VM', `Cannot modify the kernel command line: ${cause}`] : ['Error booting VM', 'Cannot modify the kernel command line', cause];
}

function fdTarget(fd) {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'not open';
  }
}

// ---- an optional real guest: FAKE_CH_GUEST=qemu boots the described VM with QEMU (TCG) ----
//
// QEMU's microvm machine gets the same kernel, initramfs, command line, disks (virtio-blk, in
// order, read-only as given), NICs (TAP by name, or the very descriptor handed to us as fd=),
// and the serial port into the same file. The guest's power-off ends the VMM as it would end
// CH; vm.pause/resume/shutdown and the power button go to QEMU over QMP.

let guest;
let guestQmp;

function hostKhz() {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
  return m ? Math.round(Number(m[1]) * 1000) : undefined;
}

function startGuest(cfg) {
  if (process.env.FAKE_CH_GUEST !== 'qemu') return;
  const p = cfg.payload;
  // Under TCG the kernel needs the TSC rate or it may hang calibrating: hardware the stand-in lacks.
  const khz = hostKhz();
  guestQmp = join(tmpdir(), `fake-ch-${process.pid}.qmp`);
  const args = ['-M', 'microvm,x-option-roms=off,isa-serial=on', '-accel', 'tcg', '-cpu', 'qemu64', '-m', `${Math.floor(cfg.memory.size / (1 << 20))}M`,
    '-smp', String(cfg.cpus.boot_vcpus), '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-serial', cfg.serial.mode === 'File' ? `file:${cfg.serial.file}` : 'null', '-qmp', `unix:${guestQmp},server=on,wait=off`, '-kernel', p.kernel];
  if (p.initramfs) args.push('-initrd', p.initramfs);
  args.push('-append', `${p.cmdline ?? ''}${khz ? ` tsc_early_khz=${khz}` : ''}`);
  cfg.disks.forEach((d, i) => args.push('-drive', `id=d${i},file=${d.path},format=raw,if=none${d.readonly ? ',readonly=on' : ''}`, '-device', `virtio-blk-device,drive=d${i}`));
  const stdio = ['ignore', 'ignore', 'inherit'];
  cfg.net.forEach((n, i) => {
    const backend = n.fds ? `tap,id=n${i},fd=${n.fds[0]},vhost=off` : `tap,id=n${i},ifname=${n.tap},script=no,downscript=no`;
    for (const fd of n.fds ?? []) {
      while (stdio.length < fd) stdio.push('ignore');
      stdio[fd] = fd;
    }
    args.push('-netdev', backend, '-device', `virtio-net-device,netdev=n${i}${n.mac ? `,mac=${n.mac}` : ''}`);
  });
  guest = spawn('qemu-system-x86_64', args, { stdio });
  log(`guest started under QEMU, pid ${guest.pid}`);
  guest.once('exit', (code, sig) => {
    log(`guest QEMU exited with ${code ?? sig}`);
    guest = undefined;
    rmSync(guestQmp, { force: true });
    if (state === 'Running' || state === 'Paused') {
      state = 'Shutdown';
      record();
      if (!noShutdown) exitSoon(0, 'guest powered off');
    }
  });
  // If this process is SIGKILLed, nothing here runs: a watcher ends the guest with us, and
  // removes the QMP socket the killed QEMU leaves in the temp dir.
  spawn('sh', ['-c', `while kill -0 ${process.pid} 2>/dev/null && ! grep -q "^State:.*Z" /proc/${process.pid}/status; do sleep 0.2; done; kill -9 ${guest.pid} 2>/dev/null; rm -f '${guestQmp}'`], { stdio: 'ignore', detached: true }).unref();
}

/** One QMP command to the guest's QEMU. */
function guestCommand(command) {
  if (!guest) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const sock = connect(guestQmp);
    let buf = '';
    let step = 0;
    sock.setEncoding('utf8');
    sock.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if ('QMP' in msg && step === 0) {
          step = 1;
          sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if ('return' in msg && step === 1) {
          step = 2;
          sock.write(JSON.stringify({ execute: command }) + '\n');
        } else if (('return' in msg || 'error' in msg) && step === 2) {
          sock.destroy();
          if ('error' in msg) reject(new Error(JSON.stringify(msg.error)));
          else resolve();
        }
      }
    });
    sock.on('error', reject);
  });
}

process.on('exit', () => {
  if (!guest) return;
  guest.kill('SIGKILL');
  // The guest's exit event never comes now: its QMP socket is removed here.
  rmSync(guestQmp, { force: true });
});

// ---- the VM, its state machine and the REST API ----

let config;
let state; // undefined (no VM), Created, Running, Paused, Shutdown
let noShutdown = false;
const requests = [];
let counterBase = Date.now();

function record() {
  const dir = process.env.FAKE_CH_RECORD;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  const fds = [];
  for (let fd = 3; fd < 64; fd++) {
    try {
      const st = fstatSync(fd);
      fds.push({ fd, target: fdTarget(fd), characterDevice: st.isCharacterDevice(), rdev: st.rdev });
    } catch {
      // not open
    }
  }
  writeFileSync(join(dir, `${process.pid}.json`), JSON.stringify({ version: VERSION, argv: process.argv.slice(2), config, state, fds, requests }, null, 1));
}

/** CH names devices <kind><n> from one counter in creation order: disks, then nets. */
function counters() {
  const out = {};
  let n = 0;
  const t = Math.floor((Date.now() - counterBase) / 100);
  for (const d of config.disks) out[d.id ?? `_disk${n++}`] = { read_bytes: 4096 * t, read_ops: t, write_bytes: 512 * t, write_ops: t };
  for (const d of config.net) out[d.id ?? `_net${n++}`] = { rx_bytes: 60 * t, rx_frames: t, tx_bytes: 90 * t, tx_frames: t };
  return out;
}

const spec = parseYaml(readFileSync(SPEC, 'utf8'), { version: '1.2' });
const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
ajv.addSchema({ $id: 'ch', components: spec.components });
const schema = (name) => ajv.getSchema(`ch#/components/schemas/${name}`);

class ApiError {
  constructor(status, chain) {
    this.status = status;
    this.chain = chain;
  }
}

const notCreated = (what) => new ApiError(VERSION === '53' ? 404 : 500, [what, 'VM is not created']);
function transition(what, from, to) {
  if (!state) throw notCreated(what);
  if (!from.includes(state)) throw new ApiError(500, [what, `Invalid VM state transition: ${state} to ${to}`]);
  state = to;
}

function exitSoon(code, why) {
  log(why);
  setTimeout(() => process.exit(code), 20);
}

const ENDPOINTS = {
  'vmm.ping': { method: 'GET', run: () => ({ version: `v${VERSION}.0`, build_version: `v${VERSION}.0-stand-in`, pid: process.pid, features: ['kvm'] }) },
  'vmm.shutdown': { method: 'PUT', run: () => exitSoon(0, 'VMM shutdown requested') },
  'vm.info': {
    method: 'GET',
    run: () => {
      if (!state) throw notCreated('Error getting VM info');
      return { config, state, memory_actual_size: config.memory.size, device_tree: {} };
    },
  },
  'vm.counters': {
    method: 'GET',
    run: () => {
      if (!state) throw notCreated('Error getting VM counters');
      return counters();
    },
  },
  'vm.create': {
    method: 'PUT',
    body: 'VmConfig',
    run: (body) => {
      if (state) throw new ApiError(500, ['Error creating the virtual machine', 'VM is already created']);
      const bad = validate(body);
      if (bad) throw new ApiError(500, ['Error creating the virtual machine', 'Error validating the VM config', bad]);
      config = { cpus: { boot_vcpus: 1, max_vcpus: 1 }, memory: { size: 536870912 }, disks: [], net: [], fs: [], serial: { mode: 'Null' }, console: { mode: 'Tty' }, ...body };
      state = 'Created';
    },
  },
  'vm.boot': {
    method: 'PUT',
    run: async () => {
      if (!state) throw notCreated('Error booting the VM');
      if (state !== 'Created' && state !== 'Shutdown') throw new ApiError(500, ['Error booting the VM', 'VM is already booted']);
      try {
        await openDevices(config);
      } catch (chain) {
        throw new ApiError(500, Array.isArray(chain) ? chain : ['Error booting the VM', String(chain)]);
      }
      state = 'Running';
      counterBase = Date.now();
      startGuest(config);
    },
  },
  'vm.pause': {
    method: 'PUT',
    run: async () => {
      transition('Error pausing the VM', ['Running'], 'Paused');
      await guestCommand('stop');
    },
  },
  'vm.resume': {
    method: 'PUT',
    run: async () => {
      transition('Error resuming the VM', ['Paused'], 'Running');
      await guestCommand('cont');
    },
  },
  'vm.shutdown': {
    method: 'PUT',
    run: () => {
      transition('Error shutting down the VM', ['Running', 'Paused'], VERSION === '53' ? 'Created' : 'Shutdown');
      guest?.kill('SIGKILL');
    },
  },
  'vm.reboot': { method: 'PUT', run: () => transition('Error rebooting the VM', ['Running'], 'Running') },
  'vm.power-button': {
    method: 'PUT',
    run: () => {
      if (!state) throw notCreated('Error triggering power button');
      if (state !== 'Running') throw new ApiError(500, ['Error triggering power button', `Invalid VM state transition: ${state} to Shutdown`]);
      if (FAULTS.has('ignore-power-button')) return;
      // A real guest decides for itself whether it powers off on the ACPI button.
      if (guest) return guestCommand('system_powerdown');
      // The guest handles the ACPI event and powers off; the VMM then exits (unless --no-shutdown).
      setTimeout(() => {
        state = 'Shutdown';
        record();
        if (!noShutdown) exitSoon(0, 'guest powered off');
      }, 50);
    },
  },
  'vm.delete': {
    method: 'PUT',
    run: () => {
      config = undefined;
      state = undefined;
    },
  },
  'vm.snapshot': {
    method: 'PUT',
    body: 'VmSnapshotConfig',
    run: (body) => {
      if (!state) throw notCreated('Error taking a snapshot of the VM');
      if (state !== 'Paused') throw new ApiError(500, ['Error taking a snapshot of the VM', 'VM is not paused']);
      if (!/^file:\/\//.test(body.destination_url ?? '')) throw new ApiError(500, ['Error taking a snapshot of the VM', `Invalid destination URL ${body.destination_url}`]);
    },
  },
};

function send(res, status, body) {
  const headers = { connection: 'close' };
  let text = '';
  if (body !== undefined) {
    text = typeof body === 'string' ? body : JSON.stringify(body);
    headers['content-type'] = typeof body === 'string' ? 'text/plain' : 'application/json';
  }
  headers['content-length'] = Buffer.byteLength(text);
  res.writeHead(status, headers);
  res.end(text);
}

function sendError(res, err) {
  // v41 answers 400 for a bad body or method, 404 for an unknown route, 500 for every failure.
  if (VERSION === '41') return send(res, err.status === 400 || err.route ? err.status : 500, err.chain.join(': '));
  return send(res, err.status, err.chain);
}

async function handle(req, res) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks).toString('utf8');
  const m = /^\/api\/v1\/([a-z.-]+)$/.exec(req.url ?? '');
  const verb = m?.[1];
  requests.push({ method: req.method, path: req.url, body: raw || undefined });
  log(`API request ${req.method} ${req.url}`);
  if (verb && FAULTS.get('hang') === verb) return; // never answered
  // micro_http, the server in both VMMs, reads bodies by Content-Length only.
  if (req.headers['transfer-encoding']) return sendError(res, new ApiError(400, ['Transfer-Encoding is not supported']));
  const ep = verb ? ENDPOINTS[verb] : undefined;
  try {
    if (!ep) {
      const err = new ApiError(404, [`Unknown endpoint ${req.url}`]);
      err.route = true;
      throw err;
    }
    if (req.method !== ep.method) throw new ApiError(400, [`Method ${req.method} not allowed on ${verb}`]);
    let body;
    if (ep.body) {
      try {
        body = JSON.parse(raw);
      } catch (e) {
        throw new ApiError(400, ['Error parsing the request body', e.message]);
      }
      const check = schema(ep.body);
      if (!check(body)) throw new ApiError(400, ['Error parsing the request body', ajv.errorsText(check.errors, { dataVar: ep.body })]);
    }
    const out = await ep.run(body);
    record();
    if (out === undefined) send(res, 204);
    else send(res, 200, out);
  } catch (err) {
    record();
    if (err instanceof ApiError) sendError(res, err);
    else sendError(res, new ApiError(500, [String(err?.message ?? err)]));
  }
}

// ---- main ----

const { got, verbose, hasPayload } = parseArgv(process.argv.slice(2));
if (got['log-file']) {
  // `--log-file` is opened with File::create (cloud-hypervisor/src/main.rs, v41.0 and v53.0):
  // created, or truncated when it exists, and written from offset 0.
  try {
    logFile = openSync(got['log-file'], 'w');
  } catch (err) {
    die('Error creating log file', err.message);
  }
}
noShutdown = !!got['no-shutdown'];
process.on('SIGTERM', () => {
  if (FAULTS.has('ignore-sigterm')) return log('SIGTERM ignored (fault switch)');
  exitSoon(0, 'Received signal SIGTERM, exiting');
});
process.on('SIGINT', () => exitSoon(0, 'Received signal SIGINT, exiting'));
// SIGHUP keeps its default action (death), as in the real binary.
log(`Cloud Hypervisor stand-in v${VERSION}.0 starting (verbosity ${verbose})`);

let apiPath;
if (got['api-socket']) {
  const o = options('api-socket', got['api-socket'], ['path', 'fd'], 'path');
  if (o.fd !== undefined) die('Error creating API server', 'The stand-in takes the API socket by path only');
  apiPath = o.path;
}

if (hasPayload) {
  config = vmConfigFromArgs(got);
  const bad = validate(config);
  if (bad) die('Error validating the VM config', bad);
  const check = schema('VmConfig');
  if (!check(config)) die('Error validating the VM config', ajv.errorsText(check.errors));
  state = 'Created';
}

if (apiPath && !FAULTS.has('no-api')) {
  if (existsSync(apiPath)) {
    // v41 binds without looking; v53 takes a lock beside the socket and removes a stale one.
    if (VERSION === '41') die('Error creating API server', `Error creating API server socket: Address in use (os error 98): ${apiPath}`);
    rmSync(apiPath, { force: true });
  }
  const server = createHttpServer({ keepAlive: false }, (req, res) => void handle(req, res));
  await new Promise((resolve) => server.listen(apiPath, resolve).once('error', (err) => die('Error creating API server', `Error creating API server socket: ${err.message}`)));
  log(`API server listening on ${apiPath}`);
}

if (hasPayload) {
  try {
    await openDevices(config);
  } catch (chain) {
    die(...(Array.isArray(chain) ? chain : ['Error booting VM', String(chain)]));
  }
  state = 'Running';
  startGuest(config);
  log('VM booted');
}
record();


if (FAULTS.has('exit-after')) setTimeout(() => {
  log('crashing (fault switch)');
  process.exit(1);
}, Number(FAULTS.get('exit-after')));
if (FAULTS.has('poweroff-after')) setTimeout(() => {
  state = 'Shutdown';
  record();
  if (!noShutdown) exitSoon(0, 'guest powered off');
}, Number(FAULTS.get('poweroff-after')));

// Without an API socket and without a VM the real binary has nothing to do and still idles.
setInterval(() => undefined, 1 << 30);
