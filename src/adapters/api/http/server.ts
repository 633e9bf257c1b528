import { fromBinary, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { EmptySchema } from '@bufbuild/protobuf/wkt';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { ErrorCode, MatchlockError, boundedMessage, invalid, quote } from '../../../core/errors.js';
import type { MicroVMService } from '../../../core/microvm/service.js';
import type { Logger } from '../../../core/ports.js';
import {
  CreateMicroVMResponseSchema,
  GetMicroVMResponseSchema,
  ListMicroVMsResponseSchema,
} from '../../../gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema, MicroVMSpecSchema } from '../../../gen/types/microvm_pb.js';
import { tokenMatches, UNAUTHENTICATED_MESSAGE } from '../auth.js';
import { specInput, toWire } from '../convert.js';
import { jsonEntryLimits, jsonValueCount } from '../entry-limits.js';
import { grpcCode, httpStatus } from '../grpc/status.js';
import type { GrpcTls } from '../grpc/server.js';
import type { MatchlockApi } from '../matchlock.js';
import { fromGatewayJson, gatewayText, parseGatewayBody, statusJson } from './gateway-json.js';
import { matchlockMethods, matchlockRoute } from './matchlock-routes.js';
import { listPage } from '../paging.js';

export interface HttpServerOptions {
  service: MicroVMService;
  logger: Logger;
  token?: string | undefined;
  tls?: GrpcTls | undefined;
  /** matchlock.v1's routes (/v1/…); without it only flintlock's are served. */
  matchlock?: MatchlockApi | undefined;
  /** Told of every answered request: the RPC its route maps to (`unknown` for none), the HTTP status and seconds taken. */
  observe?: ((rpc: string, status: number, seconds: number) => void) | undefined;
}

const MAX_BODY = 4 * 1024 * 1024;
/**
 * How much of a body past MAX_BODY is still read and dropped before the refusal is sent. Closing
 * a connection with unread bytes makes the kernel send a reset, which can reach the client
 * before the answer it was sent (RFC 9112 section 9.6). A client still sending past this gets
 * its connection closed without an answer.
 */
const MAX_DISCARD = 16 * 1024 * 1024;

/**
 * flintlock's HTTP/JSON routes plus an unambiguous Get route, `GET /v1alpha1/microvm/uid/{uid}`:
 * in flintlock the Get route is shadowed by List.
 * `GET /v1alpha1/microvm` lists every namespace, or the one of its `namespace` query
 * parameter. List takes `name`, `page_size` and `page_token` (or
 * `pageSize`, `pageToken`) as query parameters, as grpc-gateway maps request fields. Bodies
 * are read and answers written as flintlock's grpc-gateway does (see gateway-json.ts): every
 * field written, unset ones as their zero value, `[]`, `{}` or `null`; unknown fields read as
 * absent. Errors are google.rpc.Status, `{"code", "message", "details": []}`.
 */
export function createHttpApi(opts: HttpServerOptions): Server {
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const route = { rpc: 'unknown' };
    if (opts.observe) {
      const started = process.hrtime.bigint();
      const observe = opts.observe;
      res.once('close', () => observe(route.rpc, res.statusCode, Number(process.hrtime.bigint() - started) / 1e9));
    }
    // A client without the token gets its body read and dropped, never held, and is told
    // only that it lacks the token, whatever its body was.
    const keep = !opts.token || tokenMatches(req.headers.authorization, opts.token);
    void requestBody(req, keep)
      .then(
        (body) => handle(opts, req, res, route, body),
        (err: unknown) => {
          throw keep ? err : new MatchlockError(ErrorCode.Unauthenticated, UNAUTHENTICATED_MESSAGE);
        },
      )
      .catch((err: unknown) => sendError(opts.logger, res, err));
  };
  return serverWithTls(opts.tls, handler);
}

/** An HTTP server, or with `tls` an HTTPS one under the API's rules: TLS 1.3 only, client certificates from clientCa when given (mTLS). */
export function serverWithTls(tls: GrpcTls | undefined, handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
  if (!tls) return createHttpServer(handler);
  return createHttpsServer(
    {
      cert: tls.cert,
      key: tls.key,
      minVersion: 'TLSv1.3',
      ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    },
    handler,
  );
}

async function handle(opts: HttpServerOptions, req: IncomingMessage, res: ServerResponse, route: { rpc: string }, body: Buffer): Promise<void> {
  const { service } = opts;
  if (opts.token && !tokenMatches(req.headers.authorization, opts.token)) {
    throw new MatchlockError(ErrorCode.Unauthenticated, UNAUTHENTICATED_MESSAGE);
  }
  const target = parseTarget(req.url ?? '/');
  const path = target.segments.length ? `/${target.segments.map(encodeURIComponent).join('/')}` : '/';
  // HEAD is GET without the body (RFC 9110 section 9.3.2); Node leaves the body out.
  const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET');
  const [api, kind, first, second, ...rest] = target.segments;
  const isApi = api === 'v1alpha1' && kind === 'microvm' && rest.length === 0;
  // The uid route is matched before the one-segment routes, so "uid" itself can never be a
  // namespace of List: `/v1alpha1/microvm/uid/` (a trailing slash, its uid left out) is a Get of
  // the empty uid, refused naming uid, not a List of namespace "uid". All segments arrive decoded.
  const uidRoute = isApi && first === 'uid' ? (second ?? '') : undefined;
  const one = isApi && first !== undefined && second === undefined ? first : undefined;
  const root = isApi && first === undefined;

  if (method === 'POST' && root) {
    route.rpc = 'CreateMicroVM';
    const crowded = jsonValueCount(body);
    if (crowded) throw crowded;
    const json = parseGatewayBody(body, 'a JSON MicroVMSpec');
    // Counted before conversion: turning 200,000 labels into a message took seconds.
    const over = jsonEntryLimits(MicroVMSpecSchema, json, 'microvm.');
    if (over) throw over;
    const spec = fromGatewayJson(MicroVMSpecSchema, json, 'a JSON MicroVMSpec', 'microvm');
    const { vm } = await service.createEncodedAsync(specInput(spec), () => !res.destroyed);
    opts.logger.info({ uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name }, 'microvm created');
    return send(res, 200, CreateMicroVMResponseSchema, { microvm: toWire(vm) });
  }
  if (method === 'GET' && uidRoute !== undefined) {
    route.rpc = 'GetMicroVM';
    return send(res, 200, GetMicroVMResponseSchema, { microvm: toWire(service.get(uidRoute)) });
  }
  if (method === 'DELETE' && one !== undefined && uidRoute === undefined) {
    route.rpc = 'DeleteMicroVM';
    service.delete(one);
    return send(res, 200, EmptySchema, {});
  }
  if (method === 'GET' && uidRoute === undefined && (one !== undefined || root)) {
    route.rpc = 'ListMicroVMs';
    // Each request field once, by either of its names (grpc-gateway refuses a second value for
    // a field that is not repeated rather than pick one). `namespace` is a query parameter of
    // the route without it in the path, as grpc-gateway binds every request field the path
    // does not; in the path it wins, as the gateway leaves path-bound fields out of the query.
    for (const [snake, camel] of [['namespace', 'namespace'], ['name', 'name'], ['page_size', 'pageSize'], ['page_token', 'pageToken']] as const) {
      if (target.repeated.has(snake) || target.repeated.has(camel) || (snake !== camel && target.query.has(snake) && target.query.has(camel))) {
        throw invalid(snake, `must be given once (as ${snake}${snake === camel ? '' : ` or ${camel}`})`);
      }
    }
    const q = (snake: string, camel: string) => target.query.get(snake) ?? target.query.get(camel);
    const size = q('page_size', 'pageSize') ?? '0';
    // int32 on the wire: the gateway takes what a gRPC client could send, no more.
    if (!/^-?\d+$/.test(size) || Number(size) > 2 ** 31 - 1 || Number(size) < -(2 ** 31)) {
      throw invalid('page_size', `must be an int32 (0 for no limit, at most ${2 ** 31 - 1}), not ${quote(size, 40)}`);
    }
    const page = listPage((ns, name, p) => service.encodedList(ns, name, p), {
      namespace: one ?? target.query.get('namespace') ?? '',
      name: target.query.get('name'),
      pageSize: Number(size),
      pageToken: q('page_token', 'pageToken') ?? '',
    });
    return send(res, 200, ListMicroVMsResponseSchema, { microvm: page.records.map((r) => fromBinary(MicroVMSchema, r)), nextPageToken: page.nextPageToken });
  }
  if (opts.matchlock && (await matchlockRoute(opts.matchlock, method, target.segments, target.query, body, res, route))) return;
  // A path served with other methods is grpc-gateway's "Method Not Allowed", which it answers
  // as UNIMPLEMENTED (HTTP 501); the Allow header says which methods the path takes.
  const flintlockMethods = !isApi ? [] : uidRoute !== undefined ? ['GET'] : root ? ['GET', 'POST'] : one !== undefined ? ['DELETE', 'GET'] : [];
  const served = [...flintlockMethods, ...(opts.matchlock ? matchlockMethods(target.segments) : [])];
  const allowed = served.includes('GET') ? [...served, 'HEAD'] : served;
  if (allowed.length) {
    const message = boundedMessage(`Method Not Allowed: ${method} ${quote(path, 200)} answers ${allowed.join(', ')}`);
    res.writeHead(501, { 'content-type': 'application/json', allow: allowed.join(', ') }).end(JSON.stringify(statusJson(12, message)));
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify(statusJson(5, boundedMessage(`route ${method} ${quote(path, 200)} not found`))));
}

function send<D extends DescMessage>(res: ServerResponse, status: number, schema: D, init: MessageInitShape<D>): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(gatewayText(schema, init));
}

function sendError(logger: Logger, res: ServerResponse, err: unknown): void {
  const e = MatchlockError.from(err);
  if (e.code === ErrorCode.Internal) logger.error({ err }, 'http request failed');
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(httpStatus(e), { 'content-type': 'application/json' }).end(JSON.stringify(statusJson(grpcCode(e), boundedMessage(e.message))));
}

interface Target {
  /** Decoded path segments; one trailing "/" is allowed and dropped. */
  segments: string[];
  /** Decoded query parameters; the first of repeated names wins. */
  query: Map<string, string>;
  /** Names given more than once. */
  repeated: Set<string>;
}

/**
 * The request target (RFC 9112 section 3.2: origin-form, or absolute-form from a proxy),
 * decoded strictly. Anything a client got wrong (an empty segment such as "//", a malformed
 * percent-encoding, a target that is not a path) is INVALID_ARGUMENT naming the part, never an
 * internal error.
 */
export function parseTarget(raw: string): Target {
  let pathAndQuery = raw;
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(raw)) {
    const rest = raw.slice(raw.indexOf('//') + 2);
    const slash = rest.search(/[/?]/);
    pathAndQuery = slash < 0 ? '/' : rest[slash] === '?' ? `/${rest.slice(slash)}` : rest.slice(slash);
  }
  if (!pathAndQuery.startsWith('/')) throw invalid('path', `must be an absolute path such as /v1alpha1/microvm, not ${quote(raw)}`);
  const hash = pathAndQuery.indexOf('#');
  if (hash >= 0) pathAndQuery = pathAndQuery.slice(0, hash);
  const q = pathAndQuery.indexOf('?');
  const rawPath = q < 0 ? pathAndQuery : pathAndQuery.slice(0, q);
  const rawQuery = q < 0 ? '' : pathAndQuery.slice(q + 1);
  const parts = rawPath.split('/').slice(1);
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  const segments = parts.map((p, n) => {
    if (p === '') throw invalid('path', `has an empty segment at position ${n + 1} (${quote(rawPath)}); segments are separated by one "/"`);
    return decodePart(`path segment ${n + 1}`, p);
  });
  const query = new Map<string, string>();
  const repeated = new Set<string>();
  for (const pair of rawQuery.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = decodePart('query parameter name', (eq < 0 ? pair : pair.slice(0, eq)).replace(/\+/g, ' '));
    const value = decodePart(`query parameter ${quote(name)}`, eq < 0 ? '' : pair.slice(eq + 1).replace(/\+/g, ' '));
    if (!query.has(name)) query.set(name, value);
    else repeated.add(name);
  }
  return { segments, query, repeated };
}

function decodePart(field: string, raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw invalid(field, `has a malformed percent-encoding (${quote(raw)}): "%" must be followed by two hex digits forming UTF-8`);
  }
}

/**
 * The whole request body, read before any route answers, so that no answer (a refusal of the
 * path, the token, the method) is followed by closing a connection the client is still writing
 * to. With `keep` false the body is read and dropped (an empty buffer is returned). Errors:
 * INVALID_ARGUMENT naming `body` when it is over MAX_BODY bytes (the rest is read and dropped up
 * to MAX_DISCARD first) or when the client closed the connection mid-body.
 */
export async function requestBody(req: IncomingMessage, keep = true): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      const b = chunk as Buffer;
      size += b.length;
      if (size > MAX_BODY + MAX_DISCARD) break;
      if (keep && size <= MAX_BODY) chunks.push(b);
    }
  } catch (err) {
    // A client that hangs up mid-body is its own fault, not an internal error to log as one.
    if (req.aborted || (err as NodeJS.ErrnoException).code === 'ECONNRESET') throw invalid('body', `the client closed the connection after ${size} bytes of the body`);
    throw err;
  }
  if (size > MAX_BODY) throw invalid('body', `must be at most ${MAX_BODY} bytes`);
  return Buffer.concat(chunks);
}
