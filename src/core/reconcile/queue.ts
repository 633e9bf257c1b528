import type { Logger } from '../ports.js';

export interface QueueOptions {
  workers: number;
  /** Reconciles one VM; resolves to a delay after which it wants to run again, if any. */
  handler: (uid: string) => Promise<number | undefined>;
  logger: Logger;
}

/**
 * A de-duplicating work queue: a uid is queued at most once, one uid is never handled by two
 * workers at once, and a uid that changes while it is being handled runs again afterwards.
 * Delayed entries (back-off, periodic checks) keep only the earliest due time.
 *
 * enqueue only records the uid: handlers start on later turns of the event loop, one every
 * second turn (see schedule), so whoever enqueues (an API call) never waits on reconcile work,
 * its answer is sent in full before the pass starts, and requests that arrived meanwhile are
 * served and answered between two starts.
 */
export class ReconcileQueue {
  private readonly ready: string[] = [];
  private readonly queued = new Set<string>();
  private readonly running = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly delayed = new Map<string, { due: number; timer: NodeJS.Timeout }>();
  private readonly idleWaiters: (() => void)[] = [];
  private active = 0;
  private stopped = false;
  private scheduled = false;

  constructor(private readonly opts: QueueOptions) {
    if (!Number.isInteger(opts.workers) || opts.workers < 1) throw new RangeError('workers must be a positive integer');
  }

  /** Queues a uid now, or after `delayMs`; an earlier request wins over a later one. */
  enqueue(uid: string, delayMs = 0): void {
    if (this.stopped) return;
    if (delayMs > 0) {
      const due = Date.now() + delayMs;
      const existing = this.delayed.get(uid);
      if (existing && existing.due <= due) return;
      if (existing) clearTimeout(existing.timer);
      const timer = setTimeout(() => {
        this.delayed.delete(uid);
        this.enqueue(uid);
      }, delayMs);
      timer.unref();
      this.delayed.set(uid, { due, timer });
      return;
    }
    const pending = this.delayed.get(uid);
    if (pending) {
      clearTimeout(pending.timer);
      this.delayed.delete(uid);
    }
    if (this.running.has(uid)) {
      this.dirty.add(uid);
      return;
    }
    if (this.queued.has(uid)) return;
    this.queued.add(uid);
    this.ready.push(uid);
    this.schedule();
  }

  get size(): number {
    return this.queued.size + this.running.size + this.delayed.size;
  }

  /** Resolves when nothing is queued or running (delayed entries do not count). */
  async idle(): Promise<void> {
    if (this.active === 0 && this.ready.length === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops taking work, cancels delayed entries and waits for running handlers to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    this.ready.length = 0;
    this.queued.clear();
    await this.idle();
  }

  /**
   * The next start comes on the turn after the next one. An API answer is written in two steps
   * over two turns: Node's HTTP/2 session sends the headers and message from a native immediate
   * of the turn after the handler's, and a gRPC answer's trailers, asked for while that write
   * runs, from a native immediate of the turn after that; native immediates run before the
   * script's. A pass started one turn after the create that queued it ran its synchronous part
   * (reading and parsing the record, resolving the image) between the create's message and its
   * trailers, and the client waited for it.
   */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() =>
      setImmediate(() => {
        this.scheduled = false;
        this.pump();
      }),
    );
  }

  /** Starts at most one handler, and comes back (schedule) while more can start. */
  private pump(): void {
    if (!this.stopped && this.active < this.opts.workers) {
      const uid = this.ready.shift();
      if (uid !== undefined) {
        this.queued.delete(uid);
        this.running.add(uid);
        this.active++;
        void this.run(uid);
        if (this.ready.length > 0 && this.active < this.opts.workers) this.schedule();
      }
    }
    if (this.active === 0 && this.ready.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async run(uid: string): Promise<void> {
    let again: number | undefined;
    try {
      again = await this.opts.handler(uid);
    } catch (err) {
      // The handler records failures itself; reaching here is a bug, so log it and move on.
      this.opts.logger.error({ uid, err }, 'reconcile handler threw');
    } finally {
      this.running.delete(uid);
      this.active--;
    }
    if (this.dirty.delete(uid)) this.enqueue(uid);
    else if (again !== undefined) this.enqueue(uid, again);
    this.schedule();
  }
}
