import { ErrorCode, MatchlockError } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';
import { waitGone } from './launcher.js';


/** One way of asking a process to end, and how long to give it before the next, harder one. */
export interface Rung {
  name: string;
  /** Asks; a rejection (an API that no longer answers) moves on to the next rung at once. */
  ask(pid: number): Promise<void>;
  waitMs: number;
}

/** A signal to the pid, as the last rungs of every ladder. */
export function signalRung(sig: 'SIGTERM' | 'SIGKILL', waitMs: number): Rung {
  return {
    name: sig,
    ask: async (pid) => {
      try {
        process.kill(pid, sig);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    },
    waitMs,
  };
}

/**
 * Stops a process by climbing `rungs` (gentlest first) until `running` reports it gone. Each rung
 * re-reads the pid, so a process that exits on its own is never signalled, and a reused pid is
 * never touched (`running` checks that it is still the same process). Throws when it survives
 * the last rung, or when `signal` aborts between rungs.
 */
export async function climbStopLadder(what: string, running: () => Promise<number | undefined>, rungs: readonly Rung[], signal: AbortSignal, log: Logger): Promise<void> {
  for (const rung of rungs) {
    const pid = await running();
    if (pid === undefined) return;
    if (signal.aborted) throw new MatchlockError(ErrorCode.Canceled, `canceled while stopping ${what}`);
    try {
      await rung.ask(pid);
    } catch (err) {
      log.info({ pid, rung: rung.name, err: (err as Error).message }, `${what}: ${rung.name} failed; trying the next way`);
      continue;
    }
    if (await waitGone(running, rung.waitMs, signal)) return;
    log.info({ pid, rung: rung.name, waitedMs: rung.waitMs }, `${what} still running after ${rung.name}`);
  }
  const pid = await running();
  if (pid !== undefined) throw new MatchlockError(ErrorCode.Internal, `${what} pid ${pid} survived ${rungs.map((r) => r.name).join(', ')}`);
}
