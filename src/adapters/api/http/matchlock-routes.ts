import type { ServerResponse } from 'node:http';
import { MatchlockError, boundedMessage, invalid } from '../../../core/errors.js';
import {
  ListMicroVMEventsResponseSchema,
  MicroVMEventSchema,
  PauseMicroVMRequestSchema,
  PowerResponseSchema,
  RestartMicroVMRequestSchema,
  ResumeMicroVMRequestSchema,
  StartMicroVMRequestSchema,
  StopMicroVMRequestSchema,
} from '../../../gen/services/matchlock/v1/lifecycle_pb.js';
import { GetServerInfoResponseSchema } from '../../../gen/services/matchlock/v1/server_pb.js';
import { grpcCode } from '../grpc/status.js';
import { drained } from '../drain.js';
import { durationMs, powerCall, recentEvents, serverInfoMessage, streamEvents, type MatchlockApi, type PowerVerb } from '../matchlock.js';
import { fromGatewayJson, gatewayJson, gatewayText, parseGatewayBody, statusJson } from './gateway-json.js';

const VERBS: readonly string[] = ['stop', 'start', 'restart', 'pause', 'resume'];

/** Each verb's request message, which its body is read as. */
const REQUESTS = {
  stop: StopMicroVMRequestSchema,
  start: StartMicroVMRequestSchema,
  restart: RestartMicroVMRequestSchema,
  pause: PauseMicroVMRequestSchema,
  resume: ResumeMicroVMRequestSchema,
} as const;

/**
 * matchlock.v1 over HTTP/JSON, behind the same token and TLS as the rest:
 * - `POST /v1/microvm/{uid}/stop|start|restart|pause|resume`, body optional
 *   (`{"grace": "10s", "force": false}` for stop and restart): PowerResponse;
 * - `GET /v1/server-info`: GetServerInfoResponse;
 * - `GET /v1/events[?after_id=N][&uid=][&namespace=]`: one JSON object per line, grpc-gateway's
 *   streaming form (`{"result": MicroVMEvent}`); an error ends it as `{"error": {code, message}}`;
 * - `GET /v1/recent-events[?uid=][&namespace=][&limit=]`: ListMicroVMEventsResponse.
 * Returns false when the request is for none of these routes.
 */
export async function matchlockRoute(
  api: MatchlockApi,
  method: string,
  segments: string[],
  query: Map<string, string>,
  body: Buffer,
  res: ServerResponse,
  route: { rpc: string } = { rpc: '' },
): Promise<boolean> {
  const [version, kind, uid, verb, ...rest] = segments;
  if (version !== 'v1' || rest.length) return false;
  if (method === 'POST' && kind === 'microvm' && uid !== undefined && verb !== undefined && VERBS.includes(verb)) {
    route.rpc = `${verb.charAt(0).toUpperCase()}${verb.slice(1)}MicroVM`;
    // Every verb's body is read as its request message under the same rules (unknown fields
    // dropped, a wrong type refused); the uid comes from the path, as a path parameter
    // overrides the body in grpc-gateway.
    const expected = verb === 'stop' || verb === 'restart' ? '{"grace": "<seconds>s", "force": <bool>}' : `a JSON ${REQUESTS[verb as PowerVerb].name}`;
    const parsed = fromGatewayJson(REQUESTS[verb as PowerVerb], parseGatewayBody(body, expected), expected);
    const { grace, force } = 'force' in parsed ? { grace: durationMs(parsed.grace), force: parsed.force } : { grace: undefined, force: false };
    const out = powerCall(api, verb as PowerVerb, uid, { graceMs: grace, force });
    res.writeHead(200, { 'content-type': 'application/json' }).end(gatewayText(PowerResponseSchema, out));
    return true;
  }
  if (method === 'GET' && kind === 'server-info' && uid === undefined) {
    route.rpc = 'GetServerInfo';
    res.writeHead(200, { 'content-type': 'application/json' }).end(gatewayText(GetServerInfoResponseSchema, await serverInfoMessage(api)));
    return true;
  }
  if (method === 'GET' && kind === 'recent-events' && uid === undefined) {
    route.rpc = 'ListMicroVMEvents';
    const limit = query.get('limit') ?? '0';
    if (!/^[0-9]{1,4}$/.test(limit)) throw invalid('limit', 'must be a whole number from 0 to 1000');
    const out = recentEvents(api, { uid: query.get('uid') || undefined, namespace: query.get('namespace') || undefined }, Number(limit));
    res.writeHead(200, { 'content-type': 'application/json' }).end(gatewayText(ListMicroVMEventsResponseSchema, out));
    return true;
  }
  if (method === 'GET' && kind === 'events' && uid === undefined) {
    route.rpc = 'WatchEvents';
    const after = query.get('after_id');
    if (after !== undefined && !/^[0-9]{1,15}$/.test(after)) throw invalid('after_id', 'must be an event id (a whole number)');
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const write = async (e: Parameters<Parameters<typeof streamEvents>[2]>[0]) => {
      if (ac.signal.aborted || res.write(JSON.stringify({ result: gatewayJson(MicroVMEventSchema, e) }) + '\n')) return;
      // A reader that stopped reading does not hold up the drain: the wait ends with it.
      await drained(res, api.shutdown ? AbortSignal.any([ac.signal, api.shutdown]) : ac.signal);
    };
    const filter = { uid: query.get('uid') || undefined, namespace: query.get('namespace') || undefined };
    try {
      // Headers go out at once, so a client sees the stream open before the first change; an
      // error found later (an unknown uid, a cursor this store cannot serve) ends it as a line.
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.flushHeaders();
      await streamEvents(api, { afterId: after === undefined ? undefined : Number(after), filter }, write, ac.signal);
      if (!ac.signal.aborted) res.end(JSON.stringify({ error: statusJson(14, 'matchlockd is shutting down; watch again with after_id of the last event received') }) + '\n');
    } catch (err) {
      const e = MatchlockError.from(err);
      if (!ac.signal.aborted) res.end(JSON.stringify({ error: statusJson(grpcCode(e), boundedMessage(e.message)) }) + '\n');
    }
    return true;
  }
  return false;
}

/** The methods matchlock.v1's routes answer at `segments` (empty when no route has that path). */
export function matchlockMethods(segments: string[]): string[] {
  const [version, kind, uid, verb, ...rest] = segments;
  if (version !== 'v1' || rest.length) return [];
  if (kind === 'microvm' && uid !== undefined && verb !== undefined && VERBS.includes(verb)) return ['POST'];
  if ((kind === 'server-info' || kind === 'recent-events' || kind === 'events') && uid === undefined) return ['GET'];
  return [];
}
