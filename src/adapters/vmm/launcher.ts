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
 * delete that runs next would leave it running.
 */
export async function launchDetached(l: DetachedLaunch): Promise<number> {
  noteSpawn();
  let early: string | undefined;
  let child: Launched | undefined;
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
      void child.exit.then((e) => e && (early = `exited with ${e.code ?? e.signal}`));
      if (l.onSpawn) await l.onSpawn(child.pid);
    }
    return await waitReady(l, () => early);
  } catch (err) {
    if (child) await killSpawned(child);
    throw err;
  }
}

async function waitReady(l: DetachedLaunch, early: () => string | undefined): Promise<number> {
  const until = Date.now() + l.timeoutMs;
  // A VMM writes its pid file within milliseconds and every ms here is create latency, so the
  // first second is polled every 5 ms (a file read and a kill(0) each), then every 25 ms.
  for (let polls = 0; ; polls++) {
    const wait = polls < 200 ? 5 : 25;
    const exited = early();
    if (exited !== undefined) {
      const tail = (await readFile(l.stderr, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' ');
      throw new MatchlockError(ErrorCode.Internal, `${l.what} ${exited}: ${tail || 'no output'}`);
    }
    const pid = await l.ready();
    if (pid !== undefined) return pid;
    if (l.signal.aborted) throw new MatchlockError(ErrorCode.Canceled, `canceled while ${l.what} was starting`);
    if (Date.now() > until) throw new MatchlockError(ErrorCode.Internal, `${l.what} was not ready within ${l.timeoutMs} ms`);
    await sleep(wait);
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
