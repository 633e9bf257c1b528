import { ErrorCode, MatchlockError, missingLinkOf } from '../errors.js';
import type { Clock, Logger, Runtime, RuntimeStatus, Store, Tombstones, UpdateOptions } from '../ports.js';
import { desiredPower, type MicroVM, type MicroVMStatus } from '../microvm/types.js';
import { backoffMs } from './backoff.js';

export interface ReconcilerOptions {
  store: Store & Tombstones;
  runtime: Runtime;
  clock: Clock;
  logger: Logger;
  /** After this many failed attempts a create ends in FAILED and a delete drops the record. */
  maxRetries: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /** A number in [0, 1) for jitter; injectable so tests are repeatable. */
  random01: () => number;
  /** Told of every pass that did work (not one that only found its retry not yet due). */
  observer?: ReconcileObserver | undefined;
  /**
   * Told after every pass: the record as the pass read it, or undefined when there is none or
   * the pass was a teardown (its VM is going); and the host link whose absence failed the
   * pass, if that is how it failed (status.missingLink as the pass recorded it), or, for a pass
   * that attempted nothing (the VM is FAILED, or its retry is not due yet), the link whose
   * absence failed the last attempt (the stored status.missingLink), `stored` then true: after
   * a restart the first pass of a VM backing off is such a pass, and it is how the link watch
   * learns that the link is awaited. The link watch tracks a VM's links from it without
   * reading the record again.
   */
  passEnded?: ((uid: string, vm: MicroVM | undefined, missingLink: string | undefined, stored: boolean) => void) | undefined;
}

/** How one reconcile pass ended: `ok` converged or still waiting on the guest, `failed` counted a failure, `canceled` was called off. */
export type PassOutcome = 'ok' | 'failed' | 'canceled';

/** Watches reconcile passes (the metrics endpoint's attempts and durations). */
export interface ReconcileObserver {
  pass(e: { kind: 'ensure' | 'teardown'; outcome: PassOutcome; seconds: number }): void;
  /**
   * A VMM of a stored VM exited on its own (seen by the supervisor, not stopped by a pass):
   * `unexpected` while its desired power is RUNNING (a crash or a guest that powered off; a
   * failed attempt for back-off and the retry limit), `powered_off` while it is STOPPED. Not a
   * pass: it has no duration, so it is not counted with them.
   */
  vmmExited?(e: { provider: string; reason: 'unexpected' | 'powered_off' }): void;
}

/**
 * Everything the reconciler writes is committed without waiting for the disk (see
 * UpdateOptions): it survives a kill -9 of the daemon, and a power cut loses at most what the
 * next pass observes or attempts again (a status, a retry count, an attempt's failure). What a
 * client was told (its create, delete or power change) is the API's durable write.
 */
const OBSERVED: UpdateOptions = { durable: false };

/**
 * One reconcile pass for one VM: compare the record with the world through the runtime, save
 * what changed, and say when to look again. Never throws: failures go onto the VM's status.
 */
export class Reconciler {
  /** The pass running for each uid (the queue runs at most one per uid), to call it off. */
  private readonly inflight = new Map<string, Inflight>();
  private shuttingDown = false;

  constructor(private readonly opts: ReconcilerOptions) {}

  /**
   * A record changed. When it is now DELETING, a create pass still running for it is called
   * off, so the delete that the queue runs next does not wait for a pull or a boot.
   */
  changed(uid: string): void {
    const pass = this.inflight.get(uid);
    if (pass?.kind !== 'ensure') return;
    if (this.opts.store.get(uid)?.status.state !== 'DELETING') return;
    pass.controller.abort(new MatchlockError(ErrorCode.Canceled, `microvm ${uid}: create pass called off by a delete`));
  }

  /** Calls off every running pass (daemon shutdown after its grace period); none is recorded as failed. */
  abortAll(): void {
    this.shuttingDown = true;
    for (const [uid, pass] of this.inflight) pass.controller.abort(new MatchlockError(ErrorCode.Canceled, `microvm ${uid}: reconcile called off by shutdown`));
  }

  /** Whether a pass runs for this VM now. */
  busy(uid: string): boolean {
    return this.inflight.has(uid);
  }

  /**
   * The host link `link` (a bridge, a macvtap's parent) appeared again: a VM whose last failure
   * found it missing (status.missingLink) need not wait out its back-off, so its next attempt
   * time is cleared, and its retry count and last error start over: the failures counted while
   * the link was away said nothing of the VM, and a VM that recovers just short of FAILED would
   * otherwise be FAILED after its next outage's second failure rather than after maximum-retry.
   * A FAILED VM whose last failure found it missing ran out of attempts while the link was away
   * (every resync and catch-up pass failed for want of it): it is revived the same way, PENDING
   * again, so an uplink outage that ends recovers its VMs, while a link that never appears still
   * leaves them FAILED after maximum-retry, as flintlock does. A VM that failed for another
   * reason keeps its back-off, its count or FAILED: a VMM that keeps crashing (its failures name
   * no link) still runs out of attempts, its count reset only by a boot. One being deleted is
   * left alone. While a pass runs for the VM, the choice is made when the pass ends, on the
   * failure it recorded.
   */
  retryNow(uid: string, link: string): void {
    const pass = this.inflight.get(uid);
    if (pass) {
      (pass.retryNow ??= new Set()).add(link);
      return;
    }
    this.save(uid, (cur) => {
      const s = cur.status;
      if (s.state === 'DELETING' || s.missingLink !== link) return s;
      if (s.state === 'FAILED') {
        this.opts.logger.info({ uid, namespace: cur.spec.namespace, name: cur.spec.name, link, retry: s.retry }, 'the link a FAILED VM ran out of attempts for appeared again: it is PENDING again, with its retries counted from 0');
        return { ...s, state: 'PENDING', retry: 0, lastError: '', nextAttemptAt: undefined };
      }
      return { ...s, retry: 0, lastError: '', nextAttemptAt: undefined };
    });
  }

  /** How many passes are running now. */
  get running(): number {
    return this.inflight.size;
  }

  async reconcile(uid: string): Promise<number | undefined> {
    const { store, logger } = this.opts;
    const vm = store.get(uid);
    if (!vm) {
      this.opts.passEnded?.(uid, undefined, undefined, false);
      return undefined;
    }
    const log = logger.child({ uid, namespace: vm.spec.namespace, name: vm.spec.name });
    const kind = vm.status.state === 'DELETING' ? 'teardown' : 'ensure';
    const pass: Inflight = { kind, controller: new AbortController() };
    this.inflight.set(uid, pass);
    const started = this.opts.clock.now().getTime();
    try {
      return await (kind === 'teardown' ? this.delete(vm, log, pass) : this.create(vm, log, pass));
    } finally {
      this.inflight.delete(uid);
      for (const link of pass.retryNow ?? []) this.retryNow(uid, link);
      // A boot reported during a pass that saved nothing (called off, or not due yet).
      if (pass.bootedPid !== undefined) this.guestBooted(uid, pass.bootedPid);
      if (pass.outcome) this.opts.observer?.pass({ kind, outcome: pass.outcome, seconds: (this.opts.clock.now().getTime() - started) / 1000 });
      this.opts.passEnded?.(uid, kind === 'teardown' ? undefined : vm, pass.missingLink, pass.missingLinkStored === true);
    }
  }

  /**
   * One create pass writes the record once, with its outcome (CREATED, PENDING or the failure
   * and what the steps achieved before it), plus once more for each decision a step made that
   * the next pass could not observe again: an image digest pinned, a restart done. Anything
   * else a step observed (paths, links, pid) the next pass observes again after a crash.
   */
  private async create(vm: MicroVM, log: Logger, pass: Inflight): Promise<number | undefined> {
    const { uid } = vm;
    const signal = pass.controller.signal;
    // A pass that attempts nothing (the VM FAILED, or its back-off not over) tells the link
    // watch of the link the last attempt missed.
    const wait = vm.status.state === 'FAILED' ? undefined : dueIn(vm, this.opts.clock.now());
    if (wait === undefined || wait > 0) {
      pass.missingLink = vm.status.missingLink;
      pass.missingLinkStored = true;
      // A stop asked for while the create waits out its back-off: no VMM runs, so the VM is
      // stopped now, not at the next attempt (which may be an hour away, or never come).
      if (desiredPower(vm) === 'STOPPED') this.save(uid, (cur) => stoppedWithoutVmm(cur.status));
      return wait;
    }
    pass.outcome = 'failed';
    let observed: Omit<RuntimeStatus, 'ready'> | undefined;
    let decided = decisions(vm.status);
    try {
      const progress = (s: RuntimeStatus) => {
        const { ready: _ready, ...partial } = s;
        observed = partial;
        const now = decisions(partial);
        if (now === decided) return;
        decided = now;
        this.save(uid, (cur) => withObserved(this.booted(cur.status, pass), partial));
      };
      const { ready, ...fields } = await this.opts.runtime.ensure(vm, log, progress, signal);
      // retry is not reset here: a VMM that starts and then crashes must still run out of
      // attempts. It resets when the guest is seen booting (guestBooted).
      this.save(uid, (cur) => ({ ...withObserved(this.booted(cur.status, pass), fields), state: ready ? 'CREATED' : 'PENDING', lastError: '', nextAttemptAt: undefined, missingLink: undefined }));
      pass.outcome = 'ok';
      return undefined;
    } catch (err) {
      if (signal.aborted) {
        pass.outcome = 'canceled';
        return this.calledOff(log, signal);
      }
      const achieved = observed;
      pass.missingLink = missingLinkOf(err);
      // A pass for a stopped VM starts no VMM (its plan ends by stopping one): failed, none runs.
      const stopped = desiredPower(vm) === 'STOPPED' ? stoppedWithoutVmm : (c: MicroVMStatus) => c;
      return this.fail(vm, err, log, (cur) => stopped(achieved ? withObserved(this.booted(cur, pass), achieved) : this.booted(cur, pass)));
    }
  }

  /**
   * The status with the boot the supervisor reported during this pass, as guestBooted would
   * have saved it before the pass's own write; the report is then consumed.
   */
  private booted(cur: MicroVMStatus, pass: Inflight): MicroVMStatus {
    const pid = pass.bootedPid;
    if (pid === undefined) return cur;
    pass.bootedPid = undefined;
    return bootedStatus(cur, pid);
  }

  /** A pass called off is not a failure: nothing is counted; the queue runs what comes next. */
  private calledOff(log: Logger, signal: AbortSignal): number | undefined {
    log.info({ reason: MatchlockError.from(signal.reason).message }, 'reconcile called off');
    return this.shuttingDown ? undefined : 0;
  }

  /**
   * The supervisor saw the VMM exit: a failed attempt like any other (back-off, FAILED after the
   * retry limit), so a guest that crashes on boot does not restart in a tight loop. Returns the
   * delay after which to reconcile, or undefined when nothing more should happen.
   */
  vmmExited(uid: string, pid: number): number | undefined {
    const vm = this.opts.store.get(uid);
    if (!vm || vm.status.state === 'DELETING' || vm.status.state === 'FAILED') return vm?.status.state === 'DELETING' ? 0 : undefined;
    const log = this.opts.logger.child({ uid, namespace: vm.spec.namespace, name: vm.spec.name });
    if (desiredPower(vm) === 'STOPPED') {
      // The operator wants it off: an exit (the guest powered itself down) is no failure.
      this.opts.observer?.vmmExited?.({ provider: vm.spec.provider, reason: 'powered_off' });
      this.save(uid, (cur) => ({ ...cur.status, vmmPid: 0, guestBooted: false, power: 'STOPPED' }));
      log.info({ pid }, 'vmm exited; desired power is STOPPED, so it stays off');
      return undefined;
    }
    this.opts.observer?.vmmExited?.({ provider: vm.spec.provider, reason: 'unexpected' });
    const withStopped = { ...vm, status: { ...vm.status, vmmPid: 0, guestBooted: false, power: 'STOPPED' as const } };
    this.save(uid, (cur) => ({ ...cur.status, state: 'PENDING', vmmPid: 0, guestBooted: false, power: 'STOPPED' }));
    return this.fail(withStopped, new Error(`vmm pid ${pid} exited unexpectedly`), log);
  }

  /**
   * At start, before the first pass: a VM whose status still records a VMM pid (it ran when the
   * last daemon stopped) and whose VMM `running` no longer finds died while no daemon watched
   * it. That is an exit like the supervisor reports (logged, counted by the observer, a failed
   * attempt towards maximum-retry while the VM should run), reported once: the status saved
   * here no longer records the pid. Resolves the delay after which to reconcile it, or
   * undefined when there was no such exit or nothing more should happen.
   */
  async exitedWhileDown(vm: MicroVM, running: () => Promise<number | undefined>): Promise<number | undefined> {
    const pid = vm.status.vmmPid;
    if (!pid || vm.status.state === 'DELETING' || vm.status.state === 'FAILED') return undefined;
    if ((await running()) !== undefined) return undefined;
    this.opts.logger.warn({ uid: vm.uid, pid, seen: 'at start' }, 'vmm exited');
    return this.vmmExited(vm.uid, pid);
  }

  /**
   * The guest of the VMM with this pid reached userspace: it is healthy, so its failure count
   * starts over. The pid is saved with it, so a create pass that reports the same VMM later
   * keeps guest_booted.
   */
  guestBooted(uid: string, pid: number): void {
    // A create pass running for this VM writes the record when it ends: the boot goes with it.
    const pass = this.inflight.get(uid);
    if (pass?.kind === 'ensure') {
      pass.bootedPid = pid;
      return;
    }
    this.save(uid, (cur) => bootedStatus(cur.status, pid));
  }

  /**
   * The VMM stayed up for the configured time: healthy whether or not the console showed the
   * boot (`quiet` hides it), so its failure count starts over. guest_booted is left alone, and
   * so are the back-off of the last failure (nextAttemptAt) and the link it missed
   * (missingLink): they go together, so that link's return still cuts the back-off short.
   */
  vmmHealthy(uid: string): void {
    this.save(uid, (cur) => (cur.status.state === 'DELETING' || cur.status.state === 'FAILED' ? cur.status : { ...cur.status, retry: 0, lastError: '' }));
  }

  private async delete(vm: MicroVM, log: Logger, pass: Inflight): Promise<number | undefined> {
    const signal = pass.controller.signal;
    const wait = dueIn(vm, this.opts.clock.now());
    if (wait > 0) return wait;
    pass.outcome = 'failed';
    try {
      await this.opts.runtime.teardown(vm, log, signal);
      this.opts.store.remove(vm.uid);
      log.info({}, 'microvm deleted');
      pass.outcome = 'ok';
      return undefined;
    } catch (err) {
      if (signal.aborted) {
        pass.outcome = 'canceled';
        return this.calledOff(log, signal);
      }
      const e = MatchlockError.from(err);
      if (vm.status.retry + 1 > this.opts.maxRetries) {
        // Never leave a record stuck in DELETING; the tombstone is what lets the orphan sweep
        // prove the leftovers were this daemon's and deleted, so it may remove them.
        this.opts.store.bury({ uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name, droppedAt: this.opts.clock.now().toISOString(), reason: e.message });
        log.error({ err: e.message }, 'delete failed too often; record dropped with a tombstone, leftovers go to the orphan sweep');
        return undefined;
      }
      return this.fail(vm, e, log);
    }
  }

  /** `before`: what the failed pass achieved, applied to the stored status under the failure. */
  private fail(vm: MicroVM, err: unknown, log: Logger, before: (cur: MicroVMStatus) => MicroVMStatus = (cur) => cur): number | undefined {
    const e = MatchlockError.from(err);
    const retry = vm.status.retry + 1;
    const exhausted = vm.status.state !== 'DELETING' && retry > this.opts.maxRetries;
    const delay = backoffMs(retry, this.opts.backoffBaseMs, this.opts.backoffMaxMs, this.opts.random01());
    const next = new Date(this.opts.clock.now().getTime() + delay).toISOString();
    log.warn({ err: e.message, retry, exhausted }, exhausted ? 'reconcile failed; giving up' : 'reconcile failed; will retry');
    this.save(vm.uid, (cur) => ({
      ...before(cur.status),
      state: exhausted ? 'FAILED' : cur.status.state === 'CREATED' ? 'PENDING' : cur.status.state,
      retry,
      lastError: e.message,
      nextAttemptAt: exhausted ? undefined : next,
      missingLink: missingLinkOf(err),
    }));
    return exhausted ? undefined : delay;
  }

  /** Stores a new status only when it differs, so an idle resync does not bump versions. */
  private save(uid: string, next: (cur: MicroVM) => MicroVMStatus, opts: UpdateOptions = OBSERVED): void {
    const now = this.opts.clock.now().toISOString();
    this.opts.store.update(uid, (cur) => {
      const status = stripUndefined(next(cur));
      // A delete that arrived while this pass ran wins: its state must not be overwritten.
      if (cur.status.state === 'DELETING' && status.state !== 'DELETING') return undefined;
      if (JSON.stringify(status) === JSON.stringify(cur.status)) return undefined;
      return { ...cur, status, updatedAt: now };
    }, opts);
  }
}

/**
 * What a create pass observed, over the stored status. guest_booted is the supervisor's to set
 * (from the console, which may show the boot before the pass ends): a pass only clears it when
 * it reports another VMM than the stored one.
 */
function withObserved(cur: MicroVMStatus, observed: Omit<RuntimeStatus, 'ready'>): MicroVMStatus {
  const { guestBooted: _ignored, ...rest } = observed;
  const otherVmm = observed.vmmPid !== undefined && observed.vmmPid !== cur.vmmPid;
  return { ...cur, ...rest, guestBooted: otherVmm ? false : cur.guestBooted };
}

/** A running pass: its kind, how to call it off, how it ended, and a boot reported meanwhile. */
interface Inflight {
  kind: 'ensure' | 'teardown';
  controller: AbortController;
  outcome?: PassOutcome;
  /** The supervisor saw the guest of the VMM with this pid boot while the pass ran. */
  bootedPid?: number | undefined;
  /** The host link whose absence failed this create pass, or the last attempt (missingLinkStored). */
  missingLink?: string | undefined;
  /** missingLink is the stored one: this pass attempted nothing. */
  missingLinkStored?: boolean;
  /** Links retryNow was told of while the pass ran: the choice is made when it ends. */
  retryNow?: Set<string>;
}

/**
 * The guest of the VMM with this pid reached userspace; a record being deleted keeps its
 * status. The back-off of the last failure and the link it missed stay (see vmmHealthy).
 */
function bootedStatus(cur: MicroVMStatus, pid: number): MicroVMStatus {
  return cur.state === 'DELETING' ? cur : { ...cur, vmmPid: pid, guestBooted: true, retry: 0, lastError: '' };
}

/**
 * What a create pass decided rather than observed, as one comparable string: the pinned image
 * digests (a moving tag must not change the VM after a crash) and the restart it carried out.
 */
function decisions(s: Partial<Pick<MicroVMStatus, 'imageDigests' | 'restarted'>>): string {
  return JSON.stringify([Object.entries(s.imageDigests ?? {}).sort(), s.restarted ?? null]);
}

/**
 * The status of a VM whose desired power is STOPPED, where no VMM of it is known to run (no
 * pid): power STOPPED, so a `vm stop` waiting for it ends. One with a pid keeps its power
 * until the pass that stops that VMM says so.
 */
function stoppedWithoutVmm(s: MicroVMStatus): MicroVMStatus {
  return s.vmmPid ? s : { ...s, power: 'STOPPED' };
}

function dueIn(vm: MicroVM, now: Date): number {
  if (vm.status.nextAttemptAt === undefined) return 0;
  return Math.max(0, Date.parse(vm.status.nextAttemptAt) - now.getTime());
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
