import { failedPrecondition } from '../../errors.js';
import type { Volume } from '../../microvm/types.js';
import type { Logger, VolumeKey, Volumes } from '../../ports.js';
import type { CreateContext } from '../context.js';
import type { Step } from '../step.js';

/**
 * The VM's own copy of an image's filesystem, as a block device or disk image, at disk position
 * `index` (root is 0). needed() records an existing volume so the VMM can use it.
 */
export class CreateVolume implements Step {
  readonly name: string;
  private readonly key: VolumeKey;
  constructor(
    private readonly ctx: CreateContext,
    private readonly volume: Volume,
    private readonly index: number,
  ) {
    this.name = `volume ${volume.id}`;
    this.key = { uid: ctx.vm.uid, volumeId: volume.id, dir: ctx.ref.dir };
  }
  private record(path: string): void {
    this.ctx.recordDisk(this.index, { id: this.volume.id, path, readOnly: this.volume.isReadOnly }, { type: 'DEV', source: path });
  }
  async needed(): Promise<boolean> {
    const path = await this.ctx.deps.volumes.find(this.key);
    const recorded = this.ctx.status.volumes[this.volume.id]?.mount.source;
    if (path) this.record(path);
    return !path || recorded !== path;
  }
  async run(signal: AbortSignal): Promise<void> {
    const source = this.volume.source.containerSource;
    if (!source) throw failedPrecondition(`volume ${this.volume.id} has no container_source`);
    const { volumes } = this.ctx.deps;
    const path = (await volumes.find(this.key)) ?? (await volumes.create(this.key, this.ctx.digest(source), this.volume.sizeInMb, this.ctx.log, signal));
    this.record(path);
  }
  async verify(): Promise<void> {
    if (!(await this.ctx.deps.volumes.find(this.key))) throw failedPrecondition(`volume ${this.volume.id} is not on the host after it was created`);
  }
}

export class RemoveVolume implements Step {
  readonly name: string;
  constructor(
    private readonly volumes: Volumes,
    private readonly key: VolumeKey,
    private readonly log: Logger,
  ) {
    this.name = `remove volume ${key.volumeId}`;
  }
  async needed(): Promise<boolean> {
    return (await this.volumes.find(this.key)) !== undefined;
  }
  async run(): Promise<void> {
    await this.volumes.remove(this.key, this.log);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`volume ${this.key.volumeId} is still there`);
  }
}
