import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../core/errors.js';
import { noteSpawn } from '../exec.js';
import { launch, type Launched } from '../spawner.js';
import { isChild, trackChild } from './children.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface DetachedLaunch {
  /** Names the VMM in errors ("qemu exited with 1: …"). */
  what: string;
  bin: string;
  args: readonly string[];
  /** Files the VMM's stdout and stderr go to; stdout is appended, stderr replaced. */
  stdout: string;
  stderr: string;
  /** Files opened read-write and handed to the VMM from fd 3 on (/dev/tapN of macvtaps). */
  fdPaths?: readonly string[];
  /** Run the VMM in its own session, so it outlives the daemon (flintlock's *-detach settings). */
  detached: boolean;
  /** Called with the child's pid right after the spawn, for VMMs that write no pid file themselves. */
  onSpawn?(pid: number): Promise<void>;
  /** Resolves the VMM's pid once it runs (its pid file written and the process alive). */
  ready(): Promise<number | undefined>;
  /**
   * Directories in which the VMM makes what `ready` looks for (its pid file, its API socket):
   * `ready` is asked again when an entry in one of them changes (inotify through fs.watch), when
   * the VMM exits, and every `recheckMs` in case an event was not seen (an inotify queue that
   * overflowed drops events). Without them (or when none can be watched) `ready` is polled
   * every 5 ms for the first second, then every 25 ms.
   */
  watch?: readonly string[];
  /** With `watch`: how often `ready` is asked without an event, in ms (default 100). */
  recheckMs?: number;
  /** How long the VMM may take to become ready, in ms. */
  timeoutMs: number;
  signal: AbortSignal;
}

/**
 * Starts a VMM process and waits until it is ready, failing early (with the tail of its stderr)
 * when it exits first. The daemon keeps no handle on the child: a restarted daemon finds the
 * VMM again from its pid file, so nothing here may depend on this process staying up.
 *
 * A start that fails after the spawn (called off through `signal`, not ready within
 * `timeoutMs`, or `onSpawn` failing) kills the process it spawned and waits for its exit
 * before it throws: a VMM that has not yet written its pid file is found by nobody else, so a
 * delete that runs next would leave it running. A start called off is canceled (ErrorCode
 * Canceled) also when its VMM became ready at that moment: once `signal` is aborted it
 * resolves no pid, whatever its last look found.
 */
export async function launchDetached(l: DetachedLaunch): Promise<number> {
  noteSpawn();
  let early: string | undefined;
  let child: Launched | undefined;
  // Watched before the spawn, so nothing the VMM makes at once is missed.
  const wake = new Wakeup(l.watch ?? [], l.signal);
  try {
    try {
      // Emptied, then appended to: the daemon truncates VMM output at its bound, and a writer
      // without O_APPEND would carry on at its old offset and leave a hole.
      child = await launch({ file: l.bin, args: l.args, setsid: l.detached, stdout: l.stdout, stderr: l.stderr, truncateStderr: true, fdPaths: l.fdPaths ?? [] });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      early = err.code === 'ENOENT' && err.syscall === 'spawn' && !/^(open|chdir) /.test(err.message) ? `binary ${l.bin} not found` : err.message;
    }
    try {
      if (child) {
        trackChild(child.pid, child.exit);
        void child.exit.then((e) => {
          if (e) early = `exited with ${e.code ?? e.signal}`;
          wake.poke();
        });
        if (l.onSpawn) await l.onSpawn(child.pid);
      }
      return await waitReady(l, () => early, wake);
    } catch (err) {
      if (child) await killSpawned(child);
      throw err;
    }
  } finally {
    wake.close();
  }
}

/**
 * What a wait for a starting VMM sleeps on: inotify events of its directories, the VMM's exit,
 * the start being called off, or a timer. An event that comes while nobody sleeps is kept, so
 * the next sleep ends at once.
 */
class Wakeup {
  private readonly watchers: FSWatcher[] = [];
  private wakeNow: (() => void) | undefined;
  private pending = false;
  private readonly onAbort = () => this.poke();

  constructor(
    dirs: readonly string[],
    private readonly signal: AbortSignal,
  ) {
    for (const d of dirs) {
      try {
        const w = watch(d, { persistent: false }, () => this.poke());
        // A watch that fails later (its directory removed) leaves the timer.
        w.on('error', () => undefined);
        this.watchers.push(w);
      } catch {
        // Not there, or no inotify watch left: the timer alone.
      }
    }
    signal.addEventListener('abort', this.onAbort, { once: true });
  }

  get watching(): boolean {
    return this.watchers.length > 0;
  }

  poke(): void {
    const w = this.wakeNow;
    this.wakeNow = undefined;
    if (w) w();
    else this.pending = true;
  }

  /** Forgets the events seen so far: called before each look, which sees what they reported. */
  clear(): void {
    this.pending = false;
  }

  sleep(ms: number): Promise<void> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.wakeNow = undefined;
        resolve();
      }, ms);
      this.wakeNow = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  close(): void {
    for (const w of this.watchers) w.close();
    this.watchers.length = 0;
    this.signal.removeEventListener('abort', this.onAbort);
    this.poke();
  }
}

async function waitReady(l: DetachedLaunch, early: () => string | undefined, wake: Wakeup): Promise<number> {
  const until = Date.now() + l.timeoutMs;
  for (let polls = 0; ; polls++) {
    // A VMM writes its pid file within milliseconds and every ms here is create latency: with
    // its directories watched an event wakes this at once; without, the first second is polled
    // every 5 ms, then every 25 ms.
    const wait = wake.watching ? (l.recheckMs ?? 100) : polls < 200 ? 5 : 25;
    wake.clear();
    const exited = early();
    if (exited !== undefined) {
      const tail = (await readFile(l.stderr, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' ');
      throw new MatchlockError(ErrorCode.Internal, `${l.what} ${exited}: ${tail || 'no output'}`);
    }
    const pid = await l.ready();
    // Asked after the look, whatever it found: a start called off while the look found its
    // VMM ready is canceled, and the VMM killed, as when called off a moment earlier. The pass
    // that started it is over: nothing would supervise that VMM.
    if (l.signal.aborted) throw new MatchlockError(ErrorCode.Canceled, `canceled while ${l.what} was starting`);
    if (pid !== undefined) return pid;
    if (Date.now() > until) throw new MatchlockError(ErrorCode.Internal, `${l.what} was not ready within ${l.timeoutMs} ms`);
    await wake.sleep(Math.min(wait, Math.max(1, until - Date.now() + 1)));
  }
}

/**
 * SIGKILL to a child this launch spawned, then its exit, waited for up to 5 s (a process in
 * uninterruptible sleep must not hold the pass forever). The pid is signalled only while its
 * exit has not been reported: until the child is reaped its pid cannot belong to another
 * process. A child whose end can no longer be seen (its spawner died) is left alone.
 */
async function killSpawned(child: Launched): Promise<void> {
  if (!isChild(child.pid)) return;
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([child.exit, new Promise<void>((r) => (timer = setTimeout(r, 5000)))]);
  clearTimeout(timer);
}

/** Polls `running` until it reports no pid, for up to `ms`; true when the VMM is gone. */
export async function waitGone(running: () => Promise<number | undefined>, ms: number, signal?: AbortSignal): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if ((await running()) === undefined) return true;
    if (signal?.aborted) return false;
    await sleep(50);
  }
  return (await running()) === undefined;
}
