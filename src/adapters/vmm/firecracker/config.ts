import { failedPrecondition } from '../../../core/errors.js';
import type { Launch, LaunchNic } from '../../../core/vmm.js';

/** The operator files in the VM directory, named as flintlock names them. */
export const FILES = {
  config: 'firecracker.cfg',
  log: 'firecracker.log',
  metrics: 'firecracker.metrics',
  pid: 'firecracker.pid',
  stdout: 'firecracker.stdout',
  stderr: 'firecracker.stderr',
  metadata: 'metadata.json',
  /** The ELF unpacked from a bzImage kernel (only for such kernels). */
  vmlinux: 'vmlinux',
} as const;

/** Sockets Firecracker binds, in the VM's short run directory (sun_path holds 108 bytes). */
export const SOCKETS = {
  api: 'firecracker.sock',
  vsock: 'guest-agent.vsock',
} as const;

/** The MMDS address Firecracker answers on by default and NoCloud-net reads from. */
export const MMDS_ADDRESS = '169.254.169.254';

/** The interface that carries MMDS: flintlock's metadata interface, prepended at create. */
export const MMDS_INTERFACE = 'eth0';

/** Firecracker's vCPU limit (vmm_config/machine_config.rs MAX_SUPPORTED_VCPUS). */
export const MAX_VCPUS = 32;

/**
 * The seam's Launch plus whether disks[0] is the spec's root volume (Firecracker then marks it
 * is_root_device and appends root=/dev/vda itself).
 */
export type FirecrackerLaunch = Launch & { hasRoot: boolean };

/** The parts of a config file this provider writes (swagger definitions in brackets). */
export interface FirecrackerConfig {
  'boot-source': { kernel_image_path: string; initrd_path?: string; boot_args: string };
  drives: { drive_id: string; path_on_host: string; is_root_device: boolean; is_read_only: boolean; cache_type: 'Unsafe' | 'Writeback'; io_engine: 'Sync' | 'Async' }[];
  'machine-config': { vcpu_count: number; mem_size_mib: number; smt: boolean };
  'network-interfaces': { iface_id: string; host_dev_name: string; guest_mac: string }[];
  logger: { log_path: string; level: string; show_level: boolean; show_log_origin: boolean };
  metrics: { metrics_path: string };
  'mmds-config'?: { version: 'V1'; network_interfaces: string[] };
  vsock?: { guest_cid: number; uds_path: string };
}

/** Where one VM's files and sockets are, as Firecracker sees them (host paths without a jail). */
export interface FirecrackerPaths {
  dir: string;
  runDir: string;
}

export const filePath = (p: FirecrackerPaths, f: keyof typeof FILES): string => `${p.dir}/${FILES[f]}`;
export const socketPath = (p: FirecrackerPaths, s: keyof typeof SOCKETS): string => `${p.runDir}/${SOCKETS[s]}`;

/** The interface MMDS is served on, or undefined when the VM has none (then no mmds-config). */
export function mmdsInterface(nics: readonly LaunchNic[]): string | undefined {
  return nics.find((n) => n.deviceId === MMDS_INTERFACE && n.type === 'TAP')?.deviceId;
}

/**
 * The config file (`--config-file`) for one VM. Rules it keeps that Firecracker enforces or
 * flintlock got wrong:
 * - `smt` is false: with smt true Firecracker refuses odd vCPU counts above 1, which flintlock
 *   set unconditionally on amd64;
 * - drives: disks[0] is the root device only when `hasRoot`; all `cache_type` Unsafe (as
 *   flintlock), `io_engine` Sync (Async needs host kernel > 5.10.51);
 * - only TAP interfaces: Firecracker has no macvtap support (refused at create);
 * - `mmds-config` only when an MMDS interface exists, never with an empty list (Firecracker
 *   refuses to boot with one; flintlock wrote it anyway);
 * - vsock only for the guest agent, its socket in the run directory.
 * Throws FailedPrecondition for a MACVTAP NIC.
 */
export function firecrackerConfig(l: FirecrackerLaunch, paths: FirecrackerPaths = l): FirecrackerConfig {
  const macvtap = l.nics.find((n) => n.type !== 'TAP');
  if (macvtap) throw failedPrecondition(`interface ${macvtap.deviceId}: provider firecracker supports only TAP interfaces, not ${macvtap.type}`);
  const boot: FirecrackerConfig['boot-source'] = { kernel_image_path: l.kernelPath, boot_args: l.cmdline };
  if (l.initrdPath) boot.initrd_path = l.initrdPath;
  const config: FirecrackerConfig = {
    'boot-source': boot,
    drives: l.disks.map((d, n) => ({ drive_id: d.id, path_on_host: d.path, is_root_device: l.hasRoot && n === 0, is_read_only: d.readOnly, cache_type: 'Unsafe', io_engine: 'Sync' })),
    'machine-config': { vcpu_count: l.vcpu, mem_size_mib: l.memoryInMb, smt: false },
    'network-interfaces': l.nics.map((n) => ({ iface_id: n.deviceId, host_dev_name: n.hostDevice, guest_mac: n.mac })),
    logger: { log_path: filePath(paths, 'log'), level: 'Info', show_level: true, show_log_origin: false },
    metrics: { metrics_path: filePath(paths, 'metrics') },
  };
  const mmds = mmdsInterface(l.nics);
  if (mmds) config['mmds-config'] = { version: 'V1', network_interfaces: [mmds] };
  if (l.guestAgent) config.vsock = { guest_cid: l.guestAgent.cid, uds_path: socketPath(paths, 'vsock') };
  return config;
}

/**
 * Firecracker's MMDS data store limit when `--mmds-size-limit` is not given: the HTTP API's
 * payload limit, `--http-api-max-payload-size`, 51200 bytes by default (src/firecracker/src/main.rs,
 * v1.11.0 and v1.16.1). The store's size is its compact JSON serialisation
 * (mmds/data_store.rs put_data).
 */
export const FC_DEFAULT_MMDS_SIZE_LIMIT = 51200;

/** Bytes of metadata.json's data as Firecracker measures it against the MMDS limit (compact JSON). */
export function mmdsDataBytes(files: Readonly<Record<string, Buffer>>): number {
  return Buffer.byteLength(JSON.stringify(mmdsMetadata(files)));
}

/**
 * The argv after the binary: `--id <uid> --config-file … --metadata … --api-sock …
 * --boot-timer`, and `--mmds-size-limit <bytes>` when the metadata is over
 * FC_DEFAULT_MMDS_SIZE_LIMIT (Firecracker refuses a larger --metadata file with "The MMDS data
 * store size limit was exceeded"; the flag exists in v1.11.0 and v1.16.1 and, given, replaces
 * the default taken from --http-api-max-payload-size, which still caps API requests: matchlock
 * sends MMDS data only through the file). Unlike flintlock there is no `--no-api`: the API
 * serves pause/resume, Ctrl+Alt+Del and metrics flushes. `--boot-timer` makes Firecracker log
 * `Guest-boot-time = …` when a guest writes the boot marker (an optional figure).
 */
export function firecrackerArgs(l: Pick<FirecrackerLaunch, 'uid' | 'metadata'>, paths: FirecrackerPaths): string[] {
  const args = ['--id', l.uid, '--config-file', filePath(paths, 'config'), '--metadata', filePath(paths, 'metadata'), '--api-sock', socketPath(paths, 'api'), '--boot-timer'];
  const mmdsBytes = mmdsDataBytes(l.metadata);
  if (mmdsBytes > FC_DEFAULT_MMDS_SIZE_LIMIT) args.push('--mmds-size-limit', String(mmdsBytes));
  return args;
}

/** NoCloud-net reads its seed from this URL; a trailing slash is required by cloud-init. */
export const NOCLOUD_NET_SEED = `nocloud-net;s=http://${MMDS_ADDRESS}/latest/`;

export interface CmdlineInput {
  /** Whether MMDS is reachable (an MMDS interface exists): only then `ds=` points at it. */
  mmds: boolean;
  /** The network-config seed file, passed base64 as `network-config=` (cloud-init reads it from the command line). */
  networkConfig?: Buffer | undefined;
}

/**
 * flintlock's Firecracker command line: serial console, reboot through the keyboard controller
 * (Firecracker exits on a guest reboot with reboot=k), no PCI probing, i8042 without the probes
 * that slow boot, then the NoCloud-net seed on MMDS. No `root=`: Firecracker appends
 * `root=/dev/vda rw|ro` itself for the root drive.
 */
export function defaultCmdline(input: CmdlineInput): [string, string][] {
  const c: [string, string][] = [
    ['console', 'ttyS0'],
    ['reboot', 'k'],
    ['panic', '1'],
    ['pci', 'off'],
    ['i8042.noaux', ''],
    ['i8042.nomux', ''],
    ['i8042.nopnp', ''],
    ['i8042.dumbkbd', ''],
  ];
  if (input.mmds) c.push(['ds', NOCLOUD_NET_SEED]);
  if (input.networkConfig && input.networkConfig.length > 0) c.push(['network-config', input.networkConfig.toString('base64')]);
  return c;
}

/**
 * metadata.json, the `--metadata` file: flintlock's `{"latest": {<file>: <decoded text>}}`,
 * so NoCloud-net's GETs of /latest/meta-data, /latest/user-data… get each file as IMDS text.
 * Keys are sorted so the file is byte-stable.
 */
export function mmdsMetadata(files: Readonly<Record<string, Buffer>>): { latest: Record<string, string> } {
  const latest: Record<string, string> = {};
  for (const k of Object.keys(files).sort()) latest[k] = files[k]?.toString('utf8') ?? '';
  return { latest };
}
