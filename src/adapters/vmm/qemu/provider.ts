import { lstatSync, readFileSync } from 'node:fs';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { Logger } from '../../../core/ports.js';
import type { MicroVMSpec } from '../../../core/microvm/types.js';
import type { Step } from '../../../core/plan/step.js';
import type { CmdlineInput, IoCountersNic, Launch, ProviderDescriptor, VmRef, VmmInstance, VmmIoCounters, VmmPowerState, VmmPresence, VmmProvider } from '../../../core/vmm.js';
import { hostNetCounters } from '../io-counters.js';
import { rotateForStart } from '../console.js';
import { launchDetached, waitGone } from '../launcher.js';
import type { VmmConfinement } from '../confine/vmm.js';
import { childIdentity } from '../children.js';
import { processMentions, processStart } from '../process.js';
import { CONSOLE_SOCKET, FILES, QMP_SOCKET, qemuArgs, type QemuSettings } from './args.js';
import { qmpCommand } from './qmp.js';

/** Host CPU kHz for tsc_early_khz: without it about half of TCG boots hang calibrating the TSC. */
export function hostKhz(cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo);
  return m?.[1] ? Math.round(Number(m[1]) * 1000) : undefined;
}

/**
 * Removes a file that may be missing (rm's force without its lstat first: no tree can be there).
 * Usually missing: the lookup is made in place (it changes nothing, so never waits for the
 * journal), and only an unlink that has something to remove goes through the pool.
 */
async function removeFile(path: string): Promise<void> {
  if (!lstatSync(path, { throwIfNoEntry: false })) return;
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

/**
 * The pid a pid file holds, undefined when the file is missing or holds no pid. A missing file
 * (every VM's first pass) is told by an lstat in place; a read goes through the pool, as reading
 * a file QEMU just wrote updates its access time, a change that can wait for the journal.
 */
async function readPid(path: string): Promise<number | undefined> {
  if (!lstatSync(path, { throwIfNoEntry: false })) return undefined;
  const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** Whether a unix socket is bound at `path` (one lstat, in place). */
function isSocket(path: string): boolean {
  return lstatSync(path, { throwIfNoEntry: false })?.isSocket() ?? false;
}

/**
 * The kernel command line before the spec's kernel.cmdline is merged over it: the serial
 * console, a triple-fault reboot (QEMU exits on it with -no-reboot), the root drive, and
 * `tsc_early_khz` under TCG (`khz`).
 */
export function qemuDefaultCmdline(hasRoot: boolean, khz: number | undefined): [string, string][] {
  const c: [string, string][] = [['console', 'ttyS0'], ['reboot', 't'], ['panic', '-1']];
  if (hasRoot) c.push(['root', '/dev/vda'], ['rw', '']);
  if (khz) c.push(['tsc_early_khz', String(khz)]);
  return c;
}

/** QEMU's `microvm` machine: the provider that runs on our machines (TCG), and on KVM hosts. */
export class QemuProvider implements VmmProvider {
  private readonly khz: number | undefined;

  constructor(
    readonly descriptor: ProviderDescriptor,
    private readonly bin: string,
    private readonly settings: QemuSettings,
    private readonly confine?: VmmConfinement,
  ) {
    this.khz = settings.accel === 'tcg' ? hostKhz() : undefined;
  }

  instance(ref: VmRef): VmmInstance {
    return new QemuInstance(ref, this.bin, this.settings, this.khz, this.confine);
  }
}

class QemuInstance implements VmmInstance {
  readonly files: { pid: string; console: string; stdout: string; stderr: string; cmdline: string };
  readonly consolePath: string;
  readonly growingFiles: readonly string[];
  readonly consoleInput: { kind: 'unix-socket'; path: string };
  private readonly qmp: string;
  /**
   * The VMM this instance found running, with its start time (/proc/<pid>/stat field 22): while
   * a process of that pid and start time lives it is the same QEMU, so a plan's steps (needed,
   * run, verify of each) ask /proc once instead of reading and checking the pid file each time.
   * Forgotten when this instance starts or stops QEMU. `child`: the child it was when found
   * (childIdentity), when this daemon started it.
   */
  private found: { pid: number; start: string; child: object | undefined } | undefined;

  constructor(
    readonly ref: VmRef,
    private readonly bin: string,
    private readonly settings: QemuSettings,
    private readonly khz: number | undefined,
    private readonly confine?: VmmConfinement,
  ) {
    const f = (name: string) => `${ref.dir}/${name}`;
    this.files = { pid: f(FILES.pid), console: f(FILES.console), stdout: f(FILES.stdout), stderr: f(FILES.stderr), cmdline: f(FILES.cmdline) };
    this.consolePath = this.files.console;
    this.growingFiles = [this.files.console, this.files.stdout, this.files.stderr];
    this.consoleInput = { kind: 'unix-socket', path: `${ref.runDir}/${CONSOLE_SOCKET}` };
    this.qmp = `${ref.runDir}/${QMP_SOCKET}`;
  }

  /**
   * start() writes the command line and QEMU makes the console log and its output; nothing is
   * made before the first start. QEMU removes its -pidfile when it exits (QEMU 7.2 os-posix.c,
   * an exit notifier), so the pid file is a run file.
   */
  expectedFiles(_spec: MicroVMSpec, vmm: VmmPresence): string[] {
    const f = this.files;
    if (vmm === 'never-started') return [];
    return [f.console, f.stdout, f.stderr, f.cmdline, ...(vmm === 'running' ? [f.pid] : [])];
  }

  defaultCmdline(input: CmdlineInput): [string, string][] {
    return qemuDefaultCmdline(input.hasRoot, this.khz);
  }

  createSteps() {
    return [];
  }

  /**
   * The VM's cgroups and claimed uid, once its VMM is gone. A stop releases them; a VMM that
   * ended without one (it crashed, its start was called off, the VM ran out of retries) leaves
   * them to the delete, which would otherwise keep a cgroup per such VM and, with
   * vmm-uid-range, a uid until the range runs out.
   */
  deleteSteps(): Step[] {
    const confine = this.confine;
    if (!confine) return [];
    const { uid } = this.ref;
    return [{
      name: 'release vmm confinement',
      kind: 'ReleaseConfinement',
      needed: () => confine.holds(uid),
      run: () => confine.release(uid),
      verify: async () => {
        if (await confine.holds(uid)) throw new MatchlockError(ErrorCode.Internal, `the cgroups or uid of vm ${uid} are still held`);
      },
    }];
  }

  async running(): Promise<number | undefined> {
    const known = this.found;
    if (known) {
      // A VMM this daemon started lives until its exit is reported (children.ts: the exit
      // event of the child, which cannot have handed its pid on before it is reaped), so the
      // steps after a start ask no /proc while that very child is the pid's. Anything else (a
      // VMM found from an older daemon, a pid that went to a later child) is asked in /proc.
      if ((known.child !== undefined && childIdentity(known.pid) === known.child) || processStart(known.pid) === known.start) return known.pid;
      this.found = undefined;
    }
    const pid = await readPid(this.files.pid);
    if (pid === undefined) return undefined;
    // The pid must still be this VM's QEMU: pids are reused. Its start time (undefined when
    // gone or a zombie) is read before its command line, so a pid freed and reused between the
    // two reads is told by the command line, which would not name this VM directory.
    const start = processStart(pid);
    if (start === undefined || !processMentions(pid, this.ref.dir)) return undefined;
    this.found = { pid, start, child: childIdentity(pid) };
    return pid;
  }

  async start(l: Launch, signal: AbortSignal, log: Logger): Promise<number> {
    const args = [...qemuArgs(l, this.settings), ...(this.confine ? await this.confine.qemuArgs(l) : [])];
    log.debug({ bin: this.bin, args }, 'starting qemu');
    this.found = undefined;
    await removeFile(this.files.pid);
    // QEMU refuses to bind a socket path that exists; a killed QEMU leaves them behind.
    await removeFile(this.qmp);
    await removeFile(this.consoleInput.path);
    // The log is appended to (see qemuArgs); the last run's console and output move aside, so
    // the boot line of a guest that crashed is not taken for this run's, and the crash (QEMU's
    // stderr, which the launcher empties) stays readable.
    await rotateForStart([this.files.console, this.files.stdout, this.files.stderr]);
    await writeFile(this.files.cmdline, JSON.stringify([this.bin, ...args]) + '\n');
    // A macvtap's character device, opened by whoever starts QEMU and given as fd 3, 4, …
    const taps = l.nics.filter((n) => n.type === 'MACVTAP').map((n) => `/dev/tap${n.ifindex}`);
    const [bin, argv] = this.confine ? await this.confine.command(l, this.bin, args) : [this.bin, args];
    return await launchDetached({
      what: 'qemu',
      bin,
      args: argv,
      stdout: this.files.stdout,
      stderr: this.files.stderr,
      fdPaths: taps,
      detached: true,
      // QEMU writes its pid file before it opens its chardevs and monitors: a VM reported
      // CREATED then had no QMP socket yet, so a stop, pause or delete right after found none.
      // So the socket is looked for first (one lstat), and the pid file and /proc only once it
      // is there; inotify events of the VM directory (the pid file) and of the run directory
      // (the socket) say when to look again.
      ready: async () => (isSocket(this.qmp) ? this.running() : undefined),
      watch: [this.ref.dir, this.ref.runDir],
      // A bound on a QEMU that hangs in its start-up; on a loaded host the QMP socket has
      // come more than 5 s after the spawn.
      timeoutMs: 15_000,
      signal,
    });
  }

  async stop(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void> {
    await this.halt(opts, log);
    // Only once the VMM is gone: a cgroup with a live task cannot be removed.
    await this.confine?.release(this.ref.uid);
  }

  private async halt(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void> {
    this.found = undefined;
    const pid = await this.running();
    if (pid === undefined) return;
    const running = () => this.running();
    try {
      await qmpCommand(this.qmp, 'system_powerdown');
      if (await waitGone(running, opts.timeoutMs, opts.signal)) return;
      log.info({ timeoutMs: opts.timeoutMs }, 'guest did not power down; quitting qemu');
      await qmpCommand(this.qmp, 'quit');
      if (await waitGone(running, 2000, opts.signal)) return;
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'qmp unavailable; killing qemu');
    }
    if (opts.signal.aborted) throw new MatchlockError(ErrorCode.Canceled, 'canceled while stopping qemu');
    if ((await this.running()) === pid) process.kill(pid, 'SIGKILL');
    if (!(await waitGone(running, 5000))) throw new MatchlockError(ErrorCode.Internal, `qemu pid ${pid} survived SIGKILL`);
  }

  async setPaused(paused: boolean): Promise<void> {
    await qmpCommand(this.qmp, paused ? 'stop' : 'cont');
  }

  /**
   * Block counters from QMP `query-blockstats` (rd_bytes, wr_bytes, rd_operations,
   * wr_operations of every drive); network counters from the host side of the VM's TAP and
   * macvtap devices (QEMU 7.2 has no per-netdev counters in QMP).
   */
  async ioCounters(input: { pid: number; nics: readonly IoCountersNic[] }): Promise<VmmIoCounters> {
    const drives = (await qmpCommand(this.qmp, 'query-blockstats')) as { stats?: Record<string, unknown> }[];
    const block = { readBytes: 0, writeBytes: 0, readOps: 0, writeOps: 0 };
    for (const d of Array.isArray(drives) ? drives : []) {
      const n = (k: string) => (typeof d.stats?.[k] === 'number' ? (d.stats[k] as number) : 0);
      block.readBytes += n('rd_bytes');
      block.writeBytes += n('wr_bytes');
      block.readOps += n('rd_operations');
      block.writeOps += n('wr_operations');
    }
    return { block, net: await hostNetCounters(input.pid, input.nics) };
  }

  async powerState(): Promise<VmmPowerState | undefined> {
    if ((await this.running()) === undefined) return 'stopped';
    try {
      const r = (await qmpCommand(this.qmp, 'query-status')) as { status?: string };
      return r.status === 'paused' ? 'paused' : r.status === 'running' ? 'running' : undefined;
    } catch {
      return undefined;
    }
  }
}
