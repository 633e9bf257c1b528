import type { DescMessage, DescService, MessageShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { basicAuthHeader } from '../adapters/api/auth.js';
import { serviceDefinition } from '../adapters/api/grpc/service-def.js';
import { MicroVM } from '../gen/services/microvm/v1alpha1/microvms_pb.js';
import { isLocalEndpoint } from '../core/endpoint.js';
import type { ErrorCode } from '../core/errors.js';

export interface ConnectOptions {
  host: string;
  token?: string | undefined;
  tlsCa?: string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  insecure?: boolean | undefined;
  /** Per-call deadline. */
  timeoutMs?: number | undefined;
}

type Unary<S extends DescService> = {
  [K in S['method'] extends Record<string, unknown> ? keyof S['method'] : never]: S['method'][K] extends { input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (req: MessageShape<I>) => Promise<MessageShape<O>>
    : never;
};

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** Exit codes scripts can rely on; the README lists them. */
export const EXIT = { ok: 0, error: 1, usage: 2, notFound: 3, unauthenticated: 4, unavailable: 5, precondition: 6, timeout: 7, failed: 8 } as const;

/** The exit code for a matchlock error raised in the CLI process itself (image and host commands). */
export function exitFor(code: ErrorCode): number {
  const map: Partial<Record<ErrorCode, number>> = {
    InvalidArgument: EXIT.usage,
    NotFound: EXIT.notFound,
    Unauthenticated: EXIT.unauthenticated,
    FailedPrecondition: EXIT.precondition,
    Unavailable: EXIT.unavailable,
  };
  return map[code] ?? EXIT.error;
}

const CODE_EXIT: Partial<Record<grpc.status, number>> = {
  [grpc.status.INVALID_ARGUMENT]: EXIT.usage,
  [grpc.status.NOT_FOUND]: EXIT.notFound,
  [grpc.status.UNAUTHENTICATED]: EXIT.unauthenticated,
  [grpc.status.UNAVAILABLE]: EXIT.unavailable,
  [grpc.status.DEADLINE_EXCEEDED]: EXIT.unavailable,
  [grpc.status.FAILED_PRECONDITION]: EXIT.precondition,
};

function credentials(o: ConnectOptions): grpc.ChannelCredentials {
  const wantsTls = !!(o.tlsCa || o.tlsCert || o.tlsKey);
  if (!wantsTls) {
    if (!o.insecure && !isLocalEndpoint(o.host)) {
      throw new CliError(`--host ${o.host} is not a loopback address: give --tls-ca (and --tls-cert/--tls-key for mTLS), or --insecure for plaintext`, EXIT.usage);
    }
    return grpc.credentials.createInsecure();
  }
  if (!!o.tlsCert !== !!o.tlsKey) throw new CliError('--tls-cert and --tls-key go together', EXIT.usage);
  const read = (flag: string, p: string | undefined) => {
    if (!p) return null;
    try {
      return readFileSync(p);
    } catch (err) {
      throw new CliError(`${flag} ${p}: ${(err as Error).message}`, EXIT.usage);
    }
  };
  return grpc.credentials.createSsl(read('--tls-ca', o.tlsCa), read('--tls-key', o.tlsKey), read('--tls-cert', o.tlsCert));
}

/** A promise-based client for flintlock's MicroVM service, usable against flintlockd too. */
export function connect(o: ConnectOptions): Unary<typeof MicroVM> & { close(): void } {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(MicroVM), 'MicroVM');
  const client = new Ctor(o.host, credentials(o));
  const out: Record<string, unknown> = { close: () => client.close() };
  for (const m of MicroVM.methods) {
    if (m.methodKind !== 'unary') continue;
    out[m.localName] = (req: unknown) =>
      new Promise((resolve, reject) => {
        const md = new grpc.Metadata();
        if (o.token) md.set('authorization', basicAuthHeader(o.token));
        const deadline = new Date(Date.now() + (o.timeoutMs ?? 30_000));
        const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[m.localName];
        fn?.call(client, req, md, { deadline }, (err: grpc.ServiceError | null, res: unknown) => (err ? reject(toCliError(err, o.host)) : resolve(res)));
      });
  }
  return out as Unary<typeof MicroVM> & { close(): void };
}

function toCliError(err: grpc.ServiceError, host: string): CliError {
  const exit = CODE_EXIT[err.code] ?? EXIT.error;
  if (err.code === grpc.status.UNAVAILABLE) return new CliError(`cannot reach matchlockd at ${host}: ${err.details}`, exit);
  return new CliError(err.details || err.message, exit);
}
