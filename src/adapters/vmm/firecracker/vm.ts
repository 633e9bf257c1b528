import { noteSpawn } from '../../exec.js';
import { launch, runProgram } from '../../spawner.js';
import { trackChild } from '../children.js';
import { chmod, chown, link, mkdir, open, symlink, readFile, rm, rmdir, stat, statfs, writeFile, rename } from 'node:fs/promises';
import { basename } from 'node:path';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { Logger } from '../../../core/ports.js';
import type { VmmIoCounters } from '../../../core/vmm.js';
import { rotateForStart } from '../console.js';
import { argvOf, livePidsWhere, pidAlive } from '../process.js';
import { unixHttp } from '../unix-http.js';
import { ensureVmlinux } from './kernel.js';
import { FILES, SOCKETS, filePath, firecrackerArgs, firecrackerConfig, mmdsMetadata, socketPath, type FirecrackerLaunch, type FirecrackerPaths } from './config.js';
import { UidPool } from '../confine/uids.js';
import { jailPlan, jailRoot, jailUidRange, type JailerSettings, type JailPlan } from './jailer.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The files Firecracker (and the spawner, for its stdout and stderr) writes during one run. */
const RUN_FILES = ['stdout', 'stderr', 'log', 'metrics'] as const;

/** SIGKILL to `pid`; one that ended meanwhile (ESRCH) is what was wanted. */
function signalGone(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

/** What abortedPromise resolves with. */
const CALLED_OFF = 'was called off';

/** Resolves with CALLED_OFF once `signal` aborts (never without one); dispose() drops the listener. */
function abortedPromise(signal: AbortSignal | undefined): { promise: Promise<string>; dispose(): void } {
  if (!signal) return { promise: new Promise<string>(() => undefined), dispose: () => undefined };
  let onAbort = () => undefined as void;
  const promise = new Promise<string>((resolve) => {
    onAbort = () => resolve(CALLED_OFF);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  return { promise, dispose: () => signal.removeEventListener('abort', onAbort) };
}

/** What a start called off through its signal throws (the launcher's form, launcher.ts). */
const canceledStart = () => new MatchlockError(ErrorCode.Canceled, 'canceled while firecracker was starting');

/** statfs f_type of cgroup v2 (linux/magic.h). */
const CGROUP2_SUPER_MAGIC = 0x63677270;

export interface FirecrackerVmOptions {
  /** The firecracker binary (name on PATH or path). */
  bin: string;
  /** Start in its own session (setsid) so the VM outlives the daemon (firecracker-detach). */
  detach: boolean;
  /** How long the API gets to answer `GET /` after spawn (ms). */
  readyTimeoutMs?: number;
  /** After SIGTERM, how long before SIGKILL (ms). */
  termTimeoutMs?: number;
  /**
   * Run through the jailer; `cgroupRoot` is the cgroup v2 mount the jailer writes under,
   * `claimsDir` where each VM's uid/gid claim is kept (`<state-dir>/vmm-uids`, shared with
   * vmm-uid-range so no two VMMs of any provider share a uid).
   */
  jailer?: (JailerSettings & { cgroupRoot: string; claimsDir: string }) | undefined;
}

/** Counters from the last metrics line, flattened to `group.counter`, with its timestamp. */
export interface FirecrackerMetrics {
  utcTimestampMs: number;
  counters: Record<string, number>;
}

/**
 * One VM's Firecracker process: its files, start, the running check, the stop ladder,
 * pause/resume and metrics. Plain inputs (a launch, a logger), no daemon types, so the
 * provider seam wraps it without change.
 */
export class FirecrackerVm {
  private readonly readyTimeoutMs: number;
  private readonly termTimeoutMs: number;

  /** Paths as Firecracker sees them: the host's, or the jail's (relative to its root). */
  private readonly fcPaths: FirecrackerPaths;
  /** The jail root on the host, with the jailer. */
  readonly jail: string | undefined;
  /** Where the VM's own uid/gid under the jailer is claimed. */
  private readonly uids: UidPool | undefined;

  constructor(
    readonly uid: string,
    readonly paths: FirecrackerPaths,
    private readonly o: FirecrackerVmOptions,
  ) {
    this.readyTimeoutMs = o.readyTimeoutMs ?? 10_000;
    this.termTimeoutMs = o.termTimeoutMs ?? 3000;
    this.jail = o.jailer ? jailRoot(uid, o.jailer, o.bin) : undefined;
    this.uids = o.jailer ? new UidPool(o.jailer.claimsDir, jailUidRange(o.jailer), 'firecracker-jailer-uid-base') : undefined;
    this.fcPaths = o.jailer ? { dir: '', runDir: '/run' } : paths;
  }

  file(f: keyof typeof FILES): string {
    return filePath(this.paths, f);
  }

  /**
   * A socket as the host reaches it. With the jailer the socket lives deep inside the jail, past
   * the 107-byte unix socket limit; the host reaches it through a symlink of the same name in the
   * VM's run directory (connect() follows it), made before the VMM starts.
   */
  socket(s: keyof typeof SOCKETS): string {
    return this.jail ? socketPath(this.paths, s) : socketPath(this.fcPaths, s);
  }

  /** Where a jailed Firecracker binds a socket, as a host path. */
  private jailSocket(s: keyof typeof SOCKETS): string {
    return `${this.jail ?? ''}${socketPath(this.fcPaths, s)}`;
  }

  /** The guest's serial console (Firecracker writes it to its stdout). */
  get consolePath(): string {
    return this.file('stdout');
  }

  /**
   * The pid of this VM's Firecracker, or undefined. It must be alive and its command line must
   * name this VM's config file (pids are reused). A live Firecracker whose pid file is missing
   * (the daemon died between spawn and writing it) is found by its command line and adopted.
   */
  async running(): Promise<number | undefined> {
    const cfg = filePath(this.fcPaths, 'config');
    const pid = Number((await readFile(this.file('pid'), 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid) && this.isOurs(argvOf(pid), cfg)) return pid;
    const [other] = livePidsWhere((argv) => this.isOurs(argv, cfg));
    if (other !== undefined) await this.writePid(other);
    return other;
  }

  private isOurs(argv: string[] | undefined, cfg: string): boolean {
    const at = argv?.indexOf('--config-file') ?? -1;
    return at >= 0 && argv?.[at + 1] === cfg && (argv.includes(this.uid) || argv.includes(`--id=${this.uid}`));
  }

  // Not fsync'd: after a power cut no Firecracker is left, and `running` trusts a pid only when
  // /proc shows that process with this VM's config; an empty or torn file reads as no pid.
  private async writePid(pid: number): Promise<void> {
    await writeFile(`${this.file('pid')}.tmp`, `${pid}\n`);
    await rename(`${this.file('pid')}.tmp`, this.file('pid'));
  }

  /**
   * Writes metadata.json and firecracker.cfg, creates the log and metrics files (Firecracker
   * opens them without creating parent directories) and removes stale sockets: Firecracker
   * refuses to bind an existing path and never removes its sockets itself.
   */
  async prepare(l: FirecrackerLaunch): Promise<JailPlan | undefined> {
    await mkdir(this.paths.dir, { recursive: true });
    await mkdir(this.paths.runDir, { recursive: true, mode: 0o700 });
    // Firecracker loads only an ELF vmlinux: a bzImage is unpacked once into the VM directory.
    const launch = { ...l, kernelPath: await ensureVmlinux(l.kernelPath, this.file('vmlinux')) };
    // The VM's uid/gid is claimed once and kept until it is deleted: the same one on every
    // start (the jail's files are owned by it) and after a daemon restart (the claim is a file).
    const plan = this.o.jailer && this.uids ? jailPlan(launch, this.o.jailer, this.o.bin, await this.uids.claim(this.uid)) : undefined;
    const config = plan ? firecrackerConfig(plan.launch, plan.paths) : firecrackerConfig(launch, this.paths);
    await writeFile(this.file('metadata'), JSON.stringify(mmdsMetadata(l.metadata)) + '\n');
    await writeFile(this.file('config'), JSON.stringify(config, null, 2) + '\n');
    for (const f of RUN_FILES) await writeFile(this.file(f), '', { flag: 'a' });
    if (plan) await this.buildJail(plan, launch);
    await this.removeSockets();
    if (this.jail) {
      await mkdir(this.paths.runDir, { recursive: true, mode: 0o700 });
      for (const s of Object.keys(SOCKETS) as (keyof typeof SOCKETS)[]) await symlink(this.jailSocket(s), this.socket(s));
    }
    return plan;
  }

  /**
   * The jail's files: each hard-linked in (the jail cannot see outside its root), and what
   * Firecracker writes (log, metrics, read-write drives, its socket directory) owned by the
   * VM's own uid/gid. Hard links need the chroot base on the same filesystem as the state dir.
   */
  private async buildJail(plan: JailPlan, l: FirecrackerLaunch): Promise<void> {
    await mkdir(`${plan.root}/run`, { recursive: true });
    await chown(`${plan.root}/run`, plan.id, plan.id);

    const writable = new Set([this.file('log'), this.file('metrics'), ...l.disks.filter((d) => !d.readOnly).map((d) => d.path)]);
    // What the VMM only reads and that is this VM's alone (its config, metadata, unpacked kernel,
    // read-only drives) goes to the VM's group: the daemon's umask keeps such files from others,
    // and the jailed uid is not root.
    const ownReadOnly = (p: string) => p.startsWith(`${this.paths.dir}/`) || l.disks.some((d) => d.path === p);
    for (const { host, jail } of plan.links) {
      const target = `${plan.root}${jail}`;
      const [a, b] = await Promise.all([stat(host), stat(target).catch(() => undefined)]);
      if (!b || a.ino !== b.ino || a.dev !== b.dev) {
        await rm(target, { force: true });
        await link(host, target).catch((e: NodeJS.ErrnoException) => {
          throw new MatchlockError(ErrorCode.FailedPrecondition, `jailer: cannot hard-link ${host} into ${plan.root}: ${e.code === 'EXDEV' ? 'the chroot base must be on the same filesystem as the state dir' : e.message}`);
        });
      }
      if (writable.has(host)) await chown(host, plan.id, plan.id);
      else if (ownReadOnly(host)) {
        await chown(host, 0, plan.id);
        await chmod(host, ((await stat(host)).mode & 0o7777) | 0o040);
      }
    }
  }

  /** Removes the jail (`<chroot-base>/<exec>/<uid>`) and its cgroup; both may be absent. */
  async removeJail(): Promise<void> {
    const j = this.o.jailer;
    if (!j || !this.jail) return;
    await rm(this.jail.replace(/\/root$/, ''), { recursive: true, force: true });
    const cg = `${j.cgroupRoot}/${j.parentCgroup}/${this.uid}`;
    const procs = await readFile(`${cg}/cgroup.procs`, 'utf8').catch(() => '');
    if (procs.trim() !== '' && procs.trim().split('\n').some((p) => pidAlive(Number(p)))) {
      throw new MatchlockError(ErrorCode.Internal, `cgroup ${j.parentCgroup}/${this.uid} still has processes: ${procs.trim().replaceAll('\n', ' ')}`);
    }
    // On cgroupfs a cgroup goes with rmdir (its files are virtual); a tree that only stands
    // in for cgroupfs (statfs type not CGROUP2_SUPER_MAGIC) is removed with its files.
    const isCgroupFs = await statfs(j.cgroupRoot).then((f) => f.type === CGROUP2_SUPER_MAGIC, () => false);
    await (isCgroupFs ? rmdir(cg) : rm(cg, { recursive: true })).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw new MatchlockError(ErrorCode.Internal, `cannot remove cgroup ${j.parentCgroup}/${this.uid}: ${e.message}`);
    });
  }

  /** The VM's own unprivileged uid/gid under the jailer, once claimed; undefined without the jailer or a claim. */
  async jailUid(): Promise<number | undefined> {
    return this.uids?.uidOf(this.uid);
  }

  async removeSockets(): Promise<void> {
    for (const s of Object.keys(SOCKETS) as (keyof typeof SOCKETS)[]) {
      await rm(this.socket(s), { force: true });
      if (this.jail) await rm(this.jailSocket(s), { force: true });
    }
  }

  /**
   * Starts Firecracker with the files `prepare` wrote, writes firecracker.pid and waits until
   * the API answers `GET /` with the VM running. On an early exit or a timeout the error
   * carries Firecracker's own message (which names the config field) and no process is left;
   * nor when `signal` aborts (Canceled), also when the VM was answered running at that moment.
   */
  async start(l: FirecrackerLaunch, log: Logger, signal?: AbortSignal): Promise<number> {
    // Each start gets empty files, the last run's kept as `.1` (rotateForStart says why);
    // prepare then makes the new log and metrics files and links them into the jail.
    await rotateForStart(RUN_FILES.map((f) => this.file(f)));
    // The sums and read offset of the last run's metrics file are not this run's.
    METRIC_TOTALS.forget(this.file('metrics'));
    const plan = await this.prepare(l);
    const bin = plan && this.o.jailer ? this.o.jailer.bin : this.o.bin;
    const args = plan ? plan.argv : firecrackerArgs(l, this.paths);
    log.debug({ bin, args }, 'starting firecracker');
    await rm(this.file('pid'), { force: true });
    // The pid file in the jail is read after the jailer exits, and when a jailer is ended, to
    // find what it started: one left by an earlier start would name a pid since reused.
    const jailPidFile = plan ? `${plan.root}/${basename(this.o.bin)}.pid` : undefined;
    if (jailPidFile) await rm(jailPidFile, { force: true });
    let pid: number | undefined;
    let settled = false;
    try {
      noteSpawn();
      // stderr is emptied, then appended to, so the daemon's truncation at the log bound leaves
      // no hole (see launchDetached).
      const started = launch({ file: bin, args, setsid: this.o.detach, stdout: this.file('stdout'), stderr: this.file('stderr'), truncateStderr: true, cwd: this.paths.dir });
      const child = await started.catch(() => undefined);
      const spawnError = started.then(() => new Promise<string>(() => undefined), (e: Error) => `could not be started: ${e.message}`);
      const neverExits = new Promise<string>(() => undefined);
      let exited = child ? child.exit.then((e) => (e ? (e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`) : neverExits)) : neverExits;
      // Without the jailer the child is Firecracker itself; the jailer's child exits at once.
      if (!plan && child) trackChild(child.pid, child.exit);
      pid = child?.pid;
      const deadline = Date.now() + this.readyTimeoutMs;
      if (plan && jailPidFile) {
        // With --new-pid-ns the jailer forks Firecracker, writes its pid into the jail and exits.
        let jailerExited = false;
        void exited.then(() => (jailerExited = true));
        const calledOff = abortedPromise(signal);
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('did not exit'), this.readyTimeoutMs)));
        const done = await Promise.race([exited, spawnError, calledOff.promise, timedOut]);
        clearTimeout(timer);
        calledOff.dispose();
        if (done !== 'exited with code 0') {
          // A jailer called off, timed out or failed may have forked Firecracker already.
          const left = child ? await this.endJailer(child, () => jailerExited, plan, jailPidFile, log) : [];
          pid = undefined;
          if (done === CALLED_OFF) throw canceledStart();
          throw new MatchlockError(ErrorCode.Internal, `jailer ${done}: ${await this.failureReason()}${left.length > 0 ? ` (pids ${left.join(', ')} it started survived SIGKILL)` : ''}`);
        }
        pid = Number((await readFile(jailPidFile, 'utf8').catch(() => '')).trim()) || undefined;
        if (pid === undefined) throw new MatchlockError(ErrorCode.Internal, `jailer exited without writing ${jailPidFile}`);
        const fcPid = pid;
        exited = (async () => {
          while (pidAlive(fcPid) && !settled) await sleep(100);
          return settled ? new Promise<string>(() => undefined) : `exited (pid ${fcPid})`;
        })();
      }
      if (pid !== undefined) await this.writePid(pid);
      // Polled from 5 ms on, doubling to 100 ms: the API socket answers within milliseconds.
      for (let wait = 5; ; wait = Math.min(wait * 2, 100)) {
        const early = await Promise.race([exited, spawnError, sleep(wait).then(() => undefined)]);
        if (early !== undefined) throw new MatchlockError(ErrorCode.Internal, `firecracker ${early}: ${await this.failureReason()}`);
        if (signal?.aborted) throw canceledStart();
        const info = await unixHttp(this.socket('api'), 'GET', '/', undefined, 1000).catch(() => undefined);
        // Asked again after the look, whatever it found: a start called off while GET / was
        // answered is canceled, and its VMM stopped below, as when called off a moment earlier.
        if (signal?.aborted) throw canceledStart();
        const state = (info?.body as { state?: string } | undefined)?.state;
        if (info?.status === 200 && (state === 'Running' || state === 'Paused')) return pid ?? 0;
        if (Date.now() > deadline) {
          throw new MatchlockError(ErrorCode.Internal, `firecracker API on ${this.socket('api')} did not answer GET / with a running VM within ${this.readyTimeoutMs} ms${info ? ` (last answer ${info.status} ${info.text})` : ''}`);
        }
      }
    } catch (e) {
      // Nothing half-made: a VMM that did not come up is stopped and its sockets removed.
      if (pid !== undefined && pidAlive(pid)) {
        process.kill(pid, 'SIGKILL');
        await this.waitGone(pid, 2000);
      }
      await rm(this.file('pid'), { force: true });
      await this.removeSockets();
      throw e;
    } finally {
      settled = true;
    }
  }

  /**
   * Ends a jailer that did not exit on its own (its wait called off or timed out), and what a
   * jailer that ended or failed started. The jailer is this daemon's child: after SIGKILL it
   * forks nothing more; one whose exit was reported (`hasExited`) is not signalled. It joins the
   * VM's cgroup (`<parent-cgroup>/<uid>`) before it forks Firecracker, so a Firecracker it forked
   * is found there even before its pid is written into the jail (docs/jailer.md); the pid file
   * is read too. Only processes whose command line names this VM's id (`--id`, the jailer's and
   * Firecracker's) are killed: a pid read from a file may have been reused. Returns the pids
   * that outlived SIGKILL (a process stuck in the kernel); the VM's cgroup, which removeJail
   * refuses to remove while they live, keeps them known to the next pass.
   */
  private async endJailer(jailer: { pid: number; exit: Promise<unknown> }, hasExited: () => boolean, plan: JailPlan, pidFile: string, log: Logger): Promise<number[]> {
    // A jailer whose exit was reported is reaped: its pid may be another process's by now.
    if (!hasExited()) {
      signalGone(jailer.pid);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([jailer.exit, new Promise((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
    }
    const listed = [
      await readFile(pidFile, 'utf8').catch(() => ''),
      this.o.jailer ? await readFile(`${this.o.jailer.cgroupRoot}/${plan.cgroup}/cgroup.procs`, 'utf8').catch(() => '') : '',
    ].join('\n');
    const pids = new Set(listed.split(/\s+/).map(Number).filter((p) => Number.isInteger(p) && p > 0 && p !== jailer.pid && p !== process.pid));
    const started = [...pids].filter((p) => this.namesThisVm(p) && pidAlive(p));
    for (const p of started) signalGone(p);
    const left: number[] = [];
    for (const p of started) if (!(await this.waitGone(p, 2000))) left.push(p);
    if (started.length > 0) log.info({ jailer: jailer.pid, killed: started.filter((p) => !left.includes(p)), left }, 'jailer ended before it exited: killed what it started');
    return left;
  }

  /** Whether a process's command line gives this VM's id (`--id <uid>` or `--id=<uid>`). */
  private namesThisVm(pid: number): boolean {
    const argv = argvOf(pid) ?? [];
    return argv.includes(`--id=${this.uid}`) || argv.some((a, i) => a === this.uid && argv[i - 1] === '--id');
  }

  /** Firecracker's reason for failing: its "Failed to build MicroVM" line, else the stderr tail. */
  async failureReason(): Promise<string> {
    // Before its logger is configured Firecracker logs to stdout, which is also the console.
    const read = (f: keyof typeof FILES) => readFile(this.file(f), 'utf8').catch(() => '');
    const text = `${await read('log')}\n${await read('stdout')}\n${await read('stderr')}`;
    const built = /Failed to build MicroVM from Json: (.*)$/m.exec(text);
    // Firecracker reports the --metadata file's errors (unreadable, not JSON, over the MMDS size
    // limit) as "MMDS error: …" through the same line as the config file's (main.rs, v1.11.0
    // and v1.16.1 build both into one VmResources).
    if (built?.[1]) return `${built[1]} (in ${/^MMDS error\b/.test(built[1]) ? FILES.metadata : FILES.config})`;
    const socket = /(Failed to open the API socket at: .*)$/m.exec(text);
    if (socket?.[1]) return socket[1];
    const lines = text.split('\n').map((s) => s.trim()).filter((s) => s !== '');
    return lines.slice(-3).join(' ') || 'no output';
  }

  private async waitGone(pid: number, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (!pidAlive(pid)) return true;
      await sleep(50);
    }
    return !pidAlive(pid);
  }

  /**
   * The stop ladder: Ctrl+Alt+Del through the API (the guest reboots and Firecracker exits with
   * reboot=k), wait `timeoutMs`; SIGTERM, wait; SIGKILL. Sockets are removed afterwards.
   * SIGHUP (flintlock's choice) is not used: Firecracker handles it by exiting without giving
   * the guest any chance to shut down, like SIGTERM but with a metrics flush.
   */
  async stop(opts: { timeoutMs: number; signal?: AbortSignal }, log: Logger): Promise<void> {
    const pid = await this.running();
    if (pid !== undefined) {
      // A paused guest's vCPUs cannot see the key press: it is resumed first.
      if ((await this.state().catch(() => '')) === 'Paused') await this.resume().catch((e: Error) => log.info({ pid, err: e.message }, 'could not resume the paused guest before Ctrl+Alt+Del'));
      const cad = await unixHttp(this.socket('api'), 'PUT', '/actions', { action_type: 'SendCtrlAltDel' }, 2000).catch((e: Error) => ({ status: 0, text: e.message }));
      if (cad.status === 204) {
        if (await this.waitGone(pid, opts.timeoutMs)) return this.finish(log);
        log.info({ pid, timeoutMs: opts.timeoutMs }, 'guest did not react to Ctrl+Alt+Del; sending SIGTERM');
      } else {
        log.info({ pid, answer: cad.text }, 'Ctrl+Alt+Del refused; sending SIGTERM');
      }
      if (!opts.signal?.aborted && pidAlive(pid)) {
        process.kill(pid, 'SIGTERM');
        if (await this.waitGone(pid, this.termTimeoutMs)) return this.finish(log);
      }
      log.warn({ pid }, 'firecracker survived SIGTERM; sending SIGKILL');
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      if (!(await this.waitGone(pid, 5000))) throw new MatchlockError(ErrorCode.Internal, `firecracker pid ${pid} survived SIGKILL`);
    }
    await this.finish(log);
  }

  /**
   * After the VM is stopped for good: its sockets, jail and cgroup, then its uid/gid, given
   * back only once nothing of the jail (files owned by it, a process in its cgroup) is left.
   */
  async cleanup(): Promise<void> {
    await this.removeSockets();
    await this.removeJail();
    await this.uids?.release(this.uid);
  }

  private async finish(log: Logger): Promise<void> {
    METRIC_TOTALS.forget(this.file('metrics'));
    await rm(this.file('pid'), { force: true });
    await this.removeSockets();
    log.debug({ uid: this.uid }, 'firecracker stopped');
  }

  /** PATCH /vm: Paused or Resumed. Firecracker's fault_message is the error text. */
  async setState(state: 'Paused' | 'Resumed'): Promise<void> {
    const r = await unixHttp(this.socket('api'), 'PATCH', '/vm', { state });
    if (r.status !== 204) throw new MatchlockError(ErrorCode.FailedPrecondition, `firecracker refused ${state}: ${faultMessage(r.body, r.text)}`);
  }

  pause(): Promise<void> {
    return this.setState('Paused');
  }

  resume(): Promise<void> {
    return this.setState('Resumed');
  }

  /** GET /: `Not started`, `Running` or `Paused`. */
  async state(): Promise<string> {
    const r = await unixHttp(this.socket('api'), 'GET', '/');
    return String((r.body as { state?: unknown } | undefined)?.state ?? '');
  }

  /** Asks Firecracker to append a metrics line now (PUT /actions FlushMetrics). */
  async flushMetrics(): Promise<void> {
    const r = await unixHttp(this.socket('api'), 'PUT', '/actions', { action_type: 'FlushMetrics' });
    if (r.status !== 204) throw new MatchlockError(ErrorCode.FailedPrecondition, `firecracker refused FlushMetrics: ${faultMessage(r.body, r.text)}`);
  }

  /** The last complete line of firecracker.metrics, or undefined when there is none yet. */
  async metrics(): Promise<FirecrackerMetrics | undefined> {
    return parseMetrics(await readFile(this.file('metrics'), 'utf8').catch(() => ''));
  }

  /**
   * Cumulative block and network counters: the deltas of every line summed. A flush comes first
   * when the last one asked for here is a minute old, so figures are at most a minute old while
   * the file grows at most one line a minute faster than with Firecracker's own 60 s flushes,
   * however often it is scraped. A refused flush leaves the last periodic one.
   */
  async ioCounters(): Promise<VmmIoCounters> {
    const path = this.file('metrics');
    if (METRIC_TOTALS.flushDue(path)) await this.flushMetrics().catch(() => undefined);
    const t = await METRIC_TOTALS.read(path);
    const n = (k: string) => t[k] ?? 0;
    return {
      block: { readBytes: n('block.read_bytes'), writeBytes: n('block.write_bytes'), readOps: n('block.read_count'), writeOps: n('block.write_count') },
      net: { rxBytes: n('net.rx_bytes_count'), txBytes: n('net.tx_bytes_count'), rxPackets: n('net.rx_packets_count'), txPackets: n('net.tx_packets_count') },
    };
  }

  /** The guest boot time Firecracker logged (ms), when the guest wrote the boot-timer marker. */
  async bootTimeMs(): Promise<number | undefined> {
    return parseBootTime(await readFile(this.file('log'), 'utf8').catch(() => ''));
  }
}

function faultMessage(body: unknown, text: string): string {
  const m = (body as { fault_message?: unknown } | undefined)?.fault_message;
  return typeof m === 'string' ? m : text;
}

/**
 * Sums of every counter of a Firecracker metrics file, whose lines are deltas since the previous
 * flush (`block` and `net` are the sums over the devices). Each file's sums and read position
 * are kept, so a scrape reads only the lines added since the last one; a file that was replaced
 * or shrank is read again from its start.
 */
export class MetricTotals {
  private readonly files = new Map<string, { ino: number; offset: number; sums: Record<string, number> }>();
  private readonly flushed = new Map<string, number>();

  constructor(private readonly flushEveryMs = 60_000) {}

  /** True, and noted, when the file's last flush asked for here is `flushEveryMs` old or there was none. */
  flushDue(path: string, now = Date.now()): boolean {
    const last = this.flushed.get(path);
    if (last !== undefined && now - last < this.flushEveryMs) return false;
    this.flushed.set(path, now);
    return true;
  }

  async read(path: string): Promise<Record<string, number>> {
    const st = await stat(path).catch(() => undefined);
    if (!st) {
      this.files.delete(path);
      return {};
    }
    let cur = this.files.get(path);
    if (!cur || cur.ino !== st.ino || st.size < cur.offset) cur = { ino: st.ino, offset: 0, sums: {} };
    if (st.size > cur.offset) {
      const fh = await open(path, 'r');
      try {
        const buf = Buffer.alloc(st.size - cur.offset);
        const { bytesRead } = await fh.read(buf, 0, buf.length, cur.offset);
        const text = buf.subarray(0, bytesRead).toString('utf8');
        // Only complete lines: one being written is read next time.
        const end = text.lastIndexOf('\n') + 1;
        for (const line of text.slice(0, end).split('\n')) {
          const m = line.trim() ? parseMetrics(line) : undefined;
          for (const [k, v] of Object.entries(m?.counters ?? {})) cur.sums[k] = (cur.sums[k] ?? 0) + v;
        }
        cur.offset += Buffer.byteLength(text.slice(0, end));
      } finally {
        await fh.close();
      }
    }
    this.files.set(path, cur);
    return { ...cur.sums };
  }

  /** Forgets a file (its VM is gone). */
  forget(path: string): void {
    this.files.delete(path);
    this.flushed.delete(path);
  }
}

const METRIC_TOTALS = new MetricTotals();

/**
 * Firecracker's metrics file holds one JSON object per line, each with deltas since the
 * previous flush; the last complete line is the current figure (flintlock reads the same).
 * Nested groups are flattened to `group.counter`; values that are not numbers are skipped.
 */
export function parseMetrics(text: string): FirecrackerMetrics | undefined {
  const lines = text.split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]?.trim();
    if (!line) continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      continue; // a line being written
    }
    if (obj === null || typeof obj !== 'object') continue;
    const counters: Record<string, number> = {};
    const walk = (prefix: string, v: unknown) => {
      if (typeof v === 'number') counters[prefix] = v;
      else if (v !== null && typeof v === 'object' && !Array.isArray(v)) for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
    };
    const { utc_timestamp_ms: ts, ...rest } = obj as Record<string, unknown>;
    walk('', rest);
    return { utcTimestampMs: typeof ts === 'number' ? ts : 0, counters };
  }
  return undefined;
}

/** `Guest-boot-time = <us> us <ms> ms, …` (vmm/src/devices/pseudo/boot_timer.rs) -> ms. */
export function parseBootTime(log: string): number | undefined {
  const m = /Guest-boot-time = +(\d+) us (\d+) ms/.exec(log);
  return m?.[1] ? Number(m[1]) / 1000 : undefined;
}

/** `firecracker --version` -> `1.16.1`. */
export async function firecrackerVersion(bin: string): Promise<string> {
  const r = await runProgram(bin, ['--version'], { timeoutMs: 10_000, maxBytes: 1024 * 1024 });
  if (r.code !== 0) throw new Error(`${bin} --version exited with ${r.code ?? r.signal}`);
  const out = r.stdout.toString();
  const m = /Firecracker v(\S+)/.exec(out);
  if (!m?.[1]) throw new Error(`${bin} --version printed no Firecracker version: ${out.trim()}`);
  return m[1];
}
