import { Buffer } from 'node:buffer';
import { failedPrecondition, invalid, type MatchlockError } from '../../../core/errors.js';
import { mergeCmdline } from '../../../core/microvm/cloudinit.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import { LINUX_COMMAND_LINE_SIZE, cmdlineTooLongError, nonPrintableAsciiError, specCmdlineBytes } from '../cmdline.js';
import { chDefaultCmdline } from './args.js';

/**
 * Create-time rules of Cloud Hypervisor beyond the common ones, so a spec it cannot serve is
 * refused by the API instead of failing on the host:
 * - a virtio-fs share's host path is passed inside CH's `--fs`/virtiofsd option syntax, where a
 *   comma, quote or bracket ends or nests a value (vmm/src/config.rs OptionParser);
 * - Debian 12's virtiofsd (QEMU 7.2) has no read-only export, so a read-only share would be
 *   writable by the guest: refused rather than served wrongly;
 * - the kernel command line: CH builds it with linux-loader's `Cmdline::insert_str`
 *   (vmm/src/vm.rs generate_cmdline, v41 and v53), which refuses any character outside
 *   printable ASCII; CH's own capacity on x86_64 is 64 KiB (CMDLINE_MAX_SIZE 0x10000,
 *   arch/src/x86_64/layout.rs) and it appends nothing there, but the guest kernel keeps only
 *   LINUX_COMMAND_LINE_SIZE bytes and drops the rest silently, so that is the limit enforced.
 */
export function chCheckSpec(spec: MicroVMSpec): MatchlockError | undefined {
  const ascii = nonPrintableAsciiError('cloudhypervisor', spec.kernel.cmdline);
  if (ascii) return ascii;
  const cmdline = mergeCmdline(chDefaultCmdline(spec.rootVolume !== undefined), spec.kernel.cmdline);
  const total = Buffer.byteLength(cmdline) + 1;
  if (total > LINUX_COMMAND_LINE_SIZE) {
    const specBytes = specCmdlineBytes(spec.kernel.cmdline);
    return cmdlineTooLongError('cloudhypervisor', total, LINUX_COMMAND_LINE_SIZE, "the guest kernel keeps (Linux x86's COMMAND_LINE_SIZE; it drops the rest without a word)", [
      { what: 'kernel.cmdline', bytes: specBytes },
      { what: "matchlock's console, root and reboot defaults", bytes: total - 1 - specBytes },
    ]);
  }
  for (const [n, v] of spec.additionalVolumes.entries()) {
    const path = v.source.virtiofsSource;
    if (path === undefined) continue;
    const field = `microvm.additional_volumes[${n}]`;
    if (/[,"[\]\s]/.test(path)) return invalid(`${field}.source.virtiofs_source`, 'must not contain commas, quotes, brackets or spaces (cloud-hypervisor option syntax)');
    if (v.isReadOnly) return failedPrecondition(`${field}.is_read_only: virtiofsd on this host (QEMU 7.2's) cannot export a directory read-only; share it read-write or use a container_source volume`, `${field}.is_read_only`);
  }
  return undefined;
}
