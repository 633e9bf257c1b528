import { existsSync, realpathSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { renameDurably, writeFileDurably } from '../adapters/durable.js';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTwoFilesPatch } from 'diff';
import { isMap, parseDocument } from 'yaml';
import { KEYS, loadConfig, type DaemonConfig } from '../daemon/config.js';
import { parseBool } from '../core/settings.js';
import { run } from '../adapters/exec.js';
import { findBinary } from '../daemon/providers.js';
import { ensureSystemUser } from '../adapters/system/accounts.js';
import { installGuard, writeGuardFile } from './guard.js';
import { inspectHost, type Check } from './inspect.js';

export interface HostSetupOptions {
  /** key=value settings (daemon config keys), validated as matchlockd would. */
  settings: Record<string, string>;
  configPath: string;
  unitPath: string;
  /** The command that runs matchlockd, before `run --config …`; resolveDaemonCommand() when absent. */
  execStart?: string | undefined;
  /** The matchlockd the unit runs (`--daemon-bin`); see resolveDaemonCommand. */
  daemonBin?: string | undefined;
  /**
   * Where to write the guest guard (nftables); the unit loads it before each start and setup
   * installs it in this network namespace now. Undefined: no guard.
   */
  guardPath?: string | undefined;
}

/** Where matchlockd came from: an installed package, or a source checkout (which has src/). */
export interface DaemonCommand {
  execStart: string;
  /** The matchlockd script or binary the unit runs, with symlinks resolved. */
  path: string;
  installed: boolean;
}

/** This package's own bin/matchlockd.js (in dist/host/ or src/host/, both two levels down). */
const OWN_DAEMON_BIN = fileURLToPath(new URL('../../bin/matchlockd.js', import.meta.url));

/** Node's flags for matchlockd in the unit; bin/matchlockd.js applies the same when run without them. */
export const DAEMON_NODE_FLAGS = '--max-semi-space-size=1';

const isCheckoutBin = (bin: string) => existsSync(join(dirname(bin), '..', 'src', 'daemon', 'main.ts'));

/**
 * The command the unit runs, resolved now, so the unit depends on neither the shell's PATH nor
 * on where `matchlock` happened to be run from: `explicit` (`--daemon-bin`), else the
 * `matchlockd` found on PATH (what `npm install -g` put there), else this package's own bin. A
 * JavaScript bin is run by this Node (its absolute path: systemd's PATH may not hold `node`),
 * with V8's young generation held at 2 × 1 MiB (see bin/matchlockd.js: about 15 MB less RSS).
 * `installed` is false when the bin belongs to a source checkout (an `npm link` too).
 * Throws when `explicit` is not an existing absolute path.
 */
export function resolveDaemonCommand(explicit?: string, pathEnv = process.env.PATH ?? ''): DaemonCommand {
  let bin: string;
  if (explicit !== undefined) {
    if (!isAbsolute(explicit) || !existsSync(explicit)) throw new Error(`--daemon-bin ${explicit}: must be the absolute path of an existing matchlockd`);
    bin = explicit;
  } else bin = findBinary('matchlockd', pathEnv) ?? OWN_DAEMON_BIN;
  const path = realpathSync(bin);
  const execStart = path.endsWith('.js') ? `${process.execPath} ${DAEMON_NODE_FLAGS} ${path}` : path;
  return { execStart, path, installed: !isCheckoutBin(path) };
}

/** A unit equivalent to flintlock's: restart always, and KillMode=process so VMs outlive restarts. */
export function systemdUnit(execStart: string, configPath: string, guardPath?: string): string {
  return [
    '[Unit]',
    'Description=matchlockd, the flintlock-compatible MicroVM host daemon',
    'After=network-online.target',
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    // The guard is loaded before every start (nftables rules do not survive a reboot); a guard
    // that cannot be loaded keeps the daemon from starting unguarded.
    ...(guardPath ? [`ExecStartPre=${findBinary('nft') ?? '/usr/sbin/nft'} -f ${guardPath}`] : []),
    `ExecStart=${execStart} run --config ${configPath}`,
    'Restart=always',
    'RestartSec=5',
    // Only the daemon is stopped on restart: the detached VMMs keep running and are adopted.
    'KillMode=process',
    'LimitNOFILE=1048576',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFileDurably(`${path}.tmp`, path, text, 0o640);
}

/** A setting's text as the YAML scalar of its kind, so `maximum-retry=5` is written as 5, not "5". */
function typed(key: string, value: string): unknown {
  const def = KEYS.find((k) => k.key === key);
  // Any spelling the daemon reads as a boolean (strconv.ParseBool's) is written as YAML's.
  const bool = value === '' ? undefined : parseBool(value);
  if (def?.kind === 'bool' && bool !== undefined) return bool;
  if (def?.kind === 'int' && /^-?\d+$/.test(value)) return Number(value);
  return value;
}

/**
 * The config file with the settings merged in: every other key, its comments and its order stay
 * (the `yaml` library's document model); a new file starts with a header comment. `before` is
 * the file's text, empty when there was none.
 */
export function mergeConfigText(before: string, settings: Record<string, string>, path = 'config.yaml'): string {
  const doc = parseDocument(before.trim() ? before : '# Written by matchlock host setup.\n');
  if (doc.errors.length) throw new Error(`${path}: not valid YAML: ${doc.errors[0]?.message.split('\n')[0] ?? ''}`);
  if (doc.contents !== null && !isMap(doc.contents)) throw new Error(`${path}: must be a mapping of keys to values`);
  for (const [key, value] of Object.entries(settings)) doc.set(key, typed(key, value));
  return doc.toString();
}

/** A unified diff of a config file before and after, empty when nothing changed. */
export function configDiff(path: string, before: string, after: string): string {
  if (before === after) return '';
  return createTwoFilesPatch(path, path, before, after, '', '', { context: 2 }).split('\n').slice(1).join('\n');
}

async function readIfThere(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/**
 * Writes matchlockd's config and unit, prepares the state dir, and checks what the daemon will
 * need (VMM binaries, accelerator, bridge or parent interface, thin pool). The settings are
 * merged into an existing config file, which keeps every other key; `diff` shows the change.
 */
export async function hostSetup(o: HostSetupOptions): Promise<{ config: DaemonConfig; checks: Check[]; diff: string }> {
  const known = new Set(KEYS.map((k) => k.key));
  for (const k of Object.keys(o.settings)) if (!known.has(k)) throw new Error(`--set ${k}: unknown key (see the README's configuration reference)`);
  const daemon = o.execStart === undefined ? resolveDaemonCommand(o.daemonBin) : undefined;
  const before = await readIfThere(o.configPath);
  const after = mergeConfigText(before, o.settings, o.configPath);
  // Validate the merged file exactly as matchlockd will read it, before anything is written.
  const staged = `${o.configPath}.tmp`;
  await mkdir(dirname(o.configPath), { recursive: true });
  await writeFile(staged, after, { mode: 0o640 });
  let config: DaemonConfig;
  const warnings: string[] = [];
  try {
    config = loadConfig({ flags: {}, file: { path: staged, explicit: true }, env: {} }, undefined, warnings);
  } catch (err) {
    await rm(staged, { force: true });
    throw new Error((err as Error).message.replaceAll(staged, o.configPath));
  }
  await renameDurably(staged, o.configPath);
  const diff = configDiff(o.configPath, before, after);
  await writeAtomic(o.unitPath, systemdUnit(o.execStart ?? daemon?.execStart ?? '', o.configPath, o.guardPath));
  if (o.guardPath) {
    await writeGuardFile(o.guardPath);
    await installGuard();
  }
  await mkdir(config.stateDir, { recursive: true, mode: 0o750 });
  const checks = (await inspectHost(config, {})).filter((c) => c.check !== 'daemon');
  // flintlockd keys the file still has: matchlockd will say the same at every start.
  for (const w of warnings) checks.push({ check: 'config', status: 'warn', evidence: w.replaceAll(staged, o.configPath), fix: 'remove the key, or leave it: matchlockd ignores it' });
  if (daemon) {
    checks.push(daemon.installed
      ? { check: 'daemon-bin', status: 'ok', evidence: `the unit runs ${daemon.path}` }
      : { check: 'daemon-bin', status: 'warn', evidence: `the unit runs ${daemon.path} from a source checkout`, fix: 'install the package (npm pack, then npm install -g ./matchlock-*.tgz) and run host setup again, or give --daemon-bin' });
  }
  for (const [key, name] of [['bridge-name', config.bridgeName], ['parent-iface', config.parentIface]] as const) {
    if (!name) continue;
    const found = await run('ip', ['link', 'show', 'dev', name]).then(() => true, () => false);
    checks.push(found ? { check: key, status: 'ok', evidence: `${name} exists` } : { check: key, status: 'fail', evidence: `${name} not found`, fix: key === 'bridge-name' ? `create it (ip link add ${name} type bridge) or run matchlock hub setup --mode bridge --interface ${name}` : `name an existing interface` });
  }
  if (config.vmmUser !== 'root') {
    try {
      const { account, created } = await ensureSystemUser(config.vmmUser);
      checks.push({ check: 'vmm-user', status: account.uid === 0 ? 'fail' : 'ok', evidence: `${config.vmmUser} is uid ${account.uid}${created ? ' (created now)' : ''}`, ...(account.uid === 0 ? { fix: 'name an unprivileged user' } : {}) });
    } catch (err) {
      checks.push({ check: 'vmm-user', status: 'fail', evidence: (err as Error).message, fix: `create it: useradd --system --user-group ${config.vmmUser}` });
    }
  } else checks.push({ check: 'vmm-user', status: 'warn', evidence: 'VMMs run as root', fix: 'leave vmm-user at its default, matchlock-vmm' });
  if (!config.bridgeName && !config.parentIface) checks.push({ check: 'network', status: 'fail', evidence: 'neither bridge-name nor parent-iface is set', fix: '--set bridge-name=<bridge> for TAP, or --set parent-iface=<link> for MACVTAP' });
  return { config, checks, diff };
}
