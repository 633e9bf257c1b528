/**
 * The one error type of matchlock. Core code throws it with a code; the API edges map the code
 * to a gRPC status or an HTTP status, so no adapter has to guess from message text.
 */
export const ErrorCode = {
  InvalidArgument: 'InvalidArgument',
  NotFound: 'NotFound',
  FailedPrecondition: 'FailedPrecondition',
  Unauthenticated: 'Unauthenticated',
  Unavailable: 'Unavailable',
  Aborted: 'Aborted',
  /** The work was called off (a delete, a shutdown) before it finished. */
  Canceled: 'Canceled',
  /** A time limit passed before the work finished. */
  DeadlineExceeded: 'DeadlineExceeded',
  Internal: 'Internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class MatchlockError extends Error {
  readonly code: ErrorCode;
  /** The request field at fault, as a wire path such as `microvm.interfaces[0].guest_mac`. */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MatchlockError';
    this.code = code;
    this.field = options.field;
  }

  /** Wraps anything thrown into a MatchlockError, keeping the code of one that already is. */
  static from(err: unknown): MatchlockError {
    if (err instanceof MatchlockError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new MatchlockError(ErrorCode.Internal, message, { cause: err });
  }
}

export function invalid(field: string, rule: string): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, `${field}: ${rule}`, { field });
}

export function notFound(what: string): MatchlockError {
  // Clients (CAPMVM, microvm-operator) match the lowercase words "not found".
  return new MatchlockError(ErrorCode.NotFound, `${what} not found`);
}

export function failedPrecondition(message: string, field?: string): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message, field === undefined ? {} : { field });
}
