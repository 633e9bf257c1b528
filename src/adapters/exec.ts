import { execFile } from 'node:child_process';
import { ErrorCode, MatchlockError } from '../core/errors.js';

let spawned = 0;

/**
 * How many helper processes this process has started through this port since it began: each
 * spawn forks the whole daemon, so benchmarks and tests count them per operation.
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
 */
export async function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
  return await new Promise((resolve, reject) => {
    spawned++;
    const child = execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const why = code === 'ENOENT' ? `${cmd} is not installed` : (stderr.trim().split('\n').slice(-3).join(' ') || err.message);
        reject(new MatchlockError(code === 'ENOENT' ? ErrorCode.FailedPrecondition : ErrorCode.Internal, `${cmd} ${args.join(' ')}: ${why}`, { cause: err }));
        return;
      }
      resolve({ stdout, stderr });
    });
    // A program that exits without reading its input makes stdin emit EPIPE; the exit status
    // (reported above) is what matters, and an unheard 'error' event would end the process.
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}
