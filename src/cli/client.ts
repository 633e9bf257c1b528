import { ErrorCode, MatchlockError } from '../core/errors.js';

export { connect, type ConnectOptions } from '../adapters/api/client.js';

/** Exit codes scripts can rely on; the README lists them. */
export const EXIT = { ok: 0, error: 1, usage: 2, notFound: 3, unauthenticated: 4, unavailable: 5, precondition: 6, timeout: 7, failed: 8 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/**
 * The one mapping between matchlock error codes and exit codes. `watch` ends with
 * DeadlineExceeded when its --timeout passes (7) and Aborted when the VM failed or vanished (8);
 * every code not listed exits 1.
 */
const CODE_EXIT: Partial<Record<ErrorCode, ExitCode>> = {
  InvalidArgument: EXIT.usage,
  NotFound: EXIT.notFound,
  Unauthenticated: EXIT.unauthenticated,
  Unavailable: EXIT.unavailable,
  FailedPrecondition: EXIT.precondition,
  DeadlineExceeded: EXIT.timeout,
  Aborted: EXIT.failed,
};

export function exitFor(code: ErrorCode): number {
  return CODE_EXIT[code] ?? EXIT.error;
}

/** A MatchlockError whose code exits with `exit`: the CLI's errors, written by exit code. */
export function cliError(message: string, exit: ExitCode): MatchlockError {
  const code = (Object.entries(CODE_EXIT) as [ErrorCode, ExitCode][]).find(([, e]) => e === exit)?.[0] ?? ErrorCode.Internal;
  return new MatchlockError(code, message);
}
