import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { serviceDefinition } from '../../src/adapters/api/grpc/service-def.js';
import { recentEvents, streamEvents, type MatchlockApi } from '../../src/adapters/api/matchlock.js';
import { MAX_PAGE_BYTES } from '../../src/adapters/api/paging.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import type { MicroVM } from '../../src/core/microvm/types.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import { ListMicroVMEventsResponseSchema, type MicroVMEvent } from '../../src/gen/services/matchlock/v1/lifecycle_pb.js';
import { ListMicroVMsRequestSchema, MicroVM as MicroVMServiceDesc } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { grpcApiOver, serviceOver } from '../helpers/api-server.js';
import { tempDir } from '../helpers/daemon.js';
import { seededUid, storedMicroVM } from '../helpers/records.js';

/** A record with `kib` KiB of user-data: as large as a real cloud-init user-data gets. */
function big(n: number, kib: number): MicroVM {
  return storedMicroVM(seededUid(n), {
    name: `vm-${n}`, namespace: 'big',
    kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
    rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r:1' } },
    interfaces: [{ deviceId: 'eth1', type: 'TAP' }],
    metadata: { 'meta-data': 'aW5zdGFuY2VfaWQ6IHgK', 'user-data': Buffer.from(`${n}`.padEnd(kib * 1024, 'x')).toString('base64') },
  });
}

/** Counts the records `store` hands out through `method` (each element of an array, or each row of an iterator). */
function countReads(store: SqliteStore, method: 'page' | 'list' | 'encodedRecords'): { read: number; restore(): void } {
  const s = store as unknown as Record<string, (...a: unknown[]) => unknown>;
  const original = s[method] as (...a: unknown[]) => unknown;
  const counter = { read: 0, restore: () => (s[method] = original) };
  s[method] = (...args: unknown[]) => {
    const out = original.apply(store, args);
    if (Array.isArray(out)) {
      counter.read += out.length;
      return out;
    }
    const it = out as IterableIterator<unknown>;
    const counted: IterableIterator<unknown> = {
      next: () => {
        const r = it.next();
        if (!r.done) counter.read++;
        return r;
      },
      return: (v?: unknown) => it.return?.(v) ?? { done: true, value: v },
      [Symbol.iterator]: () => counted,
    };
    return counted;
  };
  return counter;
}

describe('large records are read a bounded amount at a time', () => {
  const tmp = tempDir('large-records');
  let store: SqliteStore;
  const vms: MicroVM[] = [];
  before(() => {
    store = new SqliteStore(join(tmp.path, 'matchlock.db'));
    // 300 KiB of user-data each (about 400 KiB on the wire): 40 of them, one event each.
    for (let n = 0; n < 40; n++) {
      const vm = big(n, 300);
      store.insert(vm);
      vms.push(vm);
    }
  });
  after(() => {
    store.close();
    tmp.remove();
  });
  const api = () => ({ service: serviceOver(store), events: store }) as unknown as MatchlockApi;

  it('ListMicroVMEvents answers the newest events that fit a page of MAX_PAGE_BYTES, not the thousand asked for', () => {
    const res = recentEvents(api(), {}, 1000);
    const size = toBinary(ListMicroVMEventsResponseSchema, res).length;
    assert.ok(size <= MAX_PAGE_BYTES + 64 * 1024, `the answer is ${size} bytes`);
    assert.ok(res.events.length >= 1 && res.events.length < vms.length, `${res.events.length} events`);
    const uids = res.events.map((e) => e.microvm?.spec?.uid);
    assert.deepEqual(uids, vms.slice(-res.events.length).map((v) => v.uid), 'the newest, oldest first');
    // A watcher's batches of events are bounded the same way.
    const batch = store.eventsAfter(0, {}, 256, 1024 * 1024);
    assert.ok(batch.length >= 1 && batch.length < vms.length, `${batch.length} events in a batch of at most 1 MiB of records`);
    assert.deepEqual(batch.map((e) => e.vm.uid), vms.slice(0, batch.length).map((v) => v.uid), 'the oldest after the cursor, in order');
  });

  it('WatchEvents sends the existing records a page at a time: a consumer that stops holds the store to a page', async () => {
    const reads = countReads(store, 'page');
    const list = countReads(store, 'list');
    const sent: MicroVMEvent[] = [];
    let release: () => void = () => undefined;
    let paused = true;
    const ctl = new AbortController();
    const done = streamEvents(api(), { filter: { namespace: 'big' } }, async (e) => {
      sent.push(e);
      if (sent.length === 2 && paused) await new Promise<void>((r) => (release = r));
    }, ctl.signal);
    try {
      await sleep(200);
      assert.equal(sent.length, 2, 'the consumer stopped after two');
      assert.ok(reads.read + list.read <= 16, `${reads.read + list.read} records read from the store for two sent`);
      paused = false;
      release();
      for (let i = 0; i < 100 && sent.length < vms.length; i++) await sleep(20);
      assert.deepEqual(sent.map((e) => e.microvm?.spec?.uid), vms.map((v) => v.uid), 'then every record, in uid order');
    } finally {
      ctl.abort();
      release();
      await done.catch(() => undefined);
      reads.restore();
      list.restore();
    }
  });

  it('ListMicroVMsStream stops reading where its client stops taking: not a page of 256 into memory', async () => {
    const more: MicroVM[] = [];
    for (let n = 100; n < 400; n++) more.push(big(n, 100));
    for (const vm of more) store.insert(vm);
    const server = await grpcApiOver(store, tmp.path);
    const def = serviceDefinition(MicroVMServiceDesc) as Record<string, grpc.MethodDefinition<unknown, unknown>>;
    for (const m of Object.values(def)) m.responseDeserialize = (b: Buffer) => b;
    const Ctor = grpc.makeGenericClientConstructor(def, 'MicroVM');
    const client = new Ctor(server.target, grpc.credentials.createInsecure()) as unknown as Record<string, (...a: unknown[]) => grpc.ClientReadableStream<Buffer>> & grpc.Client;
    const reads = countReads(store, 'encodedRecords');
    try {
      const s = client.listMicroVMsStream?.call(client, create(ListMicroVMsRequestSchema, { namespace: 'big' }));
      assert.ok(s);
      const got: Buffer[] = [];
      const ended = new Promise<void>((resolve, reject) => {
        s.on('end', () => resolve());
        s.on('error', reject);
      });
      s.on('data', (b: Buffer) => {
        got.push(b);
        if (got.length === 1) s.pause();
      });
      for (let i = 0; i < 100 && got.length === 0; i++) await sleep(20);
      await sleep(500);
      assert.ok(reads.read < 128, `${reads.read} records read while the client took ${got.length}`);
      s.resume();
      await ended;
      assert.equal(got.length, vms.length + more.length, 'every record once');
    } finally {
      reads.restore();
      client.close();
      server.stop();
    }
  });
});

describe('a watcher that falls behind the event log', () => {
  const tmp = tempDir('watch-behind');
  after(() => tmp.remove());

  it('ends with FailedPrecondition rather than skip pruned events; a watcher of a quiet VM does not', async () => {
    const store = new SqliteStore(join(tmp.path, 'matchlock.db'), { eventsKept: 50 });
    const api = { service: serviceOver(store), events: store } as unknown as MatchlockApi;
    const busy = big(1, 1);
    const quiet = big(2, 1);
    store.insert(busy);
    store.insert(quiet);
    const bump = (n: number) => {
      for (let i = 0; i < n; i++) store.update(busy.uid, (cur) => ({ ...cur, status: { ...cur.status, retry: cur.status.retry + 1 } }));
    };
    const start = store.lastEventId();
    const got: number[] = [];
    let release: () => void = () => undefined;
    const ctl = new AbortController();
    const behind = streamEvents(api, { afterId: start, filter: {} }, async (e) => {
      got.push(Number(e.id));
      if (got.length === 1) await new Promise<void>((r) => (release = r));
    }, ctl.signal);
    const quietSeen: number[] = [];
    const calm = streamEvents(api, { filter: { uid: quiet.uid } }, async (e) => void quietSeen.push(Number(e.id)), ctl.signal);
    try {
      bump(10);
      await sleep(50);
      assert.deepEqual(got, [start + 1], 'the first event sent, then the consumer stopped');
      // Pruned well past where it stands.
      for (let i = 0; i < 20; i++) {
        bump(10);
        await sleep(5);
      }
      assert.ok((store.oldestEventId() ?? 0) > start + 20);
      release();
      await assert.rejects(behind, (err: unknown) => err instanceof MatchlockError && err.code === ErrorCode.FailedPrecondition && /were pruned before this watch sent them/.test(err.message));
      assert.deepEqual(got, got.map((_, i) => start + 1 + i), 'no event skipped before it ended');
      assert.equal(quietSeen.length, 1, 'the quiet VM watcher has its EXISTING event and no error');
      assert.equal(await Promise.race([calm.then(() => 'ended', () => 'failed'), sleep(100).then(() => 'running')]), 'running');
    } finally {
      ctl.abort();
      release();
      await Promise.allSettled([behind, calm]);
      store.close();
    }
  });
});
