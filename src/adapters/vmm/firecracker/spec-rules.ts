import { Buffer } from 'node:buffer';
import { failedPrecondition, type MatchlockError } from '../../../core/errors.js';
import { mergeCmdline } from '../../../core/microvm/cloudinit.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import { cmdlineTooLongError, seedAtCreate, specCmdlineBytes } from '../cmdline.js';
import { MAX_VCPUS, defaultCmdline } from './config.js';

/**
 * Firecracker's kernel command line capacity on x86_64, the NUL included (CMDLINE_MAX_SIZE,
 * src/vmm/src/arch/x86_64/layout.rs, 2048 in v1.11.0 and v1.16.1). boot_args is parsed with
 * linux-loader's `Cmdline::try_from` against it, and every string Firecracker appends later is
 * checked against the same capacity.
 */
export const FC_CMDLINE_MAX_SIZE = 2048;

/**
 * Interrupt lines for Firecracker's MMIO devices on x86_64: GSIs 5 to 23 (IRQ_BASE..IRQ_MAX in
 * v1.11.0, GSI_LEGACY_START..GSI_LEGACY_END in v1.16.1, arch/x86_64/layout.rs). Each virtio
 * device takes one (device_manager/mmio.rs); the boot timer takes none.
 */
export const FC_LEGACY_GSIS = 19;

/**
 * Lines the ACPI devices Firecracker attaches after the virtio ones take: VMGenID (v1.11.0 on)
 * and VMClock (v1.16.1), one each (devices/acpi/vmgenid.rs, vmclock.rs). v1.11.0 leaves room
 * for 18 virtio devices, v1.16.1 for 17; matchlock keeps to the smaller.
 */
export const FC_ACPI_GSIS = 2;

/** At most this many virtio devices (drives, network interfaces, vsock) per Firecracker VM. */
export const FC_MAX_VIRTIO_DEVICES = FC_LEGACY_GSIS - FC_ACPI_GSIS;

/** What a Firecracker VM's devices are, as they decide what Firecracker appends to boot_args. */
export interface FirecrackerDevices {
  /** The root drive's read-only flag, or undefined without a root drive. */
  root: { readOnly: boolean } | undefined;
  drives: number;
  nics: number;
  vsock: boolean;
}

export const deviceCount = (d: FirecrackerDevices): number => d.drives + d.nics + (d.vsock ? 1 : 0);

/**
 * What Firecracker appends to boot_args when it builds the VM (src/vmm/src/builder.rs): v1.16.1
 * `pci=off` without --enable-pci; `root=/dev/vda` and `ro`|`rw` for a root drive; then, in the
 * order devices are attached, `virtio_mmio.device=4K@0x<addr>:<gsi>` for each virtio device
 * (device_manager/mmio.rs add_virtio_device_to_cmdline; linux-loader's add_virtio_mmio_device
 * format). Addresses are v1.16.1's (0xc0001000 up, 4 KiB apart; v1.11.0's 0xd0001000 up have
 * the same length), GSIs count from 5.
 */
export function firecrackerAppends(d: FirecrackerDevices): string[] {
  const out = ['pci=off'];
  if (d.root) out.push('root=/dev/vda', d.root.readOnly ? 'ro' : 'rw');
  for (let n = 0; n < deviceCount(d); n++) out.push(`virtio_mmio.device=4K@0x${(0xc0001000 + n * 0x1000).toString(16)}:${5 + n}`);
  return out;
}

/** Bytes of the command line Firecracker builds from `bootArgs` for `d`, its NUL included. */
export function firecrackerCmdlineBytes(bootArgs: string, d: FirecrackerDevices): number {
  return Buffer.byteLength([bootArgs.trim(), ...firecrackerAppends(d)].filter((s) => s !== '').join(' ')) + 1;
}

/** The error for more virtio devices than Firecracker has interrupt lines, or undefined. */
export function deviceCountError(d: FirecrackerDevices, where: { field: string; what: string }): MatchlockError | undefined {
  const n = deviceCount(d);
  if (n <= FC_MAX_VIRTIO_DEVICES) return undefined;
  return failedPrecondition(
    `${where.field}: provider firecracker has interrupt lines for at most ${FC_MAX_VIRTIO_DEVICES} virtio devices (GSIs 5 to 23, less one each for VMGenID and VMClock); ${where.what} needs ${n}: ${d.drives} drives, ${d.nics} network interfaces${d.vsock ? ', 1 vsock' : ''}`,
    where.field,
  );
}

/**
 * Create-time rules of Firecracker beyond the common ones: at most MAX_VCPUS vCPUs, at most
 * FC_MAX_VIRTIO_DEVICES virtio devices, and a final command line (matchlock's defaults, the
 * spec's kernel.cmdline, the network-config seed, what Firecracker appends) within
 * FC_CMDLINE_MAX_SIZE. `spec` carries the metadata interface eth0 already. Non-ASCII in the
 * command line is not refused: Firecracker reads boot_args with `Cmdline::try_from`, which
 * checks only the length (linux-loader 0.13 src/cmdline/mod.rs), and the kernel takes any byte.
 */
export function fcCheckSpec(spec: MicroVMSpec, uid: string): MatchlockError | undefined {
  if (spec.vcpu > MAX_VCPUS) return failedPrecondition(`microvm.vcpu: provider firecracker supports at most ${MAX_VCPUS} vCPUs (got ${spec.vcpu})`, 'microvm.vcpu');
  const devices: FirecrackerDevices = {
    root: spec.rootVolume ? { readOnly: spec.rootVolume.isReadOnly } : undefined,
    drives: (spec.rootVolume ? 1 : 0) + spec.additionalVolumes.length,
    nics: spec.interfaces.length,
    vsock: spec.allowGuestAgent,
  };
  const field = spec.additionalVolumes.length > 0 ? 'microvm.additional_volumes' : 'microvm.interfaces';
  const tooMany = deviceCountError(devices, { field, what: 'this spec (the metadata interface eth0 included)' });
  if (tooMany) return tooMany;

  const networkConfig = spec.kernel.addNetworkConfig ? seedAtCreate(spec, uid)['network-config'] : undefined;
  const defaults = defaultCmdline({ mmds: true, networkConfig });
  const bootArgs = mergeCmdline(defaults, spec.kernel.cmdline);
  const total = firecrackerCmdlineBytes(bootArgs, devices);
  if (total <= FC_CMDLINE_MAX_SIZE) return undefined;
  const networkBytes = networkConfig ? Buffer.byteLength(`network-config=${networkConfig.toString('base64')}`) : 0;
  const specBytes = specCmdlineBytes(spec.kernel.cmdline);
  const bootBytes = Buffer.byteLength(bootArgs);
  return cmdlineTooLongError(
    'firecracker',
    total,
    FC_CMDLINE_MAX_SIZE,
    'Firecracker allows (CMDLINE_MAX_SIZE, arch/x86_64/layout.rs)',
    [
      { what: 'boot_args', bytes: bootBytes },
      { what: 'of which kernel.cmdline', bytes: specBytes },
      { what: `network-config of ${spec.interfaces.length} interfaces (add_network_config)`, bytes: networkBytes },
      { what: `Firecracker's own pci=off, root= and virtio_mmio.device= for ${deviceCount(devices)} devices`, bytes: total - 1 - bootBytes },
    ],
    networkBytes + 1,
  );
}
