import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { isProviderName, type ProviderName } from '../core/providers.js';
import { parseDuration } from '../core/duration.js';

/**
 * matchlockd's settings. Every key is a flag (`--state-dir`), a key of the YAML config file
 * (`state-dir:`) and an environment variable (`MATCHLOCK_STATE_DIR`); flags win over the file,
 * the file over the environment. flintlockd's keys are accepted with their meaning, so an
 * existing /etc/opt/flintlockd/config.yaml works as it is.
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
  defaultProvider: ProviderName | '';
  firecrackerBin: string;
  firecrackerDetach: boolean;
  cloudhypervisorBin: string;
  cloudhypervisorDetach: boolean;
  qemuBin: string;
  qemuAccel: 'tcg' | 'kvm';
  parentIface: string;
  bridgeName: string;
  debugEndpoint: string;
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
  grpcSocketGroup: string;
  vmmUser: string;
  vmmUidRange: string;
  vmmCgroups: boolean;
  vmmCgroupParent: string;
  qemuSandbox: boolean;
}

type Kind = 'string' | 'bool' | 'duration' | 'int' | 'provider' | 'accel' | 'logformat';

interface KeyDef {
  key: string;
  prop: keyof DaemonConfig;
  kind: Kind;
  default: string;
  help: string;
}

export const DEFAULT_CONFIG_PATH = '/etc/matchlock/config.yaml';

/** One table drives the flags, the file keys, the environment names and the README reference. */
export const KEYS: readonly KeyDef[] = [
  { key: 'grpc-endpoint', prop: 'grpcEndpoint', kind: 'string', default: '127.0.0.1:9090', help: 'address of the gRPC API' },
  { key: 'state-dir', prop: 'stateDir', kind: 'string', default: '/var/lib/matchlock', help: 'where the store, images and per-VM files live' },
  { key: 'resync-period', prop: 'resyncPeriodMs', kind: 'duration', default: '10m', help: 'how often every VM is reconciled even without a change' },
  { key: 'enable-http', prop: 'enableHttp', kind: 'bool', default: 'false', help: 'serve the HTTP/JSON API too' },
  { key: 'http-endpoint', prop: 'httpEndpoint', kind: 'string', default: '127.0.0.1:8090', help: 'address of the HTTP/JSON API' },
  { key: 'basic-auth-token', prop: 'basicAuthToken', kind: 'string', default: '', help: 'token clients must send as "authorization: Basic <base64(token)>"' },
  { key: 'insecure', prop: 'insecure', kind: 'bool', default: 'false', help: 'allow plaintext on a non-loopback address' },
  { key: 'tls-cert', prop: 'tlsCert', kind: 'string', default: '', help: 'server certificate (PEM); with tls-key turns on TLS 1.3' },
  { key: 'tls-key', prop: 'tlsKey', kind: 'string', default: '', help: 'server private key (PEM)' },
  { key: 'tls-client-validate', prop: 'tlsClientValidate', kind: 'bool', default: 'false', help: 'require client certificates signed by tls-client-ca (mTLS)' },
  { key: 'tls-client-ca', prop: 'tlsClientCa', kind: 'string', default: '', help: 'CA bundle (PEM) for client certificates' },
  { key: 'default-provider', prop: 'defaultProvider', kind: 'provider', default: '', help: 'provider for VMs that name none; empty: the first found of firecracker, cloudhypervisor, qemu' },
  { key: 'firecracker-bin', prop: 'firecrackerBin', kind: 'string', default: 'firecracker', help: 'Firecracker binary (name on PATH or path)' },
  { key: 'firecracker-detach', prop: 'firecrackerDetach', kind: 'bool', default: 'true', help: 'run Firecracker detached so VMs outlive the daemon' },
  { key: 'cloudhypervisor-bin', prop: 'cloudhypervisorBin', kind: 'string', default: 'cloud-hypervisor', help: 'Cloud Hypervisor binary' },
  { key: 'cloudhypervisor-detach', prop: 'cloudhypervisorDetach', kind: 'bool', default: 'true', help: 'run Cloud Hypervisor detached' },
  { key: 'qemu-bin', prop: 'qemuBin', kind: 'string', default: 'qemu-system-x86_64', help: 'QEMU binary for the microvm machine' },
  { key: 'qemu-accel', prop: 'qemuAccel', kind: 'accel', default: 'tcg', help: 'QEMU accelerator, tcg or kvm (never guessed from /dev/kvm)' },
  { key: 'parent-iface', prop: 'parentIface', kind: 'string', default: '', help: 'parent interface for MACVTAP interfaces' },
  { key: 'bridge-name', prop: 'bridgeName', kind: 'string', default: '', help: 'bridge for TAP interfaces without overrides.bridge_name' },
  { key: 'debug-endpoint', prop: 'debugEndpoint', kind: 'string', default: '', help: 'accepted for flintlock compatibility; not served yet' },
  { key: 'verbosity', prop: 'verbosity', kind: 'int', default: '0', help: 'log detail: 0 info, 1 and more debug' },
  { key: 'log-format', prop: 'logFormat', kind: 'logformat', default: 'text', help: 'text or json' },
  { key: 'maximum-retry', prop: 'maximumRetry', kind: 'int', default: '10', help: 'failed reconcile attempts before a VM is FAILED' },
  { key: 'registry-auth-file', prop: 'registryAuthFile', kind: 'string', default: '', help: 'Docker-style config.json with registry credentials; empty: $DOCKER_CONFIG/config.json or ~/.docker/config.json' },
  { key: 'insecure-registries', prop: 'insecureRegistries', kind: 'string', default: '', help: 'comma-separated registries reached over HTTPS without certificate checks' },
  { key: 'plain-http-registries', prop: 'plainHttpRegistries', kind: 'string', default: '', help: 'comma-separated registries reached over plain HTTP (loopback ones always are)' },
  { key: 'registry-mirrors', prop: 'registryMirrors', kind: 'string', default: '', help: 'comma-separated registry=mirror pairs; a mirror is tried before its registry' },
  { key: 'image-gc-grace', prop: 'imageGcGraceMs', kind: 'duration', default: '24h', help: 'images no VM uses are removed once this old (checked every resync); 0s disables' },
  { key: 'thinpool', prop: 'thinpool', kind: 'string', default: '', help: "device-mapper thin pool for volumes (e.g. flintlock's flintlock-thinpool); empty: ext4 image files" },
  { key: 'thinpool-dev-dir', prop: 'thinpoolDevDir', kind: 'string', default: '/dev/mapper', help: 'where device-mapper devices appear' },
  { key: 'dmsetup-bin', prop: 'dmsetupBin', kind: 'string', default: 'dmsetup', help: 'dmsetup binary used with thinpool' },
  { key: 'retry-backoff', prop: 'retryBackoffMs', kind: 'duration', default: '1s', help: 'first retry delay after a failed reconcile; doubles each attempt (with jitter) up to 5m' },
  { key: 'reconcile-workers', prop: 'reconcileWorkers', kind: 'int', default: '4', help: 'VMs reconciled in parallel' },
  { key: 'delete-vm-timeout', prop: 'deleteVmTimeoutMs', kind: 'duration', default: '10s', help: 'how long a guest gets to power down before it is stopped' },
  { key: 'grpc-socket-group', prop: 'grpcSocketGroup', kind: 'string', default: '', help: 'group allowed to use a unix: grpc-endpoint (the socket is 0660); empty: root only' },
  { key: 'vmm-user', prop: 'vmmUser', kind: 'string', default: 'matchlock-vmm', help: 'unprivileged user (name or uid:gid) VMMs run as, created when missing; root: no drop (not for production)' },
  { key: 'vmm-uid-range', prop: 'vmmUidRange', kind: 'string', default: '', help: 'FIRST-LAST: each VM\'s VMM gets its own uid and gid from this range instead of vmm-user (no accounts needed)' },
  { key: 'vmm-cgroups', prop: 'vmmCgroups', kind: 'bool', default: 'true', help: 'put each VMM in its own cgroup with CPU, memory and pids limits from its spec (v2 or v1)' },
  { key: 'vmm-cgroup-parent', prop: 'vmmCgroupParent', kind: 'string', default: '/matchlock', help: "cgroup holding the per-VM cgroups: absolute from each hierarchy's root, or relative to matchlockd's own" },
  { key: 'qemu-sandbox', prop: 'qemuSandbox', kind: 'bool', default: 'true', help: "run QEMU under its seccomp filter (-sandbox on, obsolete, spawn and resourcecontrol denied)" },
];

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function envName(key: string): string {
  return `MATCHLOCK_${key.toUpperCase().replace(/-/g, '_')}`;
}

function convert(def: KeyDef, raw: unknown, where: string): DaemonConfig[keyof DaemonConfig] {
  const bad = (rule: string) => new ConfigError(`${where}: ${def.key} ${rule} (got ${JSON.stringify(raw)})`);
  const text = typeof raw === 'string' ? raw.trim() : raw;
  switch (def.kind) {
    case 'string':
      if (typeof text !== 'string' && typeof text !== 'number') throw bad('must be a string');
      return String(text);
    case 'bool':
      if (typeof text === 'boolean') return text;
      if (text === 'true' || text === '1') return true;
      if (text === 'false' || text === '0' || text === '') return false;
      throw bad('must be true or false');
    case 'int': {
      const n = typeof text === 'number' ? text : Number(text);
      if (!Number.isInteger(n) || n < 0) throw bad('must be a whole number >= 0');
      if (def.key === 'reconcile-workers' && (n < 1 || n > 64)) throw bad('must be between 1 and 64');
      return n;
    }
    case 'duration': {
      const ms = typeof text === 'string' ? parseDuration(text) : undefined;
      if (ms === undefined) throw bad('must be a duration such as 30s, 10m or 1h');
      return ms;
    }
    case 'provider':
      if (text !== '' && (typeof text !== 'string' || !isProviderName(text))) throw bad('must be firecracker, cloudhypervisor, qemu or empty');
      return text as ProviderName | '';
    case 'accel':
      if (text !== 'tcg' && text !== 'kvm') throw bad('must be tcg or kvm');
      return text;
    case 'logformat':
      if (text !== 'text' && text !== 'json') throw bad('must be text or json');
      return text;
  }
}

export interface ConfigSources {
  /** Values of flags given on the command line, by key; absent keys were not given. */
  flags: Record<string, unknown>;
  /** Path of the config file; `explicit` when the user named it (then it must exist). */
  file: { path: string; explicit: boolean };
  env: Record<string, string | undefined>;
}

export function loadConfig(src: ConfigSources): DaemonConfig {
  const fileValues = readConfigFile(src.file.path, src.file.explicit);
  const out: Record<string, unknown> = {};
  for (const def of KEYS) {
    const flag = src.flags[def.key];
    const env = src.env[envName(def.key)];
    if (flag !== undefined) out[def.prop] = convert(def, flag, 'flag');
    else if (fileValues[def.key] !== undefined && fileValues[def.key] !== null) out[def.prop] = convert(def, fileValues[def.key], src.file.path);
    else if (env !== undefined) out[def.prop] = convert(def, env, `environment ${envName(def.key)}`);
    else out[def.prop] = convert(def, def.default, 'default');
  }
  const cfg = out as unknown as DaemonConfig;
  if ((cfg.tlsCert === '') !== (cfg.tlsKey === '')) throw new ConfigError('tls-cert and tls-key must be given together');
  if (cfg.tlsClientValidate && cfg.tlsClientCa === '') throw new ConfigError('tls-client-validate needs tls-client-ca');
  if (cfg.tlsClientValidate && cfg.tlsCert === '') throw new ConfigError('tls-client-validate needs tls-cert and tls-key');
  return cfg;
}

function readConfigFile(path: string, explicit: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (!explicit && (err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ConfigError(`config file ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path}: not valid YAML: ${(err as Error).message.split('\n')[0] ?? ''}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${path}: must be a mapping of keys to values`);
  const known = new Set(KEYS.map((k) => k.key));
  for (const key of Object.keys(doc)) {
    if (!known.has(key)) throw new ConfigError(`config file ${path}: unknown key "${key}"`);
  }
  return doc as Record<string, unknown>;
}
