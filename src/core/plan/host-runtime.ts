import { failedPrecondition } from '../errors.js';
import { desiredPower, type MicroVM, type PowerState } from '../microvm/types.js';
import type { Logger, Runtime, RuntimeStatus } from '../ports.js';
import { runDirOf, vmDirOf, type VmmInstance, type VmRef, type VmmProvider } from '../vmm.js';
import { CreateContext, DeleteContext, type PlanDeps } from './context.js';
import { createPlan, deletePlan } from './plans.js';
import { runPlan, type StepOutcome } from './step.js';

export interface HostRuntimeOptions extends PlanDeps {
  stateDir: string;
  /** Every provider this matchlock knows, whether or not its binary is on this host: a VM whose
   *  binary went away must still be stoppable. */
  providers: ReadonlyMap<string, VmmProvider>;
  /** Told of every step that ran, with its plan (for the per-step metrics). */
  onStep?: ((plan: 'create' | 'delete', outcome: StepOutcome) => void) | undefined;
}

/**
 * Turns a MicroVM record into host objects with the create plan and removes them with the delete
 * plan (src/core/plan/plans.ts). Both are idempotent step lists over the host ports, rebuilt from
 * the stored record on every pass, so a crash at any point is repaired by running them again.
 */
export class HostRuntime implements Runtime {
  constructor(private readonly o: HostRuntimeOptions) {}

  ref(vm: MicroVM): VmRef {
    return { uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name, dir: vmDirOf(this.o.stateDir, vm), runDir: runDirOf(this.o.stateDir, vm.uid) };
  }

  private provider(vm: MicroVM): VmmProvider {
    const p = this.o.providers.get(vm.spec.provider);
    if (!p) throw failedPrecondition(`provider ${vm.spec.provider} is not known to this matchlock`);
    return p;
  }

  async ensure(vm: MicroVM, log: Logger, progress?: (s: RuntimeStatus) => void, signal: AbortSignal = new AbortController().signal): Promise<RuntimeStatus> {
    const provider = this.provider(vm);
    const ref = this.ref(vm);
    const instance = provider.instance(ref);
    const ctx = new CreateContext(vm, ref, provider.descriptor, instance, this.o, log);
    await runPlan(createPlan(ctx), log, { signal, onChange: () => progress?.({ ...ctx.status, ready: false }), onStep: (o) => this.o.onStep?.('create', o) });
    const pid = await instance.running();
    const power = await observedPower(instance, pid, signal);
    // A VM the operator stopped is as it should be without a VMM.
    const ready = pid !== undefined || desiredPower(vm) === 'STOPPED';
    return { ...ctx.status, vmmPid: pid ?? 0, power, ready };
  }

  async teardown(vm: MicroVM, log: Logger, signal: AbortSignal = new AbortController().signal): Promise<void> {
    const ref = this.ref(vm);
    const ctx = new DeleteContext(vm, ref, this.provider(vm).instance(ref), this.o, log);
    this.o.supervisor.unwatch(vm.uid);
    await runPlan(deletePlan(ctx), log, { signal, onStep: (o) => this.o.onStep?.('delete', o) });
    // <state-dir>/vm/<namespace>/<name> go too once no VM of that name or namespace is left.
    await this.o.files.removeIfEmpty(`${this.o.stateDir}/vm/${vm.spec.namespace}/${vm.spec.name}`);
    await this.o.files.removeIfEmpty(`${this.o.stateDir}/vm/${vm.spec.namespace}`);
  }
}

/**
 * The power state as the VMM reports it: STOPPED without a VMM; RUNNING when a VMM runs but
 * cannot tell (no powerState, or its API did not answer).
 */
async function observedPower(instance: VmmInstance, pid: number | undefined, signal: AbortSignal): Promise<PowerState> {
  if (pid === undefined) return 'STOPPED';
  const s = await instance.powerState?.(signal).catch(() => undefined);
  return s === 'paused' ? 'PAUSED' : s === 'stopped' ? 'STOPPED' : 'RUNNING';
}
