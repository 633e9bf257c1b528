import Database from 'better-sqlite3';
import { linkSync, lstatSync, mkdirSync, rmSync, statSync, utimesSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { MatchlockError, ErrorCode } from '../../../core/errors.js';
import type { MicroVM } from '../../../core/microvm/types.js';
import type { EncodedRecord, EventFilter, EventLog, ListFilter, PageOptions, StoredEvent, Store, Tombstone, Tombstones, UpdateOptions } from '../../../core/ports.js';
import { encodeMicroVM, WIRE_FORMAT } from '../../api/convert.js';
import { utimesSeconds } from '../../system/files.js';

// 2: tombstones of records dropped without a finished teardown.
// 3: events, the change log behind matchlock.v1's WatchEvents.
const SCHEMA_VERSION = 3;

/** How many events are kept: a client that was away longer must start again from a snapshot. */
export const EVENTS_KEPT = 10_000;

/**
 * About how many bytes of records the kept events hold at most: each event carries its whole
 * record, so 10,000 events of records near the 1 MiB metadata limit would fill 10 GB.
 */
export const EVENTS_KEPT_BYTES = 256 * 1024 * 1024;

/** Rows re-encoded per transaction when a store's wire bytes are refreshed at open. */
const REENCODE_PAGE = 500;

/**
 * MicroVM records in one SQLite file. WAL with synchronous=FULL: a call that returned has been
 * fsynced, so a kill -9 at any point loses nothing that a client was told about. Each record is
 * a JSON document with its indexed columns beside it (`microvms`), and its protobuf encoding
 * (the bytes Get and List send) a row of `microvm_wire` written in the same transaction, so the
 * two never disagree. The bytes have a table of their own so that a List reads only them: beside
 * the JSON they made rows of about 9 KB, each read through a chain of overflow pages.
 */
export class SqliteStore implements Store, Tombstones, EventLog {
  private readonly db: Database.Database;
  private readonly stmts;
  private readonly listeners = new Set<() => void>();
  private readonly eventsKept: number;
  private readonly eventsKeptBytes: number;
  /** Bytes of record per event lately (a moving average over about the last hundred): what a kept event costs. */
  private eventBytes = 0;
  /** Prepared statements of the filtered, paged reads, by their SQL. */
  private readonly paged = new Map<string, Database.Statement>();
  /**
   * The write transactions, made once: db.transaction() builds four wrapper functions and their
   * properties on every call, and each new wrapper starts without type feedback, so a
   * transaction made per call ran its wrapper in the interpreter every time.
   */
  private readonly inserting;
  private readonly updating;
  private readonly removing;
  private readonly burying;
  /** The statements of `microvm_wire`; undefined in a store opened for its records only. */
  private readonly wire;

  /**
   * Set when the store was opened in EXCLUSIVE locking mode because its -shm file could not be
   * made (a full file system): the SQLite error that forced it.
   */
  readonly exclusive: string | undefined;

  /**
   * `eventsKept`: how many events the log keeps (EVENTS_KEPT; pruned in steps of a hundredth).
   * `eventsKeptBytes`: fewer when their records are large: as many as fit this many bytes at
   * the recent record size (EVENTS_KEPT_BYTES), but never fewer than a step of pruning.
   * `exclusiveWhenFull`: open a store whose -shm file cannot be made (a full file system) in
   * EXCLUSIVE locking mode, see `exclusive`. `beforeUpgrade`: called, once the store is open
   * and found intact, with the uids of its records and tombstones (of any older schema), before
   * anything in it is changed; what it throws is thrown and the store is left as it was.
   * `recordsOnly`: for a process that reads records and does not serve them (`matchlock
   * inspect`, the image commands' check of what is in use): neither the wire bytes nor the
   * indexes are brought in line at open, which may need writes such a process cannot or should
   * not make (a store the release before wrote, opened by a user who may only read it, or while
   * that release's daemon still serves from it), so a store of the current schema is not
   * written (an older schema is still upgraded first); `encoded`, `encodedRecords` and every
   * write (`forget` too) then throw FailedPrecondition.
   */
  constructor(private readonly path: string, opts: { eventsKept?: number; eventsKeptBytes?: number; exclusiveWhenFull?: boolean; beforeUpgrade?: (recorded: Set<string>) => void; recordsOnly?: boolean } = {}) {
    this.eventsKept = opts.eventsKept ?? EVENTS_KEPT;
    this.eventsKeptBytes = opts.eventsKeptBytes ?? EVENTS_KEPT_BYTES;
    if (path !== ':memory:') {
      mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
      const st = statSync(path, { throwIfNoEntry: false });
      if (st === undefined) createAtomically(path);
      // Checked before SQLite sees it: opening an empty file in WAL mode would write a header.
      else if (st.size === 0) throw damaged(path, 'the file is empty (0 bytes); a store matchlock made never is');
    }
    try {
      this.db = open(path, false);
    } catch (err) {
      // A WAL store's first reader makes its -shm file, which SQLite fills page by page to
      // avoid SIGBUS: on a full file system that fails (SQLITE_IOERR_SHMSIZE, or SQLITE_FULL).
      // In EXCLUSIVE locking mode SQLite keeps the WAL index in this process's memory instead
      // and needs no -shm: the store opens and is read; writes fail SQLITE_FULL until there is
      // room, answered ResourceExhausted by writing(). Only for the daemon, which holds the
      // state dir's lock anyway: no other process (matchlock inspect) can read the store
      // while it is open so.
      if (!opts.exclusiveWhenFull || !noRoomAtOpen(err)) throw openFailed(path, err);
      try {
        this.db = open(path, true);
      } catch (again) {
        throw openFailed(path, again);
      }
      this.exclusive = `${(err as { code?: string }).code ?? (err as Error).message}: ${(err as Error).message}`;
    }
    // Whether the store has the columns in which the release before kept each record's bytes
    // (this one never adds them); read once the schema is current.
    let legacyColumns = false;
    try {
      // A refusal the caller makes from what the store records comes before the store is
      // upgraded (or its indexes and wire bytes added): a refused start leaves a store the
      // matchlock it came from can open again.
      if (opts.beforeUpgrade) {
        newerSchema(this.db.pragma('user_version', { simple: true }) as number);
        opts.beforeUpgrade(recordedUids(this.db));
      }
      this.migrate();
      legacyColumns = hasColumn(this.db, 'microvms', 'wire_version');
      if (!opts.recordsOnly) {
        ensureWire(this.db, legacyColumns);
        ensureIndexes(this.db);
      }
    } catch (err) {
      // An up-to-date store writes nothing here; an older one needs room to be upgraded.
      this.db.close();
      const full = storeFull(path, err);
      throw full ? new MatchlockError(ErrorCode.ResourceExhausted, `the store ${path} must be upgraded by this matchlock, which needs space its full file system does not have (ENOSPC); its records were not changed. Free space in the state dir and start again`, { cause: err }) : err;
    }
    this.wire = opts.recordsOnly ? undefined : {
      insert: this.db.prepare('INSERT INTO microvm_wire (uid, version, wire) VALUES (@uid, @version, @wire)'),
      get: this.db.prepare<[string], Buffer>('SELECT wire FROM microvm_wire WHERE uid = ?').pluck(),
      update: this.db.prepare(WRITE_WIRE),
      remove: this.db.prepare<[string]>('DELETE FROM microvm_wire WHERE uid = ?'),
    };
    // A store the release before wrote keeps bytes in microvms.wire; a record this one changes
    // has them emptied (that release re-encodes it at its open anyway: the version moved).
    const legacy = legacyColumns ? ', wire = NULL, wire_version = NULL' : '';
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
        `UPDATE microvms SET version = @version, state = @state, record = @record${legacy} WHERE uid = @uid AND version = @previous`,
      ),
      remove: this.db.prepare<[string]>('DELETE FROM microvms WHERE uid = ?'),
      bury: this.db.prepare<[string, string]>('INSERT OR REPLACE INTO tombstones (uid, record) VALUES (?, ?)'),
      tombstone: this.db.prepare<[string], { record: string }>('SELECT record FROM tombstones WHERE uid = ?'),
      tombstones: this.db.prepare<[], { record: string }>('SELECT record FROM tombstones ORDER BY uid'),
      forget: this.db.prepare<[string]>('DELETE FROM tombstones WHERE uid = ?'),
      event: this.db.prepare(
        'INSERT INTO events (uid, namespace, type, time, prev_state, prev_power, record) VALUES (@uid, @namespace, @type, @time, @prevState, @prevPower, @record)',
      ),
      prune: this.db.prepare<[number]>('DELETE FROM events WHERE id <= ?'),
      eventsAfter: this.db.prepare<[number, string, string, string, string, number], EventRow>(
        "SELECT * FROM events WHERE id > ? AND (? = '' OR uid = ?) AND (? = '' OR namespace = ?) ORDER BY id LIMIT ?",
      ),
      recentEvents: this.db.prepare<[string, string, string, string, number], EventRow>(
        "SELECT * FROM events WHERE (? = '' OR uid = ?) AND (? = '' OR namespace = ?) ORDER BY id DESC LIMIT ?",
      ),
      lastEvent: this.db.prepare<[], { id: number | null }>("SELECT seq AS id FROM sqlite_sequence WHERE name = 'events'"),
      oldestEvent: this.db.prepare<[], { id: number | null }>('SELECT MIN(id) AS id FROM events'),
      // Prepared once: db.pragma() parses its statement on every call, twice per observed update.
      lazy: this.db.prepare('PRAGMA synchronous = NORMAL'),
      full: this.db.prepare('PRAGMA synchronous = FULL'),
    };
    this.inserting = this.db.transaction((vm: MicroVM, r: Row) => {
      this.stmts.insert.run(r);
      this.served().insert.run(r);
      this.log('CREATED', vm, undefined, r.record);
    });
    this.updating = this.db.transaction((uid: string, change: (current: MicroVM) => MicroVM | undefined): { vm: MicroVM | undefined; wrote: boolean } => {
      const r = this.stmts.get.get(uid);
      if (!r) return { vm: undefined, wrote: false };
      const current = parse(r.record);
      const changed = change(current);
      if (changed === undefined) return { vm: current, wrote: false };
      const next: MicroVM = { ...changed, uid, version: current.version + 1 };
      const stored = row(next);
      const res = this.stmts.update.run({ ...stored, previous: current.version });
      if (res.changes !== 1) throw new MatchlockError(ErrorCode.Aborted, `microvm ${uid} changed during an update; retry`);
      this.served().update.run(stored);
      this.log('UPDATED', next, current, stored.record);
      return { vm: next, wrote: true };
    });
    this.removing = this.db.transaction((uid: string) => this.removeLogged(uid));
    this.burying = this.db.transaction((t: Tombstone) => {
      this.stmts.bury.run(t.uid, JSON.stringify(t));
      this.removeLogged(t.uid);
    });
  }

  private migrate(): void {
    migrateSchema(this.db);
  }

  insert(vm: MicroVM): Uint8Array {
    this.served();
    const r = row(vm);
    this.writing(() => this.inserting.immediate(vm, r));
    this.notify();
    return r.wire;
  }

  /**
   * Runs a write, turning "the disk is full" into ResourceExhausted naming the store and the
   * fix: the write was rolled back, nothing of it is stored, and the same call works once there
   * is room. Anything else is rethrown as it is.
   */
  private writing<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw storeFull(this.path, err) ?? err;
    }
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

  encoded(uid: string): Uint8Array | undefined {
    return this.served().get.get(uid) ?? undefined;
  }

  encodedRecords(filter: ListFilter, page: PageOptions = {}): IterableIterator<EncodedRecord> {
    this.served();
    // The rows themselves are the EncodedRecords, handed on without a generator between (a
    // tenth of a List's reads); the read starts at the first next(), so an iterator dropped
    // unread holds neither the statement nor the connection.
    const { sql, params } = pagedQuery('m.uid AS uid, w.wire AS encoded', filter, page, true);
    let rows: IterableIterator<EncodedRecord> | undefined;
    let finished = false;
    const records: IterableIterator<EncodedRecord> = {
      next: () => (finished ? { done: true, value: undefined } : (rows ??= this.statement(sql).iterate(params) as IterableIterator<EncodedRecord>).next()),
      return: (value?: unknown) => {
        finished = true;
        return rows?.return?.(value) ?? { done: true, value };
      },
      [Symbol.iterator]: () => records,
    };
    return records;
  }

  private served(): NonNullable<typeof this.wire> {
    if (this.wire) return this.wire;
    throw new MatchlockError(ErrorCode.FailedPrecondition, `the store ${this.path} was opened for its records only (recordsOnly): its wire bytes are not kept in line, so it neither serves them nor takes writes`);
  }

  page(filter: ListFilter, page: PageOptions): MicroVM[] {
    const { sql, params } = pagedQuery('record', filter, page);
    return (this.statement(sql).all(params) as { record: string }[]).map((r) => parse(r.record));
  }

  uids(filter: ListFilter, page: PageOptions): string[] {
    const { sql, params } = pagedQuery('uid', filter, page);
    return (this.statement(sql).all(params) as { uid: string }[]).map((r) => r.uid);
  }

  private statement(sql: string): Database.Statement {
    let st = this.paged.get(sql);
    if (!st) this.paged.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  update(uid: string, change: (current: MicroVM) => MicroVM | undefined, opts: UpdateOptions = {}): MicroVM | undefined {
    this.served();
    if (opts.durable !== false) return this.updateNow(uid, change);
    // WAL with synchronous=NORMAL commits without an fsync: the frames reach the OS at once (a
    // killed daemon loses nothing) and the disk with the next synchronous=FULL commit.
    this.stmts.lazy.run();
    try {
      return this.updateNow(uid, change);
    } finally {
      this.stmts.full.run();
    }
  }

  private updateNow(uid: string, change: (current: MicroVM) => MicroVM | undefined): MicroVM | undefined {
    // IMMEDIATE takes the write lock before reading, so another process cannot slip a write
    // between this read and this write.
    const { vm, wrote } = this.writing(() => this.updating.immediate(uid, change));
    if (wrote) this.notify();
    return vm;
  }

  remove(uid: string): boolean {
    this.served();
    const gone = this.writing(() => this.removing.immediate(uid));
    if (gone) this.notify();
    return gone;
  }

  bury(t: Tombstone): void {
    this.served();
    this.writing(() => this.burying.immediate(t));
    this.notify();
  }

  private removeLogged(uid: string): boolean {
    const r = this.stmts.get.get(uid);
    if (!r) return false;
    this.stmts.remove.run(uid);
    this.served().remove.run(uid);
    const last = parse(r.record);
    this.log('DELETED', last, last, r.record);
    return true;
  }

  /** Appends an event inside the caller's transaction; old events beyond EVENTS_KEPT go. */
  private log(type: StoredEvent['type'], vm: MicroVM, before: MicroVM | undefined, record: string): void {
    const id = Number(this.stmts.event.run({
      uid: vm.uid,
      namespace: vm.spec.namespace,
      type,
      time: new Date().toISOString(),
      prevState: before?.status.state ?? null,
      prevPower: before?.status.power ?? null,
      record,
    }).lastInsertRowid);
    // Sizes are taken as the records go by, not summed over the log: a scan of every kept
    // event would read a page or more each.
    this.eventBytes = this.eventBytes === 0 ? record.length : this.eventBytes * 0.99 + record.length * 0.01;
    const step = Math.max(1, Math.floor(this.eventsKept / 100));
    if (id % step === 0) {
      const kept = Math.max(step, Math.min(this.eventsKept, Math.floor(this.eventsKeptBytes / this.eventBytes)));
      this.stmts.prune.run(id - kept);
    }
  }

  private notify(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch {
        // A listener's failure is its own; the change is committed.
      }
    }
  }

  recentEvents(filter: EventFilter, limit: number, maxBytes = Infinity): StoredEvent[] {
    const uid = filter.uid ?? '';
    const ns = filter.namespace ?? '';
    return withinBytes(this.stmts.recentEvents.iterate(uid, uid, ns, ns, limit), maxBytes).reverse().map(storedEvent);
  }

  eventsAfter(after: number, filter: EventFilter, limit: number, maxBytes = Infinity): StoredEvent[] {
    const uid = filter.uid ?? '';
    const ns = filter.namespace ?? '';
    return withinBytes(this.stmts.eventsAfter.iterate(after, uid, uid, ns, ns, limit), maxBytes).map(storedEvent);
  }
  lastEventId(): number {
    return this.stmts.lastEvent.get()?.id ?? 0;
  }

  oldestEventId(): number | undefined {
    return this.stmts.oldestEvent.get()?.id ?? undefined;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  tombstone(uid: string): Tombstone | undefined {
    const r = this.stmts.tombstone.get(uid);
    return r ? (JSON.parse(r.record) as Tombstone) : undefined;
  }

  tombstones(): Tombstone[] {
    return this.stmts.tombstones.all().map((r) => JSON.parse(r.record) as Tombstone);
  }

  forget(uid: string): void {
    this.served();
    this.writing(() => this.stmts.forget.run(uid));
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/**
 * The uids of the records and tombstones of a store of any schema this matchlock knows: a table
 * an older schema did not have (tombstones before schema 2) holds none. Reads only.
 */
function recordedUids(db: Database.Database): Set<string> {
  const tables = new Set(db.prepare<[], string>("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all());
  const uids = (table: string) => (tables.has(table) ? db.prepare<[], string>(`SELECT uid FROM ${table}`).pluck().all() : []);
  return new Set([...uids('microvms'), ...uids('tombstones')]);
}

/** SQLite's result codes for a file that is no database or a damaged one. */
const DAMAGE_CODES: ReadonlySet<string> = new Set(['SQLITE_NOTADB', 'SQLITE_CORRUPT']);

/**
 * Checks an existing store without writing it, as the daemon's open would before it changes
 * anything: a store that is damaged (empty, no SQLite header, failing PRAGMA quick_check) or of
 * a newer schema is refused with the same MatchlockError as that open; otherwise the uids of
 * its records and tombstones, whatever its (older) schema. Read through a read-only connection;
 * the -wal and -shm files such a connection makes (and cannot remove) are removed when they
 * were not there before. Undefined when it cannot be read so (held by another process, no
 * room for its -shm), for the open to report.
 */
export function checkStoreReadOnly(path: string): Set<string> | undefined {
  // What SQLite cannot open as a store (it would fail the open after the VMM user is made).
  for (const f of [path, `${path}-wal`, `${path}-shm`]) {
    const link = lstatSync(f, { throwIfNoEntry: false });
    if (!link) continue;
    const st = statSync(f, { throwIfNoEntry: false });
    if (!st) throw damaged(path, `${f} is a symbolic link to nothing`);
    if (!st.isFile()) throw damaged(path, `${f} is ${st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'a device'}, not a regular file`);
  }
  if (statSync(path).size === 0) throw damaged(path, 'the file is empty (0 bytes); a store matchlock made never is');
  // A reader writes its marks into -shm, and makes -wal and -shm when they are missing (a store
  // closed cleanly): their times, and the directory's when files were made in it, are put back.
  const times = new Map([dirname(path), `${path}-wal`, `${path}-shm`].flatMap((f) => {
    const st = statSync(f, { bigint: true, throwIfNoEntry: false });
    return st ? [[f, st] as const] : [];
  }));
  const side = [`${path}-wal`, `${path}-shm`].filter((f) => !times.has(f));
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    checkIntact(db, path);
    newerSchema(db.pragma('user_version', { simple: true }) as number);
    return recordedUids(db);
  } catch (err) {
    if (err instanceof MatchlockError) throw err;
    const code = String((err as { code?: unknown }).code);
    if (DAMAGE_CODES.has(code) || code === 'SQLITE_CANTOPEN') throw damaged(path, (err as Error).message, err);
    return undefined;
  } finally {
    db?.close();
    for (const f of side) rmSync(f, { force: true });
    for (const [f, st] of times) {
      if (f === dirname(path) && side.length === 0) continue;
      try {
        utimesSync(f, utimesSeconds(st.atimeNs), utimesSeconds(st.mtimeNs));
      } catch {
        // gone meanwhile: nothing to put back
      }
    }
  }
}

/** Refuses a store written by a newer matchlock (its schema version is past SCHEMA_VERSION). */
function newerSchema(current: number): void {
  if (current > SCHEMA_VERSION) {
    throw new MatchlockError(
      ErrorCode.FailedPrecondition,
      `the store was written by a newer matchlock (schema ${current}, this one knows ${SCHEMA_VERSION}); upgrade matchlock`,
    );
  }
}

function migrateSchema(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  newerSchema(current);
  if (current === SCHEMA_VERSION) return;
  db.transaction(() => {
    db.exec(`
      CREATE TABLE IF NOT EXISTS microvms (
        uid TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        record TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS tombstones (
        uid TEXT PRIMARY KEY,
        record TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL,
        namespace TEXT NOT NULL,
        type TEXT NOT NULL,
        time TEXT NOT NULL,
        prev_state TEXT,
        prev_power TEXT,
        record TEXT NOT NULL
      );
    `);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  })();
}

/**
 * A new store is made under a temporary name and linked into place only once its schema is
 * written, so an existing matchlock.db is always a store that was complete once: an empty or
 * headerless file there is damage, never a fresh start. link() refuses to replace a file another
 * process created meanwhile, where rename() would silently drop that store.
 */
function createAtomically(path: string): void {
  const tmp = `${path}.new-${process.pid}`;
  rmSync(tmp, { force: true });
  const db = new Database(tmp);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    migrateSchema(db);
  } finally {
    db.close();
  }
  try {
    linkSync(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * `PRAGMA quick_check` reads every page of the file (not the index contents, which
 * integrity_check would add at O(N log N)), so a truncated, zeroed or garbled store is refused
 * at start instead of failing on the first request, or worse, looking empty.
 */
function checkIntact(db: Database.Database, path: string): void {
  if (path === ':memory:') return;
  const rows = db.pragma('quick_check') as { quick_check: string }[];
  const problems = rows.map((r) => r.quick_check.replace(/\s+/g, ' ').trim()).filter((r) => r !== 'ok');
  if (problems.length) throw damaged(path, problems.slice(0, 3).join('; '));
}

/** The refusal for a damaged store: it names the file, why, and what the operator can do. */
function damaged(path: string, why: string, cause?: unknown): MatchlockError {
  const name = basename(path);
  why = why.replace(/\s+/g, ' ').trim();
  return new MatchlockError(
    ErrorCode.FailedPrecondition,
    `the store ${path} is damaged (${why}); nothing was changed and running VMs were left alone. ` +
      `Fix: with matchlockd stopped, restore ${name} from a backup, or move it aside (mv ${path} ${path}.damaged) ` +
      `to start with an empty store (the VMs it recorded are then unknown to matchlockd)`,
    cause === undefined ? {} : { cause },
  );
}

interface EventRow {
  id: number;
  uid: string;
  namespace: string;
  type: string;
  time: string;
  prev_state: string | null;
  prev_power: string | null;
  record: string;
}

/** Opens and checks the store; closes what it opened when that fails. */
function open(path: string, exclusive: boolean): Database.Database {
  const db = new Database(path, { fileMustExist: path !== ':memory:' });
  try {
    // Before the first read: from then on the WAL index lives in memory, not in -shm.
    if (exclusive) db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 5000');
    // SQLite's own default page cache (2 MiB) instead of better-sqlite3's 16 MiB: the cache
    // filled up to the whole file at start (quick_check reads every page), 12 MB of a daemon
    // with 1,000 records that the OS page cache holds anyway; Get and List times are unchanged
    // within noise (bench/README.md).
    db.pragma('cache_size = -2000');
    checkIntact(db, path);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/** The -shm file could not be sized or mapped, or SQLite said the disk is full. */
function noRoomAtOpen(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && (code === 'SQLITE_FULL' || code.startsWith('SQLITE_IOERR_SHM'));
}

/**
 * Why the store did not open: a full file system (ResourceExhausted), a refusal already made,
 * or damage.
 */
function openFailed(path: string, err: unknown): MatchlockError {
  if (err instanceof MatchlockError) return err;
  if (noRoomAtOpen(err)) {
    return new MatchlockError(
      ErrorCode.ResourceExhausted,
      `the store ${path} cannot be opened: its file system is full (ENOSPC, ${(err as { code: string }).code}); nothing was changed. Free space in the state dir and start again`,
      { cause: err },
    );
  }
  const code = (err as { code?: unknown }).code;
  if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
    // Not damage: a matchlockd that opened the store alone (its state dir was full at start)
    // holds it until it stops.
    return new MatchlockError(
      ErrorCode.Unavailable,
      `the store ${path} is held by another process (${code}): a matchlockd started on a full state dir keeps it to itself until it stops; nothing was changed. Ask that daemon through its API, or free space and restart it`,
      { cause: err },
    );
  }
  return damaged(path, (err as Error).message, err);
}

/**
 * SQLite reports a full disk as SQLITE_FULL, or as an I/O error when the write that failed was
 * the WAL's or a checkpoint's (SQLITE_IOERR_WRITE and kin, whose OS error is ENOSPC/EDQUOT).
 */
function storeFull(path: string, err: unknown): MatchlockError | undefined {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string') return undefined;
  const full = code === 'SQLITE_FULL' || (code.startsWith('SQLITE_IOERR') && /disk is full|no space|ENOSPC|quota/i.test((err as Error).message));
  if (!full) return undefined;
  return new MatchlockError(
    ErrorCode.ResourceExhausted,
    `the store ${path} cannot be written: its file system is full (ENOSPC, ${code}); nothing was stored. Free space in the state dir and retry`,
    { cause: err },
  );
}

interface Row {
  uid: string;
  namespace: string;
  name: string;
  version: number;
  state: string;
  record: string;
  wire: Uint8Array;
}

function row(vm: MicroVM): Row {
  return {
    uid: vm.uid,
    namespace: vm.spec.namespace,
    name: vm.spec.name,
    version: vm.version,
    state: vm.status.state,
    record: JSON.stringify(vm),
    wire: encodeMicroVM(vm),
  };
}

/**
 * A read of some columns of the records matching `filter`, in uid order, one page of them;
 * `microvms` is `m`, and with `wire` each row is joined to its bytes in `microvm_wire` (`w`).
 * CROSS JOIN keeps `microvms` the outer loop, so the filter is searched through its index and
 * the bytes are looked up by uid.
 */
function pagedQuery(columns: string, filter: ListFilter, page: PageOptions, wire = false): { sql: string; params: Record<string, string | number> } {
  const where: string[] = [];
  const params: Record<string, string | number> = {};
  const add = (clause: string, key: string, value: string | number | undefined) => {
    if (value === undefined) return;
    where.push(clause);
    params[key] = value;
  };
  add('m.namespace = @namespace', 'namespace', filter.namespace || undefined);
  add('m.name = @name', 'name', filter.name || undefined);
  add('m.uid > @after', 'after', page.after);
  const limit = page.limit !== undefined && page.limit > 0 ? ' LIMIT @limit' : '';
  if (limit) params.limit = page.limit ?? 0;
  const from = wire ? 'microvms m CROSS JOIN microvm_wire w ON w.uid = m.uid' : 'microvms m';
  return { sql: `SELECT ${columns} FROM ${from}${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY m.uid${limit}`, params };
}

/**
 * Indexes that let a filtered List read a page in uid order from where the previous page ended
 * (keyset paging): without them SQLite reads every record of the namespace for each page and
 * sorts them, so paging through a namespace costs its size squared. Made at open when missing
 * (a store of 10,000 records: well under a second).
 */
const LIST_INDEXES = ['microvms_namespace_uid ON microvms (namespace, uid)', 'microvms_name_uid ON microvms (name, uid)'];

/**
 * Indexes of schema 2 that nothing reads: with (name, uid) there, SQLite's planner answers every
 * query of this store by name, with or without a namespace, from that index (EXPLAIN QUERY PLAN),
 * while each of these still costs every create and delete a B-tree write. Dropped at open; a
 * matchlock from before does not make them again (its schema version is the same) and plans its
 * queries on the same two indexes.
 */
const UNREAD_INDEXES = ['microvms_namespace_name', 'microvms_name'];

/**
 * Makes the list indexes a store lacks, then drops the unread ones. The drop is an economy, not
 * an upgrade: whatever stops it (a full file system, a store or mount this process may only
 * read, another process holding the write lock) leaves it for a later open, without waiting.
 */
function ensureIndexes(db: Database.Database): void {
  const have = new Set(db.prepare<[], string>("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'microvms'").pluck().all());
  const missing = LIST_INDEXES.filter((i) => !have.has(i.slice(0, i.indexOf(' '))));
  if (missing.length) {
    db.transaction(() => {
      for (const i of missing) db.exec(`CREATE INDEX IF NOT EXISTS ${i}`);
    }).immediate();
  }
  const unread = UNREAD_INDEXES.filter((i) => have.has(i));
  if (unread.length === 0) return;
  const timeout = db.pragma('busy_timeout', { simple: true }) as number;
  db.pragma('busy_timeout = 0');
  try {
    db.transaction(() => {
      for (const i of unread) db.exec(`DROP INDEX IF EXISTS ${i}`);
    }).immediate();
  } catch {
    // Rolled back: the store is as it was, and reads it as before.
  } finally {
    db.pragma(`busy_timeout = ${timeout}`);
  }
}

/** Writes a record's bytes, whether or not the store has a row for them yet. */
const WRITE_WIRE = 'INSERT INTO microvm_wire (uid, version, wire) VALUES (@uid, @version, @wire) ON CONFLICT (uid) DO UPDATE SET version = excluded.version, wire = excluded.wire';

const NO_LEGACY = 'NULL AS legacy, NULL AS legacyVersion';

function hasColumn(db: Database.Database, table: string, column: string): boolean {
  return (db.pragma(`table_info(${table})`) as { name: string }[]).some((c) => c.name === column);
}

/**
 * Brings `microvm_wire` in line with `microvms` at open: makes the table, drops bytes of records
 * that are gone, and writes the bytes of every record that has none, or stale ones: all of them
 * when the encoding changed (WIRE_FORMAT), and any a matchlock that knew nothing of this table
 * wrote (it moved the record's version past the bytes', or made the record). The release before
 * kept each record's bytes in `microvms.wire` with the version they were made for in
 * `wire_version`: those still current are copied, not re-encoded, and left where they are, so
 * that release (its daemon still serving until it is restarted, or a downgrade) reads its
 * store as it left it. Writes only when something is due, so a store in line opens without the
 * write lock; paged, so a large store is never read at once; each page is read again and
 * written in one transaction, so a record another process changed meanwhile is not given the
 * bytes of its version before.
 */
function ensureWire(db: Database.Database, legacyColumns: boolean): void {
  const tables = () => new Set(db.prepare<[], string>("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('microvm_wire', 'store_meta')").pluck().all());
  // The write lock only when something is missing, and the check repeated under it: another
  // process may be opening the same store.
  if (tables().size < 2) {
    db.transaction(() => {
      const have = tables();
      if (!have.has('microvm_wire')) db.exec('CREATE TABLE microvm_wire (uid TEXT PRIMARY KEY, version INTEGER NOT NULL, wire BLOB NOT NULL)');
      if (!have.has('store_meta')) db.exec('CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
    }).immediate();
  }
  const orphans = 'FROM microvm_wire WHERE NOT EXISTS (SELECT 1 FROM microvms m WHERE m.uid = microvm_wire.uid)';
  if (db.prepare(`SELECT 1 ${orphans} LIMIT 1`).get() !== undefined) db.transaction(() => db.prepare(`DELETE ${orphans}`).run()).immediate();
  const format = db.prepare<[], string>("SELECT value FROM store_meta WHERE key = 'wire_format'").pluck().get();
  const all = format !== WIRE_FORMAT;
  const legacy = legacyColumns ? 'm.wire AS legacy, m.wire_version AS legacyVersion' : NO_LEGACY;
  const due = (limit: string) => db.prepare<[string], { uid: string; version: number; record: string; legacy: Buffer | null; legacyVersion: number | null }>(
    `SELECT m.uid AS uid, m.version AS version, m.record AS record, ${legacy} FROM microvms m LEFT JOIN microvm_wire w ON w.uid = m.uid
     WHERE m.uid > ? ${all ? '' : 'AND (w.uid IS NULL OR w.version IS NOT m.version)'} ORDER BY m.uid LIMIT ${limit}`,
  );
  if (due('1').get('') === undefined) {
    if (all) db.prepare("INSERT OR REPLACE INTO store_meta (key, value) VALUES ('wire_format', ?)").run(WIRE_FORMAT);
    return;
  }
  const page = due(String(REENCODE_PAGE));
  const write = db.prepare(WRITE_WIRE);
  // Under another encoding the release before's bytes are stale too, yet the format key both
  // releases read is about to name this one's: marked so, that release remakes them at its open
  // (its daemon, if it still runs, goes on reading them as its own until then).
  const stale = all && legacy !== NO_LEGACY ? db.prepare<[string]>('UPDATE microvms SET wire_version = NULL WHERE uid = ?') : undefined;
  for (let after = '', more = true; more;) {
    db.transaction(() => {
      const rows = page.all(after);
      for (const r of rows) {
        const current = !all && r.legacy !== null && r.legacyVersion === r.version;
        write.run({ uid: r.uid, version: r.version, wire: current ? r.legacy : encodeMicroVM(parse(r.record)) });
        if (r.legacyVersion !== null) stale?.run(r.uid);
      }
      more = rows.length === REENCODE_PAGE;
      after = rows[rows.length - 1]?.uid ?? after;
    }).immediate();
  }
  if (all) db.prepare("INSERT OR REPLACE INTO store_meta (key, value) VALUES ('wire_format', ?)").run(WIRE_FORMAT);
}

function parse(record: string): MicroVM {
  return JSON.parse(record) as MicroVM;
}

/** The rows, in order, up to the one whose record would pass `maxBytes` of JSON in all (at least one); the read stops there. */
function withinBytes(rows: IterableIterator<EventRow>, maxBytes: number): EventRow[] {
  const out: EventRow[] = [];
  let bytes = 0;
  for (const r of rows) {
    bytes += Buffer.byteLength(r.record);
    if (out.length > 0 && bytes > maxBytes) break;
    out.push(r);
  }
  return out;
}

function storedEvent(r: EventRow): StoredEvent {
  return {
    id: r.id,
    type: r.type as StoredEvent['type'],
    time: r.time,
    vm: parse(r.record),
    previous: r.prev_state === null ? undefined : { state: r.prev_state as MicroVM['status']['state'], power: (r.prev_power ?? undefined) as MicroVM['status']['power'] },
  };
}
