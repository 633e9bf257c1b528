import { readFileSync, readdirSync } from 'node:fs';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { ALIAS_PREFIX } from '../../../core/microvm/host-names.js';
import type { HostNetwork, LinkInfo } from '../../../core/ports.js';
import { noteSpawn, run } from '../../exec.js';
import { runProgram } from '../../spawner.js';

interface IpLink {
  ifname: string;
  ifindex: number;
  address?: string;
  master?: string;
  ifalias?: string;
  flags?: string[];
  operstate?: string;
  linkinfo?: { info_kind?: string };
}

function toInfo(l: IpLink): LinkInfo {
  const kind = l.linkinfo?.info_kind;
  return {
    name: l.ifname,
    ifindex: l.ifindex,
    mac: l.address ?? '',
    kind: kind === 'tun' ? 'tap' : kind === 'macvtap' ? 'macvtap' : 'other',
    master: l.master,
    alias: l.ifalias,
    up: l.flags?.includes('UP') ?? false,
  };
}

/** IFF_UP in a link's `flags` (include/uapi/linux/if.h): what `ip link` shows as UP. */
const IFF_UP = 0x1;

const SYS_NET = '/sys/class/net';

/**
 * Whether /sys/class/net shows this process's network namespace. sysfs shows the namespace of
 * whoever mounted it, so a daemon entered into a namespace with `nsenter --net` sees the host's
 * links there, while /proc/self/net follows the process. The two agree when the link names are
 * the same and each link's receive counter read from procfs lies between two sysfs reads of it.
 */
export function sysfsShowsOwnNamespace(): boolean {
  try {
    const counters = () => new Map(readdirSync(SYS_NET).map((n) => [n, Number(readFileSync(`${SYS_NET}/${n}/statistics/rx_bytes`, 'utf8'))]));
    const before = counters();
    const proc = new Map<string, number>();
    for (const line of readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2)) {
      const m = /^\s*([^:\s]+):\s*(\d+)/.exec(line);
      if (m?.[1] && m[2]) proc.set(m[1], Number(m[2]));
    }
    const after = counters();
    if (proc.size !== before.size || proc.size !== after.size) return false;
    for (const [name, rx] of proc) {
      const a = before.get(name);
      const b = after.get(name);
      if (a === undefined || b === undefined || rx < a || rx > b) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** One link read from sysfs; undefined when it does not exist (or vanished while read). */
async function sysfsLink(name: string): Promise<LinkInfo | undefined> {
  const dir = `${SYS_NET}/${name}`;
  const read = (f: string) => readFile(`${dir}/${f}`, 'utf8').then((s) => s.trim());
  try {
    const [ifindex, address, flags, ifalias, master, entries] = await Promise.all([
      read('ifindex'),
      read('address'),
      read('flags'),
      read('ifalias').catch(() => ''),
      readlink(`${dir}/master`).catch(() => undefined),
      readdir(dir),
    ]);
    return {
      name,
      ifindex: Number(ifindex),
      mac: address,
      // tun_flags exists on tun and tap devices (ip's info_kind "tun"), a macvtap has its
      // character device's directory.
      kind: entries.includes('tun_flags') ? 'tap' : entries.includes('macvtap') ? 'macvtap' : 'other',
      master: master?.split('/').pop(),
      alias: ifalias === '' ? undefined : ifalias,
      up: (Number.parseInt(flags, 16) & IFF_UP) !== 0,
    };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Linux names a link with up to 15 bytes and no '/', ':' or blank; quotes would confuse -batch. */
function batchable(name: string): boolean {
  return name !== '' && !/[\s"'\\#]/.test(name);
}

/**
 * A change or a read one caller asked for: its lines (iproute2 commands without the leading
 * `ip`) run in order, then `link show dev <show>` when `show` is set. `done` gets the link that
 * show printed (undefined without a show, or when it printed nothing) or the error of its first
 * failed line. A read (`read`, no lines) takes a link that does not exist for undefined.
 */
interface Change {
  lines: string[][];
  show: string | undefined;
  read?: boolean;
  done(r: IpLink | undefined | Error): void;
}

/**
 * Follows every line of a group's batch. `lo` exists in every network namespace, and what the
 * batch printed before ip exited reaches stdout even when ip leaves at once (see applyChanges),
 * so the marks printed tell how far ip got.
 */
const MARK = 'link show dev lo';

/** The last lines of what ip wrote on stderr for a command, on one line, as run() reports it. */
const tail = (text: string) => text.trim().split('\n').slice(-3).join(' ');

/**
 * Runs the changes of several callers in one `ip -json -force -batch -` (plus `-details` when a
 * change shows a link) and settles each one as if it had run alone: a failed line rejects its
 * own change with an Error naming that line and ip's message ("ip <line>: <stderr>"), the
 * changes whose lines all worked resolve.
 *
 * With -force (iproute2 ip/ip.c, batch()) ip goes on after a command that returns an error and
 * writes "Command failed -:<line>" after that command's own stderr, so every failure is traced
 * to its line. An argument ip refuses while parsing (an invalid name, a `master` or `dev` that
 * does not exist: invarg(), which exits) ends the whole process without that line. Each line
 * is therefore followed by MARK: the first line without its mark is the one ip stopped at; its
 * change fails with what ip wrote last, and the changes after it, not begun, are returned to
 * run in the next batch. A change's lines after its own failed line still run (-force) and
 * its caller gets the first failure, as alone. Those lines name only that change's link, whose
 * name comes from its VM: they fail when the link is missing, and when its create failed
 * because the name was taken (a pass of the same VM made it meanwhile) they label and attach
 * that link as the VM's next pass would.
 *
 * Never rejects: every change is settled or returned.
 */
async function applyChanges(changes: readonly Change[]): Promise<Change[]> {
  const rows: { change: number; text: string; show: boolean }[] = [];
  for (const [i, c] of changes.entries()) {
    for (const l of c.lines) rows.push({ change: i, text: l.join(' '), show: false });
    if (c.show !== undefined) rows.push({ change: i, text: `link show dev ${c.show}`, show: true });
  }
  // A read's error names the command as `ip -json -details link show dev <name>` alone would.
  const label = (row: { change: number; text: string }) => (changes[row.change]?.read ? `-json -details ${row.text}` : row.text);
  const args = ['-json', ...(changes.some((c) => c.show !== undefined) ? ['-details'] : []), '-force', '-batch', '-'];
  noteSpawn();
  let r;
  try {
    r = await runProgram('ip', args, { input: rows.map((row) => `${row.text}\n${MARK}\n`).join(''), timeoutMs: 60_000, maxBytes: 64 * 1024 * 1024 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const e = new MatchlockError(code === 'ENOENT' ? ErrorCode.FailedPrecondition : ErrorCode.Internal, `ip ${args.join(' ')}: ${code === 'ENOENT' ? 'ip is not installed' : (err as Error).message}`, { cause: err });
    for (const c of changes) c.done(e);
    return [];
  }
  // Row k is input line 2k+1, its mark 2k+2. Each failure's text is what ip wrote on stderr
  // since the previous "Command failed"; what follows the last one is why ip stopped, if it did.
  const failed = new Map<number, string>();
  let text: string[] = [];
  for (const line of r.stderr.toString('utf8').split('\n')) {
    const m = /^Command failed -:(\d+)$/.exec(line);
    if (m) {
      failed.set(Number(m[1]), text.join('\n'));
      text = [];
    } else if (line !== '') text.push(line);
  }
  const last = text.join('\n');
  const printed: IpLink[] = [];
  for (const line of r.stdout.toString('utf8').split('\n')) {
    if (!line.startsWith('[')) continue;
    try {
      printed.push(...(JSON.parse(line) as IpLink[]));
    } catch {
      // Cut short (ip was killed while writing): the rows it belongs to count as not done.
      break;
    }
  }
  const errors = new Map<number, Error>();
  const shown = new Map<number, IpLink>();
  const failRow = (k: number, why: string) => {
    const row = rows[k];
    if (row && !errors.has(row.change)) errors.set(row.change, new MatchlockError(ErrorCode.Internal, `ip ${label(row)}: ${why}`));
  };
  let at = 0;
  let stopped = rows.length;
  for (const [k, row] of rows.entries()) {
    const own = failed.get(2 * k + 1);
    // ip says "Device "<name>" does not exist" for a show of a missing link.
    const absent = own !== undefined && row.show && changes[row.change]?.read === true && /does not exist|Cannot find device/.test(own);
    if (own !== undefined && !absent) failRow(k, tail(own) || 'command failed');
    else if (row.show && printed[at]?.ifname === changes[row.change]?.show) shown.set(row.change, printed[at++] as IpLink);
    if (failed.has(2 * k + 2)) continue;
    if (printed[at]?.ifname === 'lo') {
      at++;
      continue;
    }
    stopped = k;
    break;
  }
  let untried: Change[] = [];
  if (stopped < rows.length) {
    const first = rows[stopped]?.change ?? 0;
    if (r.killed || r.signal) {
      // Killed: how far ip got is unknown past the last mark, so no change after it is tried
      // again blindly; each fails as it would have alone.
      const why = r.killed ? `ip was killed (${r.killed === 'timeout' ? 'timed out after 60000 ms' : 'wrote more than 64 MiB'})` : `ip was killed by ${r.signal}`;
      for (let k = stopped; k < rows.length; k++) failRow(k, why);
    } else {
      failRow(stopped, tail(last) || `ip exited with ${r.code}`);
      untried = changes.slice(first + 1);
    }
  }
  for (const [i, c] of changes.entries()) {
    if (untried.includes(c)) continue;
    c.done(errors.get(i) ?? shown.get(i));
  }
  return untried;
}

/**
 * Host links, in the network namespace the daemon runs in. Reads come from sysfs (no process
 * per read) when sysfs shows the daemon's namespace, from `ip -json` otherwise. The changes of
 * one create go to iproute2 together, and the changes and reads of creates that overlap share
 * one `ip -force -batch -` (see batch()), so a link costs at most one process.
 */
export class Iproute2Network implements HostNetwork {
  private sysfs: boolean | undefined;
  /** Changes and reads waiting for the next shared `ip` process, in the order asked (see batch()). */
  private changes: Change[] = [];
  private committing = false;

  /** `useSysfs`: tests force a path; by default it is chosen by sysfsShowsOwnNamespace(). */
  constructor(opts: { useSysfs?: boolean } = {}) {
    this.sysfs = opts.useSysfs;
  }

  private get viaSysfs(): boolean {
    this.sysfs ??= sysfsShowsOwnNamespace();
    return this.sysfs;
  }

  private async links(name?: string): Promise<IpLink[]> {
    try {
      const { stdout } = await run('ip', ['-json', '-details', 'link', 'show', ...(name ? ['dev', name] : [])]);
      return JSON.parse(stdout || '[]') as IpLink[];
    } catch (err) {
      if (name && /does not exist|Cannot find device/.test((err as Error).message)) return [];
      throw err;
    }
  }

  async get(name: string): Promise<LinkInfo | undefined> {
    // A name with a slash or dots would leave /sys/class/net; no link can have one.
    if (this.viaSysfs && !name.includes('/') && name !== '.' && name !== '..') return sysfsLink(name);
    if (!batchable(name)) {
      const [l] = await this.links(name);
      return l ? toInfo(l) : undefined;
    }
    const l = await this.read(name);
    return l ? toInfo(l) : undefined;
  }

  /**
   * One link by name, read without sysfs: a `link show dev` line in the next shared `ip`
   * process (see batch()), which starts after the read was asked for, so the answer is never
   * older than the question. During a burst of creates, each VM's reads of its TAP and of the
   * bridge cost a share of a process instead of a process each. Rejects with the error `ip`
   * gave for this name.
   */
  private read(name: string): Promise<IpLink | undefined> {
    return new Promise((resolve, reject) => {
      this.changes.push({ lines: [], show: name, read: true, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      if (!this.committing) void this.commitChanges();
    });
  }

  /**
   * Runs iproute2 commands (one per line, without the leading `ip`) in order. Without sysfs,
   * the same process then shows `show` (ip -json -details), which saves the read that would
   * follow: the link as it is after the change, or undefined when it was not shown.
   *
   * Group commit: a change asked for while an `ip` process applies others waits for it to end
   * and then goes with every change and read (read()) queued meanwhile into one
   * `ip -force -batch -` (applyChanges), so a burst of creates costs a few processes instead of
   * several a VM. A change with nothing running starts at once. Changes and reads keep the
   * order they were asked in. Rejects with the error of this change's first failed line
   * ("ip <line>: <ip's message>").
   */
  private batch(lines: string[][], show?: string): Promise<LinkInfo | undefined> {
    return new Promise<IpLink | undefined>((resolve, reject) => {
      for (const l of lines) {
        // -batch splits on blanks and reads quotes and backslashes; our names and aliases never
        // hold them, and one that did would silently become another command.
        if (l.some((a) => !batchable(a))) throw new MatchlockError(ErrorCode.InvalidArgument, `ip arguments must not hold blanks, quotes or backslashes: ${l.join(' ')}`);
      }
      this.changes.push({ lines, show: this.viaSysfs ? undefined : show, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      if (!this.committing) void this.commitChanges();
    }).then((l) => (l ? toInfo(l) : undefined));
  }

  private async commitChanges(): Promise<void> {
    this.committing = true;
    // Changes asked for in the same turn (several passes resumed together, a plan's reads in a
    // Promise.all) go in this one too.
    await Promise.resolve();
    try {
      while (this.changes.length > 0) {
        const group = this.changes;
        this.changes = [];
        let untried: Change[];
        try {
          untried = await applyChanges(group);
        } catch (err) {
          for (const c of group) c.done(err as Error);
          untried = [];
        }
        this.changes = [...untried, ...this.changes];
      }
    } finally {
      this.committing = false;
    }
  }

  async createTap(name: string, opts: { bridge: string; alias: string }): Promise<LinkInfo> {
    const shown = await this.batch(
      [
        ['tuntap', 'add', 'dev', name, 'mode', 'tap'],
        ['link', 'set', 'dev', name, 'alias', opts.alias],
        ['link', 'set', 'dev', name, 'master', opts.bridge, 'up'],
      ],
      name,
    );
    return shown ?? this.must(name);
  }

  async attach(name: string, bridge: string): Promise<void> {
    const line = ['link', 'set', 'dev', name, 'master', bridge, 'up'];
    if (line.every(batchable)) await this.batch([line]);
    else await run('ip', line);
  }

  async createMacvtap(name: string, opts: { parent: string; alias: string; mac: string }): Promise<LinkInfo> {
    const shown = await this.batch(
      [
        ['link', 'add', 'link', opts.parent, 'name', name, 'address', opts.mac, 'type', 'macvtap', 'mode', 'bridge'],
        ['link', 'set', 'dev', name, 'alias', opts.alias, 'up'],
      ],
      name,
    );
    return shown ?? this.must(name);
  }

  async remove(name: string): Promise<void> {
    const line = ['link', 'del', 'dev', name];
    try {
      // A name -batch cannot carry (a host link's, from the sweep) gets a process of its own.
      if (batchable(name)) await this.batch([line]);
      else await run('ip', line);
    } catch (err) {
      if (!/does not exist|Cannot find device/.test((err as Error).message)) throw err;
    }
  }

  async listOwned(): Promise<LinkInfo[]> {
    if (this.viaSysfs) {
      const out: LinkInfo[] = [];
      for (const name of await readdir(SYS_NET)) {
        const alias = (await readFile(`${SYS_NET}/${name}/ifalias`, 'utf8').catch(() => '')).trim();
        if (!alias.startsWith(ALIAS_PREFIX)) continue;
        const link = await sysfsLink(name);
        if (link) out.push(link);
      }
      return out;
    }
    return (await this.links()).filter((l) => l.ifalias?.startsWith(ALIAS_PREFIX)).map(toInfo);
  }

  private async must(name: string): Promise<LinkInfo> {
    const l = await this.get(name);
    if (!l) throw new MatchlockError(ErrorCode.Internal, `link ${name} vanished right after it was created`);
    return l;
  }
}
