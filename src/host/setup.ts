import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { stringify } from 'yaml';
import { KEYS, loadConfig, type DaemonConfig } from '../daemon/config.js';
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
  /** The command that runs matchlockd, before `run --config …`. */
  execStart: string;
  /**
   * Where to write the guest guard (nftables); the unit loads it before each start and setup
   * installs it in this network namespace now. Undefined: no guard.
   */
  guardPath?: string | undefined;
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
  await writeFile(`${path}.tmp`, text, { mode: 0o640 });
  await rename(`${path}.tmp`, path);
}

/**
 * Writes matchlockd's config and unit, prepares the state dir, and checks what the daemon will
 * need (VMM binaries, accelerator, bridge or parent interface, thin pool).
 */
export async function hostSetup(o: HostSetupOptions): Promise<{ config: DaemonConfig; checks: Check[] }> {
  const known = new Set(KEYS.map((k) => k.key));
  for (const k of Object.keys(o.settings)) if (!known.has(k)) throw new Error(`--set ${k}: unknown key (see the README's configuration reference)`);
  // Validate exactly as matchlockd will, before anything is written.
  const config = loadConfig({ flags: o.settings, file: { path: '/dev/null', explicit: false }, env: {} });
  await writeAtomic(o.configPath, `# Written by matchlock host setup.\n${stringify(o.settings)}`);
  await writeAtomic(o.unitPath, systemdUnit(o.execStart, o.configPath, o.guardPath));
  if (o.guardPath) {
    await writeGuardFile(o.guardPath);
    await installGuard();
  }
  await mkdir(config.stateDir, { recursive: true, mode: 0o750 });
  const checks = (await inspectHost(config, {})).filter((c) => c.check !== 'daemon');
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
  return { config, checks };
}
