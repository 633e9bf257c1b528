import { readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseBool, parseSetting, type SettingDef, type SettingValue } from '../core/settings.js';
import { PROVIDERS, type ProviderModule } from '../adapters/vmm/registry.js';
import { ErrorCode, MatchlockError, yamlProblem } from '../core/errors.js';
import { parseUidRange } from '../adapters/vmm/confine/uids.js';

/**
 * matchlockd's settings. Every key is a flag (`--state-dir`), a key of the YAML config file
 * (`state-dir:`) and an environment variable (`MATCHLOCK_STATE_DIR`); flags win over the file,
 * the file over the environment. flintlockd's keys are accepted with their meaning, so an
 * existing /etc/opt/flintlockd/config.yaml works as it is, and so are flintlockd's variables
 * (`FLINTLOCKD_PARENT-IFACE`), below the MATCHLOCK_ one of the same key.
 */
export interface DaemonConfig {
  grpcEndpoint: string;
  stateDir: string;
  resyncPeriodMs: number;
  enableHttp: boolean;
  httpEndpoint: string;
  basicAuthToken: string;
  insecure: boolean;
  tlsCert: string;
  tlsKey: string;
  tlsClientValidate: boolean;
  tlsClientCa: string;
  /** A provider's name, or empty for the first usable one in the registry's order. */
  defaultProvider: string;
  /** The providers' own settings (firecracker-bin, qemu-accel, …), by key. */
  providerSettings: Record<string, SettingValue>;
  parentIface: string;
  bridgeName: string;
  debugEndpoint: string;
  metricsEndpoint: string;
  verbosity: number;
  logFormat: 'text' | 'json';
  maximumRetry: number;
  retryBackoffMs: number;
  registryAuthFile: string;
  imageGcGraceMs: number;
  thinpool: string;
  thinpoolDevDir: string;
  dmsetupBin: string;
  insecureRegistries: string;
  plainHttpRegistries: string;
  registryMirrors: string;
  reconcileWorkers: number;
  deleteVmTimeoutMs: number;
  healthyAfterMs: number;
  shutdownGraceMs: number;
  grpcSocketGroup: string;
  vmmUser: string;
  vmmUidRange: string;
  vmmCgroups: boolean;
  vmmCgroupParent: string;
  qemuSandbox: boolean;
  consoleLogMaxBytes: number;
}

interface KeyDef extends SettingDef {
  /** The DaemonConfig property; provider settings have none and go to providerSettings. */
  prop?: keyof DaemonConfig;
}

export { DEFAULT_CONFIG_PATH } from './config-path.js';

/**
 * One table drives the flags, the file keys, the environment names and the README reference:
 * the daemon's own settings with each provider's settings after default-provider.
 */
export function configKeys(providers: ReadonlyMap<string, ProviderModule> = PROVIDERS): KeyDef[] {
  const names = [...providers.keys()];
  const own = DAEMON_KEYS.map((k) => (k.key === 'default-provider' ? { ...k, values: [...names, ''], help: `provider for VMs that name none; empty: the first found of ${names.join(', ')}` } : k));
  const at = own.findIndex((k) => k.key === 'default-provider') + 1;
  return [...own.slice(0, at), ...[...providers.values()].flatMap((p) => p.settings), ...own.slice(at)];
}

const DAEMON_KEYS: readonly KeyDef[] = [
  { key: 'grpc-endpoint', prop: 'grpcEndpoint', kind: 'string', endpoint: { unix: true }, default: '127.0.0.1:9090', help: 'address of the gRPC API: host:port, :port (every interface) or unix:/absolute/path' },
  { key: 'state-dir', prop: 'stateDir', kind: 'string', default: '/var/lib/matchlock', help: 'where the store, images and per-VM files live' },
  { key: 'resync-period', prop: 'resyncPeriodMs', kind: 'duration', default: '10m', help: 'how often every VM is reconciled even without a change' },
  { key: 'enable-http', prop: 'enableHttp', kind: 'bool', default: 'false', help: 'serve the HTTP/JSON API too' },
  { key: 'http-endpoint', prop: 'httpEndpoint', kind: 'string', endpoint: {}, default: '127.0.0.1:8090', help: 'address of the HTTP/JSON API: host:port or :port (every interface)' },
  { key: 'basic-auth-token', prop: 'basicAuthToken', kind: 'string', default: '', help: 'token clients must send as "authorization: Basic <base64(token)>"' },
  { key: 'insecure', prop: 'insecure', kind: 'bool', default: 'false', help: 'allow plaintext on a non-loopback address' },
  { key: 'tls-cert', prop: 'tlsCert', kind: 'string', default: '', help: 'server certificate (PEM); with tls-key turns on TLS 1.3' },
  { key: 'tls-key', prop: 'tlsKey', kind: 'string', default: '', help: 'server private key (PEM)' },
  { key: 'tls-client-validate', prop: 'tlsClientValidate', kind: 'bool', default: 'false', help: 'require client certificates signed by tls-client-ca (mTLS)' },
  { key: 'tls-client-ca', prop: 'tlsClientCa', kind: 'string', default: '', help: 'CA bundle (PEM) for client certificates' },
  { key: 'default-provider', prop: 'defaultProvider', kind: 'enum', default: '', help: '' },
  { key: 'parent-iface', prop: 'parentIface', kind: 'string', default: '', help: 'parent interface for MACVTAP interfaces' },
  { key: 'bridge-name', prop: 'bridgeName', kind: 'string', default: '', help: 'bridge for TAP interfaces without overrides.bridge_name' },
  { key: 'debug-endpoint', prop: 'debugEndpoint', kind: 'string', endpoint: { optional: true }, default: '', help: 'host:port serving a V8 heap snapshot (GET /debug/pprof/heap) and CPU profiles (GET /debug/profile?seconds=N); empty: off' },
  { key: 'metrics-endpoint', prop: 'metricsEndpoint', kind: 'string', endpoint: { optional: true }, default: '', help: 'host:port serving Prometheus metrics (GET /metrics); empty: off' },
  { key: 'verbosity', prop: 'verbosity', kind: 'int', default: '0', help: 'log detail: 0 info, 1 and more debug' },
  { key: 'log-format', prop: 'logFormat', kind: 'enum', values: ['text', 'json'], default: 'text', help: 'text or json' },
  { key: 'maximum-retry', prop: 'maximumRetry', kind: 'int', default: '10', help: 'failed reconcile attempts before a VM is FAILED' },
  { key: 'registry-auth-file', prop: 'registryAuthFile', kind: 'string', default: '', help: 'Docker-style config.json with registry credentials; empty: $DOCKER_CONFIG/config.json or ~/.docker/config.json' },
  { key: 'insecure-registries', prop: 'insecureRegistries', kind: 'string', list: true, default: '', help: 'comma-separated (or a YAML list of) registries (host[:port] or a CIDR subnet) reached over HTTPS without certificate checks' },
  { key: 'plain-http-registries', prop: 'plainHttpRegistries', kind: 'string', list: true, default: '', help: 'comma-separated (or a YAML list of) registries (host[:port] or a CIDR subnet) reached over plain HTTP (loopback ones always are)' },
  { key: 'registry-mirrors', prop: 'registryMirrors', kind: 'string', list: true, default: '', help: 'comma-separated (or a YAML list of) registry=mirror pairs (mirror: host[:port], optionally with http:// or https://; a mirror URL alone is a docker.io mirror, as in Docker); a mirror is tried before its registry, which is asked when the mirror cannot serve' },
  { key: 'image-gc-grace', prop: 'imageGcGraceMs', kind: 'duration', default: '24h', help: 'images no VM uses are removed once this old (checked every resync); 0s disables' },
  { key: 'thinpool', prop: 'thinpool', kind: 'string', default: '', help: "device-mapper thin pool for volumes (e.g. flintlock's flintlock-thinpool); empty: ext4 image files" },
  { key: 'thinpool-dev-dir', prop: 'thinpoolDevDir', kind: 'string', default: '/dev/mapper', help: 'where device-mapper devices appear' },
  { key: 'dmsetup-bin', prop: 'dmsetupBin', kind: 'string', default: 'dmsetup', help: 'dmsetup binary used with thinpool' },
  { key: 'retry-backoff', prop: 'retryBackoffMs', kind: 'duration', default: '1s', help: 'first retry delay after a failed reconcile; doubles each attempt (with jitter) up to 5m' },
  { key: 'reconcile-workers', prop: 'reconcileWorkers', kind: 'int', min: 1, max: 64, default: '8', help: 'VMs reconciled in parallel; a pass mostly waits on the programs it starts (ip, the VMM, its pid file), see The runtime' },
  { key: 'delete-vm-timeout', prop: 'deleteVmTimeoutMs', kind: 'duration', default: '10s', help: 'how long a guest gets to power down before it is stopped' },
  { key: 'healthy-after', prop: 'healthyAfterMs', kind: 'duration', default: '30s', help: "a VMM up this long counts as healthy and its retry count starts over, even when the console never shows the boot (kernel cmdline quiet)" },
  { key: 'shutdown-grace', prop: 'shutdownGraceMs', kind: 'duration', default: '30s', help: 'on SIGTERM, how long calls in flight and running reconciles together get to finish (one deadline from the signal) before calls are dropped and reconciles called off; a second signal stops at once' },
  { key: 'grpc-socket-group', prop: 'grpcSocketGroup', kind: 'string', default: '', help: 'group allowed to use a unix: grpc-endpoint (the socket is 0660); empty: root only' },
  { key: 'vmm-user', prop: 'vmmUser', kind: 'string', default: 'matchlock-vmm', help: 'unprivileged user (name or uid:gid) QEMU runs as, created when missing; root: no drop (not for production). Firecracker and Cloud Hypervisor are not dropped by it (see Security)' },
  { key: 'vmm-uid-range', prop: 'vmmUidRange', kind: 'string', default: '', help: 'FIRST-LAST: each QEMU VM\'s VMM gets its own uid and gid from this range instead of vmm-user (no accounts needed)' },
  { key: 'vmm-cgroups', prop: 'vmmCgroups', kind: 'bool', default: 'true', help: 'put each QEMU VMM in its own cgroup with CPU, memory and pids limits from its spec (v2 or v1); Firecracker\'s come from the jailer, Cloud Hypervisor gets none (see Security)' },
  { key: 'vmm-cgroup-parent', prop: 'vmmCgroupParent', kind: 'string', default: '/matchlock', help: "cgroup holding the per-VM cgroups: absolute from each hierarchy's root, or relative to matchlockd's own" },
  { key: 'qemu-sandbox', prop: 'qemuSandbox', kind: 'bool', default: 'true', help: "run QEMU under its seccomp filter (-sandbox on, obsolete, spawn and resourcecontrol denied)" },
  { key: 'console-log-max-bytes', prop: 'consoleLogMaxBytes', kind: 'int', min: 4096, max: 268435456, default: '4194304', help: 'bound (4096 to 268435456 bytes) of each VM\'s console log and every other file its VMM keeps appending to (stdout, stderr, logs, metrics); past it the last bytes move to <file>.1 and the file starts over' },
];

/** The settings of this matchlock's providers and daemon, in README order. */
export const KEYS: readonly KeyDef[] = configKeys();

/** A bad setting: InvalidArgument, which matchlockd reports with exit code 2. */
export function configError(message: string): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, message);
}

export function envName(key: string): string {
  return `MATCHLOCK_${key.toUpperCase().replace(/-/g, '_')}`;
}

/**
 * flintlockd's environment variable for one of its keys: viper's SetEnvPrefix("FLINTLOCKD")
 * with AutomaticEnv and no key replacer, so the key upper-cased with its hyphens kept
 * (`FLINTLOCKD_PARENT-IFACE`, `FLINTLOCKD_DELETEMICROVM-TIMEOUT`).
 */
export function flintlockdEnvName(key: string): string {
  return `${FLINTLOCKD_ENV_PREFIX}${key.toUpperCase()}`;
}

const FLINTLOCKD_ENV_PREFIX = 'FLINTLOCKD_';

/** The flintlockd variable that also sets matchlock's `key`, when flintlockd has that key. */
export function flintlockdEnvFor(key: string): string | undefined {
  if (FLINTLOCKD_SAME_KEYS.has(key)) return flintlockdEnvName(key);
  const renamed = Object.entries(FLINTLOCK_KEYS).find(([, v]) => 'mapsTo' in v && v.mapsTo === key);
  return renamed ? flintlockdEnvName(renamed[0]) : undefined;
}

/**
 * The keys of flintlockd's `run` command and root flags (every release's
 * internal/command/flags and pkg/log) that matchlock has under the same name; the ones it
 * spells differently or ignores are in FLINTLOCK_KEYS below.
 */
const FLINTLOCKD_SAME_KEYS: ReadonlySet<string> = new Set([
  'grpc-endpoint', 'state-dir', 'resync-period', 'enable-http', 'http-endpoint', 'basic-auth-token', 'insecure',
  'tls-cert', 'tls-key', 'tls-client-validate', 'tls-client-ca', 'default-provider', 'firecracker-bin',
  'firecracker-detach', 'cloudhypervisor-bin', 'cloudhypervisor-detach', 'parent-iface', 'bridge-name',
  'debug-endpoint', 'verbosity', 'log-format', 'maximum-retry',
]);

/**
 * flintlockd's environment variables, by the matchlock key they set. Empty ones are unset, as
 * viper reads them. A variable for a key flintlockd spells differently is read under matchlock's
 * name; one for a containerd key is ignored with a warning, as in the config file, and
 * disable-reconcile or disable-api set true are refused. A variable flintlockd would not read
 * (an unknown key, or underscores for hyphens) is named in a warning.
 */
function flintlockdEnv(env: Record<string, string | undefined>, known: ReadonlySet<string>, warnings: string[]): Record<string, { name: string; value: string }> {
  const out: Record<string, { name: string; value: string }> = {};
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(FLINTLOCKD_ENV_PREFIX) || value === undefined || value === '') continue;
    const rest = name.slice(FLINTLOCKD_ENV_PREFIX.length);
    const key = rest.toLowerCase();
    if (rest !== rest.toUpperCase()) {
      warnings.push(`environment ${name} ignored: flintlockd reads ${flintlockdEnvName(key)} (the key upper-cased)`);
      continue;
    }
    if (FLINTLOCKD_SAME_KEYS.has(key) && known.has(key)) {
      out[key] = { name, value };
      continue;
    }
    const fl = flintlockKey(key);
    if (fl && 'mapsTo' in fl) {
      if (known.has(fl.mapsTo)) out[fl.mapsTo] = { name, value };
      else warnings.push(`environment ${name} ignored: no provider here has "${fl.mapsTo}"`);
    } else if (fl) {
      const refusal = fl.refuse?.(value);
      if (refusal) throw configError(`environment ${name}: ${refusal.replace('remove the key', 'unset it')}`);
      if (!fl.honoured?.(value)) warnings.push(`environment ${name} ignored: ${fl.ignored}`);
    } else {
      const hyphened = key.replace(/_/g, '-');
      const hint = FLINTLOCKD_SAME_KEYS.has(hyphened) || flintlockKey(hyphened) ? `flintlockd keeps the key's hyphens: ${flintlockdEnvName(hyphened)}` : known.has(key) ? `not a flintlockd key; matchlock reads it as ${envName(key)}` : 'not a flintlockd key';
      warnings.push(`environment ${name} ignored: ${hint}`);
    }
  }
  return out;
}

function convert(def: KeyDef, raw: unknown, where: string): SettingValue {
  const r = parseSetting(def, raw);
  if ('error' in r) throw configError(`${where}: ${r.error}`);
  // flintlockd joins a relative state-dir to its working directory; systemd runs the unit from
  // /, so such a path names another place than the one written. Refused rather than resolved.
  if (def.key === 'state-dir' && typeof r.value === 'string' && !isAbsolute(r.value)) {
    throw configError(`${where}: state-dir must be an absolute path (got ${JSON.stringify(raw)})`);
  }
  return r.value;
}

export interface ConfigSources {
  /** Values of flags given on the command line, by key; absent keys were not given. */
  flags: Record<string, unknown>;
  /** Path of the config file; `explicit` when the user named it (then it must exist). */
  file: { path: string; explicit: boolean };
  env: Record<string, string | undefined>;
}

/**
 * Loads the settings. `warnings`, when given, receives one line per flintlockd key of the
 * config file that was read under its matchlock name or ignored, naming the key and why.
 */
export function loadConfig(src: ConfigSources, providers: ReadonlyMap<string, ProviderModule> = PROVIDERS, warnings: string[] = []): DaemonConfig {
  const keys = configKeys(providers);
  const fileValues = readConfigFile(src.file.path, src.file.explicit, keys, warnings);
  const flEnv = flintlockdEnv(src.env, new Set(keys.map((k) => k.key)), warnings);
  const providerSettings: Record<string, SettingValue> = {};
  const out: Record<string, unknown> = { providerSettings };
  for (const def of keys) {
    const flag = src.flags[def.key];
    // An empty variable is unset, as viper reads flintlockd's (an empty flag or file value is not).
    const env = src.env[envName(def.key)] || undefined;
    const fl = flEnv[def.key];
    let value: SettingValue;
    if (flag !== undefined) value = convert(def, flag, 'flag');
    else if (fileValues[def.key] !== undefined && fileValues[def.key] !== null) value = convert(def, fileValues[def.key], src.file.path);
    else if (env !== undefined) {
      value = convert(def, env, `environment ${envName(def.key)}`);
      if (fl) warnings.push(`environment ${fl.name} ignored: ${envName(def.key)} is set too and wins`);
    } else if (fl) value = convert(def, fl.value, `environment ${fl.name}`);
    else value = convert(def, def.default, 'default');
    if (def.prop) out[def.prop] = value;
    else providerSettings[def.key] = value;
  }
  const cfg = out as unknown as DaemonConfig;
  if ((cfg.tlsCert === '') !== (cfg.tlsKey === '')) throw configError('tls-cert and tls-key must be given together');
  if (cfg.tlsClientValidate && cfg.tlsClientCa === '') throw configError('tls-client-validate needs tls-client-ca');
  if (cfg.tlsClientValidate && cfg.tlsCert === '') throw configError('tls-client-validate needs tls-cert and tls-key');
  // Refused here, with the other settings, rather than once the state dir is made and the VMM
  // user created.
  try {
    parseUidRange(cfg.vmmUidRange);
  } catch (err) {
    throw configError(`vmm-uid-range ${cfg.vmmUidRange}: ${(err as Error).message}`);
  }
  const userRefusal = vmmUserRefusal(cfg.vmmUser);
  if (userRefusal) throw configError(`vmm-user ${cfg.vmmUser}: ${userRefusal}`);
  return cfg;
}

/** uids and gids are 32-bit, and (uid_t)-1 means "unchanged" to setuid(2): 4294967294 is the last. */
const ID_MAX = 4_294_967_294;

/**
 * Why `user` cannot be vmm-user, or undefined when it can: `root`, `uid:gid` (decimal, as QEMU's
 * -runas takes it; uid 0 and gid 0 only as 0:0, which is root), or a user name as passwd(5) can hold it and
 * useradd(8) can make it (no `:`, which separates passwd fields, no `,`, white space or control
 * characters, not starting with `-`, which useradd would read as an option, or `+`, which
 * marks NIS compat entries in passwd(5)).
 */
export function vmmUserRefusal(user: string): string | undefined {
  const rule = 'must be root, uid:gid (decimal numbers), or a user name without ":", ",", white space or control characters, not starting with "-" or "+"';
  if (user === 'root') return undefined;
  const ids = /^(\d+):(\d+)$/.exec(user);
  if (ids) {
    const [uid, gid] = [Number(ids[1]), Number(ids[2])];
    if (uid > ID_MAX || gid > ID_MAX) return `uid and gid must be at most ${ID_MAX}`;
    if (uid === 0 && gid !== 0) return 'uid 0 is root: write root (or 0:0) to run VMMs as root, or name an unprivileged user';
    // Group 0 reads what is root-group readable (the state dir and store are 0750 root:root).
    if (gid === 0 && uid !== 0) return "gid 0 is root's group: write root (or 0:0) to run VMMs as root, or give an unprivileged uid:gid or user";
    return undefined;
  }
  // eslint-disable-next-line no-control-regex
  if (user === '' || /^[-+]/.test(user) || /[:,\s\x00-\x1f\x7f]/.test(user)) return rule;
  return undefined;
}

function readConfigFile(path: string, explicit: boolean, keys: readonly KeyDef[], warnings: string[]): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (!explicit && (err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw configError(`config file ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw configError(`config file ${path}: not valid YAML: ${yamlProblem(err)}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw configError(`config file ${path}: must be a mapping of keys to values`);
  const known = new Set(keys.map((k) => k.key));
  const out: Record<string, unknown> = {};
  const renamed: Array<[string, string, unknown]> = [];
  for (const [key, value] of Object.entries(doc)) {
    // flintlockd reads its file through a case-insensitive reader, so `Parent-Iface:` works there.
    const lower = key.toLowerCase();
    if (known.has(lower)) {
      if (lower in out) throw configError(`config file ${path}: key "${key}" is given twice (keys match in any case)`);
      out[lower] = value;
      continue;
    }
    const fl = flintlockKey(key);
    if (!fl) throw configError(`config file ${path}: unknown key "${key}"`);
    if ('mapsTo' in fl && known.has(fl.mapsTo)) renamed.push([key, fl.mapsTo, value]);
    else if ('mapsTo' in fl) warnings.push(`${path}: flintlockd key "${key}" ignored: no provider here has "${fl.mapsTo}"`);
    else {
      const refusal = fl.refuse?.(value);
      if (refusal) throw configError(`config file ${path}: ${key}: ${refusal}`);
      if (!fl.honoured?.(value)) warnings.push(`${path}: flintlockd key "${key}" ignored: ${fl.ignored}`);
    }
  }
  // matchlock's own spelling wins over flintlockd's when a file has both.
  for (const [key, to, value] of renamed) {
    if (to in out) warnings.push(`${path}: flintlockd key "${key}" ignored: "${to}" is set too and wins`);
    else {
      out[to] = value;
      warnings.push(`${path}: flintlockd key "${key}" read as "${to}", its matchlock name`);
    }
  }
  return out;
}

type FlintlockKey =
  | { mapsTo: string }
  | { ignored: string; honoured?: (value: unknown) => boolean; refuse?: (value: unknown) => string | undefined };

const CONTAINERD = 'matchlock pulls images from OCI registries itself and keeps them in <state-dir>/images; it does not use containerd';
const SNAPSHOTTER = `${CONTAINERD}; for device-mapper volumes set thinpool (flintlock's pool is flintlock-thinpool)`;
const isTrue = (v: unknown) => parseBool(v) === true;

/**
 * flintlockd's keys that matchlock has no setting of the same name for: those of every
 * flintlockd release's `run` flags (internal/command/flags, pkg/log) that matchlock spells
 * differently, and those that only meant something to flintlock's containerd image path.
 * viper, which reads flintlockd's file, matches keys without regard to case, so this does too.
 */
const FLINTLOCK_KEYS: Readonly<Record<string, FlintlockKey>> = {
  'deletemicrovm-timeout': { mapsTo: 'delete-vm-timeout' },
  'virtiofs-bin': { mapsTo: 'virtiofsd-bin' },
  'containerd-socket': { ignored: CONTAINERD },
  'containerd-ns': { ignored: CONTAINERD },
  'containerd-namespace': { ignored: CONTAINERD },
  'containerd-kernel-ss': { ignored: `${CONTAINERD}; kernels and initrds are read from the unpacked image` },
  'containerd-volume-ss': { ignored: SNAPSHOTTER },
  'volume-snapshotter': { ignored: SNAPSHOTTER },
  'firecracker-api': { ignored: 'matchlock always starts Firecracker with its API socket' },
  'log-output': {
    ignored: 'matchlockd logs to stderr (the journal under systemd); redirect it there',
    honoured: (v) => v === undefined || v === null || v === '' || v === 'stderr',
  },
  'disable-reconcile': {
    ignored: 'matchlockd always reconciles; false is what it does',
    refuse: (v) => (isTrue(v) ? 'matchlockd cannot run without reconciling; remove the key' : undefined),
  },
  'disable-api': {
    ignored: 'matchlockd always serves its API; false is what it does',
    refuse: (v) => (isTrue(v) ? 'matchlockd cannot run without its API; remove the key' : undefined),
  },
};

function flintlockKey(key: string): FlintlockKey | undefined {
  const k = key.toLowerCase();
  // Any other containerd-* key (snapshotter and namespace variants) is the same kind.
  return FLINTLOCK_KEYS[k] ?? (k.startsWith('containerd-') ? { ignored: CONTAINERD } : undefined);
}
