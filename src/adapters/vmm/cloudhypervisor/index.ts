import type { ProviderModule } from '../registry.js';
import { FILES, SOCKETS } from './args.js';
import { CloudHypervisorProvider } from './provider.js';
import { chCheckSpec } from './spec-rules.js';
import { DEFAULT_VIRTIOFSD } from './virtiofsd.js';

/** At most 16 additional volumes (the API's limit), so share sockets are numbered 0-15. */
const MAX_SHARES = 16;

/** Cloud Hypervisor: flintlock's second VMM, for macvtap networking and virtio-fs shares. */
export const cloudHypervisorModule: ProviderModule = {
  descriptor: {
    name: 'cloudhypervisor',
    defaultBinary: 'cloud-hypervisor',
    capabilities: { macvtap: true, virtiofs: true, vsock: true, metadataInterface: false, pause: true },
    metadata: { kind: 'nocloud-disk', file: FILES.seed },
    sockets: [SOCKETS.api, SOCKETS.vsock, SOCKETS.share(MAX_SHARES - 1)],
    // The hybrid vsock's per-port sockets are `<socket>_<port>` (port up to 10 digits).
    socketSuffixBytes: 11,
    checkSpec: chCheckSpec,
  },
  binarySetting: 'cloudhypervisor-bin',
  settings: [
    { key: 'cloudhypervisor-bin', kind: 'string', default: 'cloud-hypervisor', help: 'Cloud Hypervisor binary' },
    { key: 'cloudhypervisor-detach', kind: 'bool', default: 'true', help: 'run Cloud Hypervisor detached' },
    { key: 'virtiofsd-bin', kind: 'string', default: DEFAULT_VIRTIOFSD, help: 'virtiofsd for Cloud Hypervisor virtio-fs shares (Debian 12: in qemu-system-common)' },
  ],
  create: (ctx) =>
    new CloudHypervisorProvider(
      cloudHypervisorModule.descriptor,
      { bin: ctx.found ?? ctx.binary, detach: ctx.setting('cloudhypervisor-detach') === true, virtiofsd: String(ctx.setting('virtiofsd-bin')) },
      ctx.logger,
    ),
};
