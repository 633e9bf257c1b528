import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { MatchlockError, ErrorCode } from '../../../core/errors.js';
import type { MicroVM } from '../../../core/microvm/types.js';
import type { ListFilter, Store, Tombstone, Tombstones } from '../../../core/ports.js';

// 2: tombstones of records dropped without a finished teardown.
const SCHEMA_VERSION = 2;

/**
 * MicroVM records in one SQLite file. WAL with synchronous=FULL: a call that returned has been
 * fsynced, so a kill -9 at any point loses nothing that a client was told about. Each record is
 * a JSON document with its indexed columns beside it.
 */
export class SqliteStore implements Store, Tombstones {
  private readonly db: Database.Database;
  private readonly stmts;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    try {
      this.db = new Database(path);
    } catch (err) {
      throw new MatchlockError(ErrorCode.Unavailable, `cannot open the store at ${path}: ${(err as Error).message}`, { cause: err });
    }
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    this.stmts = {
      insert: this.db.prepare(
        'INSERT INTO microvms (uid, namespace, name, version, state, record) VALUES (@uid, @namespace, @name, @version, @state, @record)',
      ),
      get: this.db.prepare<[string], { record: string }>('SELECT record FROM microvms WHERE uid = ?'),
      listAll: this.db.prepare<[], { record: string }>('SELECT record FROM microvms ORDER BY uid'),
      listNs: this.db.prepare<[string], { record: string }>('SELECT record FROM microvms WHERE namespace = ? ORDER BY uid'),
      listName: this.db.prepare<[string], { record: string }>('SELECT record FROM microvms WHERE name = ? ORDER BY uid'),
      listNsName: this.db.prepare<[string, string], { record: string }>(
        'SELECT record FROM microvms WHERE namespace = ? AND name = ? ORDER BY uid',
      ),
      update: this.db.prepare(
        'UPDATE microvms SET version = @version, state = @state, record = @record WHERE uid = @uid AND version = @previous',
      ),
      remove: this.db.prepare<[string]>('DELETE FROM microvms WHERE uid = ?'),
      bury: this.db.prepare<[string, string]>('INSERT OR REPLACE INTO tombstones (uid, record) VALUES (?, ?)'),
      tombstone: this.db.prepare<[string], { record: string }>('SELECT record FROM tombstones WHERE uid = ?'),
      tombstones: this.db.prepare<[], { record: string }>('SELECT record FROM tombstones ORDER BY uid'),
      forget: this.db.prepare<[string]>('DELETE FROM tombstones WHERE uid = ?'),
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    if (current > SCHEMA_VERSION) {
      throw new MatchlockError(
        ErrorCode.FailedPrecondition,
        `the store was written by a newer matchlock (schema ${current}, this one knows ${SCHEMA_VERSION}); upgrade matchlock`,
      );
    }
    if (current === SCHEMA_VERSION) return;
    this.db.transaction(() => {
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS microvms (
          uid TEXT PRIMARY KEY,
          namespace TEXT NOT NULL,
          name TEXT NOT NULL,
          version INTEGER NOT NULL,
          state TEXT NOT NULL,
          record TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS microvms_namespace_name ON microvms (namespace, name);
        CREATE INDEX IF NOT EXISTS microvms_name ON microvms (name);
        CREATE TABLE IF NOT EXISTS tombstones (
          uid TEXT PRIMARY KEY,
          record TEXT NOT NULL
        );
      `);
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
  }

  insert(vm: MicroVM): void {
    this.stmts.insert.run(row(vm));
  }

  get(uid: string): MicroVM | undefined {
    const r = this.stmts.get.get(uid);
    return r ? parse(r.record) : undefined;
  }

  list(filter: ListFilter): MicroVM[] {
    const ns = filter.namespace ?? '';
    const name = filter.name ?? '';
    const rows =
      ns && name ? this.stmts.listNsName.all(ns, name)
      : ns ? this.stmts.listNs.all(ns)
      : name ? this.stmts.listName.all(name)
      : this.stmts.listAll.all();
    return rows.map((r) => parse(r.record));
  }

  update(uid: string, change: (current: MicroVM) => MicroVM | undefined): MicroVM | undefined {
    // IMMEDIATE takes the write lock before reading, so another process cannot slip a write
    // between this read and this write.
    return this.db
      .transaction((): MicroVM | undefined => {
        const r = this.stmts.get.get(uid);
        if (!r) return undefined;
        const current = parse(r.record);
        const changed = change(current);
        if (changed === undefined) return current;
        const next: MicroVM = { ...changed, uid, version: current.version + 1 };
        const res = this.stmts.update.run({ ...row(next), previous: current.version });
        if (res.changes !== 1) throw new MatchlockError(ErrorCode.Aborted, `microvm ${uid} changed during an update; retry`);
        return next;
      })
      .immediate();
  }

  remove(uid: string): boolean {
    return this.stmts.remove.run(uid).changes > 0;
  }

  bury(t: Tombstone): void {
    this.db.transaction(() => {
      this.stmts.bury.run(t.uid, JSON.stringify(t));
      this.stmts.remove.run(t.uid);
    }).immediate();
  }

  tombstone(uid: string): Tombstone | undefined {
    const r = this.stmts.tombstone.get(uid);
    return r ? (JSON.parse(r.record) as Tombstone) : undefined;
  }

  tombstones(): Tombstone[] {
    return this.stmts.tombstones.all().map((r) => JSON.parse(r.record) as Tombstone);
  }

  forget(uid: string): void {
    this.stmts.forget.run(uid);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function row(vm: MicroVM): Record<string, string | number> {
  return {
    uid: vm.uid,
    namespace: vm.spec.namespace,
    name: vm.spec.name,
    version: vm.version,
    state: vm.status.state,
    record: JSON.stringify(vm),
  };
}

function parse(record: string): MicroVM {
  return JSON.parse(record) as MicroVM;
}
