import { PROVIDERS } from '../../src/adapters/vmm/registry.js';
import type { ProviderAvailability, ProviderEntry } from '../../src/core/vmm.js';

/** The registry's providers as the control plane sees them, each with the given availability. */
export function providerEntries(availability: (name: string) => ProviderAvailability = () => ({ usable: true })): Map<string, ProviderEntry> {
  return new Map([...PROVIDERS].map(([name, m]) => [name, { descriptor: m.descriptor, availability: availability(name) }]));
}
