import { status as GrpcStatus } from '@grpc/grpc-js';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';

const CODES: Record<ErrorCode, GrpcStatus> = {
  InvalidArgument: GrpcStatus.INVALID_ARGUMENT,
  NotFound: GrpcStatus.NOT_FOUND,
  FailedPrecondition: GrpcStatus.FAILED_PRECONDITION,
  Unauthenticated: GrpcStatus.UNAUTHENTICATED,
  Unavailable: GrpcStatus.UNAVAILABLE,
  Aborted: GrpcStatus.ABORTED,
  Canceled: GrpcStatus.CANCELLED,
  DeadlineExceeded: GrpcStatus.DEADLINE_EXCEEDED,
  ResourceExhausted: GrpcStatus.RESOURCE_EXHAUSTED,
  Internal: GrpcStatus.INTERNAL,
};

export function grpcCode(err: MatchlockError): GrpcStatus {
  return CODES[err.code];
}

/** HTTP statuses for the same codes, as grpc-gateway maps them. */
const HTTP: Record<ErrorCode, number> = {
  InvalidArgument: 400,
  NotFound: 404,
  FailedPrecondition: 400,
  Unauthenticated: 401,
  Unavailable: 503,
  Aborted: 409,
  // grpc-gateway: CANCELLED -> 499 (client closed request), DEADLINE_EXCEEDED -> 504.
  Canceled: 499,
  DeadlineExceeded: 504,
  // grpc-gateway: RESOURCE_EXHAUSTED -> 429.
  ResourceExhausted: 429,
  Internal: 500,
};

export function httpStatus(err: MatchlockError): number {
  return HTTP[err.code];
}

export { ErrorCode, MatchlockError };
