import { encodeMicroVM } from '../../src/adapters/api/convert.js';
import type { MicroVM } from '../../src/core/microvm/types.js';
import type { EncodedRecord, ListFilter, PageOptions, Store, Tombstone, Tombstones } from '../../src/core/ports.js';

/** An in-memory Store with the same versioning rules as the SQLite one. */
export class MemoryStore implements Store, Tombstones {
  readonly records = new Map<string, MicroVM>();
  readonly buried = new Map<string, Tombstone>();
  bury(t: Tombstone): void {
    this.buried.set(t.uid, { ...t });
    this.records.delete(t.uid);
  }
  tombstone(uid: string): Tombstone | undefined {
    const t = this.buried.get(uid);
    return t && { ...t };
  }
  tombstones(): Tombstone[] {
    return [...this.buried.values()].map((t) => ({ ...t }));
  }
  forget(uid: string): void {
    this.buried.delete(uid);
  }
  insert(vm: MicroVM): Uint8Array {
    if (this.records.has(vm.uid)) throw new Error(`duplicate uid ${vm.uid}`);
    this.records.set(vm.uid, structuredClone(vm));
    return encodeMicroVM(vm);
  }
  get(uid: string): MicroVM | undefined {
    const vm = this.records.get(uid);
    return vm && structuredClone(vm);
  }
  list(filter: ListFilter): MicroVM[] {
    return [...this.records.values()]
      .filter((vm) => (!filter.namespace || vm.spec.namespace === filter.namespace) && (!filter.name || vm.spec.name === filter.name))
      .sort((a, b) => a.uid.localeCompare(b.uid))
      .map((vm) => structuredClone(vm));
  }
  page(filter: ListFilter, page: PageOptions): MicroVM[] {
    const out = this.list(filter).filter((vm) => (page.after === undefined || vm.uid > page.after));
    return page.limit ? out.slice(0, page.limit) : out;
  }
  uids(filter: ListFilter, page: PageOptions): string[] {
    return this.page(filter, page).map((vm) => vm.uid);
  }
  encoded(uid: string): Uint8Array | undefined {
    const vm = this.records.get(uid);
    return vm && encodeMicroVM(vm);
  }
  *encodedRecords(filter: ListFilter, page: PageOptions = {}): IterableIterator<EncodedRecord> {
    for (const vm of this.page(filter, page)) yield { uid: vm.uid, encoded: encodeMicroVM(vm) };
  }
  update(uid: string, change: (current: MicroVM) => MicroVM | undefined): MicroVM | undefined {
    const cur = this.get(uid);
    if (!cur) return undefined;
    const next = change(cur);
    if (!next) return cur;
    const stored = { ...next, uid, version: cur.version + 1 };
    this.records.set(uid, structuredClone(stored));
    return stored;
  }
  remove(uid: string): boolean {
    return this.records.delete(uid);
  }
  close(): void {}
}

export { silentLogger } from '../../src/adapters/silent-logger.js';
