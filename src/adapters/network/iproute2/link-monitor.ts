import { StringDecoder } from 'node:string_decoder';
import type { LinkEvent } from '../../../core/reconcile/link-watch.js';
import type { Logger } from '../../../core/ports.js';
import { noteSpawn } from '../../exec.js';
import { streamProgram, type ChildExit, type Streamed } from '../../spawner.js';

/**
 * The name at the head of an `ip -o monitor link` line: "[Deleted ]<ifindex>: <name>[@<peer>]: ",
 * as iproute2 6.1 prints a link (ip/ipaddress.c print_linkinfo). Its `-json` flag does not
 * apply to monitor output in 6.1 (the lines stay text), hence `-o`: one line per message.
 */
const HEAD = /^(Deleted )?(\d+): ([^:@\s]+)(?:@[^:\s]*)?: <([^>]*)>/;

/**
 * The link's name in a monitor line, or undefined for a line that does not name one. Cheap: a
 * line is only parsed further (parseLinkEvent) when its name is one the caller wants.
 */
export function eventLinkName(line: string): string | undefined {
  return HEAD.exec(line)?.[3];
}

/**
 * One line of `ip -o monitor link` (iproute2 6.1) as a LinkEvent, or undefined for a line that
 * is not a link's own message. The bridge driver announces its ports a second time, as
 * AF_BRIDGE messages (br_ifinfo_notify), which ip prints in the same form but without the
 * link's qdisc and group; a port leaving its bridge is thus a "Deleted" line while the link
 * lives on. Those lines are skipped: the link's own message (AF_UNSPEC, with its qdisc) says
 * the same change, and only it says a link was deleted.
 */
export function parseLinkEvent(line: string): LinkEvent | undefined {
  const m = HEAD.exec(line);
  if (!m?.[2] || !m[3]) return undefined;
  const rest = line.slice(m[0].length);
  if (!/ qdisc \S+/.test(rest)) return undefined;
  const master = / master (\S+)/.exec(rest)?.[1];
  return { name: m[3], ifindex: Number(m[2]), deleted: m[1] !== undefined, up: (m[4] ?? '').split(',').includes('UP'), master };
}

/**
 * `ip monitor` never reads its stdin, so it would outlive a daemon killed with SIGKILL (its
 * spawner gone, it would only die writing its next line). The shell runs it in the background
 * and reads the stdin the daemon holds open until it ends: at its end (the daemon closed it,
 * exited or was killed) ip is killed. It exits with ip's status when ip ends first.
 */
const MONITOR_SCRIPT = [
  // Its stderr joins its stdout: ip says there when the kernel dropped events (ENOBUFS).
  'ip -o monitor link 2>&1 & p=$!',
  'exec 3<&0',
  '{ while read -r _; do :; done <&3; kill $p 2>/dev/null; } & c=$!',
  'wait $p; s=$?',
  'kill $c 2>/dev/null',
  'exit $s',
].join('\n');

/** The first wait before a monitor that ended is started again (ms); it doubles up to MAX_BACKOFF_MS. */
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A monitor that ran this long before it ended starts again after FIRST_BACKOFF_MS (ms). */
const STEADY_MS = 60_000;
/** A monitor started again counts as running once it has run this long (ms): only then is onMissed told. */
const RUNNING_MS = 1000;
/** onMissed is told at most once in this long (ms); what is missed meanwhile is told at its end. */
const MISSED_EVERY_MS = 10_000;
/**
 * What iproute2 prints when a netlink receive failed: with ENOBUFS ("No buffer space
 * available") the kernel dropped messages the socket had no room for, and ip carries on.
 */
const RECEIVE_ERROR = /netlink receive error|No buffer space available/;

export interface LinkMonitorOptions {
  /** A cheap test of a link's name: lines of other links are not parsed further. */
  wants(name: string): boolean;
  /** Each event of a wanted link, in the order the kernel sent them. */
  onEvent(e: LinkEvent): void;
  /**
   * Events may have been missed: a monitor started again after one ended runs, or the kernel
   * dropped events the monitor had no room for. At most once per MISSED_EVERY_MS.
   */
  onMissed(): void;
  logger: Logger;
}

/**
 * A long-lived `ip -o monitor link`, started through the process spawner as every program is
 * (streamProgram), in a shell that ends it with the daemon (MONITOR_SCRIPT), which hands each
 * link event the caller wants to onEvent. ip writes and flushes one line per message, so no
 * stdbuf is needed. When it ends (killed, the spawner
 * lost), it is started again after a back-off (FIRST_BACKOFF_MS doubling to MAX_BACKOFF_MS,
 * back to the first after STEADY_MS of running), and onMissed is called once it has run again
 * for RUNNING_MS; also when ip reports that the kernel dropped events (ENOBUFS).
 * It never keeps the event loop alive; close() ends it for good (daemon shutdown).
 */
export class LinkMonitor {
  private child: Streamed | undefined;
  private decoder = new StringDecoder('utf8');
  private partial = '';
  private backoffMs = FIRST_BACKOFF_MS;
  private startedAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Starts so far: from the second on, each is a restart. */
  private starts = 0;
  private runningTimer: NodeJS.Timeout | undefined;
  private lastMissed = 0;
  private missedTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: LinkMonitorOptions) {}

  /** Starts ip; events flow from the moment it runs. */
  start(): void {
    if (this.closed || this.child) return;
    this.starts++;
    this.startedAt = Date.now();
    this.decoder = new StringDecoder('utf8');
    this.partial = '';
    noteSpawn();
    const child = streamProgram('sh', ['-c', MONITOR_SCRIPT], {
      name: 'ip',
      onOutput: (d) => this.output(this.decoder.write(d)),
      onExit: (exit, err) => this.exited(child, exit, err),
    });
    this.child = child;
    child.hold(false);
    // Caught up only once the new monitor runs: one that fails at once has missed nothing new,
    // and a monitor that keeps failing must not reconcile every VM at each attempt.
    if (this.starts > 1) {
      this.runningTimer = setTimeout(() => this.child === child && this.missed(), RUNNING_MS);
      this.runningTimer.unref();
    }
  }

  /** Tells onMissed now, or at the end of MISSED_EVERY_MS after it was last told. */
  private missed(): void {
    if (this.closed || this.missedTimer) return;
    const wait = this.lastMissed + MISSED_EVERY_MS - Date.now();
    const tell = () => {
      this.missedTimer = undefined;
      if (this.closed) return;
      this.lastMissed = Date.now();
      this.opts.onMissed();
    };
    if (wait <= 0) return tell();
    this.missedTimer = setTimeout(tell, wait);
    this.missedTimer.unref();
  }

  /** Ends ip for good: its stdin closes, and the shell around it kills it (MONITOR_SCRIPT). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.runningTimer);
    clearTimeout(this.missedTimer);
    this.child?.end();
    this.child = undefined;
  }

  private output(chunk: string): void {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() ?? '';
    // A line is at most a few hundred bytes; anything longer is not ip's and is dropped.
    if (this.partial.length > 64 * 1024) this.partial = '';
    for (const line of parts) {
      const name = eventLinkName(line);
      if (name === undefined) {
        if (RECEIVE_ERROR.test(line)) {
          this.opts.logger.warn({ line }, 'ip monitor link missed events (the kernel dropped them); reconciling every VM');
          this.missed();
        }
        continue;
      }
      if (!this.opts.wants(name)) continue;
      const e = parseLinkEvent(line);
      if (e) this.opts.onEvent(e);
    }
  }

  private exited(child: Streamed, exit: ChildExit | undefined, err: Error | undefined): void {
    if (this.child !== child) return;
    this.child = undefined;
    if (this.closed) return;
    if (Date.now() - this.startedAt >= STEADY_MS) this.backoffMs = FIRST_BACKOFF_MS;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
    this.opts.logger.warn({ code: exit?.code ?? null, signal: exit?.signal ?? null, err: err?.message, restartInMs: delay }, 'ip monitor link ended; starting it again');
    this.timer = setTimeout(() => this.start(), delay);
    this.timer.unref();
  }
}
