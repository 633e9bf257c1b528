import { Session } from 'node:inspector/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { getHeapSnapshot } from 'node:v8';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '../../../core/ports.js';
import { tokenMatches, UNAUTHENTICATED_MESSAGE } from '../auth.js';
import type { GrpcTls } from '../grpc/server.js';
import { parseTarget, requestBody, serverWithTls } from './server.js';

/** Answers one route; `query` holds the decoded query parameters. */
export type OpsHandler = (res: ServerResponse, query: Map<string, string>) => Promise<void>;

export interface OpsServerOptions {
  /** `GET <path>` -> handler. */
  routes: ReadonlyMap<string, OpsHandler>;
  logger: Logger;
  /** The API's basic-auth token; empty or undefined leaves the routes open, as it leaves the API. */
  token?: string | undefined;
  tls?: GrpcTls | undefined;
}

/** A refusal the operator can act on: the status and the reason, as plain text. */
export class OpsError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The operators' endpoints (metrics, debug): GET only, behind the API's token and TLS settings,
 * answers and refusals in plain text.
 */
export function createOpsServer(opts: OpsServerOptions): Server {
  return serverWithTls(opts.tls, (req: IncomingMessage, res: ServerResponse) => {
    void serve(opts, req, res).catch((err: unknown) => {
      const status = err instanceof OpsError ? err.status : 500;
      if (status === 500) opts.logger.error({ err, url: req.url }, 'operator endpoint failed');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...(status === 401 ? { 'www-authenticate': 'Basic realm="matchlockd"' } : {}) });
      res.end(`${(err as Error).message}\n`);
    });
  });
}

async function serve(opts: OpsServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  // Read (and drop) any body before answering: a refusal sent while the client still writes
  // would be followed by a reset that can overtake it.
  const authorized = !opts.token || tokenMatches(req.headers.authorization, opts.token);
  try {
    await requestBody(req, false);
  } catch (err) {
    if (authorized) throw new OpsError(400, (err as Error).message);
  }
  if (!authorized) throw new OpsError(401, UNAUTHENTICATED_MESSAGE);
  let target;
  try {
    target = parseTarget(req.url ?? '/');
  } catch (err) {
    throw new OpsError(400, (err as Error).message);
  }
  const path = `/${target.segments.join('/')}`;
  const handler = opts.routes.get(path);
  if (!handler) throw new OpsError(404, `route ${path} not found; routes: ${[...opts.routes.keys()].join(', ')}`);
  if (req.method !== 'GET' && req.method !== 'HEAD') throw new OpsError(405, `${path} answers GET only`);
  await handler(res, target.query);
}

/** `GET /metrics`: the Prometheus text exposition. */
export function metricsRoute(exposition: () => Promise<{ contentType: string; body: string }>): OpsHandler {
  return async (res) => {
    const { contentType, body } = await exposition();
    res.writeHead(200, { 'content-type': contentType }).end(body);
  };
}

/** The longest CPU profile one request may ask for, in seconds. */
export const MAX_PROFILE_SECONDS = 300;

/**
 * The debug routes: `/debug/pprof/heap`, a V8 heap snapshot (open it in Chrome DevTools'
 * Memory tab), and `/debug/profile?seconds=N`, a CPU profile of the next N seconds (1 to 300,
 * default 10; a `.cpuprofile` for DevTools' Performance tab), taken through node:inspector.
 * One profile at a time: a second is refused with 409 while one runs. A heap snapshot holds
 * every secret the daemon holds (the token, registry credentials), so these routes need the
 * same token as the API.
 */
export function debugRoutes(): Map<string, OpsHandler> {
  let profiling = false;
  const stamp = () => new Date().toISOString().replace(/[:.]/g, '-');
  return new Map<string, OpsHandler>([
    [
      '/debug/pprof/heap',
      async (res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-disposition': `attachment; filename="matchlockd-${stamp()}.heapsnapshot"` });
        await pipeline(getHeapSnapshot(), res);
      },
    ],
    [
      '/debug/profile',
      async (res, query) => {
        const raw = query.get('seconds') ?? '10';
        const seconds = Number(raw);
        if (!/^\d+$/.test(raw) || seconds < 1 || seconds > MAX_PROFILE_SECONDS) throw new OpsError(400, `seconds: must be a whole number from 1 to ${MAX_PROFILE_SECONDS}, not ${JSON.stringify(raw.slice(0, 32))}`);
        if (profiling) throw new OpsError(409, 'a CPU profile is being taken; ask again when it is done');
        profiling = true;
        const session = new Session();
        try {
          session.connect();
          await session.post('Profiler.enable');
          await session.post('Profiler.start');
          await new Promise((r) => setTimeout(r, seconds * 1000));
          const { profile } = await session.post('Profiler.stop');
          res.writeHead(200, { 'content-type': 'application/json', 'content-disposition': `attachment; filename="matchlockd-${stamp()}.cpuprofile"` });
          res.end(JSON.stringify(profile));
        } finally {
          session.disconnect();
          profiling = false;
        }
      },
    ],
  ]);
}
