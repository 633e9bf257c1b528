import { create } from '@bufbuild/protobuf';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { EmptySchema } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import type { SecureContextOptions } from 'node:tls';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PACKAGE_ROOT } from '../../../package-root.js';
import { ErrorCode, MatchlockError, boundedMessage } from '../../../core/errors.js';
import type { MicroVMService } from '../../../core/microvm/service.js';
import type { MicroVM } from '../../../core/microvm/types.js';
import type { SpecInput } from '../../../core/microvm/validate.js';
import type { Logger } from '../../../core/ports.js';
import { endpointOf } from '../../../core/endpoint.js';
import {
  MicroVM as MicroVMServiceDesc,
  type CreateMicroVMRequest,
  type DeleteMicroVMRequest,
  type GetMicroVMRequest,
  type ListMicroVMsRequest,
} from '../../../gen/services/microvm/v1alpha1/microvms_pb.js';
import { tokenMatches, UNAUTHENTICATED_MESSAGE } from '../auth.js';
import { MicroVMLifecycle, type ListMicroVMEventsRequest, type WatchEventsRequest } from '../../../gen/services/matchlock/v1/lifecycle_pb.js';
import { Server as ServerServiceDesc } from '../../../gen/services/matchlock/v1/server_pb.js';
import { durationMs, powerCall, recentEvents, serverInfoMessage, streamEvents, type MatchlockApi, type PowerVerb } from '../matchlock.js';
import { specInput } from '../convert.js';
import { grpcCode } from './status.js';
import { COPIED, Refused, serviceDefinition, type Lent } from './service-def.js';
import { drained } from '../drain.js';
import { MAX_PAGE_BYTES, listPage } from '../paging.js';
import { addConsoleService, type ConsoleLocator } from './console.js';
import { addLazyHealth, addLazyReflection } from './lazy-services.js';

export interface GrpcTls {
  cert: Buffer;
  key: Buffer;
  /** CA that client certificates must chain to; set to require them (mTLS). */
  clientCa?: Buffer | undefined;
}

export interface GrpcServerOptions {
  service: MicroVMService;
  logger: Logger;
  /** Basic-auth token; empty or undefined leaves the API open. */
  token?: string | undefined;
  tls?: GrpcTls | undefined;
  /** matchlock.v1's MicroVMLifecycle and Server; without it only flintlock's API is served. */
  matchlock?: MatchlockApi | undefined;
  /** Finds VMs' consoles for the matchlock.v1.Console service; without it the service is absent. */
  console?: ConsoleLocator | undefined;
  /**
   * Aborted when the daemon starts to drain: every long-lived call (console streams, list and
   * event streams) then ends with UNAVAILABLE saying the daemon is stopping, so none holds up
   * the server's shutdown. matchlock.shutdown is used when this is absent.
   */
  shutdown?: AbortSignal | undefined;
  /** Told of every call once its status is sent: the RPC name (CreateMicroVM, Check, …), the status name (OK, NOT_FOUND, …) and seconds taken. */
  observe?: ((rpc: string, code: string, seconds: number) => void) | undefined;
}

/**
 * Times every call of every service (MicroVM, health, reflection) from its start to its status,
 * including calls the token check refuses.
 */
function observing(observe: NonNullable<GrpcServerOptions['observe']>): grpc.ServerInterceptor {
  return (method, call) => {
    const rpc = method.path.slice(method.path.lastIndexOf('/') + 1);
    const started = process.hrtime.bigint();
    return new grpc.ServerInterceptingCall(
      call,
      new grpc.ResponderBuilder()
        .withSendStatus((status, next) => {
          observe(rpc, grpc.status[status.code] ?? String(status.code), Number(process.hrtime.bigint() - started) / 1e9);
          next(status);
        })
        .build(),
    );
  };
}

const PROTO_DIR = join(PACKAGE_ROOT, 'proto');

export function serverCredentials(tls: GrpcTls | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const creds = grpc.ServerCredentials.createSsl(tls.clientCa ?? null, [{ private_key: tls.key, cert_chain: tls.cert }], tls.clientCa !== undefined);
  // grpc-js has no TLS version option; the secure-context options it keeps take Node's minVersion.
  // (updateSecureContextOptions is public in grpc-js's JavaScript, protected only in its typings.)
  const update = (creds as unknown as { updateSecureContextOptions(o: SecureContextOptions): void }).updateSecureContextOptions.bind(creds);
  update({ ...creds._getSecureContextOptions(), minVersion: 'TLSv1.3' });
  return creds;
}

/** Records per page of ListMicroVMsStream, at most: a page also ends where the client's buffer is full or past MAX_PAGE_BYTES. */
const STREAM_PAGE = 256;

/**
 * Field 1 holding each record: CreateMicroVMResponse, GetMicroVMResponse and ListMessage hold
 * one MicroVM there, ListMicroVMsResponse a repeated one, so each answer is the stored bytes
 * behind a tag and a length.
 */
function inField1(records: Iterable<Uint8Array>): Uint8Array {
  const w = new BinaryWriter();
  for (const r of records) w.uint32((1 << 3) | 2).bytes(r);
  return w.finish();
}

/** Bytes of a varint. */
const varintLength = (n: number) => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);

function putVarint(out: Buffer, at: number, n: number): number {
  while (n > 0x7f) {
    out[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  out[at++] = n;
  return at;
}

/** next_page_token's tag: field 1000, length-delimited. */
const NEXT_PAGE_TOKEN_TAG = (1000 << 3) | 2;

/**
 * One buffer that List answers are written into, reused while its last answer has been copied
 * by grpc-js (which copies every message behind its 5-byte header). A List of 10,000 records of
 * CAPMVM's shape is about 54 MB, and writing into fresh memory faults in every page of it: on a
 * virtual machine that cost as much as the rest of the answer. Dropped after a minute without a
 * List, so the daemon's memory goes back down; a buffer still lent (a call cancelled before
 * grpc-js serialised it) is never written again, only left to the garbage collector.
 */
class AnswerBuffer {
  private buf: Buffer | undefined;
  private lent = false;
  private drop: NodeJS.Timeout | undefined;

  take(size: number): Buffer {
    if (this.lent) this.buf = undefined;
    if (!this.buf || this.buf.length < size || size < this.buf.length / 4) this.buf = Buffer.allocUnsafe(size);
    const out = this.buf.subarray(0, size) as Lent & Buffer;
    const mine = this.buf;
    this.lent = true;
    out[COPIED] = () => {
      if (this.buf === mine) this.lent = false;
    };
    clearTimeout(this.drop);
    this.drop = setTimeout(() => (this.buf = undefined), 60_000).unref();
    return out;
  }
}

const answers = new AnswerBuffer();

/**
 * A ListMicroVMsResponse: the stored records in field 1, then next_page_token (field 1000) when
 * there is one. Written in one pass into the reused answer buffer: every extra copy of a large
 * List (a writer's chunks joined into a zero-filled array) costs fresh pages and the garbage
 * collector's time.
 */
function listResponse(records: Uint8Array[], nextPageToken: string): Buffer {
  let size = 0;
  for (const r of records) size += 1 + varintLength(r.length) + r.length;
  const token = Buffer.from(nextPageToken, 'utf8');
  if (token.length) size += varintLength(NEXT_PAGE_TOKEN_TAG) + varintLength(token.length) + token.length;
  const out = answers.take(size);
  let at = 0;
  for (const r of records) {
    out[at++] = (1 << 3) | 2;
    at = putVarint(out, at, r.length);
    out.set(r, at);
    at += r.length;
  }
  if (token.length) {
    at = putVarint(out, at, NEXT_PAGE_TOKEN_TAG);
    at = putVarint(out, at, token.length);
    token.copy(out, at);
  }
  return out;
}

type AnyHandler = (call: grpc.ServerUnaryCall<unknown, unknown> & grpc.ServerWritableStream<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => void;

/**
 * A view of the server whose addService wraps every handler with the token check, so the
 * MicroVM, health and reflection services are all behind the same door, and answers a request
 * refused before decoding (service-def.ts's Refused) with its status, after the token check.
 */
function guarded(server: grpc.Server, token: string | undefined): Pick<grpc.Server, 'addService'> {
  return {
    addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) {
      const wrapped: grpc.UntypedServiceImplementation = {};
      for (const [name, fn] of Object.entries(impl)) {
        const handler = fn as unknown as AnyHandler;
        wrapped[name] = ((call: Parameters<AnyHandler>[0], callback?: grpc.sendUnaryData<unknown>) => {
          const refuse = (err: { code: grpc.status; details: string }) => {
            if (callback) callback(err);
            else call.emit('error', err);
          };
          const header = token ? call.metadata.get('authorization')[0] : undefined;
          if (token && !tokenMatches(typeof header === 'string' ? header : undefined, token)) {
            refuse({ code: grpc.status.UNAUTHENTICATED, details: UNAUTHENTICATED_MESSAGE });
            return;
          }
          if (call.request instanceof Refused) {
            const details = boundedMessage(call.request.error.message);
            refuse(Object.assign(new Error(details), { code: grpcCode(call.request.error), details }));
            return;
          }
          handler(call, callback);
        }) as unknown as grpc.UntypedHandleCall;
      }
      server.addService(def, wrapped);
    },
  };
}

/**
 * The flintlock MicroVM service on grpc-js, plus gRPC health and reflection. Every handler turns
 * errors into status codes; nothing a client sends can throw past it.
 */
export function createGrpcServer(opts: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024, interceptors: opts.observe ? [observing(opts.observe)] : [] });
  const door = guarded(server, opts.token);
  const { service, logger } = opts;
  const shutdown = opts.shutdown ?? opts.matchlock?.shutdown;

  const fail = (method: string, err: unknown): grpc.ServiceError => {
    const e = MatchlockError.from(err);
    const code = grpcCode(e);
    if (code === grpc.status.INTERNAL) logger.error({ method, err }, 'request failed');
    else logger.debug({ method, code: e.code, msg: e.message }, 'request refused');
    const message = boundedMessage(e.message);
    return Object.assign(new Error(message), { code, details: message, metadata: new grpc.Metadata() });
  };

  const unary = <Req, Res>(method: string, fn: (req: Req) => Res) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
      try {
        callback(null, fn(call.request));
      } catch (err) {
        callback(fail(method, err));
      }
    };

  door.addService(serviceDefinition(MicroVMServiceDesc, true), {
    createMicroVM: (call: grpc.ServerUnaryCall<CreateMicroVMRequest, Uint8Array>, callback: grpc.sendUnaryData<Uint8Array>) => {
      // The bytes the store wrote with the record; nothing has changed it since (reconcile
      // work starts on a later turn of the event loop).
      const created = ({ vm, encoded }: { vm: MicroVM; encoded: Uint8Array }) => {
        logger.info({ uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name }, 'microvm created');
        callback(null, inField1([encoded]));
      };
      let input: SpecInput | undefined;
      try {
        input = specInput(call.request.microvm);
        // In this turn, as every create without a large meta-data is.
        if (!service.readsAhead(input)) return created(service.createEncoded(input));
      } catch (err) {
        return callback(fail('CreateMicroVM', err));
      }
      // A large meta-data is read off the event loop first; the rest as above.
      service.createEncodedAsync(input, () => !call.cancelled).then(created, (err: unknown) => callback(fail('CreateMicroVM', err)));
    },
    deleteMicroVM: unary('DeleteMicroVM', (req: DeleteMicroVMRequest) => {
      service.delete(req.uid);
      return create(EmptySchema);
    }),
    getMicroVM: unary('GetMicroVM', (req: GetMicroVMRequest) => inField1([service.encoded(req.uid)])),
    listMicroVMs: unary('ListMicroVMs', (req: ListMicroVMsRequest) => {
      const page = listPage((ns, name, p) => service.encodedList(ns, name, p), req);
      return listResponse(page.records, page.nextPageToken);
    }),
    listMicroVMsStream: (call: grpc.ServerWritableStream<ListMicroVMsRequest, unknown>) => {
      // A page at a time in uid order, waiting for the client when its buffer is full, so a
      // large list never sits in memory at once. A record changed meanwhile is sent as it is
      // when its page is read; one created meanwhile is sent when its uid sorts after the page.
      // (No end is pinned by time: uids follow the clock, which may step back.)
      const { namespace, name } = call.request;
      let after: string | undefined;
      let ended = false;
      // A drain does not wait for a slow reader to take every page, nor for one that stopped
      // reading (its next page waits for 'drain'): the stream ends when the drain starts.
      const stopping = () => {
        if (ended) return;
        ended = true;
        call.emit('error', fail('ListMicroVMsStream', new MatchlockError(ErrorCode.Unavailable, 'matchlockd is stopping: the list stream ended; list again once matchlockd is back')));
      };
      if (shutdown?.aborted) return stopping();
      shutdown?.addEventListener('abort', stopping, { once: true });
      const end = (err?: unknown) => {
        ended = true;
        shutdown?.removeEventListener('abort', stopping);
        if (err === undefined) call.end();
        else call.emit('error', fail('ListMicroVMsStream', err));
      };
      call.on('cancelled', () => {
        ended = true;
        shutdown?.removeEventListener('abort', stopping);
      });
      const page = () => {
        if (call.cancelled || ended) return;
        try {
          let n = 0;
          let bytes = 0;
          let room = true;
          let cut = false;
          for (const r of service.encodedList(namespace, name, { after, limit: STREAM_PAGE })) {
            n++;
            after = r.uid;
            bytes += r.encoded.length;
            room = call.write(inField1([r.encoded]));
            // A page stops where the client's buffer is full or at MAX_PAGE_BYTES, so a
            // stream of large records that nobody reads holds a buffer's worth of them, not
            // a page of STREAM_PAGE (three paused streams of 0.9 MB records held 200 MB each).
            if (!room || bytes >= MAX_PAGE_BYTES) {
              cut = true;
              break;
            }
          }
          if (!cut && n < STREAM_PAGE) end();
          else if (!room) call.once('drain', page);
          else setImmediate(page);
        } catch (err) {
          end(err);
        }
      };
      page();
    },
  });

  const api = opts.matchlock;
  if (api) addMatchlockServices(door, api, fail);
  if (opts.console) addConsoleService(door, opts.console, fail, logger, shutdown);
  const served = [
    MicroVMServiceDesc.typeName,
    ...(api ? [MicroVMLifecycle.typeName, ServerServiceDesc.typeName] : []),
    ...(opts.console ? ['matchlock.v1.Console'] : []),
  ];
  addLazyHealth(door, ['', ...served]);
  const protos = [
    'services/microvm/v1alpha1/microvms.proto',
    ...(api ? ['services/matchlock/v1/lifecycle.proto', 'services/matchlock/v1/server.proto'] : []),
    ...(opts.console ? ['services/matchlock/v1/console.proto'] : []),
  ];
  addLazyReflection(door, protos, PROTO_DIR);
  return server;
}

/** matchlock.v1.MicroVMLifecycle and matchlock.v1.Server, behind the same door as the rest. */
function addMatchlockServices(door: Pick<grpc.Server, 'addService'>, api: MatchlockApi, fail: (method: string, err: unknown) => grpc.ServiceError): void {
  const power = (verb: PowerVerb, method: string) => (call: grpc.ServerUnaryCall<{ uid: string; grace?: { seconds: bigint; nanos: number }; force?: boolean }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    try {
      const r = call.request;
      callback(null, powerCall(api, verb, r.uid, { graceMs: durationMs(r.grace as never), force: r.force }));
    } catch (err) {
      callback(fail(method, err));
    }
  };
  door.addService(serviceDefinition(MicroVMLifecycle, true), {
    stopMicroVM: power('stop', 'StopMicroVM'),
    startMicroVM: power('start', 'StartMicroVM'),
    restartMicroVM: power('restart', 'RestartMicroVM'),
    pauseMicroVM: power('pause', 'PauseMicroVM'),
    resumeMicroVM: power('resume', 'ResumeMicroVM'),
    listMicroVMEvents: (call: grpc.ServerUnaryCall<ListMicroVMEventsRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      try {
        const r = call.request;
        callback(null, recentEvents(api, { uid: r.uid || undefined, namespace: r.namespace || undefined }, r.limit));
      } catch (err) {
        callback(fail('ListMicroVMEvents', err));
      }
    },
    watchEvents: (call: grpc.ServerWritableStream<WatchEventsRequest, unknown>) => {
      const ac = new AbortController();
      call.on('cancelled', () => ac.abort());
      call.on('close', () => ac.abort());
      const write = async (e: unknown) => {
        if (ac.signal.aborted || call.write(e)) return;
        // A reader that stopped reading does not hold up the drain: the wait ends with it.
        await drained(call, api.shutdown ? AbortSignal.any([ac.signal, api.shutdown]) : ac.signal);
      };
      const r = call.request;
      streamEvents(api, { afterId: r.afterId === undefined ? undefined : Number(r.afterId), filter: { uid: r.uid || undefined, namespace: r.namespace || undefined } }, write, ac.signal).then(
        () => {
          if (ac.signal.aborted) return;
          // Only a daemon that stops serving ends a stream; the client resumes with after_id.
          call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'matchlockd is shutting down; watch again with after_id of the last event received' });
        },
        (err: unknown) => {
          if (!ac.signal.aborted) call.emit('error', fail('WatchEvents', err));
        },
      );
    },
  });
  door.addService(serviceDefinition(ServerServiceDesc, true), {
    getServerInfo: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      serverInfoMessage(api).then((m) => callback(null, m), (err: unknown) => callback(fail('GetServerInfo', err)));
    },
  });
}

/**
 * Binds `endpoint` (core/endpoint's form: host:port, `:port` for every interface, [v6]:port,
 * unix:/abs/path) and resolves the bound port (0 for a unix socket). grpc-js itself reads neither
 * `:port` nor a bare IPv6 address: every interface is `[::]` (both families, as Go's `:port`),
 * or 0.0.0.0 where the host has no IPv6. A failure names the endpoint (and a missing socket directory).
 */
export async function bindGrpc(server: grpc.Server, endpoint: string, creds: grpc.ServerCredentials): Promise<number> {
  const e = endpointOf(endpoint);
  const bind = (target: string) =>
    new Promise<number>((resolve, reject) => {
      server.bindAsync(target, creds, (err, port) => (err ? reject(err) : resolve(port)));
    });
  try {
    if (e.kind === 'unix') {
      // grpc-js answers a unix bind with port 1; a socket has none.
      await bind(`unix:${e.path}`);
      return 0;
    }
    if (e.host !== '') return await bind(e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`);
    return await bind(`[::]:${e.port}`).catch(() => bind(`0.0.0.0:${e.port}`));
  } catch (err) {
    // bind(2) reports a missing directory as EACCES or ENOENT without naming it.
    const dir = e.kind === 'unix' ? dirname(e.path) : undefined;
    if (dir !== undefined && !existsSync(dir)) throw new Error(`grpc-endpoint ${endpoint}: cannot listen: directory ${dir} does not exist`, { cause: err });
    throw new Error(`grpc-endpoint ${endpoint}: cannot listen: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * grpc-js writes its own errors to stderr in its own format (`E No address added ...` when a
 * bind fails, which bindGrpc reports anyway); they go to the daemon's log instead.
 */
export function routeGrpcLog(logger: Logger): void {
  grpc.setLogger({ error: (...args: unknown[]) => logger.warn({ grpc: args.map(String).join(' ').trim() }, 'grpc-js') });
}
