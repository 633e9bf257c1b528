import { failedPrecondition } from '../errors.js';
import { mergeCmdline, noCloudSeed, type GuestInterface } from '../microvm/cloudinit.js';
import type { MicroVM, MicroVMStatus, Mount, NetworkInterfaceStatus } from '../microvm/types.js';
import type { CloudInitDisk, HostFiles, HostNetwork, ImageStore, Logger, Supervisor, Volumes } from '../ports.js';
import type { Launch, LaunchDisk, LaunchNic, LaunchShare, ProviderDescriptor, VmRef, VmmInstance } from '../vmm.js';

/** The host ports and settings every plan step may use. */
export interface PlanDeps {
  images: ImageStore;
  volumes: Volumes;
  files: HostFiles;
  network: HostNetwork;
  cloudInit: CloudInitDisk;
  supervisor: Supervisor;
  /** Bridge for TAP interfaces without overrides.bridge_name. */
  bridgeName: string;
  /** Parent for MACVTAP interfaces. */
  parentIface: string;
  deleteVmTimeoutMs: number;
  /** This daemon's identity (16 hex digits): its links carry it in their alias (deviceAlias). */
  daemonId: string;
}

/** The status fields a create plan observes and achieves. */
export type ObservedStatus = Omit<MicroVMStatus, 'state' | 'retry' | 'lastError' | 'nextAttemptAt' | 'missingLink'>;

/** The guest agent's vsock context id, as flintlock uses it. */
export const GUEST_AGENT_CID = 3;

/**
 * What the steps of one create pass share: the VM, its provider instance, and what each step
 * observed on the host (image digests, volume paths, interface indexes and MACs), so that the
 * VMM can be launched even when every earlier step found nothing to do. Rebuilt for every pass
 * from the stored record; it never outlives one reconcile.
 */
export class CreateContext {
  readonly status: ObservedStatus;
  /** Disks and NICs by position, as the steps observe them. */
  readonly disks: LaunchDisk[] = [];
  readonly nics: LaunchNic[] = [];
  readonly shares: LaunchShare[];
  /** The last seed made, with the NICs it was made for. */
  private seeded: { key: string; files: Record<string, Buffer> } | undefined;

  constructor(
    readonly vm: MicroVM,
    readonly ref: VmRef,
    readonly descriptor: ProviderDescriptor,
    readonly instance: VmmInstance,
    readonly deps: PlanDeps,
    readonly log: Logger,
  ) {
    const s = vm.status;
    this.status = {
      volumes: { ...s.volumes },
      networkInterfaces: { ...s.networkInterfaces },
      vsockPath: s.vsockPath,
      vmmPid: s.vmmPid,
      guestBooted: s.guestBooted,
      ...(s.vmmStarted ? { vmmStarted: true } : {}),
      // Pinned on first resolution and reused afterwards: a moving tag never changes this VM.
      imageDigests: { ...(s.imageDigests ?? {}) },
    };
    if (s.kernelMount) this.status.kernelMount = s.kernelMount;
    if (s.initrdMount) this.status.initrdMount = s.initrdMount;
    this.shares = vm.spec.additionalVolumes.flatMap((v) => (v.source.virtiofsSource ? [{ id: v.id, hostPath: v.source.virtiofsSource, readOnly: v.isReadOnly }] : []));
  }

  /** The pinned manifest digest of an image this VM uses; the image step must have run. */
  digest(ref: string): string {
    const d = this.status.imageDigests?.[ref];
    if (!d) throw failedPrecondition(`image ${ref} has not been resolved`);
    return d;
  }

  recordNic(index: number, nic: LaunchNic, st: NetworkInterfaceStatus): void {
    this.nics[index] = nic;
    this.status.networkInterfaces[nic.deviceId] = st;
  }

  recordDisk(index: number, disk: LaunchDisk, mount: Mount): void {
    this.disks[index] = disk;
    this.status.volumes[disk.id] = { mount };
  }

  /** The NoCloud seed disk's path, when the provider wants metadata on a disk. */
  get seedDiskPath(): string | undefined {
    const m = this.descriptor.metadata;
    return m.kind === 'nocloud-disk' ? `${this.ref.dir}/${m.file}` : undefined;
  }

  /**
   * The NoCloud seed files for this VM and the NICs observed so far (noCloudSeed). Made once
   * for each set of NICs: the seed disk step and the launch both ask for it in a pass, and
   * making it parses meta-data and writes network-config as YAML. A new record of the same
   * object each time, its buffers shared: nobody writes into them.
   */
  seed(): Record<string, Buffer> {
    // By position, holes kept: network-config pairs interface n with guests[n].
    const guests = this.nics.map((n): GuestInterface => ({ deviceId: n.deviceId, mac: n.mac }));
    const key = JSON.stringify(guests);
    if (this.seeded?.key !== key) this.seeded = { key, files: noCloudSeed(this.vm, guests) };
    return { ...this.seeded.files };
  }


  /** Everything the VMM needs, from what the steps observed. */
  launch(): Launch {
    const spec = this.vm.spec;
    const metadata = this.seed();
    const seedDisk = this.seedDiskPath;
    const disks = [...this.disks.filter((d): d is LaunchDisk => d !== undefined)];
    if (seedDisk) disks.push({ id: 'cidata', path: seedDisk, readOnly: true });
    const defaults = this.instance.defaultCmdline({ hasRoot: spec.rootVolume !== undefined, metadata });
    return {
      ...this.ref,
      vcpu: spec.vcpu,
      memoryInMb: spec.memoryInMb,
      kernelPath: this.status.kernelMount?.source ?? '',
      initrdPath: this.status.initrdMount?.source,
      cmdline: mergeCmdline(defaults, spec.kernel.cmdline),
      disks,
      nics: this.nics.filter((n): n is LaunchNic => n !== undefined),
      shares: this.shares,
      metadata,
      guestAgent: spec.allowGuestAgent ? { cid: GUEST_AGENT_CID } : undefined,
    };
  }
}

/** What the steps of one delete pass share. */
export class DeleteContext {
  constructor(
    readonly vm: MicroVM,
    readonly ref: VmRef,
    readonly instance: VmmInstance,
    readonly deps: PlanDeps,
    readonly log: Logger,
  ) {}
}
