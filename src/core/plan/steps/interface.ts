import { failedPrecondition, missingHostLink } from '../../errors.js';
import { deviceAlias, guestMac, hostDeviceName, ownLink } from '../../microvm/host-names.js';
import type { NetworkInterface } from '../../microvm/types.js';
import type { HostNetwork, LinkInfo, Logger } from '../../ports.js';
import type { CreateContext } from '../context.js';
import type { Step } from '../step.js';

/** Records an interface's host link on the context: what the VMM and network-config need. */
function record(ctx: CreateContext, index: number, iface: NetworkInterface, name: string, link: LinkInfo): void {
  const mac = iface.type === 'MACVTAP' ? link.mac : guestMac(ctx.vm, index);
  ctx.recordNic(index, { deviceId: iface.deviceId, type: iface.type, hostDevice: name, ifindex: link.ifindex, mac }, { hostDeviceName: name, index: link.ifindex, macAddress: link.mac });
}

/**
 * Whether an existing link named for this VM's interface is the VM's own, to finish or remove:
 * it is of the interface's kind and its alias lets this daemon take it for this VM and
 * interface (ownLink: this daemon's alias for it, none, or the older form without a daemon
 * id). Any other alias is another owner's (another daemon holding a copy of this store, an
 * operator), whose link is left alone.
 */
function ours(link: LinkInfo, kind: LinkInfo['kind'], daemonId: string, uid: string, deviceId: string): boolean {
  return link.kind === kind && ownLink(link.alias, daemonId, { uid, deviceId }) !== undefined;
}

/** Refuses an existing link that is not the VM's own (see ours()), naming why. */
function claim(link: LinkInfo, kind: LinkInfo['kind'], daemonId: string, uid: string, deviceId: string): void {
  if (link.kind !== kind) throw failedPrecondition(`${link.name} exists as a link of kind ${link.kind}, not ${kind}: not made by matchlock for interface ${deviceId}`);
  if (ours(link, kind, daemonId, uid, deviceId)) return;
  throw failedPrecondition(`${link.name} exists with the alias ${JSON.stringify(link.alias)}: it is not this VM's interface ${deviceId} (its alias would be ${JSON.stringify(deviceAlias(daemonId, uid, deviceId))}); left alone`);
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
    this.alias = deviceAlias(ctx.deps.daemonId, ctx.vm.uid, iface.deviceId);
    this.name = `interface ${iface.deviceId} (tap ${this.device})`;
  }
  private readonly alias: string;
  /** What needed() saw in this pass, so run() does not look up the same link again. */
  private seen: { link: LinkInfo | undefined } | undefined;
  /**
   * The link as run() read it from the host after its change, for verify: reading it again at
   * once would cost another `ip` process when sysfs shows another namespace.
   */
  private made: LinkInfo | undefined;
  private ok(link: LinkInfo | undefined): link is LinkInfo {
    return link !== undefined && link.kind === 'tap' && link.master === this.bridge && link.up && link.alias === this.alias;
  }
  async needed(): Promise<boolean> {
    const link = await this.ctx.deps.network.get(this.device);
    this.seen = { link };
    if (this.ok(link)) record(this.ctx, this.index, this.iface, this.device, link);
    return !this.ok(link);
  }
  async run(): Promise<void> {
    const { network } = this.ctx.deps;
    const seen = this.seen;
    this.seen = undefined;
    if (!this.bridge) throw failedPrecondition(`TAP interface ${this.iface.deviceId} has no bridge: set overrides.bridge_name or matchlockd --bridge-name`);
    if (!(await network.get(this.bridge))) throw missingHostLink(this.bridge, `bridge ${this.bridge} for interface ${this.iface.deviceId} not found on this host`);
    const existing = seen ? seen.link : await network.get(this.device);
    if (existing) claim(existing, 'tap', this.ctx.deps.daemonId, this.ctx.vm.uid, this.iface.deviceId);
    let link = existing ?? (await network.createTap(this.device, { bridge: this.bridge, alias: this.alias }));
    let fresh = !existing;
    if (!this.ok(link)) {
      await network.adopt(this.device, { alias: this.alias, bridge: this.bridge });
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
    if (!this.ok(made ?? (await this.ctx.deps.network.get(this.device)))) throw failedPrecondition(`${this.device} is not up on bridge ${this.bridge} with its alias ${this.alias}`);
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
    this.alias = deviceAlias(ctx.deps.daemonId, ctx.vm.uid, iface.deviceId);
    this.name = `interface ${iface.deviceId} (macvtap ${this.device})`;
  }
  private readonly alias: string;
  /** What needed() saw in this pass (see TapInterface.seen). */
  private seen: { link: LinkInfo | undefined } | undefined;
  private ok(link: LinkInfo | undefined): link is LinkInfo {
    return link !== undefined && link.kind === 'macvtap' && link.up && link.alias === this.alias;
  }
  async needed(): Promise<boolean> {
    const link = await this.ctx.deps.network.get(this.device);
    this.seen = { link };
    if (this.ok(link)) record(this.ctx, this.index, this.iface, this.device, link);
    return !this.ok(link);
  }
  async run(): Promise<void> {
    const { network, parentIface } = this.ctx.deps;
    const seen = this.seen;
    this.seen = undefined;
    if (!parentIface) throw failedPrecondition(`MACVTAP interface ${this.iface.deviceId} needs matchlockd --parent-iface`);
    if (!(await network.get(parentIface))) throw missingHostLink(parentIface, `parent interface ${parentIface} for ${this.iface.deviceId} not found on this host`);
    const existing = seen ? seen.link : await network.get(this.device);
    let link: LinkInfo;
    if (existing) {
      // Made by a pass cut short before its alias and up line: finish it.
      claim(existing, 'macvtap', this.ctx.deps.daemonId, this.ctx.vm.uid, this.iface.deviceId);
      await network.adopt(this.device, { alias: this.alias });
      link = (await network.get(this.device)) ?? existing;
    } else link = await network.createMacvtap(this.device, { parent: parentIface, alias: this.alias, mac: guestMac(this.ctx.vm, this.index) });
    this.made = link;
    record(this.ctx, this.index, this.iface, this.device, link);
  }
  /** The link as run() read it after creating it (see TapInterface.made). */
  private made: LinkInfo | undefined;
  async verify(): Promise<void> {
    const made = this.made;
    this.made = undefined;
    if (!this.ok(made ?? (await this.ctx.deps.network.get(this.device)))) throw failedPrecondition(`${this.device} is not up with its alias ${this.alias} after it was created`);
  }
}

/**
 * Removes the VM's link for an interface. A link of that name that is not the VM's own (another
 * owner's alias or another kind, see ours()) is left alone, with a warning: the VM's delete
 * goes on without it.
 */
export class RemoveInterface implements Step {
  readonly name: string;
  private warned = false;
  constructor(
    private readonly network: HostNetwork,
    private readonly device: string,
    private readonly owner: { daemonId: string; uid: string; deviceId: string; kind: LinkInfo['kind'] },
    private readonly log: Logger,
  ) {
    this.name = `remove interface ${owner.deviceId} (${device})`;
  }
  async needed(): Promise<boolean> {
    const link = await this.network.get(this.device);
    if (!link) return false;
    const { daemonId, uid, deviceId, kind } = this.owner;
    if (ours(link, kind, daemonId, uid, deviceId)) return true;
    if (!this.warned) this.log.warn({ link: this.device, alias: link.alias ?? '', kind: link.kind }, 'link of the deleted VM\'s name is not its own; left alone');
    this.warned = true;
    return false;
  }
  async run(): Promise<void> {
    await this.network.remove(this.device);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.device} is still there`);
  }
}
