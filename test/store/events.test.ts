import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { EVENTS_KEPT, EVENTS_KEPT_BYTES, SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { tempDir } from '../helpers/daemon.js';

function vm(uid: string, namespace = 'ns'): MicroVM {
  return {
    uid, version: 1,
    spec: {
      name: 'web', namespace, labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
  };
}

describe('SqliteStore event log (WatchEvents cursor)', () => {
  const tmp = tempDir('events');
  after(() => tmp.remove());

  it('logs each change in its transaction, with ids that survive a reopen and are never reused', () => {
    const path = join(tmp.path, 'a.db');
    let store = new SqliteStore(path);
    let notified = 0;
    store.subscribe(() => notified++);
    store.insert(vm('01A'));
    store.update('01A', (cur) => ({ ...cur, status: { ...cur.status, state: 'CREATED', power: 'RUNNING' } }));
    store.update('01A', () => undefined);
    store.insert(vm('01B', 'other'));
    store.update('01A', (cur) => ({ ...cur, status: { ...cur.status, power: 'STOPPED' } }));
    assert.equal(notified, 4, 'a no-op update is no change');
    const all = store.eventsAfter(0, {}, 100);
    assert.deepEqual(all.map((e) => [e.id, e.type, e.vm.uid]), [[1, 'CREATED', '01A'], [2, 'UPDATED', '01A'], [3, 'CREATED', '01B'], [4, 'UPDATED', '01A']]);
    assert.deepEqual(all[1]?.previous, { state: 'PENDING', power: undefined });
    assert.equal(all[1]?.vm.status.state, 'CREATED');
    assert.deepEqual(all[3]?.previous, { state: 'CREATED', power: 'RUNNING' });
    assert.deepEqual(store.eventsAfter(1, { uid: '01A' }, 100).map((e) => e.id), [2, 4]);
    assert.deepEqual(store.eventsAfter(0, { namespace: 'other' }, 100).map((e) => e.id), [3]);
    store.close();

    // A restart: the log is where it was; a client resuming after 2 sees 3, 4 and what follows.
    store = new SqliteStore(path);
    assert.equal(store.lastEventId(), 4);
    store.remove('01B');
    const resumed = store.eventsAfter(2, {}, 100);
    assert.deepEqual(resumed.map((e) => [e.id, e.type, e.vm.uid]), [[3, 'CREATED', '01B'], [4, 'UPDATED', '01A'], [5, 'DELETED', '01B']]);
    store.bury({ uid: '01A', namespace: 'ns', name: 'web', droppedAt: '2026-01-01T00:00:00.000Z', reason: 'test' });
    assert.deepEqual(store.eventsAfter(5, {}, 100).map((e) => [e.id, e.type, e.vm.uid]), [[6, 'DELETED', '01A']]);
    store.close();
  });

  it('keeps the newest events (EVENTS_KEPT by default) and says which is the oldest kept', () => {
    assert.equal(EVENTS_KEPT, 10_000);
    const kept = 300;
    const store = new SqliteStore(join(tmp.path, 'b.db'), { eventsKept: kept });
    store.insert(vm('01C'));
    for (let i = 0; i < kept + 50; i++) store.update('01C', (cur) => ({ ...cur, status: { ...cur.status, retry: i + 1 } }));
    const last = store.lastEventId();
    assert.equal(last, kept + 51);
    const oldest = store.oldestEventId() ?? 0;
    assert.ok(oldest > 1 && last - oldest + 1 >= kept && last - oldest + 1 <= kept + kept / 100, `kept ${oldest}..${last}`);
    store.close();
  });

  it('keeps fewer events when their records are large: about eventsKeptBytes of them, never fewer than a step', () => {
    assert.equal(EVENTS_KEPT_BYTES, 256 * 1024 * 1024);
    const store = new SqliteStore(join(tmp.path, 'd.db'), { eventsKept: 1000, eventsKeptBytes: 2 * 1024 * 1024 });
    const large = (n: number) => ({ ...vm(`01L${n}`), spec: { ...vm(`01L${n}`).spec, metadata: { 'user-data': 'x'.repeat(100 * 1024) } } });
    for (let n = 0; n < 80; n++) store.insert(large(n));
    const kept = store.eventsAfter(0, {}, 1000);
    const bytes = kept.reduce((sum, e) => sum + JSON.stringify(e.vm).length, 0);
    // 80 events of about 100 KiB: 2 MiB of them kept, and up to a step (10) more between prunes.
    assert.ok(bytes <= 3.2 * 1024 * 1024, `${kept.length} events kept, ${(bytes / 1048576).toFixed(1)} MiB of records`);
    assert.ok(kept.length >= 10, `${kept.length} events kept`);
    assert.equal(kept.at(-1)?.id, store.lastEventId(), 'the newest are the ones kept');
    // Small records again: the log grows back toward eventsKept.
    for (let i = 0; i < 400; i++) store.update('01L79', (cur) => ({ ...cur, spec: { ...cur.spec, metadata: {} }, status: { ...cur.status, retry: i + 1 } }));
    assert.ok(store.eventsAfter(0, {}, 1000).length > 300, 'small events are kept by count again');
    store.close();
  });

  it('a schema 2 store gains the log on upgrade and keeps its records', () => {
    const path = join(tmp.path, 'c.db');
    const old = new SqliteStore(path);
    old.insert(vm('01D'));
    old.close();
    const db = new Database(path);
    db.exec('DROP TABLE events');
    db.pragma('user_version = 2');
    db.close();
    const store = new SqliteStore(path);
    assert.equal(store.get('01D')?.uid, '01D');
    store.update('01D', (cur) => ({ ...cur, status: { ...cur.status, retry: 1 } }));
    assert.equal(store.eventsAfter(0, {}, 10).length, 1);
    store.close();
  });
});
