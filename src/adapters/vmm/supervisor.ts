import { statSync, watch, type FSWatcher } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Logger, Supervisor } from '../../core/ports.js';
import { isChild, onChildExit } from './children.js';
import { pidAlive } from './process.js';

export interface SupervisorEvents {
  exited(uid: string, pid: number): void;
  /** The console of the VMM with this pid showed the guest starting init. */
  booted(uid: string, pid: number): void;
  /** The VMM has stayed up for `healthyAfterMs` since it was first watched. */
  healthy(uid: string): void;
}

/** What on a console means the guest reached userspace: Linux prints it when it runs init. */
export const BOOT_PATTERN = /Run \S+ as init process|login:/;

interface Watched {
  pid: number;
  console: string;
  offset: number;
  booted: boolean;
  tail: string;
  /** When watching began (ms since the epoch): a VMM adopted after a restart counts from then. */
  since: number;
  healthy: boolean;
  /** True while the exit is reported by the child's exit event, so the poll skips it. */
  child: boolean;
  /** Undoes every wait of this entry: the child-exit wait, the console watch, the health timer. */
  release: (() => void)[];
  /** Whether inotify watches the console (it may not exist yet, or the watch failed). */
  consoleWatched: boolean;
  closeConsole?: (() => void) | undefined;
  reading: boolean;
  /** A change arrived while the console was being read: read again afterwards. */
  again: boolean;
}

/**
 * Watches every VMM process and reacts to events instead of polling each VMM:
 * - an exit of a VMM this daemon started is its child's exit event (children.ts), at once;
 * - a VMM adopted after a restart, or one whose spawner died, is not a child whose exit is
 *   reported: a slow poll (`pollMs`, a kill(0) and a /proc read per VMM) catches its exit, and
 *   the same poll re-checks the children in case an event was missed;
 * - a console is read only when it grew (inotify through fs.watch), from the last offset, and
 *   no longer once the boot line was seen; the poll only retries a watch that could not be set;
 * - health is one timer per VMM.
 * The daemon turns the events into status changes and reconciles.
 */
export class EventSupervisor implements Supervisor {
  private readonly watched = new Map<string, Watched>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  private readonly pollMs: number;
  private readonly healthyAfterMs: number;

  /**
   * `healthyAfterMs`: how long a VMM must stay up to count as healthy. Boot is otherwise seen
   * only on the console, and a guest booted with `quiet` never prints the line. `pollMs`: the
   * fallback poll period (ms) for VMMs that are not this daemon's children.
   */
  constructor(
    private readonly events: SupervisorEvents,
    private readonly log: Logger,
    opts: { pollMs?: number; healthyAfterMs?: number } = {},
  ) {
    this.pollMs = opts.pollMs ?? 2000;
    this.healthyAfterMs = opts.healthyAfterMs ?? 30_000;
  }

  watch(uid: string, pid: number, consolePath: string): void {
    this.unwatch(uid);
    const w: Watched = { pid, console: consolePath, offset: 0, booted: false, tail: '', since: Date.now(), healthy: false, child: false, release: [], consoleWatched: false, reading: false, again: false };
    this.watched.set(uid, w);
    const cancel = onChildExit(pid, () => this.gone(uid, w));
    if (cancel) {
      w.child = true;
      w.release.push(cancel);
    }
    const health = setTimeout(() => {
      if (this.watched.get(uid) !== w || w.healthy) return;
      w.healthy = true;
      this.events.healthy(uid);
    }, this.healthyAfterMs);
    health.unref();
    w.release.push(() => clearTimeout(health));
    this.watchConsole(uid, w);
    this.readConsole(uid, w);
    // Not our child and already gone (or a pid that exited before it was handed over): say so
    // now rather than at the next poll.
    if (!w.child && !pidAlive(pid)) setImmediate(() => this.gone(uid, w));
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick(), this.pollMs);
      this.timer.unref();
    }
  }

  unwatch(uid: string): void {
    const w = this.watched.get(uid);
    if (!w) return;
    this.watched.delete(uid);
    for (const r of w.release) r();
    w.release = [];
  }

  watching(uid: string, pid: number): boolean {
    return this.watched.get(uid)?.pid === pid;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const uid of [...this.watched.keys()]) this.unwatch(uid);
  }

  private gone(uid: string, w: Watched): void {
    if (this.watched.get(uid) !== w) return;
    this.unwatch(uid);
    this.log.warn({ uid, pid: w.pid }, 'vmm exited');
    try {
      this.events.exited(uid, w.pid);
    } catch (err) {
      // Runs from an event: nobody awaits it, so a failure (the store refusing a write) is
      // logged here.
      this.log.error({ uid, err: (err as Error).message }, 'handling a vmm exit failed');
    }
  }

  private watchConsole(uid: string, w: Watched): void {
    if (w.booted) return;
    let watcher: FSWatcher;
    try {
      watcher = watch(w.console, { persistent: false }, () => this.readConsole(uid, w));
    } catch {
      // The console file appears a moment after the VMM starts; the poll tries again.
      return;
    }
    w.consoleWatched = true;
    w.closeConsole = () => {
      w.consoleWatched = false;
      w.closeConsole = undefined;
      watcher.close();
    };
    watcher.on('error', () => w.closeConsole?.());
    w.release.push(() => w.closeConsole?.());
  }

  /** Reads what the console gained since the last read; never two reads of one console at once. */
  private readConsole(uid: string, w: Watched): void {
    if (w.booted || this.watched.get(uid) !== w) return;
    if (w.reading) {
      w.again = true;
      return;
    }
    w.reading = true;
    void this.readNew(uid, w)
      .catch(() => undefined)
      .finally(() => {
        w.reading = false;
        if (w.again) {
          w.again = false;
          this.readConsole(uid, w);
        }
      });
  }

  /**
   * The size is looked up in place (a stat changes nothing on disk); the read goes through the
   * pool, as reading a file the VMM just wrote updates its access time, a change that can wait
   * for the ext4 journal the store's fsyncs keep busy.
   */
  private async readNew(uid: string, w: Watched): Promise<void> {
    const size = statSync(w.console, { throwIfNoEntry: false })?.size;
    // The daemon cuts a console at its bound (console-log-max-bytes): read on from the start.
    if (size !== undefined && size < w.offset) w.offset = 0;
    if (size === undefined || size <= w.offset) return;
    const fh = await open(w.console, 'r');
    try {
      const buf = Buffer.alloc(Math.min(size - w.offset, 64 * 1024));
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, w.offset);
        if (bytesRead === 0) return;
        w.offset += bytesRead;
        const text = w.tail + buf.subarray(0, bytesRead).toString('utf8');
        w.tail = text.slice(-200);
        if (BOOT_PATTERN.test(text)) {
          w.booted = true;
          w.closeConsole?.();
          if (this.watched.get(uid) === w) this.events.booted(uid, w.pid);
          return;
        }
        if (bytesRead < buf.length) return;
      }
    } finally {
      await fh.close();
    }
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (const [uid, w] of [...this.watched]) {
        // A child's exit is its exit event; only VMMs a previous daemon started are looked at,
        // and children whose exit can no longer be reported (their spawner died).
        if ((!w.child || !isChild(w.pid)) && !pidAlive(w.pid)) {
          this.gone(uid, w);
          continue;
        }
        // A console that did not exist when watching began (or whose watch failed) is watched
        // now and read once; a watched console costs nothing here.
        if (!w.booted && !w.consoleWatched) {
          this.watchConsole(uid, w);
          this.readConsole(uid, w);
        }
      }
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'supervisor poll failed');
    } finally {
      this.busy = false;
    }
  }
}
