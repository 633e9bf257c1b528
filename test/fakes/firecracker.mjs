#!/usr/bin/env node
// A stand-in for the `firecracker` binary (v1.16.1) on machines without KVM. It behaves as the
// daemon can observe the real one: the same flags and exit codes, the config file checked
// against the swagger definitions and the rules Firecracker applies in code
// (firecracker-spec.mjs), the REST API on the unix socket with its state machine and
// `fault_message` errors, MMDS V1 answers from the --metadata file, metrics lines, the log
// lines the daemon greps for, and the signal behaviour. It runs no guest.
//
// Switches for tests (environment):
//   FAKE_FC_CRASH_AFTER_MS=n      exit 150 (as on SIGSEGV) n ms after start
//   FAKE_FC_NO_SOCKET=1           never bind the API socket
//   FAKE_FC_HANG="PUT /actions"   never answer requests whose "METHOD /path" starts with this
//   FAKE_FC_IGNORE_CTRL_ALT_DEL=1 the guest ignores Ctrl+Alt+Del (the VMM keeps running)
//   FAKE_FC_IGNORE_SIGTERM=1      survive SIGTERM (a wedged VMM that only SIGKILL stops)
//   FAKE_FC_GUEST_BOOT_MS=n       with --boot-timer, log the Guest-boot-time line after n ms
//   FAKE_FC_MMDS_SOCK=path        also answer MMDS (as the guest sees it) over HTTP on this socket
//   FAKE_FC_RECORD=file           append {argv, cwd} as one JSON line, for tests
// Set by the jailer stand-in (the stand-in cannot pivot_root):
//   FAKE_FC_CHROOT=dir            the jail root (also the working directory): absolute paths are
//                                 resolved from the working directory, as inside a chroot, so
//                                 nothing above the jail needs to be reachable by the VM's uid
import { setInterval, setTimeout } from 'node:timers';
import { Buffer } from 'node:buffer';
import { appendFileSync, constants, existsSync, readFileSync, writeSync, openSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { FC_VERSION, buildError, configRuleError, configShapeError, loadDefinitions, CONFIG_KEYS } from './firecracker-spec.mjs';

const env = process.env;
const argv = process.argv.slice(2);
/** A path as the process sees it from inside its jail, mapped to the host. */
const host = (p) => (env.FAKE_FC_CHROOT && p.startsWith('/') ? `.${p}` : p);
if (env.FAKE_FC_RECORD) appendFileSync(env.FAKE_FC_RECORD, JSON.stringify({ argv, cwd: process.cwd(), pid: process.pid }) + '\n');

// ---- exit codes (src/firecracker/src/main.rs FcExitCode) ----
const EXIT = { ok: 0, generic: 1, sigsegv: 150, badConfiguration: 152, argParsing: 153, sighup: 156 };

// ---- command line (src/firecracker/src/main.rs, utils arg_parser) ----
const VALUE_FLAGS = new Set(['api-sock', 'id', 'seccomp-filter', 'start-time-us', 'start-time-cpu-us', 'parent-cpu-time-us', 'config-file', 'mmds-size-limit', 'metadata', 'level', 'module', 'log-path', 'metrics-path', 'http-api-max-payload-size', 'describe-snapshot']);
const BOOL_FLAGS = new Set(['no-seccomp', 'no-api', 'show-level', 'show-log-origin', 'boot-timer', 'version', 'snapshot-version', 'help', 'enable-pci']);

function usageError(msg) {
  process.stderr.write(`Arguments parsing error: ${msg}\n\nFor more information try --help.\n`);
  process.exit(EXIT.argParsing);
}

const args = {};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (!a.startsWith('--')) usageError(`Found argument '${a}' which wasn't expected, or isn't valid in this context.`);
  let [name, value] = a.slice(2).split(/=(.*)/s, 2);
  if (VALUE_FLAGS.has(name)) {
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined || value.startsWith('--')) usageError(`The argument '--${name}' requires a value, but none was supplied`);
    }
    if (name in args) usageError(`The argument '--${name}' was provided more than once.`);
    args[name] = value;
  } else if (BOOL_FLAGS.has(name)) {
    if (value !== undefined) usageError(`The argument '--${name}' does not take a value`);
    args[name] = true;
  } else {
    usageError(`Found argument '--${name}' which wasn't expected, or isn't valid in this context.`);
  }
}
if (args['no-api'] && !args['config-file']) usageError("Argument 'no-api' requires the following arguments: 'config-file'");
if (args['no-seccomp'] && args['seccomp-filter']) usageError("Argument 'no-seccomp' cannot be used together with argument 'seccomp-filter'");
if (args.help) {
  process.stdout.write('firecracker v' + FC_VERSION + '\n\nUsage: firecracker [--api-sock <path>] [--config-file <path>] [--no-api] [--id <id>] ...\n');
  process.exit(EXIT.ok);
}
if (args.version) {
  process.stdout.write(`Firecracker v${FC_VERSION}\n\n`);
  process.exit(EXIT.ok);
}

const LEVELS = ['off', 'trace', 'debug', 'info', 'warn', 'warning', 'error'];
if (args.level !== undefined && !LEVELS.includes(args.level.toLowerCase())) {
  process.stderr.write(`Invalid value for logger level: ${args.level}.Possible values: [Error, Warning, Info, Debug]\n`);
  process.exit(EXIT.badConfiguration);
}
const id = args.id ?? 'anonymous-instance';
if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) panic(`Invalid instance ID: InvalidChar('${[...id].find((c) => !/[A-Za-z0-9-]/.test(c)) ?? ''}', 0)`);

/** Rust's panic with panic=abort: message on stderr, then SIGABRT. */
function panic(msg) {
  process.stderr.write(`thread 'main' panicked at src/firecracker/src/main.rs:\n${msg}\n`);
  process.kill(process.pid, 'SIGABRT');
  // SIGABRT's default action ends the process before this returns.
  setTimeout(() => process.exit(134), 1000);
  throw new Error('unreachable');
}

// ---- logging (src/vmm/src/logger) ----
let logTarget; // fd, or undefined for stdout
let showLevel = !!args['show-level'];
let showOrigin = !!args['show-log-origin'];
// Lines above the logger's level are dropped (logger/logging.rs: the level is a log::LevelFilter,
// Info unless --level or the logger section sets one; a logger section without one resets it).
const LEVEL_RANK = { off: 0, error: 1, warn: 2, warning: 2, info: 3, debug: 4, trace: 5 };
let maxLevel = LEVEL_RANK[(args.level ?? 'info').toLowerCase()];
function log(level, msg) {
  if ((LEVEL_RANK[level.toLowerCase()] ?? 0) > maxLevel) return;
  const ts = new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000000');
  let tag = `${id}:main`;
  if (showLevel) tag += `:${level}`;
  if (showOrigin) tag += ':src/firecracker/src/main.rs:1';
  const line = `${ts} [${tag}] ${msg}\n`;
  writeSync(logTarget ?? 1, line);
}
/**
 * How Firecracker opens its log and metrics paths: read-write, created when missing,
 * non-blocking (a FIFO works), with neither O_APPEND nor O_TRUNC (v1.11.0
 * src/vmm/src/vmm_config/mod.rs open_file_nonblock; v1.16.1 src/vmm/src/utils/mod.rs). Writes go on
 * from offset 0: a restarted Firecracker writes over an old file and leaves its tail behind.
 */
function openLikeFirecracker(path) {
  return openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NONBLOCK);
}
if (args['log-path']) logTarget = openLikeFirecracker(host(args['log-path']));

function fatal(msg) {
  const mode = args['no-api'] ? 'RunWithoutApiError' : 'RunWithApiError';
  log('ERROR', `${mode} error: Failed to build MicroVM from Json: ${msg}`);
  process.stderr.write(`Error: ${mode}(BuildMicroVMFromJson(${JSON.stringify(msg)}))\n`);
  log('ERROR', 'Firecracker exiting with error. exit_code=1');
  process.exit(EXIT.generic);
}

// ---- metrics: JSON lines of deltas since the previous flush ----
let metricsPath = args['metrics-path'] && host(args['metrics-path']);
let metricsFd = metricsPath ? openLikeFirecracker(metricsPath) : undefined;
const counters = { get: {}, put: {}, patch: {}, mmds: { rx_accepted: 0, rx_count: 0 } };
function bump(group, key) {
  counters[group][key] = (counters[group][key] ?? 0) + 1;
}
// Device counters as Firecracker keeps them (BlockDeviceMetrics, NetDeviceMetrics): per device
// as block_<drive_id> / net_<iface_id>, summed over the devices as block / net. The stand-in
// boots nothing, so each device moves with time (one request per 100 ms since start) like
// the Cloud Hypervisor stand-in's vm.counters; what a flush writes is the change since the
// last flush.
const deviceBase = Date.now();
let flushedDevices = {};
function deviceTotals() {
  const t = Math.floor((Date.now() - deviceBase) / 100);
  const out = {};
  const add = (group, counters) => {
    out[group] ??= {};
    for (const [k, v] of Object.entries(counters)) out[group][k] = (out[group][k] ?? 0) + v;
  };
  for (const d of vmConfig.drives ?? []) {
    const c = { read_bytes: 4096 * t, write_bytes: 512 * t, read_count: t, write_count: t, flush_count: 0 };
    add(`block_${d.drive_id}`, c);
    add('block', c);
  }
  for (const i of vmConfig['network-interfaces'] ?? []) {
    const c = { rx_bytes_count: 60 * t, rx_packets_count: t, tx_bytes_count: 90 * t, tx_packets_count: t };
    add(`net_${i.iface_id}`, c);
    add('net', c);
  }
  return out;
}
function deviceDeltas() {
  const now = deviceTotals();
  const out = {};
  for (const [group, counters] of Object.entries(now)) {
    out[group] = {};
    for (const [k, v] of Object.entries(counters)) out[group][k] = v - (flushedDevices[group]?.[k] ?? 0);
  }
  flushedDevices = now;
  return out;
}

function flushMetrics() {
  if (metricsFd === undefined) return false;
  const line = {
    utc_timestamp_ms: Date.now(),
    ...deviceDeltas(),
    api_server: { process_startup_time_us: 1000, process_startup_time_cpu_us: 800 },
    get_api_requests: counters.get,
    put_api_requests: counters.put,
    patch_api_requests: counters.patch,
    mmds: counters.mmds,
    vmm: { panic_count: 0 },
    signals: { sigbus: 0, sigsegv: 0 },
  };
  writeSync(metricsFd, JSON.stringify(line) + '\n');
  counters.get = {};
  counters.put = {};
  counters.patch = {};
  counters.mmds = { rx_accepted: 0, rx_count: 0 };
  return true;
}

// ---- signals: SIGHUP flushes and exits 156; SIGTERM/SIGINT keep their default (no flush) ----
process.on('SIGHUP', () => {
  log('INFO', 'Shutting down VM after intercepting signal 1, code 0');
  flushMetrics();
  process.exit(EXIT.sighup);
});
if (env.FAKE_FC_IGNORE_SIGTERM) process.on('SIGTERM', () => log('WARN', 'ignoring SIGTERM (fault switch)'));

if (env.FAKE_FC_CRASH_AFTER_MS) {
  setTimeout(() => {
    process.stderr.write('Shutting down VM after intercepting signal 11, code 0\n');
    flushMetrics();
    process.exit(EXIT.sigsegv);
  }, Number(env.FAKE_FC_CRASH_AFTER_MS));
}

// ---- VM state ----
let state = 'Not started';
/** A Ctrl+Alt+Del sent while the VM was paused, seen by the guest once it runs again. */
let ctrlAltDelPending = false;

/** The guest reboots (reboot=k) and Firecracker exits 0. */
function guestReboots() {
  setTimeout(() => {
    log('INFO', 'Vmm is stopping.');
    process.exit(EXIT.ok);
  }, 100);
}
let vmConfig = { 'boot-source': undefined, drives: [], 'network-interfaces': [] };
let mmdsData = {};
const mmdsLimit = Number(args['mmds-size-limit'] ?? args['http-api-max-payload-size'] ?? 51200);
const payloadLimit = Number(args['http-api-max-payload-size'] ?? 51200);
let vsockServer;

function applyLoggerAndMetrics(cfg) {
  if (cfg.logger?.log_path) {
    logTarget = openLikeFirecracker(host(cfg.logger.log_path));
    showLevel = !!cfg.logger.show_level;
    showOrigin = !!cfg.logger.show_log_origin;
    maxLevel = LEVEL_RANK[String(cfg.logger.level ?? 'Info').toLowerCase()] ?? LEVEL_RANK.info;
  }
  if (cfg.metrics?.metrics_path) {
    metricsPath = host(cfg.metrics.metrics_path);
    metricsFd = openLikeFirecracker(metricsPath);
  }
}

/** Checks and "boots" a complete configuration; returns an error message or undefined. */
function boot(cfg, fromFile) {
  const shape = configShapeError(cfg);
  if (shape) return fromFile ? `Invalid JSON: ${shape}` : shape;
  const rule = configRuleError(cfg, { resolve: host });
  // The logger and metrics sections come first, so later errors already go to their files.
  if (!/^(logger|metrics)\./.test(rule ?? '')) applyLoggerAndMetrics(cfg);
  if (rule) return rule;
  const built = buildError(cfg, host);
  if (built) return built;
  if (cfg.vsock) {
    // Host-initiated connections: CONNECT <port>\n -> OK <host port>\n (docs/vsock.md).
    vsockServer = createNetServer((c) => {
      c.once('data', (d) => {
        const m = /^CONNECT (\d+)\n/.exec(d.toString());
        if (m) c.write(`OK ${1073741824 + Number(m[1])}\n`);
        else c.destroy();
      });
    }).listen(host(cfg.vsock.uds_path));
  }
  state = 'Running';
  vmConfig = cfg;
  return undefined;
}

function afterBoot() {
  flushMetrics();
  if (args['boot-timer'] && env.FAKE_FC_GUEST_BOOT_MS) {
    const ms = Number(env.FAKE_FC_GUEST_BOOT_MS);
    setTimeout(() => log('INFO', `Guest-boot-time = ${String(ms * 1000).padStart(6)} us ${ms} ms, ${String(ms * 700).padStart(6)} CPU us ${Math.floor(ms * 0.7)} CPU ms`), ms);
  }
}

// ---- MMDS V1 (docs/mmds/mmds-user-guide.md): GET of a path, IMDS text or JSON ----
function mmdsAnswer(method, url, accept) {
  counters.mmds.rx_count++;
  if (method !== 'GET') return { status: 405, type: 'text/plain', body: 'Not allowed HTTP method.' };
  const path = decodeURIComponent(url.split('?')[0]);
  let node = mmdsData;
  for (const part of path.split('/').filter(Boolean)) {
    if (node === null || typeof node !== 'object' || Array.isArray(node) || !Object.hasOwn(node, part)) {
      return { status: 404, type: 'text/plain', body: `Resource not found: ${path}.` };
    }
    node = node[part];
  }
  counters.mmds.rx_accepted++;
  const imdsCompat = vmConfig['mmds-config']?.imds_compat === true;
  if (!imdsCompat && (accept ?? '').includes('application/json')) return { status: 200, type: 'application/json', body: JSON.stringify(node) };
  if (typeof node === 'string') return { status: 200, type: 'text/plain', body: node };
  if (node !== null && typeof node === 'object' && !Array.isArray(node)) {
    const keys = Object.entries(node).map(([k, v]) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? `${k}/` : k));
    return { status: 200, type: 'text/plain', body: keys.join('\n') };
  }
  return { status: 501, type: 'text/plain', body: 'Cannot retrieve value. The value has an unsupported type.' };
}

// ---- REST API ----
const defs = () => loadDefinitions();
const fault = (status, message) => ({ status, body: { fault_message: message } });
const NOT_AFTER = 'The requested operation is not supported after starting the microVM.';
const NOT_BEFORE = 'The requested operation is not supported before starting the microVM.';
const PRE_BOOT = { '/boot-source': 'boot-source', '/machine-config': 'machine-config', '/vsock': 'vsock', '/logger': 'logger', '/metrics': 'metrics', '/mmds/config': 'mmds-config', '/entropy': 'entropy', '/balloon': 'balloon' };

function handle(method, path, body) {
  const started = state !== 'Not started';
  const key = path.split('/')[1] || 'instance_info';
  bump(method === 'GET' ? 'get' : method === 'PUT' ? 'put' : 'patch', `${key.replaceAll('-', '_')}_count`);
  if (method === 'GET' && path === '/') return { status: 200, body: { id, state, vmm_version: FC_VERSION, app_name: 'Firecracker' } };
  if (method === 'GET' && path === '/version') return { status: 200, body: { firecracker_version: FC_VERSION } };
  if (method === 'GET' && path === '/vm/config') return { status: 200, body: vmConfig };
  if (method === 'GET' && path === '/machine-config') return { status: 200, body: vmConfig['machine-config'] ?? { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: 'None' } };
  if (method === 'PUT' && path === '/actions') {
    const err = defs().check('InstanceActionInfo', body);
    if (err) return fault(400, `An error occurred when deserializing the json body of a request: ${err}.`);
    switch (body.action_type) {
      case 'InstanceStart': {
        if (started) return fault(400, NOT_AFTER);
        const e = boot({ ...vmConfig, 'mmds-config': vmConfig['mmds-config'] }, false);
        if (e) return fault(400, `Start microvm error: ${e}`);
        afterBoot();
        return { status: 204 };
      }
      case 'FlushMetrics':
        if (!flushMetrics()) return fault(400, 'The metrics system is not initialized.');
        return { status: 204 };
      case 'SendCtrlAltDel':
        if (!started) return fault(400, NOT_BEFORE);
        // The i8042 key press is only seen by a guest whose vCPUs run: on a paused VM it waits
        // until the VM is resumed.
        if (!env.FAKE_FC_IGNORE_CTRL_ALT_DEL) {
          if (state === 'Paused') ctrlAltDelPending = true;
          else guestReboots();
        }
        return { status: 204 };
    }
  }
  if (method === 'PATCH' && path === '/vm') {
    const err = defs().check('Vm', body);
    if (err) return fault(400, `An error occurred when deserializing the json body of a request: ${err}.`);
    if (!started) return fault(400, NOT_BEFORE);
    state = body.state === 'Paused' ? 'Paused' : 'Running';
    log('INFO', body.state === 'Paused' ? 'The microVM was paused.' : 'The microVM was resumed.');
    if (state === 'Running' && ctrlAltDelPending) guestReboots();
    return { status: 204 };
  }
  if (path === '/mmds') {
    if (method === 'GET') return { status: 200, body: mmdsData };
    if (body === undefined || body === null || typeof body !== 'object') return fault(400, 'An error occurred when deserializing the json body of a request: expected a JSON object.');
    const next = method === 'PUT' ? body : mergePatch(mmdsData, body);
    if (Buffer.byteLength(JSON.stringify(next)) > mmdsLimit) return fault(400, 'The MMDS patch request doesn\'t fit.');
    mmdsData = next;
    return { status: 204 };
  }
  const dev = /^\/(drives|network-interfaces)\/([^/]+)$/.exec(path);
  if (dev && (method === 'PUT' || method === 'PATCH')) {
    const [, kind, devId] = dev;
    const idKey = kind === 'drives' ? 'drive_id' : 'iface_id';
    const def = method === 'PUT' ? (kind === 'drives' ? 'Drive' : 'NetworkInterface') : kind === 'drives' ? 'PartialDrive' : 'PartialNetworkInterface';
    const err = defs().check(def, body);
    if (err) return fault(400, `An error occurred when deserializing the json body of a request: ${err}.`);
    if (body[idKey] !== decodeURIComponent(devId)) return fault(400, 'The id from the path does not match the id from the body!');
    const list = vmConfig[kind];
    const at = list.findIndex((d) => d[idKey] === body[idKey]);
    if (method === 'PUT') {
      if (started) return fault(400, NOT_AFTER);
      if (at >= 0) list[at] = body;
      else list.push(body);
      return { status: 204 };
    }
    if (!started) return fault(400, NOT_BEFORE);
    if (at < 0) return fault(400, `Invalid ${kind === 'drives' ? 'drive' : 'interface'} ID - not found.`);
    list[at] = { ...list[at], ...body };
    return { status: 204 };
  }
  const section = PRE_BOOT[path];
  if (section && method === 'PUT') {
    const def = CONFIG_KEYS[section];
    const err = defs().check(def, body);
    if (err) return fault(400, `An error occurred when deserializing the json body of a request: ${err}.`);
    if (started) return fault(400, NOT_AFTER);
    vmConfig[section] = body;
    return { status: 204 };
  }
  return fault(400, `Invalid request method and/or path: ${method} ${path}.`);
}

function mergePatch(target, patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function serveApi(socketPath) {
  const server = createHttpServer((req, res) => {
    const line = `${req.method} ${req.url}`;
    if (env.FAKE_FC_HANG && line.startsWith(env.FAKE_FC_HANG)) return; // fault switch: never answer
    const send = ({ status, body }) => {
      const data = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
      res.end(data);
    };
    // micro_http reads bodies by Content-Length only (no chunked transfer encoding).
    if (/chunked/i.test(req.headers['transfer-encoding'] ?? '')) return send(fault(400, 'Invalid HTTP request: Unsupported transfer encoding.'));
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      chunks.push(c);
    });
    req.on('end', () => {
      if (size > payloadLimit) return send(fault(400, `Request payload with size ${size} is larger than the limit of ${payloadLimit} allowed by server.`));
      let body;
      if (size > 0) {
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (e) {
          return send(fault(400, `An error occurred when deserializing the json body of a request: ${e.message}.`));
        }
      } else if (req.method !== 'GET') {
        return send(fault(400, 'The request body is empty.'));
      }
      const url = req.url.split('?')[0];
      log('DEBUG', `The API server received a ${req.method} request on "${url}".`);
      send(handle(req.method, url, body));
    });
  });
  server.on('error', (e) => {
    log('ERROR', `RunWithApiError error: Failed to open the API socket at: ${socketPath}. Check that it is not already used. (${e.message})`);
    process.stderr.write(`Error: RunWithApi(FailedToBindSocket(${JSON.stringify(socketPath)}))\n`);
    process.exit(EXIT.generic);
  });
  server.listen(socketPath);
}

// ---- start-up, in Firecracker's order ----
log('INFO', `Running Firecracker v${FC_VERSION}`);
if (!args['no-api']) {
  const socketPath = host(args['api-sock'] ?? '/run/firecracker.socket');
  if (existsSync(socketPath)) {
    log('ERROR', `RunWithApiError error: Failed to open the API socket at: ${socketPath}. Check that it is not already used.`);
    process.stderr.write(`Error: RunWithApi(FailedToBindSocket(${JSON.stringify(socketPath)}))\n`);
    log('ERROR', 'Firecracker exiting with error. exit_code=1');
    process.exit(EXIT.generic);
  }
  if (!env.FAKE_FC_NO_SOCKET) serveApi(socketPath);
}
if (args.metadata !== undefined) {
  let text;
  try {
    text = readFileSync(host(args.metadata), 'utf8');
  } catch (e) {
    panic(`Unable to read metadata file: ${e.message}`);
  }
  try {
    mmdsData = JSON.parse(text);
  } catch {
    panic('MMDS error: metadata provided not valid json');
  }
  if (Buffer.byteLength(JSON.stringify(mmdsData)) > mmdsLimit) fatal('MMDS error: The MMDS data store size limit was exceeded.');
}
if (args['config-file'] !== undefined) {
  let text;
  try {
    text = readFileSync(host(args['config-file']), 'utf8');
  } catch (e) {
    panic(`Unable to read config file: ${e.message}`);
  }
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (e) {
    fatal(`Invalid JSON: ${e.message}`);
  }
  const err = boot(cfg, true);
  if (err) fatal(err);
  log('INFO', 'Successfully started microvm that was configured from one single json');
  afterBoot();
}
// The guest reaches MMDS only through the interfaces named in mmds-config.
if (env.FAKE_FC_MMDS_SOCK && vmConfig['mmds-config']) {
  createHttpServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const a = mmdsAnswer(req.method, req.url, req.headers.accept);
      res.writeHead(a.status, { 'Content-Type': a.type, 'Content-Length': Buffer.byteLength(a.body) });
      res.end(a.body);
    });
  }).listen(env.FAKE_FC_MMDS_SOCK);
}
// Firecracker flushes metrics every 60 s; the stand-in keeps that period.
setInterval(flushMetrics, 60_000);
if (args['no-api'] && args['config-file'] === undefined) process.exit(EXIT.generic);
void vsockServer;
