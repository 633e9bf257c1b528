import { failedPrecondition } from '../../errors.js';
import type { Logger, Supervisor } from '../../ports.js';
import type { VmmInstance } from '../../vmm.js';
import type { CreateContext } from '../context.js';
import type { Step } from '../step.js';

/** The VM's VMM process, started by its provider with what the earlier steps observed. */
export class StartVmm implements Step {
  readonly name: string;
  constructor(private readonly ctx: CreateContext) {
    this.name = `vmm ${ctx.descriptor.name}`;
  }
  async needed(): Promise<boolean> {
    return (await this.ctx.instance.running()) === undefined;
  }
  async run(signal: AbortSignal): Promise<void> {
    // Recorded before the start: a VMM that exits at once has left its files all the same.
    this.ctx.status.vmmStarted = true;
    this.ctx.status.vmmPid = await this.ctx.instance.start(this.ctx.launch(), signal, this.ctx.log);
    this.ctx.log.info({ pid: this.ctx.status.vmmPid }, 'vmm started');
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.ctx.descriptor.name} exited right after it started; see the files in ${this.ctx.ref.dir}`);
  }
}

/** The supervisor watches the running VMM: its exit and the guest's boot are reported at once. */
export class Supervise implements Step {
  readonly name = 'supervision';
  constructor(private readonly ctx: CreateContext) {}
  async needed(): Promise<boolean> {
    const pid = await this.ctx.instance.running();
    return pid !== undefined && !this.ctx.deps.supervisor.watching(this.ctx.vm.uid, pid);
  }
  async run(): Promise<void> {
    const pid = await this.ctx.instance.running();
    if (pid === undefined) return;
    this.ctx.status.vmmPid = pid;
    this.ctx.status.vmmStarted = true;
    this.ctx.deps.supervisor.watch(this.ctx.vm.uid, pid, this.ctx.instance.consolePath);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition('the VMM is not supervised');
  }
}

/** Stops the VMM: a graceful power-down first, then harder until it is gone. */
export class StopVmm implements Step {
  readonly name: string;
  constructor(
    private readonly uid: string,
    private readonly instance: VmmInstance,
    private readonly supervisor: Supervisor,
    private readonly timeoutMs: number,
    private readonly log: Logger,
    provider: string,
  ) {
    this.name = `stop ${provider}`;
  }
  async needed(): Promise<boolean> {
    return (await this.instance.running()) !== undefined;
  }
  async run(signal: AbortSignal): Promise<void> {
    this.supervisor.unwatch(this.uid);
    await this.instance.stop({ timeoutMs: this.timeoutMs, signal }, this.log);
  }
  async verify(): Promise<void> {
    const pid = await this.instance.running();
    if (pid !== undefined) throw failedPrecondition(`vmm pid ${pid} is still running`);
  }
}

/**
 * A restart asked for and not yet carried out: the running VMM is stopped (gracefully, with the
 * grace of the request) so StartVmm, next in the plan, starts a new one. Recorded as carried out
 * as soon as the old VMM is gone, so a crash between the two steps does not restart twice.
 */
export class RestartVmm implements Step {
  readonly name: string;
  constructor(private readonly ctx: CreateContext, private readonly target: number) {
    this.name = `restart ${ctx.descriptor.name}`;
  }
  async needed(): Promise<boolean> {
    // Once this pass has stopped the VMM, or found none to stop, the VMM that StartVmm then
    // starts is the restarted one: the plan's closing look must not take it for one to stop.
    if ((this.ctx.status.restarted ?? 0) >= this.target) return false;
    if ((await this.ctx.instance.running()) !== undefined) return true;
    this.ctx.status.restarted = this.target;
    return false;
  }
  async run(signal: AbortSignal): Promise<void> {
    this.ctx.deps.supervisor.unwatch(this.ctx.vm.uid);
    await this.ctx.instance.stop({ timeoutMs: stopGraceOf(this.ctx), signal }, this.ctx.log);
    this.ctx.status.vmmPid = 0;
    this.ctx.status.guestBooted = false;
    this.ctx.status.restarted = this.target;
    this.ctx.log.info({ restart: this.target }, 'vmm stopped for a restart');
  }
  async verify(): Promise<void> {
    const pid = await this.ctx.instance.running();
    if (pid !== undefined) throw failedPrecondition(`vmm pid ${pid} is still running after the restart's stop`);
  }
}

/** A VM the operator stopped: its VMM is powered down and stays down (flintlock#330). */
export class StopVmmForPower implements Step {
  readonly name: string;
  constructor(private readonly ctx: CreateContext) {
    this.name = `power off ${ctx.descriptor.name}`;
  }
  async needed(): Promise<boolean> {
    const pid = await this.ctx.instance.running();
    if (pid === undefined) {
      this.ctx.status.vmmPid = 0;
      this.ctx.status.guestBooted = false;
    }
    return pid !== undefined;
  }
  async run(signal: AbortSignal): Promise<void> {
    this.ctx.deps.supervisor.unwatch(this.ctx.vm.uid);
    await this.ctx.instance.stop({ timeoutMs: stopGraceOf(this.ctx), signal }, this.ctx.log);
    this.ctx.status.vmmPid = 0;
    this.ctx.status.guestBooted = false;
    this.ctx.log.info({}, 'vmm stopped: desired power STOPPED');
  }
  async verify(): Promise<void> {
    const pid = await this.ctx.instance.running();
    if (pid !== undefined) throw failedPrecondition(`vmm pid ${pid} is still running after the stop`);
  }
}

/** The guest's vCPUs paused or running as the operator asked (QMP stop/cont, PATCH /vm, vm.pause). */
export class GuestPower implements Step {
  readonly name: string;
  constructor(private readonly ctx: CreateContext, private readonly paused: boolean) {
    this.name = paused ? 'pause guest' : 'resume guest';
  }
  async needed(): Promise<boolean> {
    const { instance } = this.ctx;
    if (!instance.powerState || !instance.setPaused) return false;
    if ((await instance.running()) === undefined) return false;
    const state = await instance.powerState(new AbortController().signal);
    return this.paused ? state === 'running' : state === 'paused';
  }
  async run(signal: AbortSignal): Promise<void> {
    await this.ctx.instance.setPaused?.(this.paused, signal);
    this.ctx.log.info({}, this.paused ? 'guest paused' : 'guest resumed');
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`the guest is not ${this.paused ? 'paused' : 'running'} after ${this.name}`);
  }
}

/** The grace a stop or restart asked for, else the daemon's delete-vm-timeout. */
function stopGraceOf(ctx: CreateContext): number {
  return ctx.vm.power?.stopGraceMs ?? ctx.deps.deleteVmTimeoutMs;
}
