import { readFileSync, readdirSync } from 'node:fs';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { ALIAS_PREFIX } from '../../../core/microvm/host-names.js';
import type { HostNetwork, LinkInfo } from '../../../core/ports.js';
import { noteSpawn, run } from '../../exec.js';
import { streamProgram, type ChildExit, type Streamed } from '../../spawner.js';

interface IpLink {
  ifname: string;
  ifindex: number;
  address?: string;
  master?: string;
  ifalias?: string;
  flags?: string[];
  operstate?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string } };
}

function toInfo(l: IpLink): LinkInfo {
  const kind = l.linkinfo?.info_kind;
  return {
    name: l.ifname,
    ifindex: l.ifindex,
    mac: l.address ?? '',
    // A tun/tap device is info_kind "tun" either way; its type tells a TAP from a layer-3 tun.
    kind: kind === 'tun' && l.linkinfo?.info_data?.type === 'tap' ? 'tap' : kind === 'macvtap' ? 'macvtap' : 'other',
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
      // tun_flags exists on tun and tap devices (ip's info_kind "tun"); a macvtap has its
      // character device's directory. Of a tun/tap, only a TAP has a hardware address: the
      // kernel makes a layer-3 tun ARPHRD_NONE with an address length of 0, so its `address`
      // reads empty (drivers/net/tun.c, tun_net_initialize), and a TAP an Ethernet device. The
      // address read above thus tells them apart without reading tun_flags for IFF_TAP.
      kind: entries.includes('tun_flags') ? (address !== '' ? 'tap' : 'other') : entries.includes('macvtap') ? 'macvtap' : 'other',
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
  /** A show asked again after it printed a link without a name (see IpStream). */
  retried?: boolean;
  /** What its rows found in the ip it was last written to (IpStream.write sets it). */
  outcome?: Outcome;
  done(r: IpLink | undefined | Error): void;
}

/**
 * What the rows of one change found so far: the first failure, the link shown, a show to
 * retry, a line to run again (see STALE_MASTER).
 */
interface Outcome {
  error?: Error;
  shown?: IpLink;
  stale?: boolean;
  again?: string[];
}

/**
 * Follows every line written to the shared `ip`. `lo` exists in every network namespace, so
 * its JSON line tells that ip finished the line before it, and its absence when ip exits tells
 * where ip stopped (see IpStream).
 */
const MARK = 'link show dev lo';

/** The last lines of what ip wrote on stderr for a command, on one line, as run() reports it. */
const tail = (text: string) => text.trim().split('\n').slice(-3).join(' ');

/**
 * What iproute2 6.1 prints for `link show dev <name>` when the ifindex it remembers for that
 * name is gone (another process deleted the link): the kernel's ENODEV for the index, not
 * "does not exist" for the name. The name may exist again with another index, or not at all.
 */
const STALE_INDEX = /Cannot send link get request: No such device/;

/**
 * What the kernel answers a `master <bridge>` whose ifindex ip remembers from before another
 * process deleted the bridge (do_set_master: no device of that index), made again or not. ip
 * learns the index by looking the name up and keeps it for its life (lib/ll_map.c), so one
 * bridge re-created (by the hub, an operator) fails every attach to it until the process ends.
 * A bridge that refuses a port (not an Ethernet device) answers the same; run again in a fresh
 * ip, that fails the same way, for one process more.
 */
const STALE_MASTER = /RTNETLINK answers: Invalid argument/;

/** ip's arguments: JSON out, -force to go on after a failed line, lines read from stdin. */
const IP_ARGS = ['-json', '-details', '-force', '-batch', '-'];

/** How long a written line may wait for its answer before ip is killed and the line fails. */
const ROW_TIMEOUT_MS = 60_000;

/** Output past this much in one line kills ip, as run() bounds what a program writes. */
const MAX_LINE_BYTES = 64 * 1024 * 1024;

/** One line written to ip for a change: `line` is its input line number (from 1, over ip's life), its mark's is line + 1. */
interface Row {
  change: Change;
  text: string;
  show: boolean;
  line: number;
  /** The row's own line was answered (failed, or printed its link); what comes next is its mark. */
  answered: boolean;
  /** The last row of its change: settling it settles the change. */
  last: boolean;
  /** Its place among its change's lines (`lines.length` for the show). */
  index: number;
  /** When it was written (Date.now() ms), for ROW_TIMEOUT_MS. */
  at: number;
}

/**
 * One running `ip -json -details -force -batch -` fed line by line: each change's lines, each
 * followed by MARK, are written to its stdin while it runs, and each change is settled as
 * soon as the output for its last line arrives, as if it had run alone: a failed line rejects
 * its own change with an Error naming that line and ip's message ("ip <line>: <ip's message>").
 *
 * ip runs under `stdbuf -oL` with stderr on the same pipe as stdout (`2>&1`): a pipe would
 * otherwise hold ip's JSON in a block buffer until it exits, and one pipe keeps JSON lines,
 * error text and "Command failed -:<input line>" (which -force writes after a failed command's
 * message, iproute2 ip/ip.c batch()) in the order ip wrote them. A line's output is therefore
 * its error text and "Command failed" or, for a show, its JSON; then the mark's JSON.
 *
 * An argument ip refuses while parsing (a name too long, a `master` or `dev` that does not
 * exist: invarg(), which exits) ends the process without "Command failed": the row whose mark
 * never came fails with what ip wrote last, and the changes written after it, not begun, are
 * handed back (`onExit`) to run in a fresh process. A change's lines after its own failed line
 * still run (-force) and its caller gets the first failure, as alone. Those lines name only
 * that change's link, whose name comes from its VM: they fail when the link is missing, and
 * when its create failed because the name was taken (a pass of the same VM made it meanwhile)
 * they label and attach that link as the VM's next pass would.
 *
 * ip keeps the ifindex of every name it looked up for its whole life (lib/ll_map.c) and only
 * drops it for a link it deletes itself. A link another process deletes and re-creates (the
 * hub re-creating its bridge, an operator, the daemon's own `ip` for a name -batch cannot
 * carry) then stays stale here: `master <bridge>` fails, and `link show` prints `[{}]` (the
 * name made again) or fails with STALE_INDEX (deleted). So the process takes new lines for
 * `lifeMs` only (retire()) and is then left to finish its lines and exit; and a show answered
 * either way retires it too, its change being handed back to show again in a fresh process, as
 * does a `master` line the kernel refuses for a stale index (STALE_MASTER), run again there.
 *
 * A line not answered within ROW_TIMEOUT_MS kills ip; it and every line after it fail. ip is
 * started through the process spawner, as every program is, its stdin and stdout streamed
 * (streamProgram): the daemon never forks itself for it. While no caller waits, it does not
 * keep the event loop alive.
 */
class IpStream {
  private readonly child: Streamed;
  private readonly decoder = new StringDecoder('utf8');
  /** Why ip's end cannot be seen (the spawner died), or why it could not start. */
  private lost: string | undefined;
  /** Takes new lines: not retired, not ended. */
  accepting = true;
  private rows: Row[] = [];
  private lines = 0;
  /** ip's lines since the last answered input line: the error text of the next failure. */
  private text: string[] = [];
  private partial = '';
  private killed: 'timeout' | 'maxbuffer' | undefined;
  private rowTimer: NodeJS.Timeout | undefined;
  private readonly lifeTimer: NodeJS.Timeout;

  /**
   * `onRetry` gets each change whose show must run again in a fresh process; `onExit`, once,
   * the changes written but not begun when ip ended, in order.
   */
  constructor(
    lifeMs: number,
    private readonly onRetry: (c: Change) => void,
    private readonly onExit: (untried: Change[]) => void,
  ) {
    noteSpawn();
    // ip exits at an argument it refuses while lines are still being written: the spawner
    // drops what was written after, and the exit tells where ip stopped.
    this.child = streamProgram('sh', ['-c', `exec stdbuf -oL ip ${IP_ARGS.join(' ')} 2>&1`], {
      name: 'ip',
      onOutput: (d) => this.output(this.decoder.write(d)),
      onExit: (exit, err) => this.exited(exit, err),
    });
    this.lifeTimer = setTimeout(() => this.retire(), lifeMs).unref();
    this.hold(false);
  }

  /** Writes a change's lines (and its show) and MARKs; the change settles as ip answers. */
  write(c: Change): void {
    const texts = [...c.lines.map((l) => l.join(' ')), ...(c.show !== undefined ? [`link show dev ${c.show}`] : [])];
    if (texts.length === 0) {
      c.done(undefined);
      return;
    }
    if (this.rows.length === 0) this.hold(true);
    const at = Date.now();
    for (const [i, text] of texts.entries()) {
      this.rows.push({ change: c, text, show: c.show !== undefined && i === texts.length - 1, line: this.lines + 1, answered: false, last: i === texts.length - 1, index: i, at });
      this.lines += 2;
    }
    c.outcome = {};
    this.child.write(texts.map((t) => `${t}\n${MARK}\n`).join(''));
    this.armTimeout();
  }

  /** Takes no more lines: ip runs what it was given, then reads the end of its input and exits. */
  retire(): void {
    if (!this.accepting) return;
    this.accepting = false;
    clearTimeout(this.lifeTimer);
    // Held until it exits, which is soon: what it exits with may hand back changes to run.
    this.hold(true);
    this.child.end();
  }

  /** Ends ip now (daemon shutdown): the changes still waiting fail. */
  kill(): void {
    this.retire();
    this.child.kill('SIGKILL');
  }

  private exited(exit: ChildExit | undefined, err: Error | undefined): void {
    this.output(this.decoder.end());
    if (err) this.text.push(err.message);
    if (!exit) this.lost = 'the process spawner exited while ip ran';
    // A MatchlockError: ip was killed for input it did not take (streamProgram's bound).
    else if (err) this.lost = err instanceof MatchlockError ? err.message : `ip could not be started: ${err.message}`;
    this.ended(exit?.code ?? null, exit?.signal ?? null);
  }

  /**
   * A running ip keeps the event loop alive only while a caller waits for its answer or it is
   * exiting; an idle one does not hold a process (a CLI) that is otherwise done.
   */
  private hold(on: boolean): void {
    this.child.hold(on);
  }

  private armTimeout(): void {
    clearTimeout(this.rowTimer);
    const head = this.rows[0];
    if (!head) return;
    this.rowTimer = setTimeout(() => {
      this.killed = 'timeout';
      this.kill();
    }, Math.max(0, head.at + ROW_TIMEOUT_MS - Date.now()));
  }

  private output(chunk: string): void {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() ?? '';
    if (this.partial.length > MAX_LINE_BYTES) {
      this.killed = 'maxbuffer';
      this.kill();
    }
    for (const line of parts) this.line(line);
  }

  private label(row: Row): string {
    // A read's error names the command as `ip -json -details link show dev <name>` alone would.
    return row.change.read ? `-json -details ${row.text}` : row.text;
  }

  private fail(row: Row, why: string): void {
    const o = row.change.outcome;
    if (o && !o.error) o.error = new MatchlockError(ErrorCode.Internal, `ip ${this.label(row)}: ${why}`);
  }

  private line(line: string): void {
    const head = this.rows[0];
    const failed = /^Command failed -:(\d+)$/.exec(line);
    if (failed) {
      const n = Number(failed[1]);
      const why = this.text.join('\n');
      this.text = [];
      if (!head) return;
      if (n === head.line && !head.answered) {
        head.answered = true;
        if (head.show && STALE_INDEX.test(why)) {
          this.stale(head);
          return;
        }
        if (!head.show && STALE_MASTER.test(why)) this.staleMaster(head);
        // ip says "Device "<name>" does not exist" for a show of a missing link: a read's undefined.
        if (!(head.show && head.change.read && /does not exist|Cannot find device/.test(why))) this.fail(head, tail(why) || 'command failed');
      } else if (n === head.line + 1) this.next();
      return;
    }
    let printed: IpLink[] | undefined;
    if (line.startsWith('[')) {
      try {
        printed = JSON.parse(line) as IpLink[];
      } catch {
        printed = undefined;
      }
    }
    if (!printed || !head) {
      if (line !== '') this.text.push(line);
      return;
    }
    if (head.show && !head.answered) {
      const l = printed[0];
      if (l && l.ifname === head.change.show) {
        head.answered = true;
        const o = head.change.outcome;
        if (o) o.shown = l;
        return;
      }
      if (l && l.ifname === undefined) {
        head.answered = true;
        this.stale(head);
        return;
      }
    }
    if (printed[0]?.ifname === 'lo') this.next();
    else if (line !== '') this.text.push(line);
  }

  /** A show answered from a stale ifindex (see the class comment): not the link; shown again in a fresh ip. */
  private stale(row: Row): void {
    const o = row.change.outcome;
    if (o) o.stale = true;
    this.retire();
  }

  /**
   * A `master` line the kernel refused as it refuses a stale bridge ifindex (STALE_MASTER):
   * when it is its change's first failure and last line (only its show ran after it), that line
   * and the show run again in a fresh ip, once, and this ip takes no more lines. The line only
   * sets things on the change's own link, so running it twice is harmless.
   */
  private staleMaster(row: Row): void {
    const c = row.change;
    const line = c.lines[row.index];
    if (c.retried || c.outcome?.error || row.index !== c.lines.length - 1 || !line?.includes('master')) return;
    if (c.outcome) c.outcome.again = line;
    this.retire();
  }

  /** The head row's mark came: the row is done, and with its change's last row the change. */
  private next(): void {
    const row = this.rows.shift();
    this.text = [];
    if (!row) return;
    if (row.last) this.settle(row.change);
    if (this.rows.length === 0 && this.accepting) this.hold(false);
    this.armTimeout();
  }

  private settle(c: Change): void {
    const o = c.outcome ?? {};
    if (o.again) this.onRetry({ lines: [o.again], show: c.show, retried: true, done: c.done });
    else if (o.error) c.done(o.error);
    else if (o.stale && !c.retried) this.onRetry({ lines: [], show: c.show, read: c.read === true, retried: true, done: c.done });
    else if (o.stale) c.done(new MatchlockError(ErrorCode.Internal, `ip ${c.read ? '-json -details ' : ''}link show dev ${c.show}: the link was deleted and made again under ip twice in a row`));
    else c.done(o.shown);
  }

  private ended(code: number | null, signal: NodeJS.Signals | null): void {
    this.accepting = false;
    clearTimeout(this.lifeTimer);
    clearTimeout(this.rowTimer);
    if (this.partial !== '') this.line(this.partial);
    const head = this.rows[0];
    let untried: Change[] = [];
    if (head) {
      const last = tail(this.text.join('\n'));
      if (code === 127 && this.lines === head.line + 1 && /stdbuf|ip/.test(last) && /not found|No such file/.test(last)) {
        // stdbuf could not start ip (or sh stdbuf): nothing ran.
        const e = new MatchlockError(ErrorCode.FailedPrecondition, `ip ${IP_ARGS.join(' ')}: ip is not installed (${last})`);
        for (const c of new Set(this.rows.map((r) => r.change))) c.done(e);
      } else if (this.killed || signal || this.lost) {
        // Killed (or lost with the spawner): how far ip got is unknown past the last mark, so no
        // change after it is tried again blindly; each fails as it would have alone.
        // What the spawner said of the end (its input bound) says more than the signal it sent.
        const why = this.killed ? `ip was killed (${this.killed === 'timeout' ? `timed out after ${ROW_TIMEOUT_MS} ms` : 'wrote more than 64 MiB'})` : (this.lost ?? `ip was killed by ${signal ?? 'a signal'}`);
        for (const row of this.rows) this.fail(row, why);
        for (const row of this.rows) if (row.last) this.settle(row.change);
      } else {
        if (head.show && !head.answered && STALE_INDEX.test(last)) this.stale(head);
        else this.fail(head, last || `ip exited with ${code}`);
        this.settle(head.change);
        untried = [...new Set(this.rows.filter((r) => r.change !== head.change).map((r) => r.change))];
      }
    }
    this.rows = [];
    this.onExit(untried);
  }
}

/**
 * Host links, in the network namespace the daemon runs in. Reads come from sysfs (no process
 * per read) when sysfs shows the daemon's namespace, from `ip -json` otherwise. Link changes,
 * and reads without sysfs, are lines written to one running `ip -force -batch -` shared by
 * every create (see batch() and IpStream), so a burst of creates starts about one `ip` a
 * `lifeMs` instead of one or more a VM.
 */
export class Iproute2Network implements HostNetwork {
  private sysfs: boolean | undefined;
  private readonly lifeMs: number;
  /** The running ip: taking lines, or retired and finishing the lines it has. */
  private ip: IpStream | undefined;
  /** Changes and reads waiting for the next ip (the running one is retired), in the order asked. */
  private queue: Change[] = [];
  /** Shows that printed a stale link and lines refused a stale bridge (see IpStream), to run first in the next ip. */
  private retries: Change[] = [];
  private closed = false;

  /**
   * `useSysfs`: tests force a path; by default it is chosen by sysfsShowsOwnNamespace().
   * `lifeMs`: how long one ip takes new lines after it starts (ms, default 1000); see IpStream
   * for why it is bounded.
   */
  constructor(opts: { useSysfs?: boolean; lifeMs?: number } = {}) {
    this.sysfs = opts.useSysfs;
    this.lifeMs = opts.lifeMs ?? 1000;
  }

  /**
   * Ends the running ip at once (daemon shutdown); changes still waiting for it, and any asked
   * afterwards, fail.
   */
  close(): void {
    this.closed = true;
    this.ip?.kill();
    this.failQueued();
  }

  private failQueued(): void {
    const waiting = [...this.retries, ...this.queue];
    this.retries = [];
    this.queue = [];
    const e = new MatchlockError(ErrorCode.Unavailable, 'ip: link changes stopped, the daemon is shutting down');
    for (const c of waiting) c.done(e);
  }

  /** Hands a change to the running ip, or queues it for the next one (see batch()). */
  private submit(c: Change): void {
    if (this.ip?.accepting) this.ip.write(c);
    else {
      this.queue.push(c);
      if (!this.ip) this.startIp();
    }
  }

  private startIp(): void {
    if (this.closed) {
      this.failQueued();
      return;
    }
    const changes = [...this.retries, ...this.queue];
    this.retries = [];
    this.queue = [];
    if (changes.length === 0) return;
    const ip = new IpStream(
      this.lifeMs,
      (c) => this.retries.push(c),
      (untried) => {
        if (this.ip === ip) this.ip = undefined;
        this.queue = [...untried, ...this.queue];
        this.startIp();
      },
    );
    this.ip = ip;
    for (const c of changes) ip.write(c);
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
   * One link by name, read without sysfs: a `link show dev` line written to the shared `ip`
   * after the read was asked for (see batch()), so the answer is never older than the question.
   * During a burst of creates, each VM's reads of its TAP and of the bridge cost no process of
   * their own. Rejects with the error `ip` gave for this name.
   */
  private read(name: string): Promise<IpLink | undefined> {
    return new Promise((resolve, reject) => {
      this.submit({ lines: [], show: name, read: true, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
    });
  }

  /**
   * Runs iproute2 commands (one per line, without the leading `ip`) in order. Without sysfs,
   * the same process then shows `show` (ip -json -details), which saves the read that would
   * follow: the link as it is after the change, or undefined when it was not shown.
   *
   * The lines go at once to the stdin of the running `ip -force -batch -` (IpStream) while it
   * takes lines, and start one when none runs; once it no longer takes lines (its `lifeMs` is
   * over, or it exited at a line it refused), changes and reads (read()) wait for it to finish
   * and then all go to a fresh one. A burst of creates thus costs about one process a
   * `lifeMs`. Changes and reads keep the order they were asked in (a show retried after a
   * stale link, see IpStream, runs after the lines written behind it). Rejects with the error
   * of this change's first failed line ("ip <line>: <ip's message>").
   */
  private batch(lines: string[][], show?: string): Promise<LinkInfo | undefined> {
    return new Promise<IpLink | undefined>((resolve, reject) => {
      for (const l of lines) {
        // -batch splits on blanks and reads quotes and backslashes; our names and aliases never
        // hold them, and one that did would silently become another command.
        if (l.some((a) => !batchable(a))) throw new MatchlockError(ErrorCode.InvalidArgument, `ip arguments must not hold blanks, quotes or backslashes: ${l.join(' ')}`);
      }
      this.submit({ lines, show: this.viaSysfs ? undefined : show, done: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
    }).then((l) => (l ? toInfo(l) : undefined));
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

  async adopt(name: string, opts: { alias: string; bridge?: string }): Promise<void> {
    const line = ['link', 'set', 'dev', name, 'alias', opts.alias, ...(opts.bridge !== undefined ? ['master', opts.bridge] : []), 'up'];
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
