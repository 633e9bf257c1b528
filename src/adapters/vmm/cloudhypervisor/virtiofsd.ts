import { existsSync } from 'node:fs';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { Logger } from '../../../core/ports.js';
import { noteSpawn } from '../../exec.js';
import { launch } from '../../spawner.js';
import { pidAlive, processMentions } from '../process.js';
import { climbStopLadder, signalRung } from '../stop-ladder.js';
import { SOCKETS } from './args.js';

/** Debian 12 ships virtiofsd in qemu-system-common, outside PATH. */
export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * virtiofsd's argv for one share, in the grammar of QEMU 7.2's virtiofsd (Debian 12; see its
 * --help). It serves one VMM connection and exits when the VMM disconnects, so each VMM start
 * needs a fresh one. It has no read-only export.
 */
export function virtiofsdArgs(socket: string, hostPath: string): string[] {
  return [`--socket-path=${socket}`, '-o', `source=${hostPath}`, '-o', 'cache=auto'];
}

/** One share's virtiofsd: pid file and log in the VM dir, socket in the run dir. */
export class Virtiofsd {
  readonly socket: string;
  readonly pidFile: string;
  readonly logFile: string;

  constructor(
    private readonly bin: string,
    dir: string,
    runDir: string,
    readonly index: number,
  ) {
    this.socket = `${runDir}/${SOCKETS.share(index)}`;
    this.pidFile = `${dir}/virtiofsd-${index}.pid`;
    this.logFile = `${dir}/virtiofsd-${index}.log`;
  }

  /** The pid while this share's virtiofsd runs (the process names its socket: pids are reused). */
  async running(): Promise<number | undefined> {
    return runningFromPidFile(this.pidFile, this.socket);
  }

  /**
   * Starts it detached and resolves once its socket is listening. Called off through `signal`
   * (Canceled), or not listening within 5 s, it is killed; its pid file stays for the delete
   * steps (recordedVirtiofsds).
   */
  async start(hostPath: string, signal: AbortSignal, log: Logger): Promise<number> {
    if (!existsSync(hostPath)) throw new MatchlockError(ErrorCode.FailedPrecondition, `virtiofs source ${hostPath} does not exist on this host`);
    await rm(this.socket, { force: true });
    let early: string | undefined;
    let pid: number | undefined;
    try {
      noteSpawn();
      const child = await launch({ file: this.bin, args: virtiofsdArgs(this.socket, hostPath), setsid: true, stdout: this.logFile, stderr: this.logFile });
      void child.exit.then((e) => e && (early = `exited with ${e.code ?? e.signal}`));
      pid = child.pid;
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      early ??= err.code === 'ENOENT' && err.syscall === 'spawn' && !/^(open|chdir) /.test(err.message) ? `binary ${this.bin} not found` : err.message;
    }
    if (pid !== undefined) await writeFile(this.pidFile, `${pid}\n`);
    log.debug({ pid, socket: this.socket, hostPath }, 'virtiofsd started');
    for (let i = 0; i < 100; i++) {
      if (early !== undefined) {
        const tail = (await readFile(this.logFile, 'utf8').catch(() => '')).trim().split('\n').slice(-2).join(' ');
        throw new MatchlockError(ErrorCode.Internal, `virtiofsd for ${hostPath} ${early}: ${tail || 'no output'}`);
      }
      // Asked before the look: a start called off by the time its socket is there is canceled
      // like one called off earlier, not reported started to a pass that is over.
      if (signal.aborted) break;
      if (existsSync(this.socket) && pid !== undefined) return pid;
      await sleep(50);
    }
    // Not once its exit was reported (the pid may be another process's by now); one that ended
    // since is ESRCH, not a failure of this start.
    if (pid !== undefined && early === undefined) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
    if (signal.aborted) throw new MatchlockError(ErrorCode.Canceled, `canceled while virtiofsd for ${hostPath} was starting`);
    throw new MatchlockError(ErrorCode.Internal, `virtiofsd for ${hostPath} did not open ${this.socket}`);
  }
}

/** The pid in `pidFile` while that process lives and its command line names `mention`. */
export async function runningFromPidFile(pidFile: string, mention: string): Promise<number | undefined> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  return Number.isInteger(pid) && pid > 0 && pidAlive(pid) && processMentions(pid, mention) ? pid : undefined;
}

/** Every virtiofsd a VM dir records, running or not: what delete must stop and remove. */
export async function recordedVirtiofsds(dir: string, runDir: string): Promise<{ pidFile: string; socket: string }[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.flatMap((n) => {
    const m = /^virtiofsd-(\d+)\.pid$/.exec(n);
    return m ? [{ pidFile: `${dir}/${n}`, socket: `${runDir}/${SOCKETS.share(Number(m[1]))}` }] : [];
  });
}

/** Stops one recorded virtiofsd (SIGTERM, then SIGKILL) and removes its pid file and socket. */
export async function stopVirtiofsd(v: { pidFile: string; socket: string }, signal: AbortSignal, log: Logger): Promise<void> {
  await climbStopLadder('virtiofsd', () => runningFromPidFile(v.pidFile, v.socket), [signalRung('SIGTERM', 2000), signalRung('SIGKILL', 3000)], signal, log);
  await rm(v.pidFile, { force: true });
  await rm(v.socket, { force: true });
}
