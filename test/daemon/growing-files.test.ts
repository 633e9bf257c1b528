import assert from 'node:assert/strict';
import { it } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { GrowingFiles, RECORDS_PAGE } from '../../src/daemon/growing-files.js';

function vm(uid: string, vmmPid = 0): MicroVM {
  return {
    uid,
    version: 1,
    spec: {
      name: uid, namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: { ...initialStatus(), vmmPid },
    createdAt: '', updatedAt: '',
  };
}

/** Counts how many records the store parsed for whole-store reads, and the most one call returned. */
class CountingStore extends SqliteStore {
  listed = 0;
  largest = 0;
  override list(filter: Parameters<SqliteStore['list']>[0]): MicroVM[] {
    return this.counted(super.list(filter));
  }
  override page(filter: Parameters<SqliteStore['page']>[0], page: Parameters<SqliteStore['page']>[1]): MicroVM[] {
    return this.counted(super.page(filter, page));
  }
  private counted(vms: MicroVM[]): MicroVM[] {
    this.listed += vms.length;
    this.largest = Math.max(this.largest, vms.length);
    return vms;
  }
}

const started = (store: SqliteStore, uid: string, pid: number) => store.update(uid, (cur) => ({ ...cur, status: { ...cur.status, vmmPid: pid } }), { durable: false });

it('reads every record once, then only the records that changed; follows starts, exits and deletes', () => {
  const store = new CountingStore(':memory:');
  for (let n = 0; n < 200; n++) store.insert(vm(`vm-${String(n).padStart(3, '0')}`, n < 3 ? 100 + n : 0));
  const growing = new GrowingFiles(store, (v) => [`${v.uid}/console.log`, `${v.uid}/stderr`]);
  assert.deepEqual(growing.files().sort(), ['vm-000', 'vm-001', 'vm-002'].flatMap((u) => [`${u}/console.log`, `${u}/stderr`]));
  assert.equal(store.listed, 200);
  for (let i = 0; i < 5; i++) growing.files();
  assert.equal(store.listed, 200, 'nothing changed: no record read again');
  started(store, 'vm-150', 7);
  store.update('vm-000', (cur) => ({ ...cur, status: { ...cur.status, vmmPid: 0 } }));
  store.remove('vm-001');
  store.insert(vm('vm-new', 9));
  assert.deepEqual(growing.files().sort(), ['vm-002', 'vm-150', 'vm-new'].flatMap((u) => [`${u}/console.log`, `${u}/stderr`]));
  assert.equal(store.listed, 200, 'four changes read from the event log, not from the whole store');
  store.close();
});

it('reads everything again when the event log was pruned past what it had read', () => {
  const store = new CountingStore(':memory:', { eventsKept: 100 });
  store.insert(vm('a', 1));
  const growing = new GrowingFiles(store, (v) => [v.uid]);
  assert.deepEqual(growing.files(), ['a']);
  store.insert(vm('b', 2));
  for (let n = 0; n < 300; n++) started(store, 'a', 1000 + n);
  store.remove('a');
  assert.deepEqual(growing.files(), ['b']);
  assert.equal(store.listed, 1 + 1, 'the whole store read again, once');
  store.close();
});

it('reads the whole store a page at a time, so a large store is never held parsed at once', () => {
  const store = new CountingStore(':memory:');
  const count = 2 * RECORDS_PAGE + 7;
  const uid = (n: number) => `vm-${String(n).padStart(5, '0')}`;
  // A started VM on every page, the last page's last record among them: none is skipped at a page's edge.
  const startedOnes = [0, RECORDS_PAGE - 1, RECORDS_PAGE, 2 * RECORDS_PAGE + 6];
  for (let n = 0; n < count; n++) store.insert(vm(uid(n), startedOnes.includes(n) ? 100 + n : 0));
  const growing = new GrowingFiles(store, (v) => [v.uid]);
  assert.deepEqual(growing.files().sort(), startedOnes.map(uid));
  assert.equal(store.listed, count, 'every record read once');
  assert.ok(store.largest <= RECORDS_PAGE, `one store call returned ${store.largest} records, more than a page of ${RECORDS_PAGE}`);
  store.close();
});
