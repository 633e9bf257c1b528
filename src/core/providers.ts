/**
 * The VMM providers matchlock knows by name, with what each can do. The set is an explicit Map:
 * adding a provider is one entry here plus its adapter folder.
 */
export interface ProviderCapabilities {
  macvtap: boolean;
  virtiofs: boolean;
  /** A vsock device for the guest agent (allow_guest_agent). */
  vsock: boolean;
  /** Needs the flintlock metadata interface eth0 (MMDS) prepended. */
  metadataInterface: boolean;
}

export interface ProviderInfo {
  name: ProviderName;
  /** The VMM binary looked up on PATH unless the configuration names one. */
  defaultBinary: string;
  capabilities: ProviderCapabilities;
}

export type ProviderName = 'firecracker' | 'cloudhypervisor' | 'qemu';

export const PROVIDERS: ReadonlyMap<ProviderName, ProviderInfo> = new Map<ProviderName, ProviderInfo>([
  [
    'firecracker',
    {
      name: 'firecracker',
      defaultBinary: 'firecracker',
      capabilities: { macvtap: false, virtiofs: false, vsock: true, metadataInterface: true },
    },
  ],
  [
    'cloudhypervisor',
    {
      name: 'cloudhypervisor',
      defaultBinary: 'cloud-hypervisor',
      capabilities: { macvtap: true, virtiofs: true, vsock: true, metadataInterface: false },
    },
  ],
  [
    'qemu',
    {
      name: 'qemu',
      defaultBinary: 'qemu-system-x86_64',
      // vsock needs vhost-vsock, which matchlock does not wire up for QEMU yet.
      capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false },
    },
  ],
]);

/** The order in which the default provider is chosen: an existing flintlock host keeps Firecracker. */
export const DEFAULT_PROVIDER_ORDER: readonly ProviderName[] = ['firecracker', 'cloudhypervisor', 'qemu'];

export function isProviderName(s: string): s is ProviderName {
  return PROVIDERS.has(s as ProviderName);
}

/** What this host can run: provider name -> usable, or the reason it is not. */
export type ProviderAvailability = ReadonlyMap<ProviderName, { usable: true } | { usable: false; reason: string }>;
