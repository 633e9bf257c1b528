// What the speed of Get and List rests on: each record's wire bytes kept beside it (and never
// out of step with it), a stream that pages instead of loading every record, and creates that
// never run reconcile work before they answer.
import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { encodeMicroVM, specInput, toWire, WIRE_FORMAT } from '../../src/adapters/api/convert.js';
import { serviceDefinition } from '../../src/adapters/api/grpc/service-def.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { seededUid, storedMicroVM } from '../helpers/records.js';
import { ReconcileQueue } from '../../src/core/reconcile/queue.js';
import {
  CreateMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  GetMicroVMResponseSchema,
  ListMessageSchema,
  ListMicroVMsRequestSchema,
  ListMicroVMsResponseSchema,
  MicroVM as MicroVMServiceDesc,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema } from '../../src/gen/types/microvm_pb.js';
import { silentLogger } from '../fakes/memory-store.js';
import { grpcApiOver, serviceOver } from '../helpers/api-server.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { validSpec } from '../helpers/client.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;


let seq = 0;
function record(namespace: string, name: string, fill = 0): MicroVM {
  return storedMicroVM(seededUid(seq++), {
    name, namespace, labels: { role: 'worker' },
    kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: { console: 'ttyS0' }, addNetworkConfig: true },
    rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r:1' }, sizeInMb: 2048 },
    interfaces: [{ deviceId: 'eth1', type: 'TAP', guestMac: '02:00:00:00:00:01' }],
    metadata: { 'meta-data': 'aW5zdGFuY2VfaWQ6IHgK', 'user-data': Buffer.from('x'.repeat(fill)).toString('base64') },
  });
}

/** Writes records the way a store of schema 2 (before the wire bytes) holds them. */
function seedSchema2(path: string, vms: MicroVM[]): void {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(`CREATE TABLE microvms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL);
    CREATE INDEX microvms_namespace_name ON microvms (namespace, name);
    CREATE INDEX microvms_name ON microvms (name);
    CREATE TABLE tombstones (uid TEXT PRIMARY KEY, record TEXT NOT NULL);`);
  db.pragma('user_version = 2');
  const ins = db.prepare('INSERT INTO microvms (uid, namespace, name, version, state, record) VALUES (?, ?, ?, ?, ?, ?)');
  db.transaction(() => {
    for (const vm of vms) ins.run(vm.uid, vm.spec.namespace, vm.spec.name, vm.version, vm.status.state, JSON.stringify(vm));
  })();
  db.close();
}

function columnsOf(db: Database.Database): Set<string> {
  return new Set((db.pragma('table_info(microvms)') as { name: string }[]).map((c) => c.name));
}

/** Runs `fn` while another connection holds the store's write lock (BEGIN IMMEDIATE), as a writing process would. */
function whileWriteLocked(path: string, fn: () => void): void {
  const holder = new Database(path);
  holder.exec('BEGIN IMMEDIATE');
  try {
    fn();
  } finally {
    holder.exec('ROLLBACK');
    holder.close();
  }
}

/**
 * The release before `microvm_wire` kept each record's bytes in its own row: `microvms.wire`,
 * with the version they were made for in `wire_version`. Writes what its open and its writes
 * leave: every row's bytes filled.
 */
function fillWireColumns(path: string): void {
  const db = new Database(path);
  if (!columnsOf(db).has('wire')) db.exec('ALTER TABLE microvms ADD COLUMN wire BLOB; ALTER TABLE microvms ADD COLUMN wire_version INTEGER');
  db.exec("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
  db.prepare("INSERT OR REPLACE INTO store_meta (key, value) VALUES ('wire_format', ?)").run(WIRE_FORMAT);
  const set = db.prepare('UPDATE microvms SET wire = ?, wire_version = version WHERE uid = ?');
  for (const r of db.prepare<[], { uid: string; record: string }>('SELECT uid, record FROM microvms WHERE wire IS NULL').all()) set.run(encodeMicroVM(JSON.parse(r.record) as MicroVM), r.uid);
  db.close();
}

/**
 * Every record's bytes, from Get and from List, are what protobuf-es makes of the record, and
 * the table holds no others; bytes the release before reads as current (`wire_version` the
 * record's version) are right too. Returns how many records that release would read so.
 */
function inLine(path: string, uids: string[]): number {
  const s = new SqliteStore(path);
  try {
    const vms = s.list({});
    assert.deepEqual(vms.map((v) => v.uid), [...uids].sort());
    const want = vms.map((vm) => Buffer.from(toBinary(MicroVMSchema, toWire(vm))));
    assert.deepEqual(vms.map((vm) => Buffer.from(s.encoded(vm.uid) ?? [])), want);
    assert.deepEqual([...s.encodedRecords({})].map((r) => Buffer.from(r.encoded)), want);
  } finally {
    s.close();
  }
  const db = new Database(path, { readonly: true });
  try {
    assert.deepEqual(db.prepare<[], string>('SELECT uid FROM microvm_wire ORDER BY uid').pluck().all(), [...uids].sort(), 'a row of bytes for each record, none for records gone');
    if (!columnsOf(db).has('wire')) return 0;
    const current = db.prepare<[], { uid: string; record: string; wire: Buffer }>('SELECT uid, record, wire FROM microvms WHERE wire IS NOT NULL AND wire_version = version').all();
    for (const r of current) assert.deepEqual(r.wire, Buffer.from(toBinary(MicroVMSchema, toWire(JSON.parse(r.record) as MicroVM))), `the release before's bytes of ${r.uid}`);
    return current.length;
  } finally {
    db.close();
  }
}

/** A client whose answers stay bytes, so they are compared as the server sent them. */
function bytesClient(target: string) {
  const def = serviceDefinition(MicroVMServiceDesc) as Record<string, grpc.MethodDefinition<unknown, unknown>>;
  for (const m of Object.values(def)) m.responseDeserialize = (b: Buffer) => b;
  const Ctor = grpc.makeGenericClientConstructor(def, 'MicroVM');
  const client = new Ctor(target, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 }) as unknown as Record<string, (...a: unknown[]) => grpc.ClientReadableStream<Buffer>> & grpc.Client;
  const call = (method: string, req: unknown): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      client[method]?.call(client, req, (err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res)));
    });
  const stream = (req: unknown, onMessage: (b: Buffer) => void): Promise<void> =>
    new Promise((resolve, reject) => {
      const s = client.listMicroVMsStream?.call(client, req);
      s?.on('data', onMessage);
      s?.on('end', () => resolve());
      s?.on('error', reject);
    });
  return { call, stream, close: () => client.close() };
}

const expected = {
  get: (vm: MicroVM) => Buffer.from(toBinary(GetMicroVMResponseSchema, create(GetMicroVMResponseSchema, { microvm: toWire(vm) }))),
  list: (vms: MicroVM[]) => Buffer.from(toBinary(ListMicroVMsResponseSchema, create(ListMicroVMsResponseSchema, { microvm: vms.map(toWire) }))),
  message: (vm: MicroVM) => Buffer.from(toBinary(ListMessageSchema, create(ListMessageSchema, { microvm: toWire(vm) }))),
};

describe('stored wire bytes', () => {
  const tmp = tempDir('encoded');
  after(() => tmp.remove());

  it('are what protobuf-es makes of the record, after every insert and update, in Get, List and reopen', () => {
    const s = new SqliteStore(join(tmp.path, 'a.db'));
    const a = record('x', 'one');
    const b = record('y', 'two');
    s.insert(a);
    s.insert(b);
    const same = (uid: string) => {
      const vm = s.get(uid);
      assert.ok(vm);
      assert.deepEqual(Buffer.from(s.encoded(uid) ?? []), Buffer.from(toBinary(MicroVMSchema, toWire(vm))), `bytes of ${uid} v${vm.version}`);
    };
    same(a.uid);
    s.update(a.uid, (cur) => ({ ...cur, status: { ...cur.status, state: 'CREATED', vmmPid: 42, guestBooted: true, imageDigests: { 'k:1': 'sha256:aa' } } }));
    same(a.uid);
    s.update(a.uid, (cur) => ({ ...cur, status: { ...cur.status, state: 'DELETING' }, deletedAt: '2026-01-02T00:00:00.000Z' }));
    same(a.uid);
    assert.deepEqual([...s.encodedRecords({})].map((r) => Buffer.from(r.encoded)), s.list({}).map((vm) => Buffer.from(toBinary(MicroVMSchema, toWire(vm)))));
    assert.deepEqual([...s.encodedRecords({ namespace: 'y' })].map((r) => r.uid), [b.uid]);
    s.close();
    const r = new SqliteStore(join(tmp.path, 'a.db'));
    assert.equal(r.get(a.uid)?.status.state, 'DELETING');
    assert.deepEqual(Buffer.from(r.encoded(a.uid) ?? []), Buffer.from(toBinary(MicroVMSchema, toWire(r.get(a.uid) as MicroVM))));
    r.close();
  });

  it('are read only once iterated, and a read left part-way or never started holds nothing', () => {
    const s = new SqliteStore(join(tmp.path, 'lazy.db'));
    try {
      s.insert(record('x', 'a'));
      s.insert(record('x', 'b'));
      const unread = s.encodedRecords({ namespace: 'x' });
      s.insert(record('x', 'c'));
      for (const r of s.encodedRecords({ namespace: 'x' })) {
        assert.ok(r.encoded.length > 0);
        break;
      }
      s.insert(record('x', 'd'));
      // Read when iterated, not when asked for: it sees the records inserted since.
      assert.equal([...unread].length, 4);
      assert.equal([...s.encodedRecords({ namespace: 'x' })].length, 4);
      // Finished before it started, it stays finished and starts no read.
      const closed = s.encodedRecords({ namespace: 'x' });
      closed.return?.();
      assert.deepEqual(closed.next(), { done: true, value: undefined });
      s.insert(record('x', 'e'));
      // Removed and buried records take their bytes with them.
      const [first, second] = s.list({ namespace: 'x' });
      s.remove(first?.uid ?? '');
      s.bury({ uid: second?.uid ?? '', namespace: 'x', name: second?.spec.name ?? '', droppedAt: '2026-01-01T00:00:00.000Z', reason: 'test' });
      assert.equal([...s.encodedRecords({})].length, 3);
      assert.equal(s.encoded(first?.uid ?? ''), undefined);
      assert.equal(s.encoded(second?.uid ?? ''), undefined);
    } finally {
      s.close();
    }
  });

  it('are made for a store written before them, and remade for rows an older matchlock changed or another encoding made', () => {
    const path = join(tmp.path, 'old.db');
    const vms = [record('x', 'a'), record('x', 'b'), record('x', 'c')];
    seedSchema2(path, vms);
    const check = () => {
      const s = new SqliteStore(path);
      for (const vm of s.list({})) assert.deepEqual(Buffer.from(s.encoded(vm.uid) ?? []), Buffer.from(toBinary(MicroVMSchema, toWire(vm))), vm.uid);
      s.close();
    };
    check();
    // An older matchlock knows nothing of the wire columns: it changes the record and its version only.
    const db = new Database(path);
    const changed = { ...vms[1], version: 2, status: { ...initialStatus(), state: 'CREATED' as const } } as MicroVM;
    db.prepare('UPDATE microvms SET version = 2, state = ?, record = ? WHERE uid = ?').run('CREATED', JSON.stringify(changed), changed.uid);
    db.close();
    check();
    // Bytes made under another encoding (a field added to the messages) are all remade.
    const db2 = new Database(path);
    db2.prepare("UPDATE store_meta SET value = 'older' WHERE key = 'wire_format'").run();
    db2.prepare('UPDATE microvm_wire SET wire = x\'00\'').run();
    db2.close();
    check();
  });
});

describe('stored wire bytes across releases', () => {
  const tmp = tempDir('encoded-releases');
  after(() => tmp.remove());

  it('are copied out of the records\' rows of a store the release before wrote, remade where they were stale, and left for that release', () => {
    const path = join(tmp.path, 'before.db');
    const vms = [record('x', 'a', 3000), record('x', 'b', 3000), record('y', 'c', 3000)];
    seedSchema2(path, vms);
    fillWireColumns(path);
    // A matchlock from before the bytes (schema 2's) changed b's record after they were made:
    // its version moved past wire_version.
    const db = new Database(path);
    const b = { ...vms[1], version: 2, status: { ...initialStatus(), state: 'CREATED' as const } } as MicroVM;
    db.prepare('UPDATE microvms SET version = 2, state = ?, record = ? WHERE uid = ?').run('CREATED', JSON.stringify(b), b.uid);
    db.close();
    // The release before, its daemon still running until it is restarted, reads a and c as it
    // left them; b it would re-encode at its open.
    assert.equal(inLine(path, vms.map((v) => v.uid)), 2);
    // A record this release changes has the old bytes emptied: the release before would remake them.
    const s = new SqliteStore(path);
    s.update(vms[0]?.uid ?? '', (cur) => ({ ...cur, status: { ...cur.status, state: 'FAILED' } }));
    s.close();
    assert.equal(inLine(path, vms.map((v) => v.uid)), 1);
    const raw = new Database(path, { readonly: true });
    assert.equal(raw.prepare('SELECT wire IS NULL AND wire_version IS NULL FROM microvms WHERE uid = ?').pluck().get(vms[0]?.uid), 1);
    raw.close();
  });

  it('are left alone by a process that opens the store for its records only (matchlock inspect)', () => {
    const path = join(tmp.path, 'reader.db');
    const vms = [record('x', 'a'), record('y', 'b')];
    // A store as the release before leaves it: this schema and indexes, the bytes in the rows.
    const made = new SqliteStore(path);
    for (const vm of vms) made.insert(vm);
    made.close();
    const db = new Database(path);
    // And a list index missing, which any other open would make.
    db.exec('DROP TABLE microvm_wire; DROP INDEX microvms_name_uid');
    db.close();
    fillWireColumns(path);
    // Bringing the bytes in line would need the write lock, which the release before's daemon
    // (or a user who may only read) does not give: the open must not wait for it.
    whileWriteLocked(path, () => {
      const s = new SqliteStore(path, { recordsOnly: true });
      try {
        assert.deepEqual(s.list({}).map((v) => v.uid), vms.map((v) => v.uid).sort());
        assert.throws(() => s.encoded(vms[0]?.uid ?? ''), /opened for its records only/);
        assert.throws(() => [...s.encodedRecords({})], /opened for its records only/);
        assert.throws(() => s.insert(record('x', 'c')), /opened for its records only/);
        assert.throws(() => s.update(vms[0]?.uid ?? '', (cur) => ({ ...cur })), /opened for its records only/);
        assert.throws(() => s.forget(vms[0]?.uid ?? ''), /opened for its records only/);
      } finally {
        s.close();
      }
    });
    const raw = new Database(path, { readonly: true });
    assert.equal(raw.prepare("SELECT count(*) FROM sqlite_master WHERE name IN ('microvm_wire', 'microvms_name_uid')").pluck().get(), 0, 'nothing written');
    raw.close();
  });

  it('of the release before are marked stale for it when the encoding changed and this release remade its own', () => {
    const path = join(tmp.path, 'format.db');
    const vms = [record('x', 'a'), record('x', 'b')];
    seedSchema2(path, vms);
    fillWireColumns(path);
    // Bytes made under another encoding, which the release before reads as current by their
    // version until the format key says otherwise.
    const db = new Database(path);
    db.prepare("UPDATE store_meta SET value = 'older' WHERE key = 'wire_format'").run();
    db.prepare("UPDATE microvms SET wire = x'0a03787878'").run();
    db.close();
    assert.equal(inLine(path, vms.map((v) => v.uid)), 0);
  });

  it('are read again under the write lock before they are written, so a record changed meanwhile keeps its own', () => {
    const path = join(tmp.path, 'race.db');
    const vms = [record('x', 'a'), record('x', 'b')];
    seedSchema2(path, vms);
    // Another process changes a record while this one's open reads the page it will encode.
    const other = new Database(path);
    other.pragma('busy_timeout = 0');
    const vm = vms[0] as MicroVM;
    const changed = JSON.stringify({ ...vm, version: 2, status: { ...vm.status, state: 'CREATED' } });
    const Statement = Object.getPrototypeOf(other.prepare('SELECT 1')) as { all: (...a: unknown[]) => unknown[]; source: string };
    const all = Statement.all;
    let tried = false;
    Statement.all = function (this: typeof Statement, ...a: unknown[]) {
      const rows = all.apply(this, a);
      if (!tried && /LEFT JOIN microvm_wire/.test(this.source) && rows.length > 0) {
        tried = true;
        try {
          other.prepare('UPDATE microvms SET version = 2, state = ?, record = ? WHERE uid = ?').run('CREATED', changed, vm.uid);
        } catch (err) {
          assert.equal((err as { code?: string }).code, 'SQLITE_BUSY');
        }
      }
      return rows;
    };
    try {
      new SqliteStore(path).close();
    } finally {
      Statement.all = all;
    }
    assert.ok(tried, 'the open read a page of records to encode');
    // As the open left the store (no second open to put it right): each record's bytes are its
    // own version's, whichever write came first.
    const rows = other.prepare<[], { uid: string; version: number; record: string; bytesVersion: number; wire: Buffer }>(
      'SELECT m.uid AS uid, m.version AS version, m.record AS record, w.version AS bytesVersion, w.wire AS wire FROM microvms m JOIN microvm_wire w USING (uid)',
    ).all();
    other.close();
    assert.equal(rows.length, vms.length);
    for (const r of rows) {
      assert.equal(r.bytesVersion, r.version, r.uid);
      assert.deepEqual(r.wire, Buffer.from(toBinary(MicroVMSchema, toWire(JSON.parse(r.record) as MicroVM))), r.uid);
    }
  });

  it('are put right after the release before wrote a store this one made: records it made, changed and deleted', () => {
    const path = join(tmp.path, 'cycle.db');
    const [a, b, c, d] = [record('x', 'a'), record('x', 'b'), record('x', 'c'), record('x', 'd')] as [MicroVM, MicroVM, MicroVM, MicroVM];
    const s = new SqliteStore(path);
    for (const vm of [a, b, c]) s.insert(vm);
    s.close();
    // What that release does: its open fills every row's bytes, its writes keep them in the row.
    fillWireColumns(path);
    const db = new Database(path);
    const changed = { ...b, version: 2, status: { ...initialStatus(), state: 'CREATED' as const, vmmPid: 7 } } as MicroVM;
    db.prepare('UPDATE microvms SET version = 2, state = ?, record = ?, wire = ?, wire_version = 2 WHERE uid = ?').run('CREATED', JSON.stringify(changed), encodeMicroVM(changed), b.uid);
    db.prepare('DELETE FROM microvms WHERE uid = ?').run(c.uid);
    db.prepare('INSERT INTO microvms (uid, namespace, name, version, state, record, wire, wire_version) VALUES (?, ?, ?, 1, ?, ?, ?, 1)').run(d.uid, 'x', 'd', 'PENDING', JSON.stringify(d), encodeMicroVM(d));
    db.close();
    inLine(path, [a.uid, b.uid, d.uid]);
    // Once in line, the next open writes nothing: it opens while another connection holds the
    // write lock (a write would wait out the busy timeout and fail "database is locked").
    whileWriteLocked(path, () => inLine(path, [a.uid, b.uid, d.uid]));
  });
});

describe('the gRPC API answers from the stored bytes', () => {
  const tmp = tempDir('encoded-api');
  const RECORDS = 10_000;
  let store: SqliteStore;
  let server: Awaited<ReturnType<typeof grpcApiOver>>;
  let client: ReturnType<typeof bytesClient>;
  let vms: MicroVM[];

  before(async () => {
    vms = Array.from({ length: RECORDS }, (_, n) => record(`ns-${n % 7}`, `vm-${n % 13}`, 2048));
    const path = join(tmp.path, 'big.db');
    seedSchema2(path, vms);
    store = new SqliteStore(path);
    server = await grpcApiOver(store, tmp.path);
    client = bytesClient(server.target);
  });
  after(() => {
    client.close();
    server.stop();
    store.close();
    tmp.remove();
  });

  it('Get, List and the stream send exactly what protobuf-es encodes for the records', async () => {
    const some = store.list({ namespace: 'ns-3', name: 'vm-5' });
    assert.ok(some.length > 10);
    const first = some[0] as MicroVM;
    assert.deepEqual(await client.call('getMicroVM', create(GetMicroVMRequestSchema, { uid: first.uid })), expected.get(first));
    assert.deepEqual(await client.call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'ns-3', name: 'vm-5' })), expected.list(some));
    const streamed: Buffer[] = [];
    await client.stream(create(ListMicroVMsRequestSchema, { namespace: 'ns-3', name: 'vm-5' }), (b) => streamed.push(b));
    assert.deepEqual(streamed, some.map(expected.message));
    // A create's answer is the record it stored.
    const res = await client.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec({ id: 'fresh', namespace: 'new' }) }));
    const made = store.list({ namespace: 'new' })[0] as MicroVM;
    assert.deepEqual(res, expected.get(made));
  });

  it('streams 10,000 records without holding them all: heap growth stays far below their size', async () => {
    const total = vms.reduce((n, vm) => n + toBinary(MicroVMSchema, toWire(vm)).length, 0);
    gc();
    const used = () => {
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    const base = used();
    let peak = 0;
    let count = 0;
    // What is live (after a full GC) right after every store call and at every 1000th message
    // received: whatever the server holds at once is live at one of those points.
    const sample = () => {
      gc();
      peak = Math.max(peak, used() - base);
    };
    const s = store as unknown as Record<string, unknown>;
    const originals = new Map<string, unknown>();
    for (const name of ['list', 'page', 'encodedRecords']) {
      const fn = s[name] as ((...a: unknown[]) => unknown) | undefined;
      if (!fn) continue;
      originals.set(name, fn);
      s[name] = (...args: unknown[]) => {
        const out = fn.apply(store, args);
        sample();
        return out;
      };
    }
    try {
      await client.stream(create(ListMicroVMsRequestSchema, { namespace: '' }), () => {
        if (++count % 1000 === 0) sample();
      });
    } finally {
      for (const [name, fn] of originals) s[name] = fn;
    }
    assert.ok(count >= RECORDS, `every record streamed (${count})`);
    assert.ok(total > 20e6, `records too small to tell (${total} bytes)`);
    assert.ok(peak < total / 4, `heap grew by ${(peak / 1e6).toFixed(1)} MB while streaming ${(total / 1e6).toFixed(1)} MB of records`);
  });
});

describe('create and reconcile work', () => {
  it('a create answers before any reconcile work runs, and the queue starts one pass every second turn of the event loop', async () => {
    const store = new SqliteStore(':memory:');
    const events: string[] = [];
    let release: () => void = () => undefined;
    const long = new Promise<void>((r) => (release = r));
    const queue = new ReconcileQueue({
      workers: 4,
      logger: silentLogger,
      handler: async (uid) => {
        // A long pass: a synchronous stretch (a fork, a large encode) and then a long wait.
        events.push(`pass ${uid}`);
        const until = Date.now() + 50;
        while (Date.now() < until) {
          // busy
        }
        await long;
        return undefined;
      },
    });
    const service = serviceOver(store, (uid) => queue.enqueue(uid));
    const a = service.create(toInput('a'));
    events.push(`created ${a.uid}`);
    const b = service.create(toInput('b'));
    events.push(`created ${b.uid}`);
    assert.deepEqual(events, [`created ${a.uid}`, `created ${b.uid}`], 'no pass ran inside a create');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(events.slice(2), [], 'no pass started on the next turn, where the answers are written');
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(events.slice(2), [`pass ${a.uid}`], 'one pass started on the turn after');
    // While that pass is running (waiting), a create is still answered at once.
    const c = service.create(toInput('c'));
    events.push(`created ${c.uid}`);
    assert.equal(events.at(-1), `created ${c.uid}`);
    for (let n = 0; n < 100 && events.filter((e) => e.startsWith('pass')).length < 3; n++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(events.filter((e) => e.startsWith('pass')).sort(), [`pass ${a.uid}`, `pass ${b.uid}`, `pass ${c.uid}`].sort());
    release();
    await queue.idle();
    await queue.stop();
    store.close();
  });

  it('a create is answered in full, trailers included, before the pass it queued starts', async () => {
    // The client is another process, so it can receive the answer while this one is busy. The
    // pass, when it starts, holds the event loop until the client says it has the answer (at
    // most 10 s): an answer still partly unsent when the pass starts cannot arrive meanwhile.
    const tmp = tempDir('create-answer');
    const store = new SqliteStore(':memory:');
    const got = join(tmp.path, 'answered');
    const passes: { uid: string; answeredFirst: boolean }[] = [];
    const queue = new ReconcileQueue({
      workers: 1,
      logger: silentLogger,
      handler: (uid) => {
        const pause = new Int32Array(new SharedArrayBuffer(4));
        for (let n = 0; n < 2000 && !existsSync(got); n++) Atomics.wait(pause, 0, 0, 5);
        passes.push({ uid, answeredFirst: existsSync(got) });
        return Promise.resolve(undefined);
      },
    });
    const server = await grpcApiOver(store, tmp.path, (uid) => queue.enqueue(uid));
    try {
      const request = Buffer.from(toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, { microvm: validSpec({ id: 'answered-first' }) }))).toString('hex');
      const client = spawn(process.execPath, ['--input-type=module', '-e', ANSWER_CLIENT, server.target.slice('unix:'.length), request, got], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      client.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((r) => client.once('exit', r));
      assert.equal(code, 0, stderr);
      await queue.idle();
      const uid = store.list({ namespace: '' })[0]?.uid;
      assert.deepEqual(passes, [{ uid, answeredFirst: true }]);
    } finally {
      await queue.stop();
      server.stop();
      store.close();
      tmp.remove();
    }
  });
});

/** A unary CreateMicroVM of argv's hex request over argv's unix socket; touches argv's file once answered. */
const ANSWER_CLIENT = `
import * as grpc from '@grpc/grpc-js';
import { writeFileSync } from 'node:fs';
const [socket, hex, done] = process.argv.slice(1);
const client = new grpc.Client('unix:' + socket, grpc.credentials.createInsecure());
client.makeUnaryRequest('/microvm.services.api.v1alpha1.MicroVM/CreateMicroVM', (b) => b, (b) => b, Buffer.from(hex, 'hex'), (err) => {
  if (err) { console.error(err.message); process.exit(1); }
  writeFileSync(done, '');
  client.close();
});
`;

function toInput(name: string) {
  return specInput(validSpec({ id: name }));
}
