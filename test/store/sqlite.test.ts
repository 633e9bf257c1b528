import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { tempDir } from '../helpers/daemon.js';

function vm(uid: string, namespace: string, name: string): MicroVM {
  return {
    uid,
    version: 1,
    spec: {
      name, namespace, labels: { a: 'b' }, vcpu: 2, memoryInMb: 1024,
      kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: { console: 'ttyS0' }, addNetworkConfig: true },
      rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r:1' }, sizeInMb: 2048 },
      additionalVolumes: [], interfaces: [{ deviceId: 'eth1', type: 'TAP', guestMac: '02:00:00:00:00:01' }],
      metadata: { 'meta-data': 'aW5zdGFuY2VfaWQ6IHgK' }, provider: 'qemu', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:00:00.000Z',
  };
}

const strace = spawnSync('strace', ['-V']).status === 0;

/** The two indexes of schema 2 a store of this release no longer keeps. */
const UNREAD_INDEXES = 'CREATE INDEX microvms_namespace_name ON microvms (namespace, name); CREATE INDEX microvms_name ON microvms (name);';

function indexesOf(db: Database.Database): string[] {
  return db.prepare<[], string>("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'microvms' ORDER BY name").pluck().all();
}

describe('SqliteStore', () => {
  const tmp = tempDir('store');
  after(() => tmp.remove());

  it('reads back identical records after reopening, filters lists, bumps versions by one', () => {
    const path = join(tmp.path, 'a.db');
    const s = new SqliteStore(path);
    s.insert(vm('01A', 'x', 'one'));
    s.insert(vm('01B', 'y', 'one'));
    s.insert(vm('01C', 'y', 'two'));
    const updated = s.update('01B', (cur) => ({ ...cur, status: { ...cur.status, state: 'CREATED' } }));
    assert.equal(updated?.version, 2);
    assert.equal(s.update('01B', () => undefined)?.version, 2, 'no change, no new version');
    assert.equal(s.update('nope', (c) => c), undefined);
    s.close();
    const r = new SqliteStore(path);
    assert.deepEqual(r.get('01A'), vm('01A', 'x', 'one'));
    assert.equal(r.get('01B')?.status.state, 'CREATED');
    assert.deepEqual(r.list({}).map((v) => v.uid), ['01A', '01B', '01C']);
    assert.deepEqual(r.list({ namespace: 'y' }).map((v) => v.uid), ['01B', '01C']);
    assert.deepEqual(r.list({ name: 'one' }).map((v) => v.uid), ['01A', '01B']);
    assert.deepEqual(r.list({ namespace: 'y', name: 'two' }).map((v) => v.uid), ['01C']);
    assert.equal(r.remove('01A'), true);
    assert.equal(r.remove('01A'), false);
    r.close();
  });

  it('loses no update when four processes bump one record at the same time', async () => {
    const path = join(tmp.path, 'race.db');
    const s = new SqliteStore(path);
    s.insert(vm('01R', 'x', 'race'));
    s.close();
    const worker = fileURLToPath(new URL('./bump-worker.ts', import.meta.url));
    const runs = Array.from({ length: 4 }, () =>
      new Promise<number | null>((resolve) => {
        const p = spawn(process.execPath, ['--import', 'tsx', worker, path, '01R', '150'], { stdio: 'inherit' });
        p.once('exit', resolve);
      }),
    );
    assert.deepEqual(await Promise.all(runs), [0, 0, 0, 0]);
    const r = new SqliteStore(path);
    const got = r.get('01R');
    r.close();
    assert.equal(got?.spec.labels.n, '600');
    assert.equal(got?.version, 601);
  });

  it('keeps every update committed without waiting for the disk when the process is killed -9', async () => {
    const path = join(tmp.path, 'observed.db');
    const s = new SqliteStore(path);
    s.insert(vm('01O', 'x', 'observed'));
    s.close();
    const worker = fileURLToPath(new URL('./bump-worker.ts', import.meta.url));
    const p = spawn(process.execPath, ['--import', 'tsx', worker, path, '01O', '50', 'observed'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => p.once('exit', (_code, sig) => resolve(sig)));
    await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => d.toString().includes('done') && resolve()));
    p.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    const r = new SqliteStore(path);
    const got = r.get('01O');
    assert.equal(got?.spec.labels.n, '50');
    assert.equal(got?.version, 51);
    r.close();
  });

  it('syncs the disk for each durable update and not for updates made without waiting for it', { skip: strace ? false : 'needs strace' }, async () => {
    const worker = fileURLToPath(new URL('./bump-worker.ts', import.meta.url));
    const syncs = async (mode: string) => {
      const path = join(tmp.path, `syncs-${mode}.db`);
      const s = new SqliteStore(path);
      s.insert(vm('01S', 'x', 'syncs'));
      s.close();
      const trace = join(tmp.path, `syncs-${mode}.trace`);
      const p = spawn('strace', ['-f', '-qq', '-e', 'trace=fsync,fdatasync', '-o', trace, process.execPath, '--import', 'tsx', worker, path, '01S', '40', mode], { stdio: 'inherit' });
      assert.equal(await new Promise((resolve) => p.once('exit', resolve)), 0);
      const r = new SqliteStore(path);
      assert.equal(r.get('01S')?.spec.labels.n, '40');
      r.close();
      return readFileSync(trace, 'utf8').split('\n').filter((l) => /\bf(data)?sync\(/.test(l) && !/resumed/.test(l)).length;
    };
    const durable = await syncs('durable');
    const observed = await syncs('observed-close');
    assert.ok(durable >= 40, `40 durable updates made ${durable} syncs`);
    assert.ok(observed < 10, `40 updates without waiting for the disk made ${observed} syncs`);
  });

  it('drops the schema-2 indexes nothing reads, and answers every filtered read from an index in uid order', () => {
    const path = join(tmp.path, 'indexes.db');
    const old = new Database(path);
    old.pragma('journal_mode = WAL');
    old.exec(`CREATE TABLE microvms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL);
      ${UNREAD_INDEXES}
      CREATE TABLE tombstones (uid TEXT PRIMARY KEY, record TEXT NOT NULL);`);
    old.pragma('user_version = 2');
    const ins = old.prepare('INSERT INTO microvms VALUES (?, ?, ?, 1, ?, ?)');
    for (const [uid, ns, name] of [['01A', 'x', 'one'], ['01B', 'y', 'one'], ['01C', 'y', 'two']] as const) ins.run(uid, ns, name, 'CREATED', JSON.stringify(vm(uid, ns, name)));
    old.close();
    // Every statement the store prepares from here on, so the plans checked are its own queries.
    const prepared = new Set<string>();
    const prepare = Database.prototype.prepare;
    Database.prototype.prepare = function (this: Database.Database, sql: string) {
      prepared.add(sql);
      return prepare.call(this, sql);
    } as typeof prepare;
    let s: SqliteStore;
    try {
      s = new SqliteStore(path);
      for (const filter of [{}, { namespace: 'y' }, { name: 'one' }, { namespace: 'y', name: 'one' }]) {
        for (const page of [{}, { after: '01A', limit: 1 }]) {
          assert.deepEqual([...s.encodedRecords(filter, page)].map((r) => r.uid), s.page(filter, page).map((v) => v.uid));
          assert.deepEqual(s.uids(filter, page), s.page(filter, page).map((v) => v.uid));
        }
        s.list(filter);
      }
    } finally {
      Database.prototype.prepare = prepare;
    }
    s.close();
    const db = new Database(path, { readonly: true });
    try {
      assert.deepEqual(indexesOf(db), ['microvms_name_uid', 'microvms_namespace_uid', 'sqlite_autoindex_microvms_1']);
      const reads = [...prepared].filter((q) => /^SELECT .* FROM microvms\b.* WHERE .*\b(namespace|name) = .* ORDER BY (m\.)?uid/.test(q));
      assert.ok(reads.length >= 6 && reads.some((q) => /microvm_wire/.test(q)), `the filtered reads were seen: ${reads.join('; ')}`);
      for (const q of reads) {
        const params = Object.fromEntries([...q.matchAll(/@(\w+)/g)].map((m) => [m[1], m[1] === 'limit' ? 1 : 'a']));
        const anon = (q.match(/\?/g) ?? []).map(() => 'a');
        const plan = (db.prepare(`EXPLAIN QUERY PLAN ${q}`).all(...(anon.length ? anon : [params])) as { detail: string }[]).map((r) => r.detail).join('; ');
        const leading = /\bname = /.test(q) ? 'name' : 'namespace';
        assert.match(plan, new RegExp(`^SEARCH (microvms|m) USING (COVERING )?INDEX microvms_${leading}_uid \\(${leading}=\\?`), `${q}: ${plan}`);
        // The bytes of each record found, by their key.
        if (/microvm_wire/.test(q)) assert.match(plan, /; SEARCH w USING INDEX sqlite_autoindex_microvm_wire_1 \(uid=\?\)$/, `${q}: ${plan}`);
        assert.doesNotMatch(plan, /TEMP B-TREE/, `${q}: ${plan}`);
      }
    } finally {
      db.close();
    }
  });

  it('drops them from a store of the current schema too, and opens without waiting while another process holds the write lock', () => {
    // The store as the release before this one left it: this schema, with both indexes.
    const path = join(tmp.path, 'indexes-current.db');
    const made = new SqliteStore(path);
    made.insert(vm('01A', 'x', 'one'));
    made.close();
    const raw = new Database(path);
    raw.exec(UNREAD_INDEXES);
    // Another process writing: BEGIN IMMEDIATE holds the write lock until ROLLBACK.
    raw.exec('BEGIN IMMEDIATE');
    try {
      const started = Date.now();
      const s = new SqliteStore(path);
      assert.ok(Date.now() - started < 4000, 'the drop did not wait out the 5 s busy timeout');
      assert.deepEqual(s.list({ name: 'one' }).map((v) => v.uid), ['01A'], 'the store reads as before');
      s.close();
      assert.deepEqual(indexesOf(raw), ['microvms_name', 'microvms_name_uid', 'microvms_namespace_name', 'microvms_namespace_uid', 'sqlite_autoindex_microvms_1'], 'left for a later open');
    } finally {
      raw.exec('ROLLBACK');
    }
    new SqliteStore(path).close();
    assert.deepEqual(indexesOf(raw), ['microvms_name_uid', 'microvms_namespace_uid', 'sqlite_autoindex_microvms_1']);
    raw.close();
  });

  it('refuses a store written by a newer schema instead of misreading it', () => {
    const path = join(tmp.path, 'new.db');
    new SqliteStore(path).close();
    const db = new Database(path);
    db.pragma('user_version = 99');
    db.close();
    assert.throws(() => new SqliteStore(path), /newer matchlock \(schema 99/);
  });

  it('beforeUpgrade sees the uids of a schema-1 store (no tombstones table) and a refusal from it leaves the store unupgraded', () => {
    const path = join(tmp.path, 'schema1.db');
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE microvms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL)');
    db.prepare('INSERT INTO microvms VALUES (?, ?, ?, 1, ?, ?)').run('01OLD', 'ns', 'a', 'CREATED', JSON.stringify(vm('01OLD', 'ns', 'a')));
    db.pragma('user_version = 1');
    db.close();
    let seen: string[] = [];
    assert.throws(
      () => new SqliteStore(path, { beforeUpgrade: (uids) => {
        seen = [...uids];
        throw new Error('refused before the upgrade');
      } }),
      /refused before the upgrade/,
    );
    assert.deepEqual(seen, ['01OLD']);
    const after = new Database(path, { readonly: true });
    try {
      assert.equal(after.pragma('user_version', { simple: true }), 1);
      assert.deepEqual(after.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all(), ['microvms']);
    } finally {
      after.close();
    }
  });

  it('a store another connection holds in EXCLUSIVE locking mode is reported held, not damaged', () => {
    const path = join(tmp.path, 'held.db');
    const first = new SqliteStore(path);
    first.insert(vm('01HELD0000000000000000000A', 'ns', 'a'));
    first.close();
    // What matchlockd does on a full state dir: EXCLUSIVE locking mode before the first read.
    const holder = new Database(path);
    try {
      holder.pragma('locking_mode = EXCLUSIVE');
      holder.pragma('journal_mode = WAL');
      holder.prepare('SELECT count(*) FROM microvms').get();
      assert.throws(() => new SqliteStore(path), (err: Error) => {
        assert.match(err.message, /is held by another process \(SQLITE_BUSY\)/);
        assert.doesNotMatch(err.message, /damaged|move it aside/);
        return true;
      });
    } finally {
      holder.close();
    }
    const again = new SqliteStore(path);
    assert.equal(again.list({}).length, 1, 'nothing was changed');
    again.close();
  });
});
