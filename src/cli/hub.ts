import { Command } from 'commander';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { argvOf, pidAlive, processStart } from '../adapters/vmm/process.js';
import { NFT_TABLE } from '../hub/render.js';
import type { HubFlagNames } from '../hub/hub.js';
import { checkRecordable, hubConfigYaml, loadHubConfig, type HubConfig } from '../hub/config.js';
import { create } from '@bufbuild/protobuf';
import { generatedMac } from '../core/microvm/host-names.js';
import { ListMicroVMsRequestSchema } from '../gen/services/microvm/v1alpha1/microvms_pb.js';
import { EXIT, cliError, connect, type ConnectOptions } from './client.js';
import { documentText, table } from './output.js';
import type { Io } from './vm.js';

/** The hub's settings as flags; `inspect --hub` takes the same ones with a `hub-` prefix. */
export const HUB_FLAGS: [string, string][] = [
  ['interface', 'LAN interface the hub makes or uses'],
  ['mode', 'vlan (802.1Q on --parent) or bridge (single machine)'],
  ['parent', 'parent link for vlan mode'],
  ['vlan-id', 'VLAN id for vlan mode'],
  ['address', "the hub's address and prefix, also the router (e.g. 192.168.10.2/25)"],
  ['range-start', 'first DHCP address'],
  ['range-end', 'last DHCP address'],
  ['dns-servers', 'comma-separated DNS servers handed out'],
  ['default-lease-time', 'seconds (dnsmasq: the one lease time, at least 120)'],
  ['max-lease-time', 'seconds, the longest lease dhcpd grants (isc only: dnsmasq grants at most default-lease-time)'],
  ['uplink', 'link towards the outside, masqueraded'],
  ['dhcp', 'isc (isc-dhcp-server) or dnsmasq'],
  ['state-dir', "where the hub's generated files, leases and pids live"],
];

/**
 * Where `hub setup` (and `host dev`) record the hub they made, as a hub.yaml with every
 * setting, so `status`, `leases` and `teardown` (and `setup` again) need no flags:
 * `MATCHLOCK_HUB_RECORD`, default /var/lib/matchlock/hub.yaml. One hub per host, as in a
 * Liquid Metal environment: the record and the nftables table `matchlock_hub` are the host's.
 */
export function hubRecordPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.MATCHLOCK_HUB_RECORD || '/var/lib/matchlock/hub.yaml';
}

/** How errors name the record's path: the variable that chose it, or the default and the variable that would move it. */
function recordName(record: string, env: NodeJS.ProcessEnv = process.env): string {
  return env.MATCHLOCK_HUB_RECORD === record ? `MATCHLOCK_HUB_RECORD=${record}` : `hub record ${record} (MATCHLOCK_HUB_RECORD)`;
}

/**
 * Refuses a record path that cannot hold a file (a directory there, a file where a directory
 * of its path goes) before anything is made: exit 2 naming MATCHLOCK_HUB_RECORD, rather than
 * a bare EEXIST from mkdir or EISDIR from a read.
 */
export function checkRecordPath(record: string): void {
  const name = recordName(record);
  let st;
  try {
    st = statSync(record);
  } catch {
    // not there, or a file is in the way further up: the walk below names it
  }
  if (st && !st.isFile()) throw cliError(`${name}: is not a regular file; name a file for the record`, EXIT.usage);
  for (let d = dirname(record); ; d = dirname(d)) {
    try {
      st = statSync(d);
    } catch (err) {
      if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '') && d !== '/') continue;
      throw cliError(`${name}: ${d} cannot be read (${(err as Error).message})`, EXIT.precondition);
    }
    if (!st.isDirectory()) throw cliError(`${name}: ${d} is not a directory, so the record cannot be made under it`, EXIT.usage);
    return;
  }
}

/**
 * The recorded hub, or undefined when there is no record. A record that cannot be read is not
 * "no hub": a hub may be up behind it, so this throws a CLI error (exit 6) naming the record and
 * why, rather than let a second hub replace it.
 */
export function recordedHub(record = hubRecordPath()): HubConfig | undefined {
  checkRecordPath(record);
  if (!existsSync(record)) return undefined;
  try {
    return loadHubConfig(record, {});
  } catch (err) {
    throw cliError(`hub record ${record} cannot be read (${(err as Error).message}); fix or remove it once the hub it names is torn down`, EXIT.precondition);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `fn` (the one-hub check and the setup) holding `<record>.lock`, so two setups at once
 * cannot both find no hub and both make one. The lock file holds the holder's pid and start
 * time (field 22 of /proc/<pid>/stat): one whose holder is gone (a killed setup), also when its
 * pid now names another process, is taken over; so is a lock of the older pid-only form whose
 * pid is not a matchlock CLI. A setup that waits longer than `waitMs` for
 * the other fails naming the lock (exit 6).
 */
export async function withHubLock<T>(fn: () => Promise<T>, record = hubRecordPath(), waitMs = 120_000): Promise<T> {
  const lock = `${record}.lock`;
  checkRecordPath(record);
  const madeDir = mkdirSync(dirname(record), { recursive: true, mode: 0o750 });
  for (const start = Date.now(); ;) {
    try {
      const fd = openSync(lock, 'wx', 0o600);
      writeFileSync(fd, `${process.pid} ${processStart(process.pid) ?? ''}\n`);
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let text: string;
    let age: number;
    try {
      text = readFileSync(lock, 'utf8');
      age = Date.now() - statSync(lock).mtimeMs;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile
      throw err;
    }
    const [pidText = '', started = ''] = text.trim().split(/\s+/);
    const holder = Number(pidText);
    // Made but not yet written: its maker is between the create and the write.
    if (pidText === '' && age < 5000) {
      await sleep(50);
      continue;
    }
    // A lock of the older form names only a pid: it still counts while that pid is a matchlock
    // CLI, and is taken over once the pid names anything else (pid 1, another program).
    const stale = started === '' ? !isMatchlockCli(holder) : processStart(holder) !== started;
    if (!Number.isInteger(holder) || holder <= 0 || !pidAlive(holder) || stale) {
      rmSync(lock, { force: true });
      continue;
    }
    if (Date.now() - start > waitMs) throw cliError(`another hub setup (pid ${holder}) holds ${lock}; wait for it to end`, EXIT.precondition);
    await sleep(200);
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { force: true });
    // A directory made only for the lock goes with it when no record was written there.
    if (madeDir && !existsSync(record)) {
      for (let d = dirname(record); d.length >= madeDir.length; d = dirname(d)) {
        try {
          rmdirSync(d);
        } catch {
          break;
        }
      }
    }
  }
}

/** Whether `pid` runs a matchlock CLI: an argument names its bin (bin/matchlock, bin/matchlock.js) or its build (dist/cli/). */
function isMatchlockCli(pid: number): boolean {
  return (argvOf(pid) ?? []).some((a) => /(^|\/)bin\/matchlock(\.js)?$/.test(a) || /(^|\/)dist\/cli\//.test(a));
}

/**
 * Refuses to set up `c` while another hub (another state dir) is recorded and its state file
 * is there: both would own the one nftables table `matchlock_hub` and the one record, so the
 * second would replace the first's NAT and tearing either down would remove both's. A record
 * whose hub is gone (no state file) is replaced. Throws a CLI error (exit 6).
 */
export function refuseSecondHub(c: HubConfig, command: string, record = hubRecordPath()): void {
  const other = recordedHub(record);
  if (!other || other.stateDir === resolve(c.stateDir) || !existsSync(join(other.stateDir, 'hub-state.json'))) return;
  throw cliError(
    `${command}: a hub is already set up on this host: ${other.interface} ${other.address} (state dir ${other.stateDir}, recorded in ${record}); ` +
      `one hub per host (its nftables table ${NFT_TABLE} and its record are the host's). Tear it down first with: matchlock hub teardown`,
    EXIT.precondition,
  );
}

/** Records `c` as this host's hub (what `status`, `leases`, `teardown` and `inspect --hub` read). */
export function recordHub(c: HubConfig, by: string, record = hubRecordPath()): void {
  checkRecordable(c);
  mkdirSync(dirname(record), { recursive: true, mode: 0o750 });
  const text = `# Written by ${by}; hub status, leases and teardown read it.\n${hubConfigYaml(c)}`;
  if (!existsSync(record) || readFileSync(record, 'utf8') !== text) writeFileSync(record, text);
}

/** Removes the record when it names this hub (its state dir); another hub's record stays. */
export function forgetHub(c: Pick<HubConfig, 'stateDir'>, record = hubRecordPath()): void {
  if (recordedHub(record)?.stateDir === resolve(c.stateDir)) rmSync(record, { force: true });
}

/**
 * Sets the hub up and records it; when recording fails, a hub this call made is torn down
 * again, so a failed command leaves neither.
 */
export async function setupRecordedHub(c: HubConfig, by: string, names: HubFlagNames = {}): Promise<{ made: boolean }> {
  const { hubRecorded, hubSetup, hubTeardown } = await import('../hub/hub.js');
  const made = !hubRecorded(c);
  // Before anything is made: a hub that could not be read back from its record would be up
  // with no command able to see or remove it.
  try {
    checkRecordable(c);
  } catch (err) {
    throw cliError((err as Error).message, EXIT.usage);
  }
  await hubSetup(c, names);
  try {
    recordHub(c, by);
  } catch (err) {
    if (made) await hubTeardown(c);
    throw err;
  }
  return { made };
}

/** `matchlock hub`: the LAN, DHCP and NAT that MicroVMs get their addresses and their way out from. */
/** The values commander parsed for the hub flags (named `<prefix><flag>`), keyed by flag. */
export function hubFlagValues(opts: Record<string, unknown>, prefix: string): Record<string, unknown> {
  const camel = (k: string) => k.replace(/-([a-z])/g, (_, x: string) => x.toUpperCase());
  return Object.fromEntries(HUB_FLAGS.map(([flag]) => [flag, opts[camel(`${prefix}${flag}`)]]));
}

/** MAC -> "namespace/name" of the MicroVM that owns it, from a reachable matchlockd. */
async function owners(c: ReturnType<typeof connect>): Promise<Map<string, string>> {
  try {
    const res = await c.listMicroVMs(create(ListMicroVMsRequestSchema, {}));
    const out = new Map<string, string>();
    for (const vm of res.microvm) {
      const spec = vm.spec;
      if (!spec?.uid) continue;
      for (const iface of spec.interfaces) {
        // Guest MACs are the spec's or derived from the uid, the same rule the runtime uses.
        out.set((iface.guestMac ?? generatedMac(spec.uid, iface.deviceId)).toLowerCase(), `${spec.namespace}/${spec.id}`);
      }
    }
    return out;
  } finally {
    c.close();
  }
}

export function hubCommand(io: Io, output: () => string, connectOptions: () => ConnectOptions): Command {
  const hub = new Command('hub').description('network hub: LAN interface, DHCP server, NAT to the uplink');
  const withConfig = (c: Command) => {
    c.option('-f, --file <hub.yaml>', 'hub config (keys as the flags name them)');
    for (const [flag, help] of HUB_FLAGS) c.option(`--${flag} <value>`, help);
    return c;
  };
  const record = hubRecordPath();
  /**
   * -f and the flags over the defaults; with neither, the record setup left. A hub named by
   * flags never takes the settings it does not name from another hub's record.
   */
  const config = (opts: Record<string, unknown>): HubConfig => {
    const flags = hubFlagValues(opts, '');
    const named = typeof opts.file === 'string' || Object.values(flags).some((v) => v !== undefined);
    const file = typeof opts.file === 'string' ? opts.file : !named && existsSync(record) ? record : undefined;
    try {
      return loadHubConfig(file, flags);
    } catch (err) {
      throw cliError((err as Error).message, EXIT.usage);
    }
  };
  // Hub failures carry their codes (FailedPrecondition: exit 6); main maps them.
  const wrap = (fn: () => Promise<void>) => fn();
  withConfig(hub.command('setup').description('bring the hub up (idempotent)')).action((o: Record<string, unknown>) =>
    wrap(async () => {
      const c = config(o);
      await withHubLock(async () => {
        refuseSecondHub(c, 'hub setup', record);
        await setupRecordedHub(c, 'matchlock hub setup');
      }, record);
      io.out(documentText(output(), { interface: c.interface, address: c.address, rangeStart: c.rangeStart, rangeEnd: c.rangeEnd, dhcp: c.dhcp, uplink: c.uplink }) ?? `hub ${c.interface} up: ${c.address}, DHCP ${c.rangeStart}-${c.rangeEnd} (${c.dhcp}), NAT out of ${c.uplink}\n`);
    }),
  );
  withConfig(hub.command('teardown').description('remove exactly what setup made')).action((o: Record<string, unknown>) =>
    wrap(async () => {
      const c = config(o);
      // Under the lock setup holds: a teardown between a setup's steps would remove the state
      // the setup is writing.
      const removed = await withHubLock(async () => {
        const gone = await (await import('../hub/hub.js')).hubTeardown(c);
        // No state: nothing is known to be this hub's, so nothing is removed and the record stays
        // (it may be the only pointer left to a hub whose state was lost).
        if (!gone) throw cliError(`no hub state at ${join(c.stateDir, 'hub-state.json')}: nothing removed${existsSync(record) ? ` (the record ${record} stays)` : ''}`, EXIT.precondition);
        forgetHub(c, record);
        return gone;
      }, record);
      io.out(documentText(output(), { removed: removed.interface }) ?? `hub ${removed.interface} removed\n`);
    }),
  );
  withConfig(hub.command('status').description('each piece up or down, with the reason')).action((o: Record<string, unknown>) =>
    wrap(async () => {
      const pieces = await (await import('../hub/hub.js')).hubStatus(config(o));
      io.out(documentText(output(), pieces) ?? table([['PIECE', 'STATE', 'DETAIL'], ...pieces.map((p) => [p.piece, p.ok ? 'up' : 'down', p.detail + (p.fix ? `  -> fix: ${p.fix}` : '')])]));
      if (pieces.some((p) => !p.ok)) throw cliError('some pieces are down', EXIT.precondition);
    }),
  );
  withConfig(hub.command('leases').description('current DHCP leases')).action((o: Record<string, unknown>) =>
    wrap(async () => {
      const leases = await (await import('../hub/hub.js')).hubLeases(config(o));
      // The owning MicroVM when a matchlockd answers; leases stand on their own otherwise. Bad
      // connection flags (--host, the TLS files) are refused as by every command that dials.
      const c = connect({ ...connectOptions(), timeoutMs: 3000 });
      const vms = await owners(c).catch(() => new Map<string, string>());
      const rows = leases.map((l) => ({ ...l, microvm: vms.get(l.mac) ?? '' }));
      io.out(documentText(output(), rows) ?? table([['IP', 'MAC', 'HOSTNAME', 'EXPIRES', 'MICROVM'], ...rows.map((l) => [l.ip, l.mac, l.hostname || '-', l.expires, l.microvm || '-'])]));
    }),
  );
  return hub;
}
