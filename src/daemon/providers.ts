import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Logger } from '../core/ports.js';
import type { ProviderEntry, VmmProvider } from '../core/vmm.js';
import type { ProviderModule } from '../adapters/vmm/registry.js';
import type { DaemonConfig } from './config.js';
import type { VmmConfinement } from '../adapters/vmm/confine/vmm.js';

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

/** The binary a provider is configured to run (its `<name>-bin` setting). */
export function binaryFor(cfg: DaemonConfig, module: ProviderModule): string {
  return String(cfg.providerSettings[module.binarySetting] ?? module.descriptor.defaultBinary);
}

/** What this host can run: every registered provider with its descriptor and whether it is usable. */
export function providerEntries(cfg: DaemonConfig, registry: ReadonlyMap<string, ProviderModule>): Map<string, ProviderEntry> {
  return new Map(
    [...registry].map(([name, m]): [string, ProviderEntry] => {
      const bin = binaryFor(cfg, m);
      const found = findBinary(bin);
      const availability: ProviderEntry['availability'] = found ? { usable: true } : { usable: false, reason: `VMM binary "${bin}" not found (set --${m.binarySetting})` };
      return [name, { descriptor: m.descriptor, availability }];
    }),
  );
}

/**
 * Every registered provider, built whether or not its binary is here: a VM whose binary went
 * away after it was created must still be found running and stopped.
 */
export function buildProviders(cfg: DaemonConfig, registry: ReadonlyMap<string, ProviderModule>, logger: Logger, confinement?: VmmConfinement): Map<string, VmmProvider> {
  return new Map(
    [...registry].map(([name, m]) => {
      const binary = binaryFor(cfg, m);
      const setting = (key: string) => {
        const v = cfg.providerSettings[key];
        if (v === undefined) throw new Error(`provider ${name} read setting ${key}, which it does not declare`);
        return v;
      };
      return [name, m.create({ binary, found: findBinary(binary), setting, stateDir: cfg.stateDir, logger: logger.child({ provider: name }), confinement })];
    }),
  );
}

/** The configured default, else the first usable provider in the registry's order; undefined when none is. */
export function chooseDefaultProvider(cfg: DaemonConfig, entries: ReadonlyMap<string, ProviderEntry>): string | undefined {
  if (cfg.defaultProvider !== '') return cfg.defaultProvider;
  return [...entries].find(([, e]) => e.availability.usable)?.[0];
}
