import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FakeWorld } from '../../../test/fakes/host.js';
import { MemoryStore, silentLogger } from '../../../test/fakes/memory-store.js';
import { initialStatus, type MicroVM } from '../microvm/types.js';
import { HostRuntime } from '../plan/host-runtime.js';
import type { UpdateOptions } from '../ports.js';
import { Reconciler } from './reconciler.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

function record(): MicroVM {
  return {
    uid: UID,
    version: 1,
    spec: {
      name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
      initrd: { image: 'k', filename: 'boot/initrd' },
      rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r' } },
      additionalVolumes: [{ id: 'data', isReadOnly: false, source: { containerSource: 'r' } }],
      interfaces: [{ deviceId: 'eth0', type: 'TAP' }],
      metadata: { 'user-data': Buffer.from('#cloud-config\n').toString('base64') },
      provider: 'fake', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '', updatedAt: '',
  };
}

/**
 * The store port with every write counted: in the SQLite adapter each insert, update (whether
 * or not it changes the record: it takes the write lock and commits) and remove is one
 * transaction, and the durable ones one fsync each.
 */
class CountingStore extends MemoryStore {
  writes = 0;
  durable = 0;
  override insert(vm: MicroVM): Uint8Array {
    this.writes++;
    this.durable++;
    return super.insert(vm);
  }
  override update(uid: string, change: (current: MicroVM) => MicroVM | undefined, opts: UpdateOptions = {}): MicroVM | undefined {
    this.writes++;
    if (opts.durable !== false) this.durable++;
    return super.update(uid, change);
  }
  override remove(uid: string): boolean {
    this.writes++;
    this.durable++;
    return super.remove(uid);
  }
}

function setup() {
  const world = new FakeWorld();
  const store = new CountingStore();
  const provider = world.provider();
  const runtime = new HostRuntime({ ...world.deps(), stateDir: '/state', providers: new Map([[provider.descriptor.name, provider]]) });
  const r = new Reconciler({ store, runtime, clock: { now: () => new Date('2026-01-01T00:00:00Z') }, logger: silentLogger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1 });
  return { world, store, r };
}

describe('store writes of one create', () => {
  it('from the request to CREATED: the insert, the pinned image digests and the outcome, with the boot seen meanwhile', async () => {
    const { world, store, r } = setup();
    // The console shows the boot as soon as the VMM is supervised, before the pass ends.
    const watch = world.supervisor.watch.bind(world.supervisor);
    world.supervisor.watch = (uid, pid, console) => {
      watch(uid, pid, console);
      r.guestBooted(uid, pid);
    };
    store.insert(record());
    assert.equal(await r.reconcile(UID), undefined);
    const vm = store.get(UID);
    assert.equal(vm?.status.state, 'CREATED');
    assert.equal(vm?.status.guestBooted, true, 'the boot reported during the pass is stored');
    assert.equal(vm?.status.vmmPid, world.vmms.get(UID)?.pid);
    assert.ok(vm?.status.volumes.root && vm.status.networkInterfaces.eth0 && vm.status.kernelMount, 'what the steps observed is stored');
    assert.deepEqual(vm?.status.imageDigests, { k: 'sha256:kernel', r: 'sha256:root' });
    assert.equal(store.writes, 4, 'insert, two digests pinned (kernel and root images), CREATED');
    assert.equal(store.durable, 1, 'only the insert, which the client is told of, waits for the disk');
    // A resync of a converged VM writes nothing.
    await r.reconcile(UID);
    assert.equal(store.writes, 5, 'one update that changes nothing');
    assert.equal(store.get(UID)?.version, vm.version);
  });

  it('a failed pass writes once, with what its steps achieved before the failure, without waiting for the disk', async () => {
    const { world, store, r } = setup();
    world.sabotage.add('vmm');
    store.insert(record());
    assert.ok((await r.reconcile(UID)) !== undefined, 'retried later');
    const vm = store.get(UID);
    assert.equal(vm?.status.state, 'PENDING');
    assert.equal(vm?.status.retry, 1);
    assert.match(vm?.status.lastError ?? '', /vmm/);
    assert.ok(vm?.status.volumes.root && vm.status.networkInterfaces.eth0, 'the steps before the failure are stored');
    assert.equal(store.writes, 4, 'insert, two digests pinned, the failure');
    assert.equal(store.durable, 1);
  });
});
