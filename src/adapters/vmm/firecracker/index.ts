import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { failedPrecondition } from '../../../core/errors.js';
import type { Logger } from '../../../core/ports.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import type { Step } from '../../../core/plan/step.js';
import type { CmdlineInput, Launch, ProviderDescriptor, VmRef, VmmInstance, VmmIoCounters, VmmPowerState, VmmPresence, VmmProvider } from '../../../core/vmm.js';
import type { ProviderContext, ProviderModule } from '../registry.js';
import { FILES, SOCKETS, defaultCmdline, firecrackerConfig, mmdsMetadata, type FirecrackerLaunch } from './config.js';
import { fcCheckSpec } from './spec-rules.js';
import { DEFAULT_JAILER, type JailerSettings } from './jailer.js';
import { FirecrackerVm, type FirecrackerMetrics } from './vm.js';

const descriptor: ProviderDescriptor = {
  name: 'firecracker',
  defaultBinary: 'firecracker',
  capabilities: { macvtap: false, virtiofs: false, vsock: true, metadataInterface: true, pause: true },
  metadata: { kind: 'provider' },
  sockets: [SOCKETS.api, SOCKETS.vsock],
  // Guest-initiated vsock connections go to `<uds_path>_<port>` (port up to 10 digits).
  socketSuffixBytes: 11,
  checkSpec: fcCheckSpec,
};

export interface FirecrackerSettings {
  bin: string;
  detach: boolean;
  jailer: (JailerSettings & { cgroupRoot: string; claimsDir: string }) | undefined;
}

/** Firecracker: the VMM of every flintlock host, driven through its config file and API socket. */
export class FirecrackerProvider implements VmmProvider {
  readonly descriptor = descriptor;
  constructor(private readonly s: FirecrackerSettings) {}
  instance(ref: VmRef): FirecrackerInstance {
    return new FirecrackerInstance(ref, this.s);
  }
}

export class FirecrackerInstance implements VmmInstance {
  readonly files: { pid: string; console: string } & Record<string, string>;
  readonly consolePath: string;
  /** The console (stdout), stderr, and the log and metrics files Firecracker appends to. */
  readonly growingFiles: readonly string[];
  readonly vm: FirecrackerVm;
  /** Whether disks[0] is the root volume, as the plan said in defaultCmdline (Launch does not carry it). */
  private hasRoot = true;

  constructor(
    readonly ref: VmRef,
    private readonly s: FirecrackerSettings,
  ) {
    this.vm = new FirecrackerVm(ref.uid, { dir: ref.dir, runDir: ref.runDir }, { bin: s.bin, detach: s.detach, jailer: s.jailer });
    const f = (k: keyof typeof FILES) => this.vm.file(k);
    this.files = { pid: f('pid'), console: f('stdout'), stdout: f('stdout'), stderr: f('stderr'), log: f('log'), metrics: f('metrics'), config: f('config'), metadata: f('metadata') };
    this.consolePath = this.files.console;
    this.growingFiles = [f('stdout'), f('stderr'), f('log'), f('metrics')];
  }

  /**
   * prepare() writes the config and metadata.json (MMDS is always on) and creates the log,
   * metrics, stdout and stderr files before every start, jailed or not (the jail hard-links
   * them); the pid file is removed when Firecracker is stopped. prepare() is a create step, so a
   * VM no Firecracker was started for has all of them but the pid file too.
   */
  expectedFiles(_spec: MicroVMSpec, vmm: VmmPresence): string[] {
    const f = this.files;
    return [f.config, f.metadata, f.log, f.metrics, f.stdout, f.stderr, ...(vmm === 'running' ? [f.pid] : [])].filter((x): x is string => x !== undefined);
  }

  defaultCmdline(input: CmdlineInput): [string, string][] {
    this.hasRoot = input.hasRoot;
    // The control plane always gives a Firecracker VM flintlock's MMDS interface eth0.
    return defaultCmdline({ mmds: true, networkConfig: input.metadata['network-config'] });
  }

  private fc(l: Launch): FirecrackerLaunch {
    return { ...l, hasRoot: this.hasRoot };
  }

  /**
   * metadata.json and firecracker.cfg (and the jail) as this launch needs them: rewritten when
   * missing or different, so a changed seed or spec reaches the next start.
   */
  createSteps(launch: () => Launch): Step[] {
    const vm = this.vm;
    const expected = async () => {
      const l = this.fc(launch());
      const metadata = JSON.stringify(mmdsMetadata(l.metadata)) + '\n';
      return { l, metadata };
    };
    return [
      {
        name: 'firecracker config and metadata',
        needed: async () => {
          const { metadata } = await expected();
          const cfg = await readFile(vm.file('config'), 'utf8').catch(() => undefined);
          if (cfg === undefined || (await readFile(vm.file('metadata'), 'utf8').catch(() => undefined)) !== metadata) return true;
          return vm.jail !== undefined && !existsSync(`${vm.jail}/${FILES.config}`);
        },
        run: async () => {
          await vm.prepare((await expected()).l);
        },
        verify: async () => {
          const cfg = JSON.parse(await readFile(vm.file('config'), 'utf8')) as ReturnType<typeof firecrackerConfig>;
          if (!cfg['boot-source']?.kernel_image_path) throw failedPrecondition(`${FILES.config} has no kernel`);
        },
      },
    ];
  }

  deleteSteps(): Step[] {
    const vm = this.vm;
    const jail = vm.jail;
    if (!jail || !this.s.jailer) return [];
    const cgroup = `${this.s.jailer.cgroupRoot}/${this.s.jailer.parentCgroup}/${this.ref.uid}`;
    return [
      {
        name: 'firecracker jail and cgroup',
        needed: async () => existsSync(jail.replace(/\/root$/, '')) || existsSync(cgroup) || (await vm.jailUid()) !== undefined,
        run: () => vm.cleanup(),
        verify: async () => {
          if (existsSync(jail.replace(/\/root$/, ''))) throw failedPrecondition(`jail ${jail} is still there`);
          const id = await vm.jailUid();
          if (id !== undefined) throw failedPrecondition(`uid/gid ${id} is still claimed for vm ${this.ref.uid}`);
        },
      },
    ];
  }

  running(): Promise<number | undefined> {
    return this.vm.running();
  }

  start(launch: Launch, signal: AbortSignal, log: Logger): Promise<number> {
    return this.vm.start(this.fc(launch), log, signal);
  }

  stop(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void> {
    return this.vm.stop(opts, log);
  }

  setPaused(paused: boolean): Promise<void> {
    return paused ? this.vm.pause() : this.vm.resume();
  }

  async powerState(): Promise<VmmPowerState | undefined> {
    if ((await this.running()) === undefined) return 'stopped';
    const state = await this.vm.state().catch(() => undefined);
    return state === 'Paused' ? 'paused' : state === 'Running' ? 'running' : undefined;
  }

  /** The last metrics line as per-VM counters (deltas since the previous flush). */
  metrics(): Promise<FirecrackerMetrics | undefined> {
    return this.vm.metrics();
  }

  /** Block and network counters from the metrics file (see FirecrackerVm.ioCounters). */
  ioCounters(): Promise<VmmIoCounters> {
    return this.vm.ioCounters();
  }

  /** The guest boot time Firecracker logged, when the guest wrote the boot-timer marker. */
  bootTimeMs(): Promise<number | undefined> {
    return this.vm.bootTimeMs();
  }
}

function jailerSettings(ctx: ProviderContext): FirecrackerSettings['jailer'] {
  const bin = String(ctx.setting('firecracker-jailer-bin'));
  if (!bin) return undefined;
  const base = String(ctx.setting('firecracker-jailer-chroot-base')) || `${ctx.stateDir}/jailer`;
  return {
    ...DEFAULT_JAILER,
    bin,
    chrootBase: base,
    uidBase: Number(ctx.setting('firecracker-jailer-uid-base')),
    cgroupRoot: String(ctx.setting('firecracker-jailer-cgroup-root')),
    // The claims of vmm-uid-range's pool too (daemon/app.ts): one uid is never two VMMs'.
    claimsDir: `${ctx.stateDir}/vmm-uids`,
  };
}

/** Firecracker: the VMM of every flintlock host. */
export const firecrackerModule: ProviderModule = {
  descriptor,
  binarySetting: 'firecracker-bin',
  settings: [
    { key: 'firecracker-bin', kind: 'string', default: 'firecracker', help: 'Firecracker binary (name on PATH or path)' },
    { key: 'firecracker-detach', kind: 'bool', default: 'true', help: 'run Firecracker detached so VMs outlive the daemon' },
    { key: 'firecracker-jailer-bin', kind: 'string', default: '', help: 'Firecracker jailer binary; empty: no jailer. With it each VM runs chrooted as its own uid/gid with cgroup v2 limits' },
    { key: 'firecracker-jailer-chroot-base', kind: 'string', default: '', help: 'jailer --chroot-base-dir, on the state dir\'s filesystem; empty: <state-dir>/jailer' },
    { key: 'firecracker-jailer-uid-base', kind: 'int', default: '900000', min: 1000, help: 'first of the 65536 uids/gids the jailer gives VMs: each VM claims a free one, kept until it is deleted' },
    { key: 'firecracker-jailer-cgroup-root', kind: 'string', default: '/sys/fs/cgroup', help: 'the cgroup v2 mount the jailer makes <parent>/<uid> cgroups under' },
  ],
  create: (ctx) => new FirecrackerProvider({ bin: ctx.found ?? ctx.binary, detach: ctx.setting('firecracker-detach') !== false, jailer: jailerSettings(ctx) }),
};

