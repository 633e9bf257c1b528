import { ErrorCode, MatchlockError } from '../core/errors.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync, statSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rename, rm, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { run } from '../adapters/exec.js';
import { findBinary } from '../daemon/providers.js';
import { Iproute2Network } from '../adapters/network/iproute2/network.js';
import { livePidsWhere, pidAlive, processMentions } from '../adapters/vmm/process.js';
import { subnetOf, type HubConfig } from './config.js';
import { parseDnsmasqLeases, parseIscLeases, type Lease } from './leases.js';
import { dhcpdConf, dnsmasqArgs, nftRuleset, NFT_TABLE } from './render.js';
import { systemdCommandLine, systemdWord } from '../host/unit.js';

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
  /** The link was there and down before setup set it up: teardown sets it down again. */
  linkWasDown?: boolean | undefined;
  /** ip_forward before setup, when setup changed it. */
  ipForwardBefore?: string | undefined;
  nft: boolean;
  dhcp?: { backend: 'isc' | 'dnsmasq'; pid: number } | undefined;
  /** The files setup created (absolute paths in the state dir): teardown removes them. */
  files: string[];
  /**
   * Files of the state dir that were there before setup first wrote them (an admin's
   * dhcpd.conf or dhcpd.leases), with their content then (base64) and their permission bits
   * and owner: teardown puts them back. Earlier versions recorded the content alone (a string).
   */
  saved?: Record<string, string | SavedFile> | undefined;
  /** `host dev` installed the guest guard with this hub (none was there): its --down removes it. */
  devGuard?: boolean | undefined;
  /** The topmost directory setup made for the state dir (the state dir itself or a parent of it). */
  madeDir?: string | undefined;
}

/** A file as it was: content (base64), permission bits (st_mode & 07777), owner and group. */
interface SavedFile {
  content: string;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * Writes a file back as it was. dhcpd replaces its lease file by a new inode (the admin's is
 * renamed to dhcpd.leases~), so the content alone would come back with dhcpd's mode and owner:
 * they are set again too, the owner first (chown(2) may clear set-id bits).
 */
async function putBack(path: string, saved: string | SavedFile): Promise<void> {
  if (typeof saved === 'string') return writeFile(path, Buffer.from(saved, 'base64'));
  await writeFile(path, Buffer.from(saved.content, 'base64'));
  await chown(path, saved.uid, saved.gid);
  await chmod(path, saved.mode);
}

/**
 * Each change is recorded in the state file before it is made (a kill between the two leaves a
 * record of something that may not be there, which teardown checks, never the other way round).
 */

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function hubFiles(c: Pick<HubConfig, 'stateDir'>) {
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
  const file = join(c.stateDir, 'hub-state.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    // ENOTDIR: the state dir is a file, which holds no hub either.
    if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) return undefined;
    throw hubError(`hub state ${file} cannot be read (${(err as Error).message})`);
  }
  // Not "no hub": what this names may be up. Written by rename, so only a hand-edit breaks it.
  const unreadable = (why: string) => hubError(`hub state ${file} cannot be read (${why}); fix it, or remove what it named by hand and delete it`);
  let state: HubState;
  try {
    state = JSON.parse(text) as HubState;
  } catch (err) {
    throw unreadable((err as Error).message);
  }
  const why = stateShapeError(state, resolve(c.stateDir));
  if (why) throw unreadable(why);
  state.addedAddresses ??= state.addedAddress && address ? [address] : [];
  delete state.addedAddress;
  return state;
}

/**
 * Why `s` is not a hub state (undefined when it is one). Teardown removes the files a state
 * names, so only files directly in the state dir are taken: a hand-edited `"files": "abc"`
 * would otherwise name a, b and c in the working directory.
 */
function stateShapeError(s: unknown, stateDir: string): string | undefined {
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return `holds ${JSON.stringify(s)}, not a JSON object`;
  const o = s as Record<string, unknown>;
  const optional = (key: string, ok: (v: unknown) => boolean, rule: string) => (o[key] === undefined || ok(o[key]) ? undefined : `"${key}" must be ${rule}`);
  const bool = (v: unknown) => typeof v === 'boolean';
  const ours = (p: unknown) => typeof p === 'string' && isAbsolute(p) && resolve(p) === p && dirname(p) === stateDir;
  for (const key of ['createdLink', 'nft']) if (!bool(o[key])) return `"${key}" must be true or false`;
  if (!Array.isArray(o.files) || !o.files.every(ours)) return `"files" must be a list of absolute paths directly in ${stateDir}`;
  return (
    optional('interface', (v) => typeof v === 'string' && v !== '', 'an interface name') ??
    optional('addedAddresses', (v) => Array.isArray(v) && v.every((a) => typeof a === 'string' && /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(a)), 'a list of CIDR addresses') ??
    optional('addedAddress', bool, 'true or false') ??
    optional('linkWasDown', bool, 'true or false') ??
    optional('devGuard', bool, 'true or false') ??
    optional('ipForwardBefore', (v) => typeof v === 'string' && /^\d+$/.test(v), 'the old value of ip_forward') ??
    optional('dhcp', (v) => {
      const d = v as { backend?: unknown; pid?: unknown };
      return typeof v === 'object' && v !== null && (d.backend === 'isc' || d.backend === 'dnsmasq') && Number.isSafeInteger(d.pid) && (d.pid as number) > 0;
    }, 'a backend (isc or dnsmasq) and a pid') ??
    optional('saved', (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.entries(v).every(([k, t]) => ours(k) && (typeof t === 'string' || savedFile(t))), `a map of paths directly in ${stateDir} to their content, mode and owner`) ??
    optional('madeDir', (v) => typeof v === 'string' && isAbsolute(v) && resolve(v) === v && (stateDir === v || stateDir.startsWith(`${v}/`)), 'the state dir or one of its parents')
  );
}

function savedFile(t: unknown): boolean {
  const f = t as Partial<SavedFile>;
  const id = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0;
  return typeof t === 'object' && t !== null && typeof f.content === 'string' && id(f.mode) && (f.mode as number) <= 0o7777 && id(f.uid) && id(f.gid);
}

/**
 * Each DHCP server this process started, with its exit, so stopping one also reaps it. The
 * child is unreferenced (the CLI ends while its server runs on); stopping it references it
 * again, as its exit event is then the only thing the process waits for.
 */
const spawned = new Map<number, { child: ChildProcess; exited: Promise<unknown> }>();

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
export async function hubSetup(c: HubConfig, names: HubFlagNames = {}): Promise<void> {
  const files = hubFiles(c);
  const stateDirFlag = names.stateDir ?? '--state-dir';
  // What the host must already have is checked before anything is written, the state
  // directory included: a refused setup leaves nothing behind.
  if (!(await linkExists(c.uplink))) throw hubError(`uplink ${c.uplink} not found: name the interface that leads out of this host`);
  if (c.mode === 'vlan' && !(await linkExists(c.interface)) && !(await linkExists(c.parent ?? ''))) throw hubError(`parent ${c.parent} for the VLAN not found`);
  const server = which(c.dhcp === 'isc' ? 'dhcpd' : 'dnsmasq');
  // The server's systemd unit runs it by this path: one systemd refuses is refused before anything is made.
  try {
    systemdWord(server, true);
  } catch (err) {
    throw hubError(`${c.dhcp === 'isc' ? 'dhcpd' : 'dnsmasq'} at ${server}: ${(err as Error).message.replace(/^"[^]*?": /, '')}; put it on PATH under another directory`);
  }
  if (!findBinary('nft')) throw hubError('nft is not installed (apt-get install nftables)');
  checkStateDir(c.stateDir, stateDirFlag);
  // A state dir is one hub's: another link would leave the first one's link and address unrecorded.
  const previous = await readState(c);
  const held = previous?.interface;
  if (held !== undefined && held !== c.interface) {
    throw hubError(`state dir ${c.stateDir} holds the hub on ${held}, not ${c.interface}: tear that hub down first (matchlock hub teardown --interface ${held} --state-dir ${c.stateDir}) or give another ${stateDirFlag}`);
  }

  await refuseForeignLink(c);
  // The table is the host's one hub's: one this hub's state did not make belongs to another hub
  // (under another record) or to a setup whose state is gone; replacing it would cut that hub's NAT.
  if (!previous?.nft && (await run('nft', ['list', 'table', 'ip', NFT_TABLE]).then(() => true, () => false))) {
    throw hubError(
      `nftables table ip ${NFT_TABLE} exists and this hub's state (${files.state}) did not make it: another hub on this host owns it. ` +
        `\`nft list table ip ${NFT_TABLE}\` shows its LAN and uplink; tear that hub down with matchlock hub teardown (with the MATCHLOCK_HUB_RECORD it was recorded under), ` +
        `or, if no hub owns it any more, delete it with: nft delete table ip ${NFT_TABLE}`,
    );
  }

  const undo: (() => Promise<unknown>)[] = [];
  try {
    const madeDir = await mkdir(c.stateDir, { recursive: true, mode: 0o750 });
    if (madeDir) undo.push(() => rmEmptyDirs(c.stateDir, madeDir));
    await setupSteps(c, files, server, undo, madeDir);
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => undefined);
    // A file of the state dir that cannot be written (a directory where a file goes, a full
    // disk) is named with the flag that chose the directory, not as a bare errno.
    const e = err as NodeJS.ErrnoException;
    if (!(err instanceof MatchlockError) && e.code && typeof e.path === 'string' && (e.path === c.stateDir || e.path.startsWith(`${c.stateDir}/`))) {
      throw hubError(`${stateDirFlag} ${c.stateDir}: ${e.message}`);
    }
    throw err;
  }
}

/** How the calling command spells the flags hub errors name (host dev's is --hub-state-dir). */
export interface HubFlagNames {
  stateDir?: string | undefined;
}

/**
 * Refuses a state dir that cannot be made or written before anything is changed: the nearest
 * part of the path that exists must be a directory this process can write (access(2) W_OK,
 * which also fails on an immutable directory, EPERM). A file in the way is bad input
 * (InvalidArgument); a directory that refuses writes is the host's (FailedPrecondition).
 */
function checkStateDir(stateDir: string, flag: string): void {
  for (let d = stateDir; ; d = dirname(d)) {
    let st;
    try {
      st = statSync(d);
    } catch (err) {
      // ENOTDIR: a file is in the way further up, named when the walk reaches it.
      if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '') && d !== '/') continue;
      throw hubError(`${flag} ${stateDir}: ${(err as Error).message}`);
    }
    if (!st.isDirectory()) throw new MatchlockError(ErrorCode.InvalidArgument, `${flag} ${stateDir}: ${d} is not a directory`);
    try {
      accessSync(d, constants.W_OK);
    } catch (err) {
      throw hubError(`${flag} ${stateDir}: ${d} cannot be written (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    return;
  }
}

/**
 * An existing link of the wrong kind is refused before anything is made: bridge mode attaches
 * TAPs to a bridge (a veth or an ethernet port would take the address but never switch the
 * guests' frames), and vlan mode's link is an 802.1Q link. The kind is iproute2's
 * `linkinfo.info_kind` (ip -details); a plain ethernet port has none.
 */
async function refuseForeignLink(c: HubConfig): Promise<void> {
  const { stdout } = await run('ip', ['-json', '-details', 'link', 'show', 'dev', c.interface]).catch(() => ({ stdout: '' }));
  if (!stdout) return;
  const [l] = JSON.parse(stdout) as { linkinfo?: { info_kind?: string } }[];
  const kind = l?.linkinfo?.info_kind;
  const want = c.mode === 'bridge' ? 'bridge' : 'vlan';
  if (kind !== want) {
    throw new MatchlockError(ErrorCode.InvalidArgument, `--interface ${c.interface}: is a ${kind ?? 'plain (ethernet)'} link, not a ${want}; mode ${c.mode} needs a ${want} (give another --interface for matchlock to make)`);
  }
}

/** Removes `dir` and its parents up to and including `top` while they are empty. */
async function rmEmptyDirs(dir: string, top: string): Promise<void> {
  for (let d = dir; d.length >= top.length; d = dirname(d)) {
    if (!(await rmdir(d).then(() => true, () => false))) return;
  }
}

async function setupSteps(c: HubConfig, files: ReturnType<typeof hubFiles>, server: string, undo: (() => Promise<unknown>)[], madeDir: string | undefined): Promise<void> {
  const previous = await readState(c, c.address);
  const state: HubState = previous ?? { interface: c.interface, createdLink: false, addedAddresses: [], nft: false, files: [] };
  state.interface ??= c.interface;
  if (madeDir !== undefined) state.madeDir = madeDir;
  // Written whole and renamed into place: a setup killed while it saves leaves the old state or
  // the new one, never a truncated file that would read as no hub.
  const save = () => writeAtomic(files.state, JSON.stringify(state, null, 1));
  // A state file this run wrote first goes when the run fails; an earlier run's is rewritten as it
  // was (with the pid of its DHCP server when the undo restarted it).
  let before: HubState | undefined = previous ? (JSON.parse(JSON.stringify(previous)) as HubState) : undefined;
  undo.push(() => (before === undefined ? rm(files.state, { force: true }) : writeFile(files.state, JSON.stringify(before, null, 1))));
  /**
   * A file of the hub's that this run may write (or a server may write or remove): one it
   * creates is recorded for teardown to remove; one that was there before the hub's first run
   * (an admin's) is recorded with its content for teardown to put back. Either way a failed run
   * puts back what was there when it began. Anything but a file (a directory) is left alone.
   */
  state.saved ??= {};
  const saved = state.saved;
  const own = async (p: string) => {
    const old = await readFile(p).then((b): Buffer | null | undefined => b, (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : undefined));
    if (old === undefined) return;
    const st = old === null ? undefined : await stat(p);
    if (old === null) {
      if (!state.files.includes(p) && !(p in saved)) {
        state.files.push(p);
        await save();
      }
      undo.push(() => rm(p, { force: true }));
      return;
    }
    const was: SavedFile = { content: old.toString('base64'), mode: (st?.mode ?? 0o644) & 0o7777, uid: st?.uid ?? 0, gid: st?.gid ?? 0 };
    if (!state.files.includes(p) && !(p in saved)) {
      saved[p] = was;
      await save();
    }
    undo.push(() => putBack(p, was));
  };
  const rewrite = async (p: string, text: string) => {
    await own(p);
    await writeFile(p, text);
  };
  await own(files.state);

  const link = await linkExists(c.interface);
  if (!link) {
    state.createdLink = true;
    await save();
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
  } else if (!link.up && !state.createdLink && !state.linkWasDown) {
    state.linkWasDown = true;
    await save();
    undo.push(() => run('ip', ['link', 'set', 'dev', c.interface, 'down']));
  }
  await run('ip', ['link', 'set', 'dev', c.interface, 'up']);
  // An address an earlier run added and this config no longer names is replaced, not stacked.
  for (const old of state.addedAddresses.filter((a) => a !== c.address)) {
    if (await hasAddress(c.interface, old)) {
      await delAddress(c.interface, old);
      undo.push(() => run('ip', ['addr', 'add', old, 'dev', c.interface]));
    }
    state.addedAddresses = state.addedAddresses.filter((a) => a !== old);
    await save();
  }
  if (!(await hasAddress(c.interface, c.address))) {
    if (!state.addedAddresses.includes(c.address)) state.addedAddresses.push(c.address);
    await save();
    await run('ip', ['addr', 'add', c.address, 'dev', c.interface]);
    undo.push(() => delAddress(c.interface, c.address));
  }
  const forward = (await readFile(IP_FORWARD, 'utf8')).trim();
  if (forward !== '1') {
    state.ipForwardBefore ??= forward;
    await save();
    await writeFile(IP_FORWARD, '1\n');
    undo.push(() => writeFile(IP_FORWARD, `${forward}\n`));
  }
  // Replace the table as a whole in one transaction: re-running never duplicates rules. A failed
  // run puts back the table that was there before it (or none).
  const tableBefore = await run('nft', ['list', 'table', 'ip', NFT_TABLE]).then((r) => r.stdout, () => undefined);
  state.nft = true;
  await save();
  await run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n${nftRuleset(c)}` });
  undo.push(() => run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n${tableBefore ?? ''}` }));

  const wanted = c.dhcp === 'isc' ? dhcpdConf(c) : dnsmasqArgs(c, files.dnsmasqLeases, files.pid).join('\n');
  const current = await readFile(files.conf, 'utf8').catch(() => '');
  if (dhcpRunning(state, c) && current === wanted && state.dhcp?.backend === c.dhcp) return;
  // The server that runs now is stopped for the new one; a run that fails after this starts it
  // again from its config (the conf file's undo, pushed later, runs first and puts that back).
  const old = dhcpRunning(state, c) ? state.dhcp : undefined;
  await stopDhcp(state, c.stateDir);
  await save();
  if (old) {
    const iface = state.interface ?? c.interface;
    undo.push(async () => {
      const oldConf = await readFile(files.conf, 'utf8');
      const { child } = await startDhcp(dhcpCommand(old.backend, files, iface, oldConf), files);
      if (before && child.pid !== undefined) before = { ...before, dhcp: { backend: old.backend, pid: child.pid } };
    });
  }
  await rewrite(files.conf, wanted);
  const leases = c.dhcp === 'isc' ? files.iscLeases : files.dnsmasqLeases;
  await own(leases);
  if (!existsSync(leases)) await writeFile(leases, '');
  // dhcpd keeps the previous lease file as <leases>~ each time it rewrites it (isc-dhcp 4.4,
  // server/db.c new_lease_file): a file of the hub's too.
  if (c.dhcp === 'isc') await own(`${files.iscLeases}~`);
  await own(files.log);
  await own(files.pid);
  const [cmd, args] = dhcpCommand(c.dhcp, files, c.interface, wanted);
  // The same server as a systemd unit, for hosts where systemd should supervise it.
  await rewrite(files.unit, dhcpUnit(systemdCommandLine([server, ...args]), c));
  const { child, exited, logFrom } = await startDhcp([cmd, args], files);
  // Recorded as soon as the process exists: a setup killed during the wait below leaves a state
  // that names the server, so a re-run or teardown stops it.
  if (child.pid !== undefined) {
    const pid = child.pid;
    state.dhcp = { backend: c.dhcp, pid };
    await save();
    undo.push(() => stopPid(pid));
  }
  const early = await Promise.race([exited, sleep(500).then(() => 'running' as const)]);
  if (early !== 'running' || child.pid === undefined) {
    const text = await readFile(files.log).then((b) => b.subarray(logFrom).toString('utf8'), () => '');
    throw hubError(`${cmd} exited at once: ${whyDhcpFailed(c.dhcp, text) || '(it wrote nothing to its log)'}`);
  }
}

/** The DHCP server's command line: dhcpd's flags, or dnsmasq's arguments (its conf file is them, one a line). */
function dhcpCommand(backend: 'isc' | 'dnsmasq', files: ReturnType<typeof hubFiles>, iface: string, conf: string): [string, string[]] {
  return backend === 'isc'
    ? ['dhcpd', ['-4', '-f', '-cf', files.conf, '-lf', files.iscLeases, '-pf', files.pid, iface]]
    : ['dnsmasq', conf.split('\n')];
}

/**
 * Starts the DHCP server in the background, its output appended to the hub's log. A pid file
 * left by a server that is gone is removed first: dhcpd refuses to start while the pid it names
 * answers kill(pid, 0), as a zombie or an unrelated process that took the number does.
 */
export async function startDhcp([cmd, args]: [string, string[]], files: ReturnType<typeof hubFiles>) {
  // Only a file: a directory there is the server's to refuse, in its own words.
  await unlink(files.pid).catch(() => undefined);
  const logFrom = existsSync(files.log) ? statSync(files.log).size : 0;
  const log = openSync(files.log, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  child.unref();
  // A spawn failure is an 'error' event; unheard, it would end the process instead of failing setup.
  const exited = new Promise<number | null>((r) => {
    child.once('exit', r);
    child.on('error', () => r(null));
  });
  if (child.pid !== undefined) spawned.set(child.pid, { child, exited });
  return { child, exited, logFrom };
}

/**
 * dhcpd 4.4's fixed text around a fatal error, which never says the cause: its banner and the
 * files it uses, the interfaces it listens and sends on, the advice paragraphs that follow a
 * cause (common/socket.c after "Can't bind to dhcp address: %m"; common/discover.c after "No
 * subnet declaration for …"), and log_fatal's closing text about reporting bugs (omapip/errwarn.c).
 */
const DHCPD_FIXED = [
  /^Internet Systems Consortium DHCP Server/, /^Copyright \d/, /^All rights reserved\.$/, /^For info, please visit/,
  /^(Config|Database|PID) file:/, /^Wrote \d+ (deleted host decls|new dynamic host decls|leases) to leases file\.$/,
  /^(Listening|Sending) on +\S/, /^Server starting service\.$/,
  /^Please make sure there is no other dhcp server$/, /^running and that there's no entry for dhcp or$/,
  /^bootp in \/etc\/inetd\.conf\. +Also make sure you$/, /^are not running HP JetAdmin software, which$/, /^includes a bootp server\.$/,
  /^\*\* Ignoring requests on \S+\. +If this is not what$/, /^you want, please write a subnet declaration$/,
  /^in your dhcpd\.conf file for the network segment$/, /^to which interface \S+ is attached\. \*\*$/,
  /^If you think you have received this message/, /^than a configuration issue/, /^bugs on either our web page/,
  /^before submitting a bug\./, /^process and the information we find helpful/, /^exiting\.$/,
];

/**
 * The lines of a failed server's log that say why: dhcpd's with its fixed text (DHCPD_FIXED)
 * left out, so a cause followed by an advice paragraph is not crowded out by it; dnsmasq
 * prefixes its fatal error with "dnsmasq:".
 */
export function whyDhcpFailed(backend: 'isc' | 'dnsmasq', text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  if (backend === 'dnsmasq') {
    const own = lines.filter((l) => l.startsWith('dnsmasq:'));
    return (own.length ? own : lines).slice(-3).join(' ');
  }
  return lines.filter((l) => !DHCPD_FIXED.some((b) => b.test(l))).slice(-3).join(' ');
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

function which(cmd: string): string {
  const found = findBinary(cmd);
  if (!found) throw hubError(`${cmd} is not installed (apt-get install ${cmd === 'dhcpd' ? 'isc-dhcp-server' : 'dnsmasq-base'})`);
  return found;
}

/**
 * A unit that runs the hub's DHCP server in the foreground with restarts; install it under
 * /etc/systemd/system. `execStart` is a command line as systemd reads it (systemdCommandLine).
 */
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

/**
 * Stops the hub's DHCP servers: the state's (when the pid still names it; a reused pid is
 * another program's) and any process whose arguments name this hub's pid file. A setup killed
 * between starting the server and saving its pid leaves one the state does not name; the pid
 * file path in its command line (dhcpd -pf, dnsmasq --pid-file) is this hub's alone.
 */
async function stopDhcp(state: HubState, stateDir: string): Promise<void> {
  const pid = state.dhcp?.pid;
  const pids = new Set(hubServers(hubFiles({ stateDir }).pid));
  if (pid && (!pidAlive(pid) || processMentions(pid, stateDir))) pids.add(pid);
  for (const p of pids) await stopPid(p);
  state.dhcp = undefined;
}

/** Pids of running processes with `pidFile` as an argument (or as --pid-file=<pidFile>). */
function hubServers(pidFile: string): number[] {
  return livePidsWhere((args) => args.some((a) => a === pidFile || a === `--pid-file=${pidFile}`));
}

/**
 * Stops a DHCP server and waits until it is gone: SIGTERM, SIGKILL after 5 s, then until it is
 * reaped. A server this process started is reaped here (its exit is awaited); one another
 * process started was handed to init when that process ended, and is gone for this hub once it
 * is a zombie (only its parent can reap it) or no longer in /proc.
 */
export async function stopPid(pid: number): Promise<void> {
  const own = spawned.get(pid);
  // Without a reference, an event loop with nothing else to do ends the process here (exit
  // 13, an unsettled top-level await, printing nothing) when the server is already a zombie
  // whose exit event has not been delivered yet.
  own?.child.ref();
  if (pidAlive(pid)) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone between the check and the signal
    }
    for (let i = 0; i < 50 && pidAlive(pid); i++) await sleep(100);
    if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  }
  if (own) {
    await own.exited;
    spawned.delete(pid);
  }
  for (let i = 0; i < 50 && pidAlive(pid); i++) await sleep(100);
}

/**
 * Deletes an address setup added without taking the admin's addresses of the same subnet along:
 * deleting a primary address drops its secondaries unless net.ipv4.conf.<link>.promote_secondaries
 * is 1 (Linux net/ipv4/devinet.c __inet_del_ifa), so it is set to 1 for the delete and put back after.
 */
async function delAddress(link: string, cidr: string): Promise<void> {
  const knob = `/proc/sys/net/ipv4/conf/${link}/promote_secondaries`;
  const was = await readFile(knob, 'utf8').then((t) => t.trim(), () => undefined);
  if (was !== undefined && was !== '1') await writeFile(knob, '1\n');
  try {
    await run('ip', ['addr', 'del', cidr, 'dev', link]);
  } finally {
    if (was !== undefined && was !== '1') await writeFile(knob, `${was}\n`);
  }
}

/**
 * Undoes what setup recorded, in reverse order; what setup did not make is left alone. Needs
 * only the hub's state dir (and its interface, for states written before the state named it):
 * the link, the addresses and everything else come from the state.
 */
export async function hubTeardown(c: Pick<HubConfig, 'interface' | 'stateDir'> & { address?: string }): Promise<{ interface: string; devGuard: boolean } | undefined> {
  const state = await readState(c, c.address);
  if (!state) return undefined;
  const link = state.interface ?? c.interface;
  await stopDhcp(state, c.stateDir);
  if (state.nft) await run('nft', ['-f', '-'], { input: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n` });
  if (state.ipForwardBefore !== undefined) await writeFile(IP_FORWARD, `${state.ipForwardBefore}\n`);
  if (!state.createdLink && (await linkExists(link))) {
    for (const a of state.addedAddresses) if (await hasAddress(link, a)) await delAddress(link, a);
    if (state.linkWasDown) await run('ip', ['link', 'set', 'dev', link, 'down']);
  }
  if (state.createdLink && (await linkExists(link))) await run('ip', ['link', 'del', 'dev', link]);
  // Only what setup made goes: a file that was there before gets its content back, and a state
  // dir that was there before stays (states without madeDir did not make it, or cannot say).
  for (const [f, was] of Object.entries(state.saved ?? {})) await putBack(f, was);
  for (const f of [...state.files.filter((p) => !(p in (state.saved ?? {}))), `${join(c.stateDir, 'hub-state.json')}.tmp`]) await rm(f, { force: true });
  if (state.madeDir !== undefined) await rmEmptyDirs(c.stateDir, state.madeDir);
  return { interface: link, devGuard: state.devGuard === true };
}

/**
 * Records in the hub's state that `host dev` installed the guest guard along with this hub
 * (there was none before), so `host dev --down` removes that guard and never one `host setup`
 * installed for a running daemon. No state: nothing is recorded.
 */
export async function markDevGuard(c: Pick<HubConfig, 'stateDir'>): Promise<void> {
  const state = await readState(c);
  if (!state) return;
  state.devGuard = true;
  await writeAtomic(hubFiles(c).state, JSON.stringify(state, null, 1));
}

/**
 * Clears the record that `host dev` installed the guest guard: `host setup` has installed the
 * guard for a daemon since, which relies on it now, so `host dev --down` must leave it. No
 * state, or no such record: nothing changes.
 */
export async function clearDevGuard(c: Pick<HubConfig, 'stateDir'>): Promise<void> {
  const state = await readState(c);
  if (!state?.devGuard) return;
  delete state.devGuard;
  await writeAtomic(hubFiles(c).state, JSON.stringify(state, null, 1));
}

/** Whether the hub's state records that `host dev` installed the guest guard (false with no state). */
export async function hubDevGuard(c: Pick<HubConfig, 'stateDir'>): Promise<boolean> {
  return (await readState(c))?.devGuard === true;
}

export interface Piece {
  piece: string;
  ok: boolean;
  detail: string;
  /** What to run to bring the piece up, when it is not `matchlock hub setup`. */
  fix?: string | undefined;
}

/** The parts of `nft -j list ruleset` (libnftables-json(5)) the forward check reads. */
interface NftItem {
  chain?: { family: string; table: string; name: string; hook?: string; type?: string; policy?: string };
  rule?: { family: string; table: string; chain: string; expr?: Record<string, unknown>[] };
}

/** A base chain of another table at the forward hook whose policy drop drops the hub's traffic. */
export interface ForwardDrop {
  family: string;
  table: string;
  chain: string;
  /** out: LAN to uplink; back: the replies from the uplink into the LAN. */
  drops: ('out' | 'back')[];
}

/**
 * The forward base chains of other tables (ip and inet families, as iptables-nft's
 * `ip filter FORWARD`) whose policy is drop and that accept neither the hub's traffic out (in
 * on the LAN, out of the uplink) nor the replies back, in their own rules or in the chains they
 * jump or go to. nft(8): a packet must be accepted by every base chain at a hook, so such a
 * chain drops what matchlock_hub accepts (Docker sets iptables' FORWARD policy to drop). A rule
 * counts as accepting a direction when its interface matches admit it and either name an
 * interface of it or it has no other match (for the replies, a conntrack state match is
 * allowed); a rule this does not understand is not counted, so the check errs towards a warning.
 */
export function forwardDrops(ruleset: unknown, lan: string, uplink: string): ForwardDrop[] {
  const items = ((ruleset as { nftables?: NftItem[] })?.nftables ?? []);
  const key = (family: string, table: string, chain: string) => `${family}\0${table}\0${chain}`;
  const rules = new Map<string, Record<string, unknown>[][]>();
  for (const { rule } of items) {
    if (!rule) continue;
    const k = key(rule.family, rule.table, rule.chain);
    rules.set(k, [...(rules.get(k) ?? []), rule.expr ?? []]);
  }
  const names = (right: unknown): string[] | undefined => (typeof right === 'string' ? [right] : Array.isArray((right as { set?: unknown })?.set) ? ((right as { set: unknown[] }).set.filter((x) => typeof x === 'string') as string[]) : undefined);
  const fits = (pattern: string, name: string) => (pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : pattern === name);
  /** Whether a rule whose matches are `expr` admits a packet in on `iif` and out of `oif`: undefined when it cannot tell. */
  const admits = (expr: Record<string, unknown>[], iif: string, oif: string, dir: 'out' | 'back') => {
    let named = false;
    let other = false;
    for (const e of expr) {
      const m = e.match as { op?: string; left?: { meta?: { key?: string }; ct?: { key?: string } }; right?: unknown } | undefined;
      if (!m) {
        if ('xt' in e && (e.xt as { name?: string }).name === 'conntrack' && dir === 'back') continue;
        if ('xt' in e) other = true;
        continue;
      }
      const meta = m.left?.meta?.key;
      if (meta === 'iifname' || meta === 'oifname') {
        const list = names(m.right);
        if (!list) return false;
        const hit = list.some((p) => fits(p, meta === 'iifname' ? iif : oif));
        if ((m.op ?? '==') === '!=' ? hit : !hit) return false;
        if ((m.op ?? '==') !== '!=') named = true;
        continue;
      }
      if (dir === 'back' && m.left?.ct?.key === 'state') continue;
      other = true;
    }
    return named || !other;
  };
  const accepts = (family: string, table: string, chain: string, iif: string, oif: string, dir: 'out' | 'back', seen: Set<string>): boolean => {
    const k = key(family, table, chain);
    if (seen.has(k)) return false;
    seen.add(k);
    for (const expr of rules.get(k) ?? []) {
      const verdict = expr.find((e) => 'accept' in e || 'jump' in e || 'goto' in e);
      if (!verdict || !admits(expr, iif, oif, dir)) continue;
      if ('accept' in verdict) return true;
      const target = ((verdict.jump ?? verdict.goto) as { target?: string } | undefined)?.target;
      if (target && accepts(family, table, target, iif, oif, dir, seen)) return true;
    }
    return false;
  };
  const out: ForwardDrop[] = [];
  for (const { chain: ch } of items) {
    if (!ch || ch.hook !== 'forward' || ch.policy !== 'drop' || !['ip', 'inet'].includes(ch.family) || (ch.family === 'ip' && ch.table === NFT_TABLE)) continue;
    const drops = (['out', 'back'] as const).filter((dir) => !(dir === 'out' ? accepts(ch.family, ch.table, ch.name, lan, uplink, dir, new Set()) : accepts(ch.family, ch.table, ch.name, uplink, lan, dir, new Set())));
    if (drops.length) out.push({ family: ch.family, table: ch.table, chain: ch.name, drops });
  }
  return out;
}

/** The rules that let the hub's traffic through `d`: iptables' for its FORWARD chain (DOCKER-USER when Docker made one), nft's otherwise. */
function forwardFix(d: ForwardDrop, lan: string, uplink: string, hasChain: (name: string) => boolean): string {
  if (d.family === 'ip' && d.table === 'filter' && d.chain === 'FORWARD') {
    const at = hasChain('DOCKER-USER') ? 'DOCKER-USER' : 'FORWARD';
    return [
      ...(d.drops.includes('out') ? [`iptables -I ${at} -i ${lan} -o ${uplink} -j ACCEPT`] : []),
      ...(d.drops.includes('back') ? [`iptables -I ${at} -i ${uplink} -o ${lan} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`] : []),
    ].join('; ');
  }
  return [
    ...(d.drops.includes('out') ? [`nft insert rule ${d.family} ${d.table} ${d.chain} iifname "${lan}" oifname "${uplink}" accept`] : []),
    ...(d.drops.includes('back') ? [`nft insert rule ${d.family} ${d.table} ${d.chain} iifname "${uplink}" oifname "${lan}" ct state established,related accept`] : []),
  ].join('; ');
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
  // Another table's forward chain can drop what this hub's table accepts: named with the rules
  // that let the hub through there; that table itself is the admin's, never changed here.
  const ruleset = await run('nft', ['-j', 'list', 'ruleset']).then((r) => JSON.parse(r.stdout) as unknown, () => undefined);
  const drops = ruleset === undefined ? [] : forwardDrops(ruleset, c.interface, c.uplink);
  const items = ((ruleset as { nftables?: NftItem[] } | undefined)?.nftables ?? []);
  if (drops.length) {
    const what = (d: ForwardDrop) => `table ${d.family} ${d.table} chain ${d.chain} (policy drop) drops ${d.drops.map((x) => (x === 'out' ? `${c.interface} to ${c.uplink}` : `the replies back into ${c.interface}`)).join(' and ')}`;
    out.push({
      piece: 'forward',
      ok: false,
      detail: `${drops.map(what).join('; ')}: a drop in any base chain drops the packet whatever ${NFT_TABLE} accepts (nft(8))`,
      fix: drops.map((d) => forwardFix(d, c.interface, c.uplink, (name) => items.some((i) => i.chain?.family === d.family && i.chain.table === d.table && i.chain.name === name))).join('; '),
    });
  } else out.push({ piece: 'forward', ok: true, detail: `no other table's forward chain drops ${c.interface}'s traffic` });
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
    // ENOTDIR: the state dir is a file, which holds no hub either.
    if (!['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) throw hubError(`lease file ${file} cannot be read (${(err as Error).message})`);
    throw hubError(`no hub on ${c.interface} with state dir ${c.stateDir}: its lease file ${file} does not exist (set it up with matchlock hub setup)`);
  }
  return c.dhcp === 'dnsmasq' ? parseDnsmasqLeases(text, now) : parseIscLeases(text, now);
}
