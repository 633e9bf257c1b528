/**
 * The interfaces the core needs from the world. Adapters implement them; tests use fakes.
 */
import type { MatchlockError } from './errors.js';
import type { MicroVM, MicroVMStatus } from './microvm/types.js';
export type { Launch, LaunchDisk, LaunchNic, LaunchShare, VmmInstance, VmmProvider } from './vmm.js';

export interface ListFilter {
  /** Undefined or empty: every namespace. */
  namespace?: string | undefined;
  /** Undefined or empty: every name. */
  name?: string | undefined;
}

/** Which part of an ordered read: records are read in uid order, a page at a time. */
export interface PageOptions {
  /** Only uids after this one (exclusive): the last uid of the previous page. */
  after?: string | undefined;
  /** At most this many; undefined or 0: no limit. */
  limit?: number | undefined;
}

export interface UpdateOptions {
  /**
   * false: commit without waiting for the disk. The change survives a crash or kill -9 of the
   * daemon (it is in the OS's page cache) and becomes durable with the next durable commit; a
   * power cut may lose it. For what the reconciler observed on the host, which its next pass
   * observes again; never for what a client was told. Default true.
   */
  durable?: boolean;
}

/** A record as the API sends it: flintlock.types.MicroVM, protobuf binary. */
export interface EncodedRecord {
  uid: string;
  encoded: Uint8Array;
}

/**
 * Durable MicroVM records. Synchronous on purpose: the SQLite adapter commits each call in one
 * transaction before returning, so no two read-modify-write sequences can interleave.
 */
export interface Store {
  /**
   * Stores a new record (durable once it returns) and returns its protobuf encoding
   * (flintlock.types.MicroVM), the bytes `encoded` reads back for it until its next change.
   */
  insert(vm: MicroVM): Uint8Array;
  get(uid: string): MicroVM | undefined;
  list(filter: ListFilter): MicroVM[];
  /** The records matching `filter`, one page of them in uid order. */
  page(filter: ListFilter, page: PageOptions): MicroVM[];
  /** The uids matching `filter`, one page of them in order. */
  uids(filter: ListFilter, page: PageOptions): string[];
  /**
   * The record's protobuf encoding (flintlock.types.MicroVM), stored apart from it and
   * replaced in the same transaction as the record, so it never describes another version.
   */
  encoded(uid: string): Uint8Array | undefined;
  /**
   * The encodings of the records matching `filter` in uid order, read lazily: consume the
   * iterator synchronously and finish it before the next store call (SQLite keeps the read open).
   */
  encodedRecords(filter: ListFilter, page?: PageOptions): IterableIterator<EncodedRecord>;
  /**
   * Reads the record, applies `change` and stores the result with version + 1, in one
   * transaction. `change` returns undefined to leave the record alone. Returns what is stored
   * now, or undefined when no record has that uid.
   */
  update(uid: string, change: (current: MicroVM) => MicroVM | undefined, opts?: UpdateOptions): MicroVM | undefined;
  remove(uid: string): boolean;
  close(): void;
}

/** One stored change of a record: the cursor of matchlock.v1's WatchEvents. */
export interface StoredEvent {
  /** Increases with every change; never reused (SQLite AUTOINCREMENT). */
  id: number;
  type: 'CREATED' | 'UPDATED' | 'DELETED';
  /** RFC 3339 time of the change. */
  time: string;
  /** The record after the change; for DELETED the last stored record. */
  vm: MicroVM;
  /** State and power before the change (undefined for CREATED). */
  previous?: { state: MicroVMStatus['state']; power?: MicroVMStatus['power'] } | undefined;
}

export interface EventFilter {
  uid?: string | undefined;
  namespace?: string | undefined;
}

/**
 * Every change of the records, written in the same transaction as the change itself, so a
 * client that resumes after a daemon restart neither loses nor repeats one. Only the newest
 * events are kept (the store says how many).
 */
export interface EventLog {
  /**
   * Up to `limit` events with id > `after`, oldest first; with `maxBytes`, also no more than
   * fit in that many bytes of their records' JSON (at least one), so a page of events of large
   * records is not read into memory at once.
   */
  eventsAfter(after: number, filter: EventFilter, limit: number, maxBytes?: number): StoredEvent[];
  /** The newest `limit` events matching `filter` (with `maxBytes`: the newest that fit, at least one), oldest first. */
  recentEvents(filter: EventFilter, limit: number, maxBytes?: number): StoredEvent[];
  /** The newest event id, 0 when none was ever written. */
  lastEventId(): number;
  /** The oldest event id still kept; undefined when none is. */
  oldestEventId(): number | undefined;
  /** Calls `listener` after every committed change; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
}

export interface Clock {
  now(): Date;
}

export interface Random {
  bytes(n: number): Uint8Array;
}

/**
 * A create's meta-data as cloudInitMetaData read it ahead of the create: for `value` (the
 * request's `meta-data` entry as sent) and `uid` (the VM's), what it made (the bytes to store,
 * decoded) or the refusal it threw. validateSpec takes it as its own reading of that entry.
 */
export interface ReadMetaData {
  value: string;
  uid: string;
  outcome: Buffer | MatchlockError;
}

/**
 * Reads a create's meta-data where its reading does not hold the event loop: cloud-init's
 * rules cost a large YAML document seconds (bench/metadata.ts). Resolves undefined for a value
 * small enough to read in line; rejects only when the reading itself could not run (it then
 * says why; the create is refused with it).
 */
export interface MetaDataReader {
  /** Whether read() would read `value` off the event loop (not leave it to the caller). */
  takes(value: string): boolean;
  read(value: string, uid: string, field: string): Promise<ReadMetaData | undefined>;
}

/** Tells the reconciler that a record changed and should be looked at. */
export interface ChangeNotifier {
  changed(uid: string): void;
}

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

/** What a runtime observed or achieved for one VM; merged into the stored status. */
export type RuntimeStatus = Partial<Omit<MicroVMStatus, 'state' | 'retry' | 'lastError' | 'nextAttemptAt' | 'missingLink'>> & {
  /** True when the VM is fully running; false leaves it PENDING without counting a failure. */
  ready: boolean;
};

/**
 * Turns a stored spec into host objects and back. Both calls are idempotent: they look at what
 * exists and do only what is missing, so a crash at any point is recovered by calling again.
 */
export interface Runtime {
  /**
   * `progress` receives status after each step that changed the host, so it is saved at once.
   * `signal` is aborted when the pass is called off (the VM is being deleted, the daemon is
   * shutting down): stop between steps and at any long wait (pull, unpack, VMM start) and
   * reject with the signal's reason, a MatchlockError with code Canceled.
   */
  ensure(vm: MicroVM, log: Logger, progress?: (s: RuntimeStatus) => void, signal?: AbortSignal): Promise<RuntimeStatus>;
  /** `signal` as for ensure; aborted only when the daemon shuts down. */
  teardown(vm: MicroVM, log: Logger, signal?: AbortSignal): Promise<void>;
}

// ---- Host ports used by the create and delete plans ----

/** Images in the local content-addressed store. */
export interface ImageStore {
  /**
   * Makes the image available locally (pulling it when missing) and resolves its manifest
   * digest. With `pinned`, that exact digest is used whatever the tag points to now.
   */
  ensure(ref: string, log: Logger, pinned?: string): Promise<string>;
  /** Whether the image with this manifest digest is in the store and ready to use (unpacked). */
  ready(digest: string): Promise<boolean>;
  /** Host path of a file inside the image; fails listing what the image holds when absent. */
  file(digest: string, path: string, ref: string): Promise<string>;
}

/** Which volume of which VM; `dir` is the VM's directory for backends that keep files there. */
export interface VolumeKey {
  uid: string;
  volumeId: string;
  dir: string;
}

export interface Volumes {
  /** The block device or disk image path of an existing volume, or undefined. */
  find(key: VolumeKey): Promise<string | undefined>;
  /**
   * The VM's own copy of the image's filesystem, grown to sizeInMb; resolves its path.
   * `signal` calls it off (Canceled): what the VM's copy still needs stops, nothing half-made
   * is left under its name, and a base shared with other VMs is finished for them.
   */
  create(key: VolumeKey, digest: string, sizeInMb: number | undefined, log: Logger, signal?: AbortSignal): Promise<string>;
  /** Removes the volume; removing one that is not there succeeds. */
  remove(key: VolumeKey, log: Logger): Promise<void>;
}

export interface HostFiles {
  exists(path: string): Promise<boolean>;
  read(path: string): Promise<Buffer | undefined>;
  mkdirp(path: string): Promise<void>;
  /** Removes a tree; removing what is not there succeeds. */
  remove(path: string): Promise<void>;
  /** Removes a directory only if it is empty; anything else is left alone. */
  removeIfEmpty(path: string): Promise<void>;
}

export interface LinkInfo {
  name: string;
  ifindex: number;
  mac: string;
  kind: 'tap' | 'macvtap' | 'other';
  master?: string | undefined;
  alias?: string | undefined;
  up: boolean;
}

export interface HostNetwork {
  get(name: string): Promise<LinkInfo | undefined>;
  /** Creates the TAP and resolves it as read from the host after the change. */
  createTap(name: string, opts: { bridge: string; alias: string }): Promise<LinkInfo>;
  /**
   * Finishes an existing link as createTap or createMacvtap leave one: sets its alias, attaches
   * it to `bridge` when given (a TAP) and brings it up. For a link a crash left half-made (the
   * create's first line ran, not the rest) or that lost its bridge.
   */
  adopt(name: string, opts: { alias: string; bridge?: string }): Promise<void>;
  /** Creates the MACVTAP and resolves it as read from the host after the change. */
  createMacvtap(name: string, opts: { parent: string; alias: string; mac: string }): Promise<LinkInfo>;
  remove(name: string): Promise<void>;
  /** Links whose alias marks them as matchlock's. */
  listOwned(): Promise<LinkInfo[]>;
}

/** Writes the NoCloud seed (a disk labelled cidata) holding the given files. */
export interface CloudInitDisk {
  write(path: string, files: Record<string, Buffer>): Promise<void>;
}

/** Watches VMM processes: exits and guest boot are reported as they happen. */
export interface Supervisor {
  watch(uid: string, pid: number, consolePath: string): void;
  unwatch(uid: string): void;
  watching(uid: string, pid: number): boolean;
}

// ---- Tombstones: what the orphan sweep may prove was this daemon's and deleted ----

/** A VM record dropped without a finished teardown, kept so its leftovers can be removed. */
export interface Tombstone {
  uid: string;
  namespace: string;
  name: string;
  /** RFC 3339 time the record was dropped. */
  droppedAt: string;
  /** Why the teardown did not finish (its last error). */
  reason: string;
}

/**
 * Tombstones beside the records. Leftovers on the host (VM directory, VMM, links, volumes) may
 * be destroyed only when their uid has a tombstone: a uid that is neither a record nor a
 * tombstone may belong to a running guest whose record was lost.
 */
export interface Tombstones {
  /** Removes the record and keeps its tombstone, in one transaction. */
  bury(tombstone: Tombstone): void;
  tombstone(uid: string): Tombstone | undefined;
  tombstones(): Tombstone[];
  /** Drops a tombstone once everything it stood for is gone from the host. */
  forget(uid: string): void;
}
