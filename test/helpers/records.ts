// Stored MicroVM records for tests that seed a store directly, without a create.
import { initialStatus, type MicroVM, type MicroVMSpec, type MicroVMStatus } from '../../src/core/microvm/types.js';

/** A ULID-shaped uid whose order is n's order: `01J` then n in 23 digits. */
export const seededUid = (n: number): string => `01J${String(n).padStart(23, '0')}`;

/**
 * A record as the store holds it after a create and some reconcile work: by default a VM of one
 * kernel image, an image root volume and one TAP, FAILED (so a daemon that loads it leaves it
 * alone), version 1, created and updated at 2026-01-01. `spec` and `status` replace fields of
 * those defaults; a field given as undefined is left out of the record, as the store would.
 */
export function storedMicroVM(uid: string, spec: Partial<MicroVMSpec> = {}, status: Partial<MicroVMStatus> = {}): MicroVM {
  const full: MicroVMSpec = {
    name: 'vm', namespace: 'ns', labels: {}, vcpu: 2, memoryInMb: 2048,
    kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
    rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r:1' } },
    additionalVolumes: [], interfaces: [{ deviceId: 'eth1', type: 'TAP' }],
    metadata: {}, provider: 'qemu', allowGuestAgent: false,
    ...spec,
  };
  for (const k of Object.keys(full) as (keyof MicroVMSpec)[]) if (full[k] === undefined) delete full[k];
  return {
    uid,
    version: 1,
    spec: full,
    status: { ...initialStatus(), state: 'FAILED', lastError: 'seeded', ...status },
    createdAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:00:00.000Z',
  };
}
