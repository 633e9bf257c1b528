import { ErrorCode, MatchlockError } from '../core/errors.js';
import { runProgram, type RunOutcome } from './spawner.js';

let spawned = 0;

/**
 * How many programs this process has started through this port since it began (each one a
 * fork and an exec, of the spawner or of the daemon): benchmarks and tests count them per
 * operation.
 */
export function spawnCount(): number {
  return spawned;
}

/** Counts a spawn made outside `run` (a detached VMM, a daemon the launcher starts). */
export function noteSpawn(): void {
  spawned++;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs a program without a shell and resolves its output; a non-zero exit becomes an error
 * that names the command and carries its stderr, so callers never lose why a tool failed.
 * A program that is not installed is FailedPrecondition ("<cmd> is not installed"). The
 * program is started by the process spawner (spawner.ts) once the daemon started it.
 * `signal` calls the run off: the program is stopped (SIGTERM, then SIGKILL) and, once it has
 * ended, the run rejects with Canceled.
 */
export async function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; input?: string; signal?: AbortSignal } = {}): Promise<ExecResult> {
  spawned++;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const what = `${cmd} ${args.join(' ')}`;
  let r: RunOutcome;
  try {
    r = await runProgram(cmd, args, { timeoutMs, maxBytes: 64 * 1024 * 1024, ...(opts.input !== undefined ? { input: opts.input } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? `${cmd} is not installed` : (err as Error).message;
    throw new MatchlockError(code === 'ENOENT' ? ErrorCode.FailedPrecondition : ErrorCode.Internal, `${what}: ${why}`, { cause: err });
  }
  const stdout = r.stdout.toString('utf8');
  const stderr = r.stderr.toString('utf8');
  if (r.killed === 'canceled') {
    const reason = opts.signal?.reason instanceof Error ? `: ${opts.signal.reason.message}` : '';
    throw new MatchlockError(ErrorCode.Canceled, `${what}: called off${reason}`);
  }
  if (r.code === 0 && !r.killed) return { stdout, stderr };
  const ended = r.killed === 'timeout' ? `timed out after ${timeoutMs} ms` : r.killed === 'maxbuffer' ? 'wrote more than 64 MiB' : r.signal ? `killed by ${r.signal}` : `exited with ${r.code}`;
  throw new MatchlockError(ErrorCode.Internal, `${what}: ${stderr.trim().split('\n').slice(-3).join(' ') || `command failed: ${ended}`}`, { cause: Object.assign(new Error(ended), { code: r.code, signal: r.signal, killed: r.killed }) });
}
