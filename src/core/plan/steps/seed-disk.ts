import { failedPrecondition } from '../../errors.js';
import type { CreateContext } from '../context.js';
import type { Step } from '../step.js';

/**
 * The NoCloud seed as a disk in the VM directory, for providers whose metadata kind is
 * `nocloud-disk`. Written once: its content depends only on the spec and the NIC MACs, which
 * are derived from the uid, so an existing seed is already right.
 */
export class SeedDisk implements Step {
  readonly name = 'cloud-init seed';
  constructor(
    private readonly ctx: CreateContext,
    private readonly path: string,
  ) {}
  async needed(): Promise<boolean> {
    return !(await this.ctx.deps.files.exists(this.path));
  }
  async run(): Promise<void> {
    await this.ctx.deps.cloudInit.write(this.path, this.ctx.seed());
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.path} was not written`);
  }
}
