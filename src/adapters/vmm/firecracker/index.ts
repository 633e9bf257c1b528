import type { ProviderModule } from '../registry.js';
import { unbuiltProvider } from '../unbuilt.js';

/** Firecracker: the VMM of every flintlock host. Its descriptor is known; the driver is not built yet. */
export const firecrackerModule: ProviderModule = {
  descriptor: {
    name: 'firecracker',
    defaultBinary: 'firecracker',
    capabilities: { macvtap: false, virtiofs: false, vsock: true, metadataInterface: true, pause: true },
    metadata: { kind: 'provider' },
    sockets: ['firecracker.sock', 'guest-agent.vsock'],
    socketSuffixBytes: 11,
  },
  binarySetting: 'firecracker-bin',
  settings: [
    { key: 'firecracker-bin', kind: 'string', default: 'firecracker', help: 'Firecracker binary (name on PATH or path)' },
    { key: 'firecracker-detach', kind: 'bool', default: 'true', help: 'run Firecracker detached so VMs outlive the daemon' },
  ],
  unavailable: "matchlock's firecracker provider is not built yet",
  create: (ctx) => unbuiltProvider(firecrackerModule.descriptor, ctx),
};
