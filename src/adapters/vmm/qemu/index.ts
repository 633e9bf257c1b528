import type { ProviderModule } from '../registry.js';
import { QemuProvider } from './provider.js';

/** QEMU's `microvm` machine. */
export const qemuModule: ProviderModule = {
  descriptor: {
    name: 'qemu',
    defaultBinary: 'qemu-system-x86_64',
    // vsock needs vhost-vsock, which matchlock does not wire up for QEMU yet.
    capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false, pause: true },
    metadata: { kind: 'nocloud-disk', file: 'cidata.img' },
    sockets: ['qmp.sock', 'console.sock'],
  },
  binarySetting: 'qemu-bin',
  settings: [
    { key: 'qemu-bin', kind: 'string', default: 'qemu-system-x86_64', help: 'QEMU binary for the microvm machine' },
    { key: 'qemu-accel', kind: 'enum', values: ['tcg', 'kvm'], default: 'tcg', help: 'QEMU accelerator, tcg or kvm (never guessed from /dev/kvm)' },
  ],
  create: (ctx) => new QemuProvider(qemuModule.descriptor, ctx.found ?? ctx.binary, { accel: ctx.setting('qemu-accel') === 'kvm' ? 'kvm' : 'tcg' }, ctx.confinement),
};
