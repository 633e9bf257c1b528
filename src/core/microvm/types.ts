/**
 * The MicroVM domain model. It mirrors flintlock.types on the wire but is plain data: the API
 * adapters convert to and from protobuf, the store keeps it as JSON.
 */

export type IfaceType = 'MACVTAP' | 'TAP';
export type VmState = 'PENDING' | 'CREATED' | 'FAILED' | 'DELETING';
export type MountType = 'DEV' | 'HOSTPATH';
/** Power of a MicroVM: what the operator asked for, and what the VMM reports. */
export type PowerState = 'RUNNING' | 'PAUSED' | 'STOPPED';

export interface Kernel {
  image: string;
  filename: string;
  cmdline: Record<string, string>;
  addNetworkConfig: boolean;
}

export interface Initrd {
  image: string;
  filename: string;
}

export interface VolumeSource {
  containerSource?: string;
  virtiofsSource?: string;
}

export interface Volume {
  id: string;
  isReadOnly: boolean;
  mountPoint?: string;
  source: VolumeSource;
  partitionId?: string;
  sizeInMb?: number;
}

export interface StaticAddress {
  address: string;
  gateway?: string;
  nameservers: string[];
}

export interface NetworkInterface {
  deviceId: string;
  type: IfaceType;
  guestMac?: string;
  address?: StaticAddress;
  overrides?: { bridgeName?: string };
}

export interface MicroVMSpec {
  /** The VM's name (flintlock's `id`). */
  name: string;
  namespace: string;
  labels: Record<string, string>;
  vcpu: number;
  memoryInMb: number;
  kernel: Kernel;
  initrd?: Initrd;
  rootVolume?: Volume;
  additionalVolumes: Volume[];
  interfaces: NetworkInterface[];
  /** Values are standard base64 of the decoded content. */
  metadata: Record<string, string>;
  /** Resolved provider name; never empty once stored. */
  provider: string;
  allowGuestAgent: boolean;
}

export interface Mount {
  type: MountType;
  source: string;
}

export interface NetworkInterfaceStatus {
  hostDeviceName: string;
  index: number;
  macAddress: string;
}

export interface MicroVMStatus {
  state: VmState;
  volumes: Record<string, { mount: Mount }>;
  kernelMount?: Mount;
  initrdMount?: Mount;
  networkInterfaces: Record<string, NetworkInterfaceStatus>;
  retry: number;
  vsockPath: string;
  lastError: string;
  /** ISO time of the next reconcile attempt after a failure. */
  nextAttemptAt?: string | undefined;
  /**
   * The host link the last failure found missing (a TAP's bridge, a macvtap's parent), by
   * name; absent when the last attempt did not fail for want of a link. Only the back-off of
   * such a VM is cut short when that link appears again, and only such a FAILED VM is revived
   * then (Reconciler.retryNow). Only a pass's outcome changes it. Not on the wire.
   */
  missingLink?: string | undefined;
  vmmPid: number;
  guestBooted: boolean;
  /**
   * A VMM was started for this VM at least once. From then on its directory keeps what a run
   * leaves (the console, the VMM's logs) until the VM is deleted; a VM created stopped has none.
   * Absent on records no VMM has been started for, and on those stored before it was kept.
   * Not on the wire.
   */
  vmmStarted?: boolean | undefined;
  /** Image reference -> manifest digest, pinned on first resolution. */
  imageDigests?: Record<string, string>;
  /** The power state the VMM reported on the last pass; absent before the first. */
  power?: PowerState | undefined;
  /** The last `PowerIntent.restart` carried out. */
  restarted?: number | undefined;
}

/**
 * What the operator asked for through matchlock.v1.MicroVMLifecycle, kept on the record so a
 * stopped VM stays stopped across daemon and host restarts (flintlock#330). Absent: RUNNING.
 */
export interface PowerIntent {
  desired: PowerState;
  /** Grace of the last stop or restart: how long the guest gets to power down (ms). */
  stopGraceMs?: number | undefined;
  /** Counts restart requests; a pass restarts the VMM while it is above status.restarted. */
  restart: number;
}

export interface MicroVM {
  uid: string;
  /** 1 on create, + 1 on every stored change. */
  version: number;
  spec: MicroVMSpec;
  status: MicroVMStatus;
  createdAt: string;
  updatedAt: string;
  deletedAt?: string;
  /** Absent: desired RUNNING, never restarted. */
  power?: PowerIntent | undefined;
}

/** The desired power state of a VM (RUNNING unless an operator stopped or paused it). */
export function desiredPower(vm: Pick<MicroVM, 'power'>): PowerState {
  return vm.power?.desired ?? 'RUNNING';
}

/** Whether a restart was asked for and not yet carried out. */
export function restartPending(vm: Pick<MicroVM, 'power' | 'status'>): boolean {
  return (vm.power?.restart ?? 0) > (vm.status.restarted ?? 0);
}

export function initialStatus(): MicroVMStatus {
  return {
    state: 'PENDING',
    volumes: {},
    networkInterfaces: {},
    retry: 0,
    vsockPath: '',
    lastError: '',
    vmmPid: 0,
    guestBooted: false,
  };
}

/** Root volume first, then additional volumes: the disk order the guest sees (vda, vdb, …). */
export function specVolumes(spec: MicroVMSpec): Volume[] {
  return [...(spec.rootVolume ? [spec.rootVolume] : []), ...spec.additionalVolumes];
}

/** Every image reference a VM needs: kernel, initrd and container-sourced volumes. */
export function imageRefs(spec: MicroVMSpec): string[] {
  const refs = new Set<string>([spec.kernel.image]);
  if (spec.initrd) refs.add(spec.initrd.image);
  for (const v of specVolumes(spec)) if (v.source.containerSource) refs.add(v.source.containerSource);
  return [...refs];
}
