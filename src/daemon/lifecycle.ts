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

/**
 * The longest a drain can take before the daemon closes, in ms: `graceMs` for calls in flight
 * and running reconciles together (one deadline from the first signal), then `ABORT_WAIT_MS`
 * for what was called off. Closing the store and sockets after that is not bounded here.
 */
export function drainBoundMs(graceMs: number): number {
  return graceMs + ABORT_WAIT_MS;
}

/** Resolves 'timeout' after `ms` unless `signal` aborts first (then also 'timeout'). */
export type Sleep = (ms: number, signal: AbortSignal) => Promise<'timeout'>;
const realSleep: Sleep = (ms, signal) => delay(ms, 'timeout' as const, { signal }).catch(() => 'timeout' as const);

export class Lifecycle {
  private current: DaemonState = 'starting';
  private forceNow: (() => void) | undefined;
  private readonly forced: Promise<'forced'>;
  private isForced = false;
  private stopping: Promise<void> | undefined;

  /** `sleep` is the timer the drain waits on (a test gives its own). */
  constructor(
    private readonly log: Logger,
    private readonly sleep: Sleep = realSleep,
  ) {
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
   * Drains and stops: stop serving, waiting for calls in flight, then for running reconciles,
   * both against one deadline `graceMs` after this first call; what is still open at the
   * deadline is dropped, what is still running is called off and gets `ABORT_WAIT_MS` more,
   * then everything is closed (see `drainBoundMs`). Repeated calls share one shutdown.
   */
  shutdown(d: Drainable, graceMs: number): Promise<void> {
    this.stopping ??= this.drain(d, graceMs);
    return this.stopping;
  }

  private async drain(d: Drainable, graceMs: number): Promise<void> {
    if (this.current === 'starting' || this.current === 'serving') this.to('draining');
    const timers = new AbortController();
    const wait = (ms: number) => this.sleep(ms, timers.signal);
    // One deadline for the whole drain: a slow call and a slow reconcile together must not
    // stretch the shutdown to twice the grace period.
    const deadline = wait(graceMs);
    try {
      // Calls in flight get the grace period too; what is still open then (a client that does
      // not read what it is sent, a call that ignored the drain) is dropped, so no client can
      // keep the daemon from stopping.
      const serving = d.stopServing(false).then(() => 'done' as const);
      const served = await Promise.race([serving, deadline, this.forced]);
      if (served !== 'done') {
        this.log.warn({ graceMs, outcome: served }, 'calls still open; dropping them');
        await d.stopServing(true);
      }
      const work = d.stopWork().then(() => 'done' as const);
      // The deadline may already be past (calls were dropped at it): reconciles that are idle
      // settle within a turn of the event loop and must not be called off for it.
      const late = deadline.then(() => new Promise<'timeout'>((r) => setImmediate(() => r('timeout'))));
      const outcome = await Promise.race([work, late, this.forced]);
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
