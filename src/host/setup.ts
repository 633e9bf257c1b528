import { accessSync, constants, existsSync, realpathSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { writeFileDurably } from '../adapters/durable.js';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTwoFilesPatch } from 'diff';
import { isMap, parseDocument } from 'yaml';
import { KEYS, loadConfig, type DaemonConfig } from '../daemon/config.js';
import { parseBool } from '../core/settings.js';
import { run } from '../adapters/exec.js';
import { findBinary } from '../daemon/providers.js';
import { ensureSystemUser, rootIds } from '../adapters/system/accounts.js';
import { installGuard, writeGuardFile } from './guard.js';
import { systemdCommandLine, systemdWord } from './unit.js';
import { inspectHost, type Check } from './inspect.js';
import { drainBoundMs } from '../daemon/lifecycle.js';
import { yamlProblem } from '../core/errors.js';

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
 * Throws when `explicit` is not an existing absolute path, or names a file whose path systemd
 * cannot run (a quote, a backslash or a control character: systemdWord).
 */
export function resolveDaemonCommand(explicit?: string, pathEnv = process.env.PATH ?? ''): DaemonCommand {
  let bin: string;
  if (explicit !== undefined) {
    if (!isAbsolute(explicit) || !existsSync(explicit)) throw new Error(`--daemon-bin ${explicit}: must be the absolute path of an existing matchlockd`);
    bin = explicit;
  } else bin = findBinary('matchlockd', pathEnv) ?? OWN_DAEMON_BIN;
  const path = realpathSync(bin);
  let execStart: string;
  try {
    execStart = systemdCommandLine(path.endsWith('.js') ? [process.execPath, DAEMON_NODE_FLAGS, path] : [path]);
  } catch (err) {
    // The rule names the file the unit would run: the one given, or the one found on PATH.
    throw new Error(`${explicit !== undefined ? `--daemon-bin ${explicit}` : `matchlockd ${path}`}: ${(err as Error).message.replace(/^"[^]*?": /, '')}${path !== bin ? ` (it resolves to ${path})` : ''}`);
  }
  return { execStart, path, installed: !isCheckoutBin(path) };
}

/**
 * A unit equivalent to flintlock's: restart always, and KillMode=process so VMs outlive restarts.
 * `execStart` is a command line as systemd reads it (resolveDaemonCommand's is quoted); the
 * config and guard paths are quoted here (systemdWord). Throws for a path systemd cannot carry.
 * `shutdownGraceMs` (the configured shutdown-grace, ms) sets TimeoutStopSec: systemd SIGKILLs a
 * service still running that long after its stop signal (systemd.service(5), default 90 s).
 */
export function systemdUnit(execStart: string, configPath: string, guardPath?: string, shutdownGraceMs = 30_000): string {
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
    ...(guardPath ? [`ExecStartPre=${systemdCommandLine([findBinary('nft') ?? '/usr/sbin/nft', '-f', guardPath])}`] : []),
    `ExecStart=${execStart} ${systemdCommandLine(['run', '--config', configPath])}`,
    'Restart=always',
    'RestartSec=5',
    // Only the daemon is stopped on restart: the detached VMMs keep running and are adopted.
    'KillMode=process',
    // The drain's own bound plus a margin for closing the store and sockets.
    `TimeoutStopSec=${Math.ceil(drainBoundMs(shutdownGraceMs) / 1000) + STOP_MARGIN_S}`,
    'LimitNOFILE=1048576',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** Seconds past the drain's bound systemd waits before killing matchlockd. */
const STOP_MARGIN_S = 30;

async function writeAtomic(path: string, text: string, mode = 0o640): Promise<void> {
  try {
    await writeFileDurably(`${path}.tmp`, path, text, mode);
  } catch (err) {
    await rm(`${path}.tmp`, { force: true });
    throw err;
  }
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
  if (doc.errors.length) throw new Error(`${path}: not valid YAML: ${yamlProblem(doc.errors[0])}`);
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

/** What hostSetup will write, validated; nothing is written to make it. */
export interface HostSetupPlan {
  config: DaemonConfig;
  before: string;
  after: string;
  warnings: string[];
  daemon: DaemonCommand | undefined;
}

/**
 * Checks host setup's input without writing anything: the keys, the matchlockd the unit will run,
 * and the merged config file read exactly as matchlockd will read it (from a private temporary
 * copy). A refusal names `--set <key>` when the bad value came from --set, else the config
 * file. Throws Error.
 */
export async function planHostSetup(o: HostSetupOptions): Promise<HostSetupPlan> {
  const known = new Set(KEYS.map((k) => k.key));
  for (const k of Object.keys(o.settings)) if (!known.has(k)) throw new Error(`--set ${k}: unknown key (see the README's configuration reference)`);
  // The unit names the config (and the guard beside it) for systemd, which runs it from /: a
  // relative path there would name another file.
  for (const [flag, path] of [['--config-out', o.configPath], ['--unit-out', o.unitPath]] as const) {
    if (!isAbsolute(path)) throw new Error(`${flag} ${path}: must be an absolute path`);
  }
  for (const [flag, path] of [['--config-out', o.configPath], ['--unit-out', o.unitPath], ...(o.guardPath ? [['guard file (beside --config-out)', o.guardPath]] : [])] as const) {
    checkWritable(flag, path, 'file');
    // The unit names the config and the guard: a path it cannot carry is refused now, not once written.
    if (path !== o.unitPath) {
      try {
        systemdWord(path);
      } catch (err) {
        throw new Error(`${flag} ${path}: ${(err as Error).message.replace(/^\S+: /, '')}`);
      }
    }
  }
  const daemon = o.execStart === undefined ? resolveDaemonCommand(o.daemonBin) : undefined;
  // The guard's ExecStartPre runs nft by the path found now: one systemd refuses is refused before anything is written.
  if (o.guardPath) {
    const nft = findBinary('nft') ?? '/usr/sbin/nft';
    try {
      systemdWord(nft, true);
    } catch (err) {
      throw new Error(`nft at ${nft}: ${(err as Error).message.replace(/^"[^]*?": /, '')}; put it on PATH under another directory, or give --no-guard`);
    }
  }
  const before = await readIfThere(o.configPath);
  const after = mergeConfigText(before, o.settings, o.configPath);
  const dir = await mkdtemp(join(tmpdir(), 'matchlock-setup-'));
  const staged = join(dir, 'config.yaml');
  const warnings: string[] = [];
  let config: DaemonConfig;
  try {
    await writeFile(staged, after, { mode: 0o600 });
    config = loadConfig({ flags: {}, file: { path: staged, explicit: true }, env: {} }, undefined, warnings);
  } catch (err) {
    const message = (err as Error).message;
    // The config reader names the file and the key ("<file>: verbosity must be …"); a value that
    // came from --set is named as the flag it came from.
    const key = new RegExp(`^${staged.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: ([a-z0-9-]+) `).exec(message)?.[1];
    if (key !== undefined && key in o.settings) throw new Error(`--set ${key}=${o.settings[key]}: ${message.slice(staged.length + 2)}`);
    throw new Error(message.replaceAll(staged, o.configPath));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  checkWritable(`state-dir`, config.stateDir, 'dir');
  return { config, before, after, warnings: warnings.map((w) => w.replaceAll(staged, o.configPath)), daemon };
}

/**
 * Refuses a path setup cannot write, before anything is written: a directory where a file goes
 * (EISDIR), a file where a directory goes (ENOTDIR), or a directory that refuses writes
 * (access(2) W_OK; EACCES, or EPERM for an immutable one). `kind` is what `path` must be; the
 * nearest existing part of its parent chain must be a writable directory. Throws Error naming `what`.
 */
function checkWritable(what: string, path: string, kind: 'file' | 'dir'): void {
  const code = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    // ENOTDIR: a file is in the way further up, named below.
    if (code(err) !== 'ENOENT' && code(err) !== 'ENOTDIR') throw new Error(`${what} ${path}: cannot be read (${code(err)})`);
  }
  if (st) {
    if (kind === 'file' && st.isDirectory()) throw new Error(`${what} ${path}: is a directory (EISDIR); name the file to write`);
    if (kind === 'dir') {
      if (!st.isDirectory()) throw new Error(`${what} ${path}: is not a directory (ENOTDIR)`);
      return;
    }
    try {
      accessSync(path, constants.W_OK);
    } catch (err) {
      throw new Error(`${what} ${path}: cannot be written (${code(err)})`);
    }
  }
  for (let d = dirname(path); ; d = dirname(d)) {
    try {
      st = statSync(d);
    } catch (err) {
      if ((code(err) === 'ENOENT' || code(err) === 'ENOTDIR') && d !== '/') continue;
      throw new Error(`${what} ${path}: ${d} cannot be read (${code(err)})`);
    }
    if (!st.isDirectory()) throw new Error(`${what} ${path}: ${d} is not a directory (ENOTDIR)`);
    try {
      accessSync(d, constants.W_OK);
    } catch (err) {
      throw new Error(`${what} ${path}: ${d} cannot be written (${code(err)})`);
    }
    return;
  }
}

/** Puts `path` back as it was: `text`, or no file when it had none. */
async function restore(path: string, text: string | undefined): Promise<void> {
  if (text === undefined) await rm(path, { force: true });
  else await writeFile(path, text);
}

/** Removes `dir` and its parents up to and including `top` while they are empty. */
async function rmEmptyDirs(dir: string, top: string): Promise<void> {
  for (let d = dir; d.length >= top.length; d = dirname(d)) {
    if (!(await rmdir(d).then(() => true, () => false))) return;
  }
}

/**
 * Writes matchlockd's config and unit, prepares the state dir, and checks what the daemon will
 * need (VMM binaries, accelerator, bridge or parent interface, thin pool). The settings are
 * merged into an existing config file, which keeps every other key; `diff` shows the change.
 * Everything is validated before anything is written, and a write that fails part way puts back
 * the files and directories this call changed.
 */
export async function hostSetup(o: HostSetupOptions, plan?: HostSetupPlan): Promise<{ config: DaemonConfig; checks: Check[]; diff: string }> {
  const { config, before, after, warnings, daemon } = plan ?? (await planHostSetup(o));
  const undo: (() => Promise<unknown>)[] = [];
  const keep = async (path: string) => {
    const old = existsSync(path) ? await readFile(path, 'utf8') : undefined;
    undo.push(() => restore(path, old));
  };
  const mkdirs = async (dir: string, mode?: number) => {
    const made = await mkdir(dir, { recursive: true, ...(mode === undefined ? {} : { mode }) });
    if (made) undo.push(() => rmEmptyDirs(dir, made));
  };
  // A write that fails names the flag or setting whose path it was (a bare "EEXIST: mkdir …"
  // leaves the user to guess which of the paths given is wrong).
  const named = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
    }
  };
  try {
    await named(`state-dir ${config.stateDir}`, () => mkdirs(config.stateDir, 0o750));
    await named(`--config-out ${o.configPath}`, async () => {
      await mkdirs(dirname(o.configPath));
      await keep(o.configPath);
      await writeAtomic(o.configPath, after, 0o640);
    });
    await named(`--unit-out ${o.unitPath}`, async () => {
      await mkdirs(dirname(o.unitPath));
      await keep(o.unitPath);
      await writeAtomic(o.unitPath, systemdUnit(o.execStart ?? daemon?.execStart ?? '', o.configPath, o.guardPath, config.shutdownGraceMs));
    });
    if (o.guardPath) {
      const guardPath = o.guardPath;
      await named(`guard file ${guardPath} (beside --config-out)`, async () => {
        await mkdirs(dirname(guardPath));
        await keep(guardPath);
        await writeGuardFile(guardPath);
      });
      // Last: nothing after it can fail, so an installed guard is never left by a failed setup.
      await installGuard();
    }
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => undefined);
    throw err;
  }
  const diff = configDiff(o.configPath, before, after);
  // inspect's fixes name matchlockd's own flags ("set --firecracker-bin"); here a setting is given as --set.
  const known = new Set(KEYS.map((k) => k.key));
  const checks = (await inspectHost(config, {})).filter((c) => c.check !== 'daemon').map((c) => (c.fix === undefined ? c : {
    ...c,
    fix: c.fix.replace(/\bset --([a-z0-9-]+)/g, (whole, key: string) => (known.has(key) ? `--set ${key}=…` : whole)),
  }));
  // flintlockd keys the file still has: matchlockd will say the same at every start.
  for (const w of warnings) checks.push({ check: 'config', status: 'warn', evidence: w, fix: 'remove the key, or leave it: matchlockd ignores it' });
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
      const root = rootIds(account);
      checks.push({ check: 'vmm-user', status: root ? 'fail' : 'ok', evidence: `${config.vmmUser} is uid ${account.uid}, gid ${account.gid}${created ? ' (created now)' : ''}`, ...(root ? { fix: `name an unprivileged user (this one has ${root})` } : {}) });
    } catch (err) {
      checks.push({ check: 'vmm-user', status: 'fail', evidence: (err as Error).message, fix: `create it: useradd --system --user-group ${config.vmmUser}` });
    }
  } else checks.push({ check: 'vmm-user', status: 'warn', evidence: 'VMMs run as root', fix: 'leave vmm-user at its default, matchlock-vmm' });
  if (!config.bridgeName && !config.parentIface) checks.push({ check: 'network', status: 'fail', evidence: 'neither bridge-name nor parent-iface is set', fix: '--set bridge-name=<bridge> for TAP, or --set parent-iface=<link> for MACVTAP' });
  return { config, checks, diff };
}
