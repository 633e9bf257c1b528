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

export function detectProviders(cfg: DaemonConfig): ProviderAvailability {
  return new Map(
    DEFAULT_PROVIDER_ORDER.map((name) => {
      const bin = binaryFor(cfg, name);
      const found = findBinary(bin);
      return [name, found ? { usable: true as const } : { usable: false as const, reason: `VMM binary "${bin}" not found (set --${name}-bin)` }];
    }),
  );
}

/** The configured default, else the first usable provider in flintlock's order; undefined when none is. */
export function chooseDefaultProvider(cfg: DaemonConfig, available: ProviderAvailability): ProviderName | undefined {
  if (cfg.defaultProvider !== '') return cfg.defaultProvider;
  return DEFAULT_PROVIDER_ORDER.find((p) => available.get(p)?.usable);
}
