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
