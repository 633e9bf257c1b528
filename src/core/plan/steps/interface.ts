import { failedPrecondition } from '../../errors.js';
import { guestMac, hostDeviceName } from '../../microvm/host-names.js';
import type { NetworkInterface } from '../../microvm/types.js';
import type { HostNetwork, LinkInfo } from '../../ports.js';
import type { CreateContext } from '../context.js';
import type { Step } from '../step.js';

/** Records an interface's host link on the context: what the VMM and network-config need. */
function record(ctx: CreateContext, index: number, iface: NetworkInterface, name: string, link: LinkInfo): void {
  const mac = iface.type === 'MACVTAP' ? link.mac : guestMac(ctx.vm, index);
  ctx.recordNic(index, { deviceId: iface.deviceId, type: iface.type, hostDevice: name, ifindex: link.ifindex, mac }, { hostDeviceName: name, index: link.ifindex, macAddress: link.mac });
}

/** A TAP device enslaved to the interface's bridge and up, marked as this VM's. */
export class TapInterface implements Step {
  readonly name: string;
  private readonly device: string;
  private readonly bridge: string;
  constructor(
    private readonly ctx: CreateContext,
    private readonly iface: NetworkInterface,
    private readonly index: number,
  ) {
    this.device = hostDeviceName(ctx.vm, index);
    this.bridge = iface.overrides?.bridgeName ?? ctx.deps.bridgeName;
    this.name = `interface ${iface.deviceId} (tap ${this.device})`;
  }
  /** What needed() saw in this pass, so run() does not look up the same link again. */
  private seen: { link: LinkInfo | undefined } | undefined;
  /**
   * The link as run() read it from the host after its change, for verify: reading it again at
   * once would cost another `ip` process when sysfs shows another namespace.
   */
  private made: LinkInfo | undefined;
  private ok(link: LinkInfo | undefined): link is LinkInfo {
    return link !== undefined && link.master === this.bridge && link.up;
  }
  async needed(): Promise<boolean> {
    const link = await this.ctx.deps.network.get(this.device);
    this.seen = { link };
    if (this.ok(link)) record(this.ctx, this.index, this.iface, this.device, link);
    return !this.ok(link);
  }
  async run(): Promise<void> {
    const { network, linkAlias } = this.ctx.deps;
    const seen = this.seen;
    this.seen = undefined;
    if (!this.bridge) throw failedPrecondition(`TAP interface ${this.iface.deviceId} has no bridge: set overrides.bridge_name or matchlockd --bridge-name`);
    if (!(await network.get(this.bridge))) throw failedPrecondition(`bridge ${this.bridge} for interface ${this.iface.deviceId} not found on this host`);
    const existing = seen ? seen.link : await network.get(this.device);
    let link = existing ?? (await network.createTap(this.device, { bridge: this.bridge, alias: linkAlias(this.ctx.vm.uid, this.iface.deviceId) }));
    let fresh = !existing;
    if (!this.ok(link)) {
      await network.attach(this.device, this.bridge);
      const after = await network.get(this.device);
      fresh = after !== undefined;
      link = after ?? link;
    }
    this.made = fresh ? link : undefined;
    record(this.ctx, this.index, this.iface, this.device, link);
  }
  async verify(): Promise<void> {
    const made = this.made;
    this.made = undefined;
    if (!this.ok(made ?? (await this.ctx.deps.network.get(this.device)))) throw failedPrecondition(`${this.device} is not up on bridge ${this.bridge}`);
  }
}

/** A MACVTAP device (mode bridge) on the parent interface, carrying the guest MAC. */
export class MacvtapInterface implements Step {
  readonly name: string;
  private readonly device: string;
  constructor(
    private readonly ctx: CreateContext,
    private readonly iface: NetworkInterface,
    private readonly index: number,
  ) {
    this.device = hostDeviceName(ctx.vm, index);
    this.name = `interface ${iface.deviceId} (macvtap ${this.device})`;
  }
  async needed(): Promise<boolean> {
    const link = await this.ctx.deps.network.get(this.device);
    if (link) record(this.ctx, this.index, this.iface, this.device, link);
    return !link;
  }
  async run(): Promise<void> {
    const { network, parentIface, linkAlias } = this.ctx.deps;
    if (!parentIface) throw failedPrecondition(`MACVTAP interface ${this.iface.deviceId} needs matchlockd --parent-iface`);
    if (!(await network.get(parentIface))) throw failedPrecondition(`parent interface ${parentIface} for ${this.iface.deviceId} not found on this host`);
    const link = await network.createMacvtap(this.device, { parent: parentIface, alias: linkAlias(this.ctx.vm.uid, this.iface.deviceId), mac: guestMac(this.ctx.vm, this.index) });
    this.made = link;
    record(this.ctx, this.index, this.iface, this.device, link);
  }
  /** The link as run() read it after creating it (see TapInterface.made). */
  private made: LinkInfo | undefined;
  async verify(): Promise<void> {
    const made = this.made;
    this.made = undefined;
    if (!(made ?? (await this.ctx.deps.network.get(this.device)))) throw failedPrecondition(`${this.device} is not on the host after it was created`);
  }
}

export class RemoveInterface implements Step {
  readonly name: string;
  constructor(
    private readonly network: HostNetwork,
    private readonly device: string,
    deviceId: string,
  ) {
    this.name = `remove interface ${deviceId} (${device})`;
  }
  async needed(): Promise<boolean> {
    return (await this.network.get(this.device)) !== undefined;
  }
  async run(): Promise<void> {
    await this.network.remove(this.device);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.device} is still there`);
  }
}
