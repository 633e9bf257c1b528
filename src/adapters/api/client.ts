import type { DescMessage, DescService, MessageShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { isIP, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import { basicAuthHeader } from './auth.js';
import { checkCaFile, checkKeyPair, readTlsFile } from './tls-files.js';
import { serviceDefinition } from './grpc/service-def.js';
import { MicroVM } from '../../gen/services/microvm/v1alpha1/microvms_pb.js';
import { dialAddress, endpointRule, isLocalEndpoint, parseEndpoint } from '../../core/endpoint.js';
import { ErrorCode, MatchlockError } from '../../core/errors.js';

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

/**
 * gRPC statuses as matchlock codes. DEADLINE_EXCEEDED on a call counts as the daemon not
 * answering (Unavailable); ABORTED and anything else unlisted is Internal.
 */
const FROM_GRPC: Partial<Record<grpc.status, ErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: ErrorCode.InvalidArgument,
  [grpc.status.NOT_FOUND]: ErrorCode.NotFound,
  [grpc.status.UNAUTHENTICATED]: ErrorCode.Unauthenticated,
  [grpc.status.UNAVAILABLE]: ErrorCode.Unavailable,
  [grpc.status.DEADLINE_EXCEEDED]: ErrorCode.Unavailable,
  [grpc.status.FAILED_PRECONDITION]: ErrorCode.FailedPrecondition,
  [grpc.status.RESOURCE_EXHAUSTED]: ErrorCode.ResourceExhausted,
};

/**
 * What is wrong with a daemon address (`--host`, MATCHLOCK_HOST), or undefined: the endpoint
 * rule the daemon's settings are held to (core/endpoint), with a port to dial (not 0), or one of
 * grpc-js's own `dns:`, `ipv4:`, `ipv6:` targets, which its resolvers check.
 */
export function hostError(host: string): string | undefined {
  if (/^(dns|ipv4|ipv6):/.test(host)) return undefined;
  const r = parseEndpoint(host, { unix: true });
  const why = 'error' in r ? r.error : r.endpoint.kind === 'tcp' && r.endpoint.port === 0 ? 'port 0 cannot be dialled' : undefined;
  return why === undefined ? undefined : `${endpointRule({ unix: true }).replace(' (0: any free port)', '').replace('from 0 to', 'from 1 to')}, or a dns:/ipv4:/ipv6: gRPC target: ${why}`;
}

/**
 * The channel's credentials; InvalidArgument naming the flag for an address hostError refuses or
 * a TLS file tls-files refuses.
 */
export function credentials(o: ConnectOptions): grpc.ChannelCredentials {
  const badHost = hostError(o.host);
  if (badHost) throw new MatchlockError(ErrorCode.InvalidArgument, `--host ${o.host} ${badHost}`, { field: '--host' });
  const wantsTls = !!(o.tlsCa || o.tlsCert || o.tlsKey);
  if (!wantsTls) {
    if (!o.insecure && !isLocalEndpoint(dialAddress(o.host))) {
      throw new MatchlockError(ErrorCode.InvalidArgument, `--host ${o.host} is not a loopback address: give --tls-ca (and --tls-cert/--tls-key for mTLS), or --insecure for plaintext`, { field: '--host' });
    }
    return grpc.credentials.createInsecure();
  }
  if (!!o.tlsCert !== !!o.tlsKey) throw new MatchlockError(ErrorCode.InvalidArgument, '--tls-cert and --tls-key go together', { field: '--tls-cert' });
  // Checked as matchlockd checks its own (tls-files), before anything is dialled: OpenSSL's bare
  // words at the channel's making, or a CA that trusts nobody and fails the handshake, name no flag.
  const caFile = o.tlsCa ? { name: '--tls-ca', path: o.tlsCa } : undefined;
  const certFile = o.tlsCert ? { name: '--tls-cert', path: o.tlsCert } : undefined;
  const keyFile = o.tlsKey ? { name: '--tls-key', path: o.tlsKey } : undefined;
  const ca = caFile ? readTlsFile(caFile) : null;
  const cert = certFile ? readTlsFile(certFile) : null;
  const key = keyFile ? readTlsFile(keyFile) : null;
  if (caFile && ca) checkCaFile(caFile, ca);
  if (certFile && cert && keyFile && key) checkKeyPair(certFile, cert, keyFile, key);
  const ip = endpointHost(o.host);
  if (ip !== undefined && isIP(ip)) return new IpLiteralTlsCredentials(createSecureContext({ ca: ca ?? undefined, key: key ?? undefined, cert: cert ?? undefined }), ip);
  return grpc.credentials.createSsl(ca, key, cert);
}

/** The host part of a `host:port`, `[v6]:port`, `dns:`/`ipv4:`/`ipv6:` target; undefined for unix sockets. */
function endpointHost(target: string): string | undefined {
  if (target.startsWith('unix:')) return undefined;
  const t = target.replace(/^(dns|ipv4|ipv6):(\/\/[^/]*\/)?/, '');
  if (t.startsWith('[')) return t.slice(1, t.indexOf(']'));
  const colons = t.split(':').length - 1;
  return colons === 1 ? t.slice(0, t.indexOf(':')) : t;
}

/**
 * TLS to an IP address without an SNI server name: RFC 6066 section 3 allows only DNS host
 * names there, and Node warns (DEP0123) when asked to send an IP, which grpc-js's own TLS
 * credentials always do. The certificate is still checked against the IP (its subjectAltName
 * IP entries), as tls.checkServerIdentity does for a connection with no server name.
 */
class IpLiteralTlsCredentials extends grpc.ChannelCredentials {
  constructor(
    private readonly context: SecureContext,
    private readonly ip: string,
  ) {
    super();
  }

  _isSecure(): boolean {
    return true;
  }

  _equals(other: grpc.ChannelCredentials): boolean {
    return other instanceof IpLiteralTlsCredentials && other.context === this.context && other.ip === this.ip;
  }

  _createSecureConnector(_target: unknown, _options: grpc.ChannelOptions, callCredentials?: grpc.CallCredentials): SecureConnector {
    const { context, ip } = this;
    const call = callCredentials ?? grpc.credentials.createEmpty();
    return {
      connect: (socket: Socket) =>
        new Promise((resolve, reject) => {
          const tlsSocket = tlsConnect({ socket, secureContext: context, host: ip, ALPNProtocols: ['h2'] }, () => {
            if (!tlsSocket.authorized) reject(tlsSocket.authorizationError);
            else resolve({ socket: tlsSocket, secure: true });
          });
          tlsSocket.on('error', reject);
        }),
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => call,
      destroy: () => undefined,
    };
  }
}

type SecureConnector = ReturnType<grpc.ChannelCredentials['_createSecureConnector']>;

/**
 * The CLI's channel settings. Receive window: grpc-js starts every stream and the connection at
 * HTTP/2's 64 KiB, so a server sends 64 KiB and waits for the window to reopen, some 25 round
 * trips for a page of 500 VMs (1.5 MB); 8 MiB lets a whole page (at most 3 MiB) be in flight.
 * Receive limit: a flintlockd, or a matchlockd asked without page_size, answers List with every
 * VM in one message, past grpc-js's default 4 MiB from some 1,300 CAPMVM-shaped VMs.
 */
const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc-node.flow_control_window': 8 * 1024 * 1024,
  'grpc.max_receive_message_length': 512 * 1024 * 1024,
};

/** A promise-based client for flintlock's MicroVM service, usable against flintlockd too. */
export function connect(o: ConnectOptions): Unary<typeof MicroVM> & { close(): void } {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(MicroVM), 'MicroVM');
  const client = new Ctor(dialAddress(o.host), credentials(o), CHANNEL_OPTIONS);
  const out: Record<string, unknown> = { close: () => client.close() };
  for (const m of MicroVM.methods) {
    if (m.methodKind !== 'unary') continue;
    out[m.localName] = (req: unknown) =>
      new Promise((resolve, reject) => {
        const md = new grpc.Metadata();
        if (o.token) md.set('authorization', basicAuthHeader(o.token));
        const deadline = new Date(Date.now() + (o.timeoutMs ?? 30_000));
        const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[m.localName];
        fn?.call(client, req, md, { deadline }, (err: grpc.ServiceError | null, res: unknown) => (err ? reject(fromGrpc(err, o.host)) : resolve(res)));
      });
  }
  return out as Unary<typeof MicroVM> & { close(): void };
}

export function fromGrpc(err: grpc.ServiceError, host: string): MatchlockError {
  const code = FROM_GRPC[err.code] ?? ErrorCode.Internal;
  // grpc-js ends the details with "Resolution note: " even when it has no note to give.
  if (err.code === grpc.status.UNAVAILABLE) return new MatchlockError(code, `cannot reach matchlockd at ${host}: ${err.details.replace(/\s*Resolution note:\s*$/, '')}`, { cause: err });
  return new MatchlockError(code, err.details || err.message, { cause: err });
}

/**
 * The error that ends a stream this client did not cancel. A CANCELLED it did not ask for is the
 * server dropping the call (grpc-js's forceShutdown resets every open stream with CANCEL, as a
 * daemon past its shutdown-grace does): the daemon went away, Unavailable like any other
 * unreachable daemon (the CLI's exit 5), not a client-side cancel.
 */
export function streamEnded(err: grpc.ServiceError, host: string): MatchlockError {
  if (err.code === grpc.status.CANCELLED) return new MatchlockError(ErrorCode.Unavailable, `matchlockd at ${host} dropped the stream (${err.details || 'cancelled'}): it is stopping or restarting`, { cause: err });
  return fromGrpc(err, host);
}

/**
 * A promise-based client for any service of ours (matchlock.v1's too): unary methods as
 * promises, server-streaming methods as `stream(localName, req)` giving grpc-js's readable
 * stream (messages as 'data', the end status as 'error' with a MatchlockError, or 'end').
 */
export function connectService<S extends DescService>(service: S, o: ConnectOptions): Unary<S> & {
  close(): void;
  stream(method: string, req: unknown, onMessage: (m: unknown) => void): { done: Promise<void>; cancel(): void };
} {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service), service.name);
  const client = new Ctor(dialAddress(o.host), credentials(o), CHANNEL_OPTIONS);
  const md = () => {
    const m = new grpc.Metadata();
    if (o.token) m.set('authorization', basicAuthHeader(o.token));
    return m;
  };
  const out: Record<string, unknown> = { close: () => client.close() };
  for (const m of service.methods) {
    if (m.methodKind !== 'unary') continue;
    out[m.localName] = (req: unknown) =>
      new Promise((resolve, reject) => {
        const deadline = new Date(Date.now() + (o.timeoutMs ?? 30_000));
        const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[m.localName];
        fn?.call(client, req, md(), { deadline }, (err: grpc.ServiceError | null, res: unknown) => (err ? reject(fromGrpc(err, o.host)) : resolve(res)));
      });
  }
  out.stream = (method: string, req: unknown, onMessage: (m: unknown) => void) => {
    const fn = (client as unknown as Record<string, (...a: unknown[]) => grpc.ClientReadableStream<unknown>>)[method];
    if (!fn) throw new MatchlockError(ErrorCode.Internal, `no streaming method ${method}`);
    const call = fn.call(client, req, md());
    let cancelled = false;
    const done = new Promise<void>((resolve, reject) => {
      call.on('data', onMessage);
      call.on('error', (err: grpc.ServiceError) => (cancelled && err.code === grpc.status.CANCELLED ? resolve() : reject(streamEnded(err, o.host))));
      call.on('end', () => resolve());
    });
    return {
      done,
      cancel: () => {
        cancelled = true;
        call.cancel();
      },
    };
  };
  return out as ReturnType<typeof connectService<S>>;
}
