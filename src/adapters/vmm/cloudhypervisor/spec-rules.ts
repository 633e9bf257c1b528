import { failedPrecondition, invalid, type MatchlockError } from '../../../core/errors.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';

/**
 * Create-time rules of Cloud Hypervisor beyond the common ones, so a spec it cannot serve is
 * refused by the API instead of failing on the host:
 * - a virtio-fs share's host path is passed inside CH's `--fs`/virtiofsd option syntax, where a
 *   comma, quote or bracket ends or nests a value (vmm/src/config.rs OptionParser);
 * - Debian 12's virtiofsd (QEMU 7.2) has no read-only export, so a read-only share would be
 *   writable by the guest: refused rather than served wrongly.
 */
export function chCheckSpec(spec: MicroVMSpec): MatchlockError | undefined {
  for (const [n, v] of spec.additionalVolumes.entries()) {
    const path = v.source.virtiofsSource;
    if (path === undefined) continue;
    const field = `microvm.additional_volumes[${n}]`;
    if (/[,"[\]\s]/.test(path)) return invalid(`${field}.source.virtiofs_source`, 'must not contain commas, quotes, brackets or spaces (cloud-hypervisor option syntax)');
    if (v.isReadOnly) return failedPrecondition(`${field}.is_read_only: virtiofsd on this host (QEMU 7.2's) cannot export a directory read-only; share it read-write or use a container_source volume`, `${field}.is_read_only`);
  }
  return undefined;
}
