import { open } from 'node:fs/promises';
import type { Logger, Supervisor } from '../../core/ports.js';
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
}

/**
 * Watches every VMM process (not only our own children: adopted ones after a restart too) on a
 * short poll, so an exit shows in status within a second, and reads each console for the boot
 * line. The daemon turns the events into status changes and reconciles.
 */
export class PollingSupervisor implements Supervisor {
  private readonly watched = new Map<string, Watched>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  private readonly intervalMs: number;
  private readonly healthyAfterMs: number;

  /**
   * `healthyAfterMs`: how long a VMM must stay up to count as healthy. Boot is otherwise seen
   * only on the console, and a guest booted with `quiet` never prints the line.
   */
  constructor(
    private readonly events: SupervisorEvents,
    private readonly log: Logger,
    opts: { intervalMs?: number; healthyAfterMs?: number } = {},
  ) {
    this.intervalMs = opts.intervalMs ?? 250;
    this.healthyAfterMs = opts.healthyAfterMs ?? 30_000;
  }

  watch(uid: string, pid: number, consolePath: string): void {
    this.watched.set(uid, { pid, console: consolePath, offset: 0, booted: false, tail: '', since: Date.now(), healthy: false });
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick(), this.intervalMs);
      this.timer.unref();
    }
  }

  unwatch(uid: string): void {
    this.watched.delete(uid);
  }

  watching(uid: string, pid: number): boolean {
    return this.watched.get(uid)?.pid === pid;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watched.clear();
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (const [uid, w] of [...this.watched]) {
        if (!w.booted) await this.readConsole(uid, w);
        if (!pidAlive(w.pid)) {
          this.watched.delete(uid);
          this.log.warn({ uid, pid: w.pid }, 'vmm exited');
          this.events.exited(uid, w.pid);
        } else if (!w.healthy && Date.now() - w.since >= this.healthyAfterMs) {
          w.healthy = true;
          this.events.healthy(uid);
        }
      }
    } catch (err) {
      // Runs from a timer: nobody awaits it, so a failure (the store refusing a write) is
      // logged here and the next tick tries again.
      this.log.error({ err: (err as Error).message }, 'supervisor tick failed');
    } finally {
      this.busy = false;
    }
  }

  private async readConsole(uid: string, w: Watched): Promise<void> {
    let fh;
    try {
      fh = await open(w.console, 'r');
      // The daemon cuts a console at its bound (console-log-max-bytes): read on from the start.
      if ((await fh.stat()).size < w.offset) w.offset = 0;
      const buf = Buffer.alloc(64 * 1024);
      const { bytesRead } = await fh.read(buf, 0, buf.length, w.offset);
      if (bytesRead === 0) return;
      w.offset += bytesRead;
      const text = w.tail + buf.subarray(0, bytesRead).toString('utf8');
      w.tail = text.slice(-200);
      if (BOOT_PATTERN.test(text)) {
        w.booted = true;
        this.events.booted(uid, w.pid);
      }
    } catch {
      // the console file appears a moment after the VMM starts
    } finally {
      await fh?.close();
    }
  }
}
