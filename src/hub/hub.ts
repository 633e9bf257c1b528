import { ErrorCode, MatchlockError } from '../core/errors.js';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run } from '../adapters/exec.js';
import { findBinary } from '../daemon/providers.js';
import { Iproute2Network } from '../adapters/network/iproute2/network.js';
import { pidAlive, processMentions } from '../adapters/vmm/process.js';
import { subnetOf, type HubConfig } from './config.js';
import { parseDnsmasqLeases, parseIscLeases, type Lease } from './leases.js';
import { dhcpdConf, dnsmasqArgs, nftRuleset, NFT_TABLE } from './render.js';

export { parseDnsmasqLeases, parseIscLeases, type Lease };

/** The host cannot take the hub as asked (a missing tool, a kernel without 802.1Q): FailedPrecondition. */
function hubError(message: string): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message);
}

/** What setup changed, so teardown undoes exactly that and nothing else. */
interface HubState {
  /** The LAN link this state is about (absent in states written by earlier versions). */
  interface?: string | undefined;
  createdLink: boolean;
  /** The addresses (CIDR) setup added to the link; one unless a re-run's --address failed to replace it. */
  addedAddresses: string[];
  /** Written by earlier versions: the config's address was added. Read as addedAddresses. */
  addedAddress?: boolean | undefined;
  /** ip_forward before setup, when setup changed it. */
  ipForwardBefore?: string | undefined;
  nft: boolean;
  dhcp?: { backend: 'isc' | 'dnsmasq'; pid: number } | undefined;
  files: string[];
}

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function hubFiles(c: HubConfig) {
  const f = (n: string) => join(c.stateDir, n);
  return { state: f('hub-state.json'), conf: f('dhcpd.conf'), iscLeases: f('dhcpd.leases'), dnsmasqLeases: f('dnsmasq.leases'), pid: f('dhcp.pid'), log: f('dhcp.log'), unit: f('matchlock-hub-dhcp.service') };
}

const links = new Iproute2Network();
const linkExists = (name: string) => links.get(name);

async function hasAddress(name: string, cidr: string): Promise<boolean> {
  const { stdout } = await run('ip', ['-json', 'addr', 'show', 'dev', name]);
  const [l] = JSON.parse(stdout) as { addr_info?: { local: string; prefixlen: number }[] }[];
  return (l?.addr_info ?? []).some((a) => `${a.local}/${a.prefixlen}` === cidr);
}

async function readState(c: Pick<HubConfig, 'stateDir'>, address?: string): Promise<HubState | undefined> {
  let state: HubState;
  try {
    state = JSON.parse(await readFile(join(c.stateDir, 'hub-state.json'), 'utf8')) as HubState;
  } catch {
    return undefined;
  }
  state.addedAddresses ??= state.addedAddress && address ? [address] : [];
  delete state.addedAddress;
  return state;
}

/** Whether a hub's state file is there: setup made (part of) that hub and teardown has not run. */
export function hubRecorded(c: Pick<HubConfig, 'stateDir'>): boolean {
  return existsSync(join(c.stateDir, 'hub-state.json'));
}

function dhcpRunning(state: HubState | undefined, c: HubConfig): boolean {
  const d = state?.dhcp;
  return !!d && pidAlive(d.pid) && processMentions(d.pid, c.stateDir);
}

/**
 * Brings the hub up from its config: LAN link, address, IP forwarding, NAT, DHCP server.
 * Idempotent: what is already right is left alone, and what setup itself made is recorded. A
 * setup that fails part way undoes what this run made (a link, an address, ip_forward, the nft
 * table, files, the state directory) before it throws; what was there before it stays.
 */
export async function hubSetup(c: HubConfig): Promise<void> {
  const files = hubFiles(c);
  // What the host must already have is checked before anything is written, the state
  // directory included: a refused setup leaves nothing behind.
  if (!(await linkExists(c.uplink))) throw hubError(`uplink ${c.uplink} not found: name the interface that leads out of this host`);
  if (c.mode === 'vlan' && !(await linkExists(c.interface)) && !(await linkExists(c.parent ?? ''))) throw hubError(`parent ${c.parent} for the VLAN not found`);
  const server = which(c.dhcp === 'isc' ? 'dhcpd' : 'dnsmasq');
  if (!findBinary('nft')) throw hubError('nft is not installed (apt-get install nftables)');
  // A state dir is one hub's: another link would leave the first one's link and address unrecorded.
  const held = (await readState(c))?.interface;
  if (held !== undefined && held !== c.interface) {
    throw hubError(`state dir ${c.stateDir} holds the hub on ${held}, not ${c.interface}: tear that hub down first (matchlock hub teardown --interface ${held} --state-dir ${c.stateDir}) or give another --state-dir`);
  }

  const undo: (() => Promise<unknown>)[] = [];
  try {
    const madeDir = await mkdir(c.stateDir, { recursive: true, mode: 0o750 });
    if (madeDir) undo.push(() => rmEmptyDirs(c.stateDir, madeDir));
    await setupSteps(c, files, server, undo);
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => undefined);
    throw err;
  }
}

/** Removes `dir` and its parents up to and including `top` while they are empty. */
async function rmEmptyDirs(dir: string, top: string): Promise<void> {
  for (let d = dir; d.length >= top.length; d = dirname(d)) {
    if (!(await rmdir(d).then(() => true, () => false))) return;
  }
}

async function setupSteps(c: HubConfig, files: ReturnType<typeof hubFiles>, server: string, undo: (() => Promise<unknown>)[]): Promise<void> {
  const previous = await readState(c, c.address);
  const state: HubState = previous ?? { interface: c.interface, createdLink: false, addedAddresses: [], nft: false, files: [] };
  state.interface ??= c.interface;
  const save = () => writeFile(files.state, JSON.stringify(state, null, 1));
  // A state file this run wrote first goes when the run fails; an earlier run's is rewritten as it was.
  const before = previous ? JSON.stringify(previous, null, 1) : undefined;
  undo.push(() => (before === undefined ? rm(files.state, { force: true }) : writeFile(files.state, before)));
  const own = (p: string) => {
    if (state.files.includes(p)) return;
    state.files.push(p);
    if (!existsSync(p)) undo.push(() => rm(p, { force: true }));
  };
  /** A file this run rewrites: a failed run puts back what an earlier run wrote there. */
  const rewrite = async (p: string, text: string) => {
    const old = await readFile(p, 'utf8').catch(() => undefined);
    own(p);
    if (old !== undefined) undo.push(() => writeFile(p, old));
    await writeFile(p, text);
  };
  own(files.state);

  if (!(await linkExists(c.interface))) {
    if (c.mode === 'vlan') {
      try {
        await run('ip', ['link', 'add', 'link', c.parent ?? '', 'name', c.interface, 'type', 'vlan', 'id', String(c.vlanId)]);
      } catch (err) {
        if (/Unknown device type|not supported/i.test((err as Error).message)) {
          throw hubError(`this kernel cannot make 802.1Q VLAN links (ip link add … type vlan: Unknown device type); for a hub on one machine use mode: bridge`);
        }
        throw err;
      }
    } else {
      await run('ip', ['link', 'add', c.interface, 'type', 'bridge']);
    }
    undo.push(() => run('ip', ['link', 'del', 'dev', c.interface]));
    state.createdLink = true;
    await save();
  }
  await run('ip', ['link', 'set', 'dev', c.interface, 'up']);
  // An address an earlier run added and this config no longer names is replaced, not stacked.
  // It goes first: removing a primary address also removes the secondaries of its subnet
  // (net.ipv4.conf.*.promote_secondaries is off by default), the new one among them.
  for (const old of state.addedAddresses.filter((a) => a !== c.address)) {
    if (await hasAddress(c.interface, old)) {
      await run('ip', ['addr', 'del', old, 'dev', c.interface]);
      undo.push(() => run('ip', ['addr', 'add', old, 'dev', c.interface]));
    }
    state.addedAddresses = state.addedAddresses.filter((a) => a !== old);
    await save();
  }
  if (!(await hasAddress(c.interface, c.address))) {
    await run('ip', ['addr', 'add', c.address, 'dev', c.interface]);
    undo.push(() => run('ip', ['addr', 'del', c.address, 'dev', c.interface]));
    if (!state.addedAddresses.includes(c.address)) state.addedAddresses.push(c.address);
    await save();
  }
  const forward = (await readFile(IP_FORWARD, 'utf8')).trim();
  if (forward !== '1') {
    state.ipForwardBefore ??= forward;
    await writeFile(IP_FORWARD, '1\n');
    undo.push(() => writeFile(IP_FORWARD, `${forward}\n`));
    await save();
  }
  // Replace the table as a whole in one transaction: re-running never duplicates rules. A failed
  // run puts back the table that was there before it (or none).
  const tableBefore = await run('nft', ['list', 'table', 'ip', NFT_TABLE]).then((r) => r.stdout, () => undefined);
  await run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n${nftRuleset(c)}` });
  undo.push(() => run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n${tableBefore ?? ''}` }));
  state.nft = true;
  await save();

  const wanted = c.dhcp === 'isc' ? dhcpdConf(c) : dnsmasqArgs(c, files.dnsmasqLeases, files.pid).join('\n');
  const current = await readFile(files.conf, 'utf8').catch(() => '');
  if (dhcpRunning(state, c) && current === wanted && state.dhcp?.backend === c.dhcp) return;
  await stopDhcp(state);
  await rewrite(files.conf, wanted);
  const leases = c.dhcp === 'isc' ? files.iscLeases : files.dnsmasqLeases;
  own(leases);
  if (!existsSync(leases)) await writeFile(leases, '');
  // dhcpd keeps the previous lease file as <leases>~ each time it rewrites it (isc-dhcp 4.4,
  // server/db.c new_lease_file): a file of the hub's too.
  if (c.dhcp === 'isc') own(`${files.iscLeases}~`);
  own(files.log);
  own(files.pid);
  const [cmd, args] = c.dhcp === 'isc'
    ? ['dhcpd', ['-4', '-f', '-cf', files.conf, '-lf', files.iscLeases, '-pf', files.pid, c.interface]] as const
    : ['dnsmasq', dnsmasqArgs(c, files.dnsmasqLeases, files.pid)] as const;
  // The same server as a systemd unit, for hosts where systemd should supervise it.
  await rewrite(files.unit, dhcpUnit(`${server} ${args.join(' ')}`, c));
  const log = openSync(files.log, 'a');
  const child = spawn(cmd, [...args], { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  child.unref();
  // A spawn failure is an 'error' event; unheard, it would end the process instead of failing setup.
  const exited = new Promise<number | null>((r) => {
    child.once('exit', r);
    child.on('error', () => r(null));
  });
  const early = await Promise.race([exited, sleep(500).then(() => 'running' as const)]);
  if (early !== 'running' || child.pid === undefined) {
    const out = (await readFile(files.log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' ');
    throw hubError(`${cmd} exited at once: ${out}`);
  }
  state.dhcp = { backend: c.dhcp, pid: child.pid };
  await save();
}

function which(cmd: string): string {
  const found = findBinary(cmd);
  if (!found) throw hubError(`${cmd} is not installed (apt-get install ${cmd === 'dhcpd' ? 'isc-dhcp-server' : 'dnsmasq-base'})`);
  return found;
}

/** A unit that runs the hub's DHCP server in the foreground with restarts; install it under /etc/systemd/system. */
export function dhcpUnit(execStart: string, c: HubConfig): string {
  return [
    '[Unit]',
    `Description=matchlock hub DHCP server (${c.dhcp}) on ${c.interface}`,
    'After=network-online.target',
    'Wants=network-online.target',
    '',
    '[Service]',
    `ExecStart=${execStart}`,
    'Restart=always',
    'RestartSec=2',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

async function stopDhcp(state: HubState): Promise<void> {
  const pid = state.dhcp?.pid;
  if (pid && pidAlive(pid)) {
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 50 && pidAlive(pid); i++) await sleep(100);
    if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  }
  state.dhcp = undefined;
}

/**
 * Undoes what setup recorded, in reverse order; what setup did not make is left alone. Needs
 * only the hub's state dir (and its interface, for states written before the state named it):
 * the link, the addresses and everything else come from the state.
 */
export async function hubTeardown(c: Pick<HubConfig, 'interface' | 'stateDir'> & { address?: string }): Promise<void> {
  const state = await readState(c, c.address);
  if (!state) return;
  const link = state.interface ?? c.interface;
  await stopDhcp(state);
  if (state.nft) await run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n` });
  if (state.ipForwardBefore !== undefined) await writeFile(IP_FORWARD, `${state.ipForwardBefore}\n`);
  if (!state.createdLink && (await linkExists(link))) {
    for (const a of state.addedAddresses) if (await hasAddress(link, a)) await run('ip', ['addr', 'del', a, 'dev', link]);
  }
  if (state.createdLink && (await linkExists(link))) await run('ip', ['link', 'del', 'dev', link]);
  for (const f of state.files) await rm(f, { force: true });
  await rmdir(c.stateDir).catch(() => undefined);
}

export interface Piece {
  piece: string;
  ok: boolean;
  detail: string;
}

/** Each piece of the hub up or down, with the reason. */
export async function hubStatus(c: HubConfig): Promise<Piece[]> {
  const state = await readState(c);
  const out: Piece[] = [];
  const link = await linkExists(c.interface);
  out.push({ piece: 'interface', ok: !!link?.up, detail: link ? `${c.interface} ${link.up ? 'up' : 'down'}` : `${c.interface} missing` });
  const addr = link ? await hasAddress(c.interface, c.address) : false;
  out.push({ piece: 'address', ok: addr, detail: addr ? `${c.address} on ${c.interface}` : `${c.address} not on ${c.interface}` });
  const up = await linkExists(c.uplink);
  out.push({ piece: 'uplink', ok: !!up?.up, detail: up ? `${c.uplink} ${up.up ? 'up' : 'down'}` : `${c.uplink} missing` });
  const fwd = (await readFile(IP_FORWARD, 'utf8')).trim() === '1';
  out.push({ piece: 'ip-forward', ok: fwd, detail: `net.ipv4.ip_forward = ${fwd ? 1 : 0}` });
  const nft = await run('nft', ['list', 'table', 'ip', NFT_TABLE]).then((r) => r.stdout, () => '');
  const s = subnetOf(c.address);
  const nat = nft.includes('masquerade') && nft.includes(`${s.network}/${s.prefix}`) && nft.includes(`"${c.uplink}"`);
  out.push({ piece: 'nat', ok: nat, detail: nat ? `table ip ${NFT_TABLE}: masquerade ${s.network}/${s.prefix} out of ${c.uplink}` : `table ip ${NFT_TABLE} missing or without the masquerade rule` });
  const dhcp = dhcpRunning(state, c);
  out.push({ piece: 'dhcp', ok: dhcp, detail: dhcp ? `${state?.dhcp?.backend} pid ${state?.dhcp?.pid}` : `no ${c.dhcp} server running for this hub` });
  return out;
}

/**
 * Current leases from the backend's lease file (isc: the last block for an IP wins). An empty
 * file is no leases; a missing one is a hub that is not set up (setup creates the file before
 * the server starts): FailedPrecondition naming the file.
 */
export async function hubLeases(c: HubConfig, now = Date.now()): Promise<Lease[]> {
  const files = hubFiles(c);
  const file = c.dhcp === 'dnsmasq' ? files.dnsmasqLeases : files.iscLeases;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw hubError(`no hub on ${c.interface} with state dir ${c.stateDir}: its lease file ${file} does not exist (set it up with matchlock hub setup)`);
  }
  return c.dhcp === 'dnsmasq' ? parseDnsmasqLeases(text, now) : parseIscLeases(text, now);
}
