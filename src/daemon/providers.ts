import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { DEFAULT_PROVIDER_ORDER, type ProviderAvailability, type ProviderName } from '../core/providers.js';
import type { DaemonConfig } from './config.js';

/** Resolves a binary the way a shell would: a path is checked as is, a bare name on PATH. */
export function findBinary(bin: string, path = process.env.PATH ?? ''): string | undefined {
  const candidates = bin.includes('/') ? [bin] : path.split(delimiter).filter(Boolean).map((d) => join(d, bin));
  for (const c of candidates) {
    try {
      if (!statSync(c).isFile()) continue;
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // not there or not executable: try the next one
    }
  }
  return undefined;
}

export function binaryFor(cfg: DaemonConfig, name: ProviderName): string {
  return { firecracker: cfg.firecrackerBin, cloudhypervisor: cfg.cloudhypervisorBin, qemu: cfg.qemuBin }[name];
}

/** Providers this matchlock can drive; the others are known by name and refused with a reason. */
export const BUILT_PROVIDERS: ReadonlySet<ProviderName> = new Set<ProviderName>(['qemu']);

export function detectProviders(cfg: DaemonConfig): ProviderAvailability {
  type Entry = [ProviderName, { usable: true } | { usable: false; reason: string }];
  return new Map(
    DEFAULT_PROVIDER_ORDER.map((name): Entry => {
      const bin = binaryFor(cfg, name);
      const found = findBinary(bin);
      if (!found) return [name, { usable: false as const, reason: `VMM binary "${bin}" not found (set --${name}-bin)` }];
      if (!BUILT_PROVIDERS.has(name)) return [name, { usable: false as const, reason: `matchlock's ${name} provider is not built yet (found ${found})` }];
      return [name, { usable: true as const }];
    }),
  );
}

/** The configured default, else the first usable provider in flintlock's order; undefined when none is. */
export function chooseDefaultProvider(cfg: DaemonConfig, available: ProviderAvailability): ProviderName | undefined {
  if (cfg.defaultProvider !== '') return cfg.defaultProvider;
  return DEFAULT_PROVIDER_ORDER.find((p) => available.get(p)?.usable);
}
