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
  /** The host ran out of something the request needs (the state dir's file system is full). */
  ResourceExhausted: 'ResourceExhausted',
  Internal: 'Internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class MatchlockError extends Error {
  readonly code: ErrorCode;
  /** The request field at fault, as a wire path such as `microvm.interfaces[0].guest_mac`. */
  readonly field: string | undefined;
  /**
   * The host link whose absence is the failure (a TAP's bridge, a macvtap's parent interface),
   * by its name: its return is what the work waits for.
   */
  readonly missingLink: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string; cause?: unknown; missingLink?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MatchlockError';
    this.code = code;
    this.field = options.field;
    this.missingLink = options.missingLink;
  }

  /** Wraps anything thrown into a MatchlockError, keeping the code of one that already is. */
  static from(err: unknown): MatchlockError {
    if (err instanceof MatchlockError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new MatchlockError(ErrorCode.Internal, message, { cause: err });
  }
}

/** How many characters of a client's value an error quotes back. */
export const ECHO_LIMIT = 64;
/**
 * The most characters an error message carries over the wire. gRPC sends it in the
 * grpc-message trailer, percent-encoded, and grpcio (Python, C++) refuses trailers over 8 KiB
 * with RESOURCE_EXHAUSTED, hiding the real code; 800 characters stay below that even when
 * every one is a 3-byte UTF-8 character percent-encoded (9 bytes).
 */
export const MESSAGE_LIMIT = 800;

/**
 * What a YAML parser's error says, in one line: the `yaml` package's message is its first line,
 * ending in a colon that introduces the excerpt of the source it appends on the next lines.
 */
export function yamlProblem(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return (message.split('\n')[0] ?? '').replace(/:\s*$/, '');
}

/**
 * A client's value as an error quotes it: JSON-quoted (so control characters and quotes are
 * escaped) and cut to `limit` characters, saying how long the whole value was.
 */
export function quote(value: string, limit = ECHO_LIMIT): string {
  if (value.length <= limit) return JSON.stringify(value);
  return `${JSON.stringify(value.slice(0, limit))}… (${value.length} characters)`;
}

/** A message cut to MESSAGE_LIMIT characters, for the API edges: the last guard after quote(). */
export function boundedMessage(message: string): string {
  return message.length <= MESSAGE_LIMIT ? message : `${message.slice(0, MESSAGE_LIMIT)}… (message cut from ${message.length} characters)`;
}

export function invalid(field: string, rule: string): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, `${field}: ${rule}`, { field });
}

export function notFound(what: string): MatchlockError {
  // Clients (CAPMVM, microvm-operator) match the lowercase words "not found".
  return new MatchlockError(ErrorCode.NotFound, `${what} not found`);
}

/**
 * The host link named `link` (a bridge, a macvtap's parent) is not there: FailedPrecondition,
 * carrying the name (missingLink), also through the wrappers that prefix a step's name.
 */
export function missingHostLink(link: string, message: string): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message, { missingLink: link });
}

/** The missingLink of the error or of the first error in its chain of causes that has one. */
export function missingLinkOf(err: unknown): string | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 16; e = e.cause, depth++) {
    if (e instanceof MatchlockError && e.missingLink !== undefined) return e.missingLink;
  }
  return undefined;
}

export function failedPrecondition(message: string, field?: string): MatchlockError {
  return new MatchlockError(ErrorCode.FailedPrecondition, message, field === undefined ? {} : { field });
}
