import type { Logger } from '../../core/ports.js';
import type { SettingDef, SettingValue } from '../../core/settings.js';
import type { ProviderDescriptor, VmmProvider } from '../../core/vmm.js';
import type { VmmConfinement } from './confine/vmm.js';
import { cloudHypervisorModule } from './cloudhypervisor/index.js';
import { firecrackerModule } from './firecracker/index.js';
import { qemuModule } from './qemu/index.js';

/** What a provider is built from. */
export interface ProviderContext {
  /** The binary as configured (a name on PATH or a path). */
  binary: string;
  /** The binary resolved on this host, when found. */
  found: string | undefined;
  /** The value of one of this provider's own settings. */
  setting(key: string): SettingValue;
  stateDir: string;
  logger: Logger;
  /** How VMM processes are confined (user, seccomp, cgroup); undefined: not at all. */
  confinement?: VmmConfinement | undefined;
}

/** One provider: its descriptor, its settings and how to build it. */
export interface ProviderModule {
  readonly descriptor: ProviderDescriptor;
  /** The setting that names the VMM binary (e.g. qemu-bin). */
  readonly binarySetting: string;
  /** The provider's own settings, flintlockd's names where flintlock has them. */
  readonly settings: readonly SettingDef[];
  create(ctx: ProviderContext): VmmProvider;
}

/**
 * Every provider matchlock knows, one line each, in the order the default provider is chosen:
 * an existing flintlock host keeps Firecracker. Adding a provider is a folder under
 * src/adapters/vmm/ and one line here.
 */
export const PROVIDERS: ReadonlyMap<string, ProviderModule> = new Map<string, ProviderModule>([
  ['firecracker', firecrackerModule],
  ['cloudhypervisor', cloudHypervisorModule],
  ['qemu', qemuModule],
]);
