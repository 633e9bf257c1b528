import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { launchDetached, waitGone } from '../../../../src/adapters/vmm/launcher.js';
import { pidAlive, processMentions } from '../../../../src/adapters/vmm/process.js';
import type { ProviderModule } from '../../../../src/adapters/vmm/registry.js';
import type { Step } from '../../../../src/core/plan/step.js';
import type { Launch, ProviderDescriptor, VmRef, VmmInstance, VmmPresence } from '../../../../src/core/vmm.js';

/**
 * A throw-away provider that lives only in the test tree: it shows that a provider is a folder
 * and one registry line. Its VMM is vmm.mjs, which boots nothing; it delivers metadata itself,
 * as a JSON file in the VM directory, to exercise the provider-chosen delivery.
 */
const descriptor: ProviderDescriptor = {
  name: 'scratch',
  defaultBinary: fileURLToPath(new URL('./vmm.mjs', import.meta.url)),
  capabilities: { macvtap: false, virtiofs: false, vsock: false, metadataInterface: false, pause: false },
  metadata: { kind: 'provider' },
  sockets: [],
};

class ScratchInstance implements VmmInstance {
  readonly files;
  readonly consolePath;
  constructor(
    readonly ref: VmRef,
    private readonly bin: string,
  ) {
    this.files = { pid: `${ref.dir}/scratch.pid`, console: `${ref.dir}/scratch.console`, metadata: `${ref.dir}/scratch-metadata.json` };
    this.consolePath = this.files.console;
  }
  expectedFiles(_spec: unknown, vmm: VmmPresence): string[] {
    return [...(vmm === 'never-started' ? [] : [this.files.console]), this.files.metadata, ...(vmm === 'running' ? [this.files.pid] : [])];
  }
  defaultCmdline(): [string, string][] {
    return [['console', 'ttyS0']];
  }
  createSteps(launch: () => Launch): Step[] {
    const file = this.files.metadata;
    return [{
      name: 'scratch metadata',
      needed: async () => !(await readFile(file).then(() => true, () => false)),
      run: async () => {
        const m = launch().metadata;
        await writeFile(file, JSON.stringify(Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v.toString('utf8')]))));
      },
      verify: async () => undefined,
    }];
  }
  deleteSteps(): Step[] {
    return [];
  }
  async running(): Promise<number | undefined> {
    const pid = Number((await readFile(this.files.pid, 'utf8').catch(() => '')).trim());
    return pid > 0 && pidAlive(pid) && processMentions(pid, this.ref.uid) ? pid : undefined;
  }
  start(_l: Launch, signal: AbortSignal): Promise<number> {
    return launchDetached({
      what: 'scratch', bin: this.bin, args: ['--id', this.ref.uid, '--pid-file', this.files.pid, '--console', this.files.console],
      stdout: `${this.ref.dir}/scratch.stdout`, stderr: `${this.ref.dir}/scratch.stderr`, detached: true,
      ready: () => this.running(), timeoutMs: 5000, signal,
    });
  }
  async stop(opts: { timeoutMs: number; signal: AbortSignal }): Promise<void> {
    const pid = await this.running();
    if (pid === undefined) return;
    process.kill(pid, 'SIGTERM');
    if (!(await waitGone(() => this.running(), opts.timeoutMs, opts.signal))) process.kill(pid, 'SIGKILL');
  }
}

export const scratchModule: ProviderModule = {
  descriptor,
  binarySetting: 'scratch-bin',
  settings: [{ key: 'scratch-bin', kind: 'string', default: descriptor.defaultBinary, help: 'the scratch VMM' }],
  create: (ctx) => ({ descriptor, instance: (ref) => new ScratchInstance(ref, ctx.found ?? ctx.binary) }),
};
