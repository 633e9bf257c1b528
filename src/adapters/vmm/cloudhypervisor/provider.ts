import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import type { Step } from '../../../core/plan/step.js';
import type { Logger } from '../../../core/ports.js';
import type { CmdlineInput, Launch, ProviderDescriptor, VmRef, VmmInstance, VmmIoCounters, VmmPowerState, VmmPresence, VmmProvider } from '../../../core/vmm.js';
import { rotateForStart } from '../console.js';
import { launchDetached } from '../launcher.js';
import { climbStopLadder, signalRung, type Rung } from '../stop-ladder.js';
import { ChApi, type ChCounters } from './api.js';
import { chArgs, chDefaultCmdline, FILES, SOCKETS } from './args.js';
import { recordedVirtiofsds, runningFromPidFile, stopVirtiofsd, Virtiofsd } from './virtiofsd.js';

export interface ChSettings {
  /** The cloud-hypervisor binary (a path or a name on PATH). */
  bin: string;
  /** Start the VMM in its own session so it outlives the daemon (flintlock's cloudhypervisor-detach). */
  detach: boolean;
  /** The virtiofsd binary for shares. */
  virtiofsd: string;
  /** How long the VMM may take to answer vmm.ping after spawning, in ms. */
  startTimeoutMs?: number;
}

/**
 * One VM under Cloud Hypervisor. Every method looks at the host (pid file, process, API socket),
 * so a restarted daemon finds a running VM again through the same calls. CH writes no pid file:
 * the provider writes the spawned pid to `cloudhypervisor.pid` (as flintlock does).
 */
export class CloudHypervisorInstance implements VmmInstance {
  readonly files: { pid: string; console: string; log: string; stdout: string; stderr: string; cmdline: string; api: string; vsock: string };
  readonly consolePath: string;
  /** The serial console file, CH's --log-file (-v) and its stdout/stderr. */
  readonly growingFiles: readonly string[];
  readonly api: ChApi;

  constructor(
    readonly ref: VmRef,
    private readonly settings: ChSettings,
    private readonly log: Logger,
  ) {
    const f = (name: string) => `${ref.dir}/${name}`;
    this.files = {
      pid: f(FILES.pid),
      console: f(FILES.console),
      log: f(FILES.log),
      stdout: f(FILES.stdout),
      stderr: f(FILES.stderr),
      cmdline: f(FILES.cmdline),
      api: `${ref.runDir}/${SOCKETS.api}`,
      vsock: `${ref.runDir}/${SOCKETS.vsock}`,
    };
    this.consolePath = this.files.console;
    this.growingFiles = [this.files.console, this.files.log, this.files.stdout, this.files.stderr];
    this.api = new ChApi(this.files.api);
  }

  /**
   * The pid file (ours) and the API socket live with the VMM (stop removes them); the hybrid
   * vsock socket exists only when the spec allows the guest agent (chArgs passes --vsock then).
   * The console, log, output and command line are made by start(): none before the first.
   */
  expectedFiles(spec: MicroVMSpec, vmm: VmmPresence): string[] {
    const f = this.files;
    if (vmm === 'never-started') return [];
    return [f.console, f.log, f.stdout, f.stderr, f.cmdline, ...(vmm === 'running' ? [f.pid, f.api, ...(spec.allowGuestAgent ? [f.vsock] : [])] : [])];
  }

  defaultCmdline(input: CmdlineInput): [string, string][] {
    return chDefaultCmdline(input.hasRoot);
  }

  /** One virtiofsd per share, started before the VMM (CH connects to it at boot). */
  createSteps(launch: () => Launch): Step[] {
    return launch().shares.map((share, n) => {
      const d = new Virtiofsd(this.settings.virtiofsd, this.ref.dir, this.ref.runDir, n);
      return {
        name: `virtiofsd ${share.id}`,
        kind: 'virtiofsd',
        needed: async () => (await d.running()) === undefined,
        run: async (signal: AbortSignal) => {
          await mkdir(this.ref.runDir, { recursive: true });
          await d.start(share.hostPath, signal, this.log);
        },
        verify: async () => {
          if ((await d.running()) === undefined) throw new MatchlockError(ErrorCode.Internal, `virtiofsd for ${share.hostPath} is not running; see ${d.logFile}`);
        },
      };
    });
  }

  /** Stops every virtiofsd this VM recorded (they normally exit with the VMM). */
  deleteSteps(): Step[] {
    const { dir, runDir } = this.ref;
    const recorded = () => recordedVirtiofsds(dir, runDir);
    return [
      {
        name: 'stop virtiofsd',
        needed: async () => (await recorded()).length > 0,
        run: async (signal: AbortSignal) => {
          for (const v of await recorded()) await stopVirtiofsd(v, signal, this.log);
        },
        verify: async () => {
          for (const v of await recordedVirtiofsds(dir, runDir)) throw new MatchlockError(ErrorCode.Internal, `virtiofsd ${v.pidFile} still recorded`);
        },
      },
    ];
  }

  /**
   * The VMM's pid while it runs. A live process whose API does not answer still counts: starting
   * a second VMM for the same VM would be worse than waiting (flintlock does the same).
   */
  async running(): Promise<number | undefined> {
    return runningFromPidFile(this.files.pid, this.ref.dir);
  }

  async start(l: Launch, signal: AbortSignal, log: Logger): Promise<number> {
    const args = chArgs(l);
    const bin = this.settings.bin;
    log.debug({ bin, args }, 'starting cloud-hypervisor');
    await mkdir(this.ref.runDir, { recursive: true });
    // v41 refuses to bind an API socket path that exists, and every version a vsock one; a
    // killed VMM leaves both behind.
    await this.removeSockets();
    await rm(this.files.pid, { force: true });
    // CH truncates its serial and log files (File::create), which would take the last run's
    // crash reason with it; the spawner appends stdout. The last run's go to `.1` first, as
    // QEMU's console does, so the supervisor never reads an earlier run's boot line as this one's.
    await rotateForStart([this.files.console, this.files.log, this.files.stdout, this.files.stderr]);
    await writeFile(this.files.cmdline, JSON.stringify([bin, ...args]) + '\n');
    // The macvtap's character device; CH takes it as fd=3, 4, … in NIC order.
    const taps = l.nics.filter((n) => n.type === 'MACVTAP').map((n) => `/dev/tap${n.ifindex}`);
    try {
      return await launchDetached({
        what: 'cloud-hypervisor',
        bin,
        args,
        stdout: this.files.stdout,
        stderr: this.files.stderr,
        fdPaths: taps,
        detached: this.settings.detach,
        // CH writes no pid file; flintlock writes the spawned pid, and so do we.
        onSpawn: (pid) => writeFile(this.files.pid, `${pid}\n`),
        // Ready once the API answers: then the VM is booted (a payload on the command line boots it).
        ready: async () => {
          const pid = await this.running();
          return pid !== undefined && (await this.api.ping().then(() => true, () => false)) ? pid : undefined;
        },
        timeoutMs: this.settings.startTimeoutMs ?? 15_000,
        signal,
      });
    } catch (err) {
      // Not ready, or called off (also as it became ready): leave nothing half-started behind.
      const pid = await this.running();
      if (pid !== undefined) process.kill(pid, 'SIGKILL');
      const e = MatchlockError.from(err);
      // A start called off is no failure of the VMM: its output says nothing about it.
      if (e.code === ErrorCode.Canceled || /exited with/.test(e.message)) throw e;
      throw new MatchlockError(e.code, `${e.message}: ${await this.errorTail()}`, { cause: err });
    }
  }

  /** The last lines of stderr (and the log file), where CH prints its error chain. */
  private async errorTail(): Promise<string> {
    const tail = async (f: string) => (await readFile(f, 'utf8').catch(() => '')).trim().split('\n').slice(-4).join(' ').replace(/\s+/g, ' ');
    return (await tail(this.files.stderr)) || (await tail(this.files.log)) || 'no output';
  }

  /**
   * vm.power-button (ACPI: the guest shuts down and CH exits), then after `timeoutMs`
   * vm.shutdown + vmm.shutdown, SIGTERM, SIGKILL; sockets are removed once it is gone. A paused
   * guest is resumed first, or it could not see the button. Any virtiofsd of the VM goes after it.
   */
  async stop(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void> {
    const rungs: Rung[] = [
      {
        name: 'vm.power-button',
        ask: async () => {
          if ((await this.api.state()) === 'Paused') await this.api.action('vm.resume');
          await this.api.action('vm.power-button');
        },
        waitMs: opts.timeoutMs,
      },
      {
        name: 'vm.shutdown + vmm.shutdown',
        ask: async () => {
          await this.api.action('vm.shutdown').catch(() => undefined);
          await this.api.action('vmm.shutdown');
        },
        waitMs: 2000,
      },
      signalRung('SIGTERM', 2000),
      signalRung('SIGKILL', 5000),
    ];
    await climbStopLadder('cloud-hypervisor', () => this.running(), rungs, opts.signal, log);
    await this.removeSockets();
    // virtiofsd exits with its VMM; one left behind (a VMM that never connected) goes too, so a
    // sweep of an orphaned VM that only calls stop leaves nothing running.
    for (const v of await recordedVirtiofsds(this.ref.dir, this.ref.runDir)) await stopVirtiofsd(v, opts.signal, log);
  }

  private async removeSockets(): Promise<void> {
    await rm(this.files.api, { force: true });
    await rm(this.files.vsock, { force: true });
  }

  async setPaused(paused: boolean): Promise<void> {
    await this.api.action(paused ? 'vm.pause' : 'vm.resume');
  }

  /** vm.info's state: Running, Paused, or stopped (Shutdown, or Created after vm.shutdown in v53). */
  async powerState(): Promise<VmmPowerState | undefined> {
    if ((await this.running()) === undefined) return 'stopped';
    try {
      const s = await this.api.state();
      return s === 'Running' ? 'running' : s === 'Paused' ? 'paused' : 'stopped';
    } catch {
      return undefined;
    }
  }

  /** vm.counters: per device (`_disk0`, `_net2`, …) counters such as read_bytes or rx_frames. */
  async counters(): Promise<ChCounters> {
    return this.api.counters();
  }

  /** vm.counters summed over the devices: block devices carry read_bytes, net devices rx_bytes. */
  async ioCounters(): Promise<VmmIoCounters> {
    return chIoCounters(await this.api.counters());
  }
}

/**
 * Cloud Hypervisor's per-device counters (virtio-block: read_bytes, write_bytes, read_ops,
 * write_ops; virtio-net: rx_bytes, rx_frames, tx_bytes, tx_frames, counted as the guest sees
 * them), summed by kind. A device is told apart by its keys, not its id, which the VMM chooses.
 */
export function chIoCounters(counters: ChCounters): VmmIoCounters {
  const block = { readBytes: 0, writeBytes: 0, readOps: 0, writeOps: 0 };
  const net = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 };
  for (const c of Object.values(counters)) {
    const n = (k: string) => (typeof c[k] === 'number' ? c[k] : 0);
    if ('read_bytes' in c || 'write_bytes' in c) {
      block.readBytes += n('read_bytes');
      block.writeBytes += n('write_bytes');
      block.readOps += n('read_ops');
      block.writeOps += n('write_ops');
    } else if ('rx_bytes' in c || 'tx_bytes' in c) {
      net.rxBytes += n('rx_bytes');
      net.txBytes += n('tx_bytes');
      net.rxPackets += n('rx_frames');
      net.txPackets += n('tx_frames');
    }
  }
  return { block, net };
}

/** Cloud Hypervisor: macvtap by descriptor, virtio-fs through virtiofsd, the NoCloud seed on a disk. */
export class CloudHypervisorProvider implements VmmProvider {
  constructor(
    readonly descriptor: ProviderDescriptor,
    private readonly settings: ChSettings,
    private readonly log: Logger,
  ) {}

  instance(ref: VmRef): CloudHypervisorInstance {
    return new CloudHypervisorInstance(ref, this.settings, this.log.child({ uid: ref.uid }));
  }
}
