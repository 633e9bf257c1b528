import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from '../core/ports.js';

/**
 * The daemon's states, in the only order they are entered:
 * - starting: configuration read, sweep and APIs being set up; nothing served yet.
 * - serving: APIs accept requests, the reconciler works.
 * - draining: the first SIGTERM/SIGINT arrived: APIs stop taking requests, running reconciles
 *   get the grace period to finish, then are called off.
 * - stopped: everything the daemon opened is closed. VMs keep running.
 */
export type DaemonState = 'starting' | 'serving' | 'draining' | 'stopped';
const ORDER: readonly DaemonState[] = ['starting', 'serving', 'draining', 'stopped'];

/** What shutdown drives, in this order. */
export interface Drainable {
  /**
   * Stops accepting requests; `force` drops calls in flight instead of waiting for them. Called
   * with `force` after `graceMs` when the first call has not resolved by then.
   */
  stopServing(force: boolean): Promise<void>;
  /** Stops taking new work and resolves when the running reconciles have finished. */
  stopWork(): Promise<void>;
  /** Calls off the running reconciles (their runtime gets an aborted signal). */
  abortWork(): void;
  /** Closes what is left (supervisor timer, store). */
  close(): Promise<void> | void;
}

/** How long called-off reconciles get to notice before the daemon closes under them. */
export const ABORT_WAIT_MS = 5000;

export class Lifecycle {
  private current: DaemonState = 'starting';
  private forceNow: (() => void) | undefined;
  private readonly forced: Promise<'forced'>;
  private isForced = false;
  private stopping: Promise<void> | undefined;

  constructor(private readonly log: Logger) {
    this.forced = new Promise((resolve) => {
      this.forceNow = () => resolve('forced');
    });
    log.info({ state: this.current }, 'daemon state');
  }

  get state(): DaemonState {
    return this.current;
  }

  /** Moves forward to `next` and logs it; going back or repeating a state is a bug. */
  to(next: DaemonState): void {
    if (ORDER.indexOf(next) <= ORDER.indexOf(this.current)) throw new RangeError(`daemon state cannot go from ${this.current} to ${next}`);
    this.log.info({ state: next, from: this.current }, 'daemon state');
    this.current = next;
  }

  /** Skips what is left of the grace period (a second signal). */
  force(): void {
    if (this.isForced) return;
    this.isForced = true;
    this.log.warn({ state: this.current }, 'forced shutdown: calling off running reconciles now');
    this.forceNow?.();
  }

  /**
   * Drains and stops: stop serving (waiting up to `graceMs` for calls in flight, then dropping
   * them), wait up to `graceMs` for running reconciles, then call them off and close. Repeated calls share one shutdown.
   */
  shutdown(d: Drainable, graceMs: number): Promise<void> {
    this.stopping ??= this.drain(d, graceMs);
    return this.stopping;
  }

  private async drain(d: Drainable, graceMs: number): Promise<void> {
    if (this.current === 'starting' || this.current === 'serving') this.to('draining');
    const timers = new AbortController();
    const wait = (ms: number) => delay(ms, 'timeout' as const, { signal: timers.signal }).catch(() => 'timeout' as const);
    try {
      // Calls in flight get the grace period too; what is still open then (a client that does
      // not read what it is sent, a call that ignored the drain) is dropped, so no client can
      // keep the daemon from stopping.
      const serving = d.stopServing(false).then(() => 'done' as const);
      const served = await Promise.race([serving, wait(graceMs), this.forced]);
      if (served !== 'done') {
        this.log.warn({ graceMs, outcome: served }, 'calls still open; dropping them');
        await d.stopServing(true);
      }
      const work = d.stopWork().then(() => 'done' as const);
      const outcome = await Promise.race([work, wait(graceMs), this.forced]);
      if (outcome !== 'done') {
        this.log.warn({ graceMs, outcome }, 'reconciles still running; calling them off');
        d.abortWork();
        if ((await Promise.race([work, wait(ABORT_WAIT_MS)])) !== 'done') this.log.warn({ waitedMs: ABORT_WAIT_MS }, 'reconciles did not stop when called off; closing anyway');
      }
    } finally {
      timers.abort();
      await d.close();
      this.to('stopped');
    }
  }
}
