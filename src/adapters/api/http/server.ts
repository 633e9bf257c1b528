import { create, fromJson, toJson, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { ErrorCode, MatchlockError, invalid } from '../../../core/errors.js';
import type { MicroVMService } from '../../../core/microvm/service.js';
import type { Logger } from '../../../core/ports.js';
import {
  CreateMicroVMResponseSchema,
  GetMicroVMResponseSchema,
  ListMicroVMsResponseSchema,
} from '../../../gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSpecSchema } from '../../../gen/types/microvm_pb.js';
import { tokenMatches, UNAUTHENTICATED_MESSAGE } from '../auth.js';
import { specInput, toWire } from '../convert.js';
import { grpcCode, httpStatus } from '../grpc/status.js';
import type { GrpcTls } from '../grpc/server.js';

export interface HttpServerOptions {
  service: MicroVMService;
  logger: Logger;
  token?: string | undefined;
  tls?: GrpcTls | undefined;
}

const MAX_BODY = 4 * 1024 * 1024;
const UID_ROUTE = /^\/v1alpha1\/microvm\/uid\/([^/]+)$/;
const ONE_SEGMENT = /^\/v1alpha1\/microvm\/([^/]+)$/;

/**
 * flintlock's HTTP/JSON routes (grpc-gateway style, proto3 canonical JSON) plus an unambiguous
 * Get route, `GET /v1alpha1/microvm/uid/{uid}`: in flintlock the Get route is shadowed by List.
 * `GET /v1alpha1/microvm` lists every namespace.
 */
export function createHttpApi(opts: HttpServerOptions): Server {
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    void handle(opts, req, res).catch((err: unknown) => sendError(opts.logger, res, err));
  };
  if (!opts.tls) return createHttpServer(handler);
  return createHttpsServer(
    {
      cert: opts.tls.cert,
      key: opts.tls.key,
      minVersion: 'TLSv1.3',
      ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    },
    handler,
  );
}

async function handle(opts: HttpServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { service } = opts;
  if (opts.token && !tokenMatches(req.headers.authorization, opts.token)) {
    throw new MatchlockError(ErrorCode.Unauthenticated, UNAUTHENTICATED_MESSAGE);
  }
  const url = new URL(req.url ?? '/', 'http://matchlock');
  const path = url.pathname.replace(/\/+$/, '');
  const method = req.method ?? 'GET';
  const segment = (re: RegExp) => {
    const m = re.exec(path);
    return m?.[1] === undefined ? undefined : decodeURIComponent(m[1]);
  };

  if (method === 'POST' && path === '/v1alpha1/microvm') {
    const body = await readBody(req);
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch (err) {
      throw invalid('body', `must be a JSON MicroVMSpec (${(err as Error).message})`);
    }
    let spec;
    try {
      spec = fromJson(MicroVMSpecSchema, json as never);
    } catch (err) {
      throw invalid('body', (err as Error).message);
    }
    const vm = service.create(specInput(spec));
    opts.logger.info({ uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name }, 'microvm created');
    return send(res, 200, CreateMicroVMResponseSchema, { microvm: toWire(vm) });
  }
  const uidRoute = segment(UID_ROUTE);
  if (method === 'GET' && uidRoute !== undefined) {
    return send(res, 200, GetMicroVMResponseSchema, { microvm: toWire(service.get(uidRoute)) });
  }
  const one = segment(ONE_SEGMENT);
  if (method === 'DELETE' && one !== undefined) {
    service.delete(one);
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    return;
  }
  if (method === 'GET' && (one !== undefined || path === '/v1alpha1/microvm')) {
    const name = url.searchParams.get('name') ?? undefined;
    return send(res, 200, ListMicroVMsResponseSchema, { microvm: service.list(one ?? '', name).map(toWire) });
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 5, message: `route ${method} ${path} not found`, details: [] }));
}

function send<D extends DescMessage>(res: ServerResponse, status: number, schema: D, init: MessageInitShape<D>): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(toJson(schema, create(schema, init))));
}

function sendError(logger: Logger, res: ServerResponse, err: unknown): void {
  const e = MatchlockError.from(err);
  if (e.code === ErrorCode.Internal) logger.error({ err }, 'http request failed');
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(httpStatus(e), { 'content-type': 'application/json' }).end(JSON.stringify({ code: grpcCode(e), message: e.message, details: [] }));
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > MAX_BODY) throw invalid('body', `must be at most ${MAX_BODY} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
