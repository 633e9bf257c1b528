import { Buffer } from 'node:buffer';
import { mergeCmdline } from '../../../core/microvm/cloudinit.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import type { MatchlockError } from '../../../core/errors.js';
import { LINUX_COMMAND_LINE_SIZE, cmdlineTooLongError, specCmdlineBytes } from '../cmdline.js';
import type { ProviderModule } from '../registry.js';
import { QemuProvider, qemuDefaultCmdline } from './provider.js';

/** The longest tsc_early_khz value the defaults may carry (a host's kHz, up to 10 digits). */
const KHZ_PLACEHOLDER = 9_999_999_999;

/**
 * QEMU passes -append to the guest as it is (nothing appended with ACPI on) and the guest kernel
 * keeps only LINUX_COMMAND_LINE_SIZE bytes of it, dropping the rest silently: a command line
 * over that is refused, counted with matchlock's defaults and room for tsc_early_khz (whose
 * value is the host's, known only when the VM starts). Any byte passes QEMU and the kernel, so
 * non-ASCII is not refused.
 */
export function qemuCheckSpec(spec: MicroVMSpec): MatchlockError | undefined {
  const cmdline = mergeCmdline(qemuDefaultCmdline(spec.rootVolume !== undefined, KHZ_PLACEHOLDER), spec.kernel.cmdline);
  const total = Buffer.byteLength(cmdline) + 1;
  if (total <= LINUX_COMMAND_LINE_SIZE) return undefined;
  const specBytes = specCmdlineBytes(spec.kernel.cmdline);
  return cmdlineTooLongError('qemu', total, LINUX_COMMAND_LINE_SIZE, "the guest kernel keeps (Linux x86's COMMAND_LINE_SIZE; it drops the rest without a word)", [
    { what: 'kernel.cmdline', bytes: specBytes },
    { what: "matchlock's console, reboot, root and tsc_early_khz defaults", bytes: total - 1 - specBytes },
  ]);
}

/** QEMU's `microvm` machine. */
export const qemuModule: ProviderModule = {
  descriptor: {
    name: 'qemu',
    defaultBinary: 'qemu-system-x86_64',
    // vsock needs vhost-vsock, which matchlock does not wire up for QEMU yet.
    capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false, pause: true },
    metadata: { kind: 'nocloud-disk', file: 'cidata.img' },
    sockets: ['qmp.sock', 'console.sock'],
    checkSpec: qemuCheckSpec,
  },
  binarySetting: 'qemu-bin',
  settings: [
    { key: 'qemu-bin', kind: 'string', default: 'qemu-system-x86_64', help: 'QEMU binary for the microvm machine' },
    { key: 'qemu-accel', kind: 'enum', values: ['tcg', 'kvm'], default: 'tcg', help: 'QEMU accelerator, tcg or kvm (never guessed from /dev/kvm)' },
  ],
  create: (ctx) => new QemuProvider(qemuModule.descriptor, ctx.found ?? ctx.binary, { accel: ctx.setting('qemu-accel') === 'kvm' ? 'kvm' : 'tcg' }, ctx.confinement),
};
