import { readFile } from 'node:fs/promises';
import { failedPrecondition } from '../../core/errors.js';
import type { ProviderDescriptor, VmRef, VmmInstance, VmmProvider } from '../../core/vmm.js';
import { pidAlive, processMentions } from './process.js';
import type { ProviderContext } from './registry.js';

/**
 * A provider whose driver is not built: creates are refused before they get here (the registry
 * says it is unavailable), and a VM of it is found running only by its `<name>.pid` file.
 */
export function unbuiltProvider(descriptor: ProviderDescriptor, _ctx: ProviderContext): VmmProvider {
  return {
    descriptor,
    instance(ref: VmRef): VmmInstance {
      const pid = `${ref.dir}/${descriptor.name}.pid`;
      const refuse = () => Promise.reject(failedPrecondition(`provider ${descriptor.name} is not built into this matchlock`));
      return {
        ref,
        files: { pid, console: `${ref.dir}/${descriptor.name}.stdout` },
        consolePath: `${ref.dir}/${descriptor.name}.stdout`,
        defaultCmdline: () => [],
        createSteps: () => [],
        deleteSteps: () => [],
        async running() {
          const n = Number((await readFile(pid, 'utf8').catch(() => '')).trim());
          return Number.isInteger(n) && n > 0 && pidAlive(n) && processMentions(n, ref.uid) ? n : undefined;
        },
        start: refuse,
        stop: refuse,
      };
    },
  };
}
