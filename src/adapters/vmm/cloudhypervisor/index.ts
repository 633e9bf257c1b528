import type { ProviderModule } from '../registry.js';
import { unbuiltProvider } from '../unbuilt.js';

/** Cloud Hypervisor: flintlock's second VMM. Its descriptor is known; the driver is not built yet. */
export const cloudHypervisorModule: ProviderModule = {
  descriptor: {
    name: 'cloudhypervisor',
    defaultBinary: 'cloud-hypervisor',
    capabilities: { macvtap: true, virtiofs: true, vsock: true, metadataInterface: false, pause: true },
    metadata: { kind: 'nocloud-disk', file: 'cloud-init.img' },
    sockets: ['cloudhypervisor.sock', 'guest-agent.vsock'],
    socketSuffixBytes: 11,
  },
  binarySetting: 'cloudhypervisor-bin',
  settings: [
    { key: 'cloudhypervisor-bin', kind: 'string', default: 'cloud-hypervisor', help: 'Cloud Hypervisor binary' },
    { key: 'cloudhypervisor-detach', kind: 'bool', default: 'true', help: 'run Cloud Hypervisor detached' },
  ],
  unavailable: "matchlock's cloudhypervisor provider is not built yet",
  create: (ctx) => unbuiltProvider(cloudHypervisorModule.descriptor, ctx),
};
