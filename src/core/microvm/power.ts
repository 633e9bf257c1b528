import { failedPrecondition, invalid, notFound, quote } from '../errors.js';
import type { ChangeNotifier, Clock, Store } from '../ports.js';
import type { ProviderEntry } from '../vmm.js';
import { desiredPower, type MicroVM, type PowerIntent, type PowerState } from './types.js';

export interface PowerDeps {
  store: Store;
  clock: Clock;
  notifier: ChangeNotifier;
  providers: ReadonlyMap<string, ProviderEntry>;
}

export interface StopOptions {
  /** How long the guest gets to power down (ms); undefined: the daemon's delete-vm-timeout. */
  graceMs?: number | undefined;
  /** Stop the VMM without asking the guest (grace 0). */
  force?: boolean | undefined;
}

/** The most grace a stop may ask for: an hour. */
export const MAX_STOP_GRACE_MS = 3_600_000;

/**
 * matchlock.v1.MicroVMLifecycle's behaviour: each call stores the desired power state on the
 * record (in one transaction, so a daemon restart keeps it) and nudges the reconciler, which
 * brings the VMM there. Returns the stored record; milliseconds, nothing touches the host.
 * Errors: InvalidArgument (empty uid, bad grace), NotFound, FailedPrecondition (DELETING or
 * FAILED VMs, pause on a provider without the capability, pause or resume of a stopped VM or of
 * one not CREATED yet).
 */
export class PowerService {
  constructor(private readonly deps: PowerDeps) {}

  stop(uid: string, opts: StopOptions = {}): MicroVM {
    const graceMs = stopGrace(opts);
    return this.change(uid, 'stop', (cur) => ({ ...intent(cur), desired: 'STOPPED', stopGraceMs: graceMs }));
  }

  start(uid: string): MicroVM {
    return this.change(uid, 'start', (cur) => (desiredPower(cur) === 'STOPPED' ? { ...intent(cur), desired: 'RUNNING' } : undefined));
  }

  /** Stops the VMM and starts it again; a stopped or paused VM ends RUNNING. */
  restart(uid: string, opts: StopOptions = {}): MicroVM {
    const graceMs = stopGrace(opts);
    return this.change(uid, 'restart', (cur) => {
      const i = intent(cur);
      // Counted from what was carried out, so a restart asked for twice before the first ran
      // restarts once.
      return { ...i, desired: 'RUNNING', stopGraceMs: graceMs, restart: Math.max(i.restart, cur.status.restarted ?? 0) + 1 };
    });
  }

  pause(uid: string): MicroVM {
    return this.change(uid, 'pause', (cur) => this.pausable(cur, 'pause', 'PAUSED'));
  }

  resume(uid: string): MicroVM {
    return this.change(uid, 'resume', (cur) => this.pausable(cur, 'resume', 'RUNNING'));
  }

  private pausable(cur: MicroVM, verb: string, to: PowerState): PowerIntent | undefined {
    const entry = this.deps.providers.get(cur.spec.provider);
    if (!entry?.descriptor.capabilities.pause) throw failedPrecondition(`microvm ${quote(cur.uid)}: provider ${cur.spec.provider} cannot pause a guest`);
    const now = desiredPower(cur);
    if (now === 'STOPPED') throw failedPrecondition(`microvm ${quote(cur.uid)} is stopped; start it before you ${verb} it`);
    // Pausing acts on vCPUs; a VM still being created has none yet, and one whose create keeps
    // failing may never have (the request would wait forever).
    if (cur.status.state !== 'CREATED') throw failedPrecondition(`microvm ${quote(cur.uid)} is ${cur.status.state}; ${verb} needs a running VMM (wait for CREATED: vm watch --for state=CREATED)`);
    return now === to ? undefined : { ...intent(cur), desired: to };
  }

  /** Applies `next` to the record's power intent; undefined from `next` leaves it as it is. */
  private change(uid: string, verb: string, next: (cur: MicroVM) => PowerIntent | undefined): MicroVM {
    if (uid === '') throw invalid('uid', 'is required');
    const now = this.deps.clock.now().toISOString();
    let found = false;
    const vm = this.deps.store.update(uid, (cur) => {
      found = true;
      if (cur.status.state === 'DELETING') throw failedPrecondition(`microvm ${quote(uid)} is being deleted; it cannot ${verb}`);
      if (cur.status.state === 'FAILED') throw failedPrecondition(`microvm ${quote(uid)} is FAILED (${cur.status.lastError || 'no error recorded'}); ${failedHow(cur)}`);
      const power = next(cur);
      if (power === undefined || JSON.stringify(power) === JSON.stringify(cur.power)) return undefined;
      return { ...cur, power, updatedAt: now };
    });
    if (!vm || !found) throw notFound(`microvm ${quote(uid)}`);
    this.deps.notifier.changed(uid);
    return vm;
  }
}

/**
 * What becomes of a FAILED VM: one that ran out of attempts for want of its bridge or macvtap
 * parent (status.missingLink) is retried when that link appears again (the link watch); any
 * other stays FAILED until it is deleted.
 */
function failedHow(vm: MicroVM): string {
  const link = vm.status.missingLink;
  // The link watch retries it only while the link is still its bridge or parent (the config
  // may have changed since), which this service does not know: said as a condition.
  return link ? `matchlockd retries it when ${link} appears again, if ${link} is still its bridge or macvtap parent, then try again; or delete and create it again` : 'delete and create it again';
}

function intent(vm: MicroVM): PowerIntent {
  return vm.power ?? { desired: 'RUNNING', restart: 0 };
}

function stopGrace(opts: StopOptions): number | undefined {
  if (opts.force) return 0;
  const g = opts.graceMs;
  if (g === undefined) return undefined;
  if (!Number.isFinite(g) || g < 0 || g > MAX_STOP_GRACE_MS) throw invalid('grace', `must be between 0s and 1h, not ${g / 1000}s`);
  return g;
}
