/**
 * The interfaces the core needs from the world. Adapters implement them; tests use fakes.
 */
import type { MicroVM, MicroVMStatus } from './microvm/types.js';

export interface ListFilter {
  /** Undefined or empty: every namespace. */
  namespace?: string | undefined;
  /** Undefined or empty: every name. */
  name?: string | undefined;
}

/**
 * Durable MicroVM records. Synchronous on purpose: the SQLite adapter commits each call in one
 * transaction before returning, so no two read-modify-write sequences can interleave.
 */
export interface Store {
  insert(vm: MicroVM): void;
  get(uid: string): MicroVM | undefined;
  list(filter: ListFilter): MicroVM[];
  /**
   * Reads the record, applies `change` and stores the result with version + 1, in one
   * transaction. `change` returns undefined to leave the record alone. Returns what is stored
   * now, or undefined when no record has that uid.
   */
  update(uid: string, change: (current: MicroVM) => MicroVM | undefined): MicroVM | undefined;
  remove(uid: string): boolean;
  close(): void;
}

export interface Clock {
  now(): Date;
}

export interface Random {
  bytes(n: number): Uint8Array;
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
export type RuntimeStatus = Partial<Omit<MicroVMStatus, 'state' | 'retry' | 'lastError' | 'nextAttemptAt'>> & {
  /** True when the VM is fully running; false leaves it PENDING without counting a failure. */
  ready: boolean;
};

/**
 * Turns a stored spec into host objects and back. Both calls are idempotent: they look at what
 * exists and do only what is missing, so a crash at any point is recovered by calling again.
 */
export interface Runtime {
  ensure(vm: MicroVM, log: Logger): Promise<RuntimeStatus>;
  teardown(vm: MicroVM, log: Logger): Promise<void>;
}
