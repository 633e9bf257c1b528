/**
 * The VMM provider seam. A provider (QEMU, Firecracker, Cloud Hypervisor, …) is described by a
 * ProviderDescriptor, which the control plane reads at create time, and implemented by a
 * VmmProvider, which hands out one VmmInstance per VM for the plans to drive. Providers live in
 * their own adapter folders and are listed in one explicit registry; nothing in the core names
 * a provider.
 */
import type { MatchlockError } from './errors.js';
import type { MicroVMSpec } from './microvm/types.js';
import type { Step } from './plan/step.js';
import type { Logger } from './ports.js';

export interface ProviderCapabilities {
  /** MACVTAP interfaces (the VMM is handed an open /dev/tap<ifindex>). */
  macvtap: boolean;
  /** virtio-fs shares (additional volumes with virtiofs_source). */
  virtiofs: boolean;
  /** A vsock device for the guest agent (allow_guest_agent). */
  vsock: boolean;
  /** Needs flintlock's metadata interface eth0 (MMDS) prepended at create (contract §2). */
  metadataInterface: boolean;
  /** The guest can be paused and resumed. */
  pause: boolean;
}

/**
 * How cloud-init's NoCloud data reaches the guest, chosen by the provider:
 * - `nocloud-disk`: the plan writes a FAT seed labelled CIDATA as `<vm dir>/<file>` and passes it
 *   as the last disk, read-only (QEMU, Cloud Hypervisor);
 * - `provider`: the seed files are handed over in `Launch.metadata` and the provider delivers them
 *   itself (Firecracker: MMDS from metadata.json plus kernel arguments).
 */
export type MetadataDelivery = { kind: 'nocloud-disk'; file: string } | { kind: 'provider' };

/** What the control plane knows about a provider without running it. */
export interface ProviderDescriptor {
  /** The name clients put in `MicroVMSpec.provider`. */
  readonly name: string;
  /** The VMM binary looked up on PATH unless the configuration names one. */
  readonly defaultBinary: string;
  readonly capabilities: ProviderCapabilities;
  readonly metadata: MetadataDelivery;
  /**
   * Names of the unix sockets the provider creates in a VM's run directory. With the longest one
   * the daemon checks at start that every socket path fits the 107-byte sun_path limit.
   */
  readonly sockets: readonly string[];
  /** Extra bytes a VMM appends to a socket path (Firecracker's vsock `<uds>_<port>`). */
  readonly socketSuffixBytes?: number;
  /**
   * Create-time rules this VMM enforces beyond the common ones (a vCPU limit, say), so a spec it
   * would refuse is refused by the API instead of failing on the host. Returns the error or
   * undefined. `spec` is as it will be stored (the metadata interface the control plane adds
   * included); `uid` is the new VM's, for what derives from it (generated MACs).
   */
  checkSpec?(spec: MicroVMSpec, uid: string): MatchlockError | undefined;
}

/** Which VM an instance is for, and where its files go. */
export interface VmRef {
  uid: string;
  namespace: string;
  name: string;
  /** `<state-dir>/vm/<namespace>/<name>/<uid>`, flintlock's layout: what operators look at. */
  dir: string;
  /** `<state-dir>/run/<uid>`: short, so every socket path fits the unix socket limit. */
  runDir: string;
}

export interface LaunchDisk {
  id: string;
  path: string;
  readOnly: boolean;
}

export interface LaunchNic {
  deviceId: string;
  type: 'TAP' | 'MACVTAP';
  hostDevice: string;
  ifindex: number;
  /** The MAC the guest sees: guest_mac (or the derived one) for TAP, the macvtap's own for MACVTAP. */
  mac: string;
}

/** A host directory shared with the guest over virtio-fs. */
export interface LaunchShare {
  /** The volume id; also the virtio-fs tag the guest mounts. */
  id: string;
  hostPath: string;
  readOnly: boolean;
}

/** What the kernel command line defaults may depend on. */
export interface CmdlineInput {
  hasRoot: boolean;
  /** The NoCloud seed files (meta-data, user-data, vendor-data, network-config). */
  metadata: Readonly<Record<string, Buffer>>;
}

/** Everything a VMM needs to start one VM; paths are on the host. */
export interface Launch extends VmRef {
  vcpu: number;
  memoryInMb: number;
  kernelPath: string;
  initrdPath?: string | undefined;
  /** The provider's defaults with the spec's kernel.cmdline merged over them. */
  cmdline: string;
  /** Root first, then additional volumes, then the NoCloud seed disk when the provider asked for one. */
  disks: LaunchDisk[];
  nics: LaunchNic[];
  shares: LaunchShare[];
  /** The NoCloud seed files, for providers that deliver metadata themselves. */
  metadata: Readonly<Record<string, Buffer>>;
  /** A vsock device for the guest agent; flintlock uses CID 3. */
  guestAgent?: { cid: number } | undefined;
}

/** One VM's block devices, summed over every disk the VMM has (seed disk included). */
export interface BlockCounters {
  readBytes: number;
  writeBytes: number;
  readOps: number;
  writeOps: number;
}

/** One VM's network devices, summed, as the guest sees them: rx is what the guest received. */
export interface NetCounters {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

/** Cumulative I/O counters of one VM as its VMM reports them; a part the VMM cannot tell is absent. */
export interface VmmIoCounters {
  block?: BlockCounters | undefined;
  net?: NetCounters | undefined;
}

/** A VM's host network device, for providers that read its counters from the host. */
export interface IoCountersNic {
  deviceId: string;
  type: 'TAP' | 'MACVTAP';
  hostDevice: string;
}

/** Where a VM's VMM is, as far as the files it leaves go (see VmmInstance.expectedFiles). */
export type VmmPresence = 'never-started' | 'stopped' | 'running';

/** Power state as the VMM reports it. */
export type VmmPowerState = 'running' | 'paused' | 'stopped';

/**
 * One VM's VMM. Creating an instance does no I/O; every method looks at the host, so a daemon
 * that restarted finds its running VMs again through the same calls.
 */
export interface VmmInstance {
  readonly ref: VmRef;
  /** The files operators find for this VM, by role (pid, console, stderr, …), as host paths. */
  readonly files: Readonly<Record<string, string>> & { readonly pid: string; readonly console: string };
  /**
   * Which of `files` a CREATED VM with this spec has, by where its VMM is:
   * - `never-started`: what the create plan makes before any VMM (the provider's createSteps);
   * - `stopped`: that, plus what every run leaves in its directory (the console, the VMM's logs),
   *   kept after the VMM is gone until the VM is deleted;
   * - `running` (its desired power is RUNNING or PAUSED, where the VMM process lives): that, plus
   *   what only a live VMM has (its pid file, its sockets).
   * Files the spec does not ask for (a guest-agent socket without allowGuestAgent) are never in
   * it. Host paths.
   */
  expectedFiles(spec: MicroVMSpec, vmm: VmmPresence): string[];
  /** The serial console log the supervisor reads for the boot line. */
  readonly consolePath: string;
  /**
   * Files the VMM keeps appending to while it runs (the console, its stdout/stderr, logs,
   * metrics), which the daemon bounds to console-log-max-bytes each. Undefined: the console only.
   */
  readonly growingFiles?: readonly string[];
  /**
   * Where the guest's serial input goes: a unix socket the VMM listens on (input and output,
   * one client at a time). Undefined when this provider takes no console input.
   */
  readonly consoleInput?: { kind: 'unix-socket'; path: string };
  /** The provider's kernel command line before the spec's cmdline is merged over it. */
  defaultCmdline(input: CmdlineInput): [string, string][];
  /** Steps of this provider that must hold before the VMM starts (a jail, a virtiofsd per share). */
  createSteps(launch: () => Launch): Step[];
  /** Steps that clean up after the VMM once it is stopped (undo createSteps, remove leftovers).
   *  The plan removes the run directory, and the sockets in it, itself. */
  deleteSteps(): Step[];
  /** Pid of this VM's VMM when it runs, else undefined. Guards against pid reuse. */
  running(): Promise<number | undefined>;
  /** Starts the VMM (detached, so it outlives the daemon) and resolves its pid once it runs. */
  start(launch: Launch, signal: AbortSignal, log: Logger): Promise<number>;
  /** Asks the guest to power down, waits up to timeoutMs, then stops the VMM harder until it is gone. */
  stop(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void>;
  /** Pauses or resumes the guest; only when the descriptor says `pause`. */
  setPaused?(paused: boolean, signal: AbortSignal): Promise<void>;
  /** The VMM's own view of the guest; undefined when it cannot tell. */
  powerState?(signal: AbortSignal): Promise<VmmPowerState | undefined>;
  /**
   * The running VMM's cumulative block and network counters (for the metrics endpoint), from the
   * VMM's own accounting where it has one. Rejects when the VMM cannot be asked; called only
   * while `running()` reports a pid.
   */
  ioCounters?(input: { pid: number; nics: readonly IoCountersNic[] }, signal: AbortSignal): Promise<VmmIoCounters>;
}

/** A provider as the runtime uses it: its descriptor and a factory of per-VM instances. */
export interface VmmProvider {
  readonly descriptor: ProviderDescriptor;
  instance(ref: VmRef): VmmInstance;
}

/** What this host can run: provider name -> usable, or the reason it is not. */
export type ProviderAvailability = { usable: true } | { usable: false; reason: string };

/** A provider as the control plane sees it at create time. */
export interface ProviderEntry {
  descriptor: ProviderDescriptor;
  availability: ProviderAvailability;
}

/** The longest socket path, in bytes, a unix socket address can hold (sun_path minus its NUL). */
export const UNIX_SOCKET_PATH_MAX = 107;

/** `<state-dir>/run/<uid>`: the run directory of a VM. */
export function runDirOf(stateDir: string, uid: string): string {
  return `${stateDir}/run/${uid}`;
}

/** `<state-dir>/vm/<namespace>/<name>/<uid>`, flintlock's layout. */
export function vmDirOf(stateDir: string, vm: { uid: string; spec: { namespace: string; name: string } }): string {
  return `${stateDir}/vm/${vm.spec.namespace}/${vm.spec.name}/${vm.uid}`;
}

/**
 * The longest socket path any VM of these providers can get under this state dir, and the
 * socket it belongs to. uids are ULIDs, always 26 characters.
 */
export function longestSocketPath(stateDir: string, providers: Iterable<ProviderDescriptor>): { bytes: number; example: string } {
  let best = { bytes: 0, example: '' };
  for (const d of providers) {
    for (const s of d.sockets) {
      const example = `${runDirOf(stateDir, 'U'.repeat(26))}/${s}`;
      const bytes = Buffer.byteLength(example) + (d.socketSuffixBytes ?? 0);
      if (bytes > best.bytes) best = { bytes, example };
    }
  }
  return best;
}
