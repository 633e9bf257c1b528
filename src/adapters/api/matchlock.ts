/**
 * matchlock.v1 (MicroVMLifecycle, Server) independent of the transport: the gRPC and HTTP
 * adapters both serve these calls, the same way, behind the same token and TLS.
 */
import { create } from '@bufbuild/protobuf';
import { durationFromMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { Duration } from '@bufbuild/protobuf/wkt';
import { failedPrecondition, invalid } from '../../core/errors.js';
import type { PowerService, StopOptions } from '../../core/microvm/power.js';
import type { MicroVMService } from '../../core/microvm/service.js';
import type { EventFilter, EventLog, StoredEvent } from '../../core/ports.js';
import type { MicroVM as DomainVM } from '../../core/microvm/types.js';
import {
  ListMicroVMEventsResponseSchema,
  MicroVMEventSchema,
  MicroVMEvent_Type,
  type ListMicroVMEventsResponse,
  PowerResponseSchema,
  type MicroVMEvent,
  type PowerResponse,
} from '../../gen/services/matchlock/v1/lifecycle_pb.js';
import { GetServerInfoResponseSchema, type GetServerInfoResponse } from '../../gen/services/matchlock/v1/server_pb.js';
import { MicroVMStatus_MicroVMState } from '../../gen/types/microvm_pb.js';
import { powerToWire, toWire } from './convert.js';
import { MAX_PAGE_BYTES } from './paging.js';

/** What GetServerInfo reports; gathered by the daemon. */
export interface ServerInfo {
  version: string;
  commit: string;
  apiVersions: string[];
  providers: { name: string; version: string; binary: string; available: boolean; reason: string; isDefault: boolean }[];
  stateDir: string;
  daemonId: string;
  startedAt: Date;
}

/** The services of matchlock.v1 and what they need. */
export interface MatchlockApi {
  power: PowerService;
  service: MicroVMService;
  events: EventLog;
  info: () => Promise<ServerInfo>;
  /** Aborted when the daemon stops serving: open event streams end so the drain is not held up. */
  shutdown?: AbortSignal | undefined;
}

export type PowerVerb = 'stop' | 'start' | 'restart' | 'pause' | 'resume';

export function durationMs(d: Duration | undefined): number | undefined {
  return d === undefined ? undefined : Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6);
}

/** Runs one power call and answers with the stored record. */
export function powerCall(api: MatchlockApi, verb: PowerVerb, uid: string, stop: StopOptions = {}): PowerResponse {
  const p = api.power;
  const vm = verb === 'stop' ? p.stop(uid, stop) : verb === 'restart' ? p.restart(uid, stop) : verb === 'start' ? p.start(uid) : verb === 'pause' ? p.pause(uid) : p.resume(uid);
  return create(PowerResponseSchema, { microvm: toWire(vm) });
}

export async function serverInfoMessage(api: MatchlockApi): Promise<GetServerInfoResponse> {
  const i = await api.info();
  return create(GetServerInfoResponseSchema, {
    version: i.version,
    commit: i.commit,
    apiVersions: i.apiVersions,
    providers: i.providers,
    stateDir: i.stateDir,
    daemonId: i.daemonId,
    startedAt: timestampFromDate(i.startedAt),
    uptime: durationFromMs(Date.now() - i.startedAt.getTime()),
  });
}

function eventMessage(id: number, type: MicroVMEvent_Type, time: string, vm: DomainVM, previous: StoredEvent['previous']): MicroVMEvent {
  const state = MicroVMStatus_MicroVMState[vm.status.state];
  const power = powerToWire(vm.status.power);
  const prevState = previous ? MicroVMStatus_MicroVMState[previous.state] : state;
  const prevPower = previous ? powerToWire(previous.power) : power;
  return create(MicroVMEventSchema, {
    id: BigInt(id),
    type,
    time: timestampFromDate(new Date(time)),
    uid: vm.uid,
    namespace: vm.spec.namespace,
    name: vm.spec.name,
    state,
    previousState: prevState,
    power,
    previousPower: prevPower,
    desiredPower: powerToWire(vm.power?.desired ?? 'RUNNING'),
    stateChanged: type !== MicroVMEvent_Type.EXISTING && (previous === undefined || previous.state !== vm.status.state || type === MicroVMEvent_Type.DELETED),
    powerChanged: type !== MicroVMEvent_Type.EXISTING && previous !== undefined && previous.power !== vm.status.power,
    microvm: toWire(vm),
  });
}

const EVENT_TYPES = { CREATED: MicroVMEvent_Type.CREATED, UPDATED: MicroVMEvent_Type.UPDATED, DELETED: MicroVMEvent_Type.DELETED } as const;

/**
 * ListMicroVMEvents: the newest `limit` stored events (0: 20) matching the filter, oldest first.
 * Errors: InvalidArgument naming `limit` above 1000.
 */
export function recentEvents(api: MatchlockApi, filter: EventFilter, limit: number): ListMicroVMEventsResponse {
  if (limit > 1000) throw invalid('limit', `must be at most 1000, got ${limit}`);
  // Fewer when the records are large: the answer stays under gRPC's default 4 MiB message
  // limit of the client (a page's bound), and is never read whole into memory past it.
  const events = api.events.recentEvents(filter, limit === 0 ? 20 : limit, MAX_PAGE_BYTES);
  return create(ListMicroVMEventsResponseSchema, { events: events.map((e) => eventMessage(e.id, EVENT_TYPES[e.type], e.time, e.vm, e.previous)) });
}

export interface WatchRequest {
  afterId?: number | undefined;
  filter: EventFilter;
}

/** Records read at once for WatchEvents' EXISTING events: what one watcher holds of them. */
const SNAPSHOT_PAGE = 16;

/** Events read at once for a watcher: at most this many, in at most this many bytes of records. */
const WATCH_BATCH = 256;
const WATCH_BATCH_BYTES = 4 * 1024 * 1024;

/**
 * The event stream behind WatchEvents: without afterId one EXISTING event per matching record
 * (all with the newest event id as their cursor), then every change in store order. The
 * records are read SNAPSHOT_PAGE at a time, in uid order, as they are sent: a record changed
 * while they are sent may show its newer state in its EXISTING event, and one created meanwhile
 * may be sent as EXISTING too; the events after the cursor follow either way, so a client that
 * applies them by uid ends at the same state as the store. `write` resolves when the consumer
 * can take more (backpressure); the loop ends when `signal` aborts.
 * Errors: FailedPrecondition for a cursor this store cannot serve.
 */
export async function streamEvents(api: MatchlockApi, req: WatchRequest, write: (e: MicroVMEvent) => Promise<void>, signal: AbortSignal): Promise<void> {
  const log = api.events;
  let wake: (() => void) | undefined;
  let dirty = false;
  const poke = () => {
    dirty = true;
    const w = wake;
    wake = undefined;
    w?.();
  };
  const unsubscribe = log.subscribe(poke);
  const stopped = () => signal.aborted || api.shutdown?.aborted === true;
  signal.addEventListener('abort', poke);
  api.shutdown?.addEventListener('abort', poke);
  try {
    let cursor: number;
    if (req.afterId === undefined) {
      cursor = log.lastEventId();
      const now = new Date().toISOString();
      const ns = req.filter.namespace ?? '';
      let page = req.filter.uid ? [api.service.get(req.filter.uid)] : api.service.listPage(ns, undefined, { limit: SNAPSHOT_PAGE });
      for (;;) {
        for (const vm of page) {
          if (stopped()) return;
          if (ns && vm.spec.namespace !== ns) continue;
          await write(eventMessage(cursor, MicroVMEvent_Type.EXISTING, now, vm, undefined));
        }
        const after = page.at(-1)?.uid;
        if (req.filter.uid || page.length < SNAPSHOT_PAGE || after === undefined) break;
        page = api.service.listPage(ns, undefined, { after, limit: SNAPSHOT_PAGE });
      }
    } else {
      cursor = req.afterId;
      const last = log.lastEventId();
      const oldest = log.oldestEventId() ?? last + 1;
      if (cursor > last) throw failedPrecondition(`after_id ${cursor} is newer than this store's newest event ${last} (a cursor of another matchlockd?); watch again without after_id`, 'after_id');
      if (cursor < oldest - 1) throw failedPrecondition(`events ${cursor + 1} to ${oldest - 1} after after_id ${cursor} are no longer kept; watch again without after_id`, 'after_id');
    }
    while (!stopped()) {
      dirty = false;
      // A watcher slower than the log's pruning (its client stopped reading, or the log keeps
      // few events of large records) would skip events without a word: it ends as a resume
      // from a pruned cursor does.
      const head = log.lastEventId();
      const oldest = log.oldestEventId();
      if (oldest !== undefined && cursor < oldest - 1) {
        throw failedPrecondition(`events ${cursor + 1} to ${oldest - 1} were pruned before this watch sent them (it fell behind the event log, which keeps the newest events, fewer when records are large); watch again without after_id`, req.afterId === undefined ? undefined : 'after_id');
      }
      const batch = log.eventsAfter(cursor, req.filter, WATCH_BATCH, WATCH_BATCH_BYTES);
      for (const e of batch) {
        if (stopped()) return;
        await write(eventMessage(e.id, EVENT_TYPES[e.type], e.time, e.vm, e.previous));
        cursor = e.id;
      }
      // None of the events up to head matched the filter: a watcher of a quiet VM is not behind.
      if (batch.length === 0) cursor = Math.max(cursor, head);
      if (batch.length === 0 && !dirty && !stopped()) await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    unsubscribe();
    signal.removeEventListener('abort', poke);
    api.shutdown?.removeEventListener('abort', poke);
  }
}
