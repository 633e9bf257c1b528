import { failedPrecondition } from '../../errors.js';
import type { CreateContext } from '../context.js';
import { unlessCanceled, type Step } from '../step.js';

/**
 * Makes an image available in the local store and pins its manifest digest on the VM. Needed
 * until the digest is pinned and that image is ready in the store; the pinned digest is used
 * whatever the tag points to now.
 */
export class PullImage implements Step {
  readonly name: string;
  constructor(
    private readonly ctx: CreateContext,
    private readonly ref: string,
  ) {
    this.name = `image ${ref}`;
  }
  async needed(): Promise<boolean> {
    const pinned = this.ctx.status.imageDigests?.[this.ref];
    return pinned === undefined || !(await this.ctx.deps.images.ready(pinned));
  }
  async run(signal: AbortSignal): Promise<void> {
    const digests = this.ctx.status.imageDigests ?? {};
    // The pull is shared by every VM of this image and finishes for them; a VM being deleted
    // stops waiting for it.
    digests[this.ref] = await unlessCanceled(this.ctx.deps.images.ensure(this.ref, this.ctx.log, digests[this.ref]), signal);
    this.ctx.status.imageDigests = digests;
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`image ${this.ref} is not ready in the image store after it was pulled`);
  }
}

/** The kernel or initrd file inside its image, recorded as a HOSTPATH mount on status. */
export class BootFile implements Step {
  readonly name: string;
  constructor(
    private readonly ctx: CreateContext,
    private readonly role: 'kernel' | 'initrd',
  ) {
    this.name = role;
  }
  private get source() {
    const spec = this.ctx.vm.spec;
    const s = this.role === 'kernel' ? spec.kernel : spec.initrd;
    if (!s) throw failedPrecondition(`the spec has no ${this.role}`);
    return s;
  }
  private get mount() {
    return this.role === 'kernel' ? this.ctx.status.kernelMount : this.ctx.status.initrdMount;
  }
  async needed(): Promise<boolean> {
    const m = this.mount;
    return !m || !(await this.ctx.deps.files.exists(m.source));
  }
  async run(): Promise<void> {
    const { image, filename } = this.source;
    const path = await this.ctx.deps.images.file(this.ctx.digest(image), filename, image);
    const mount = { type: 'HOSTPATH' as const, source: path };
    if (this.role === 'kernel') this.ctx.status.kernelMount = mount;
    else this.ctx.status.initrdMount = mount;
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.role} ${this.source.filename} is not on the host after it was resolved`);
  }
}
