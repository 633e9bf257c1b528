import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FakeWorld } from '../../../test/fakes/host.js';
import { MemoryStore, silentLogger as quiet } from '../../../test/fakes/memory-store.js';
import { PowerService } from '../microvm/power.js';
import { initialStatus, type MicroVM } from '../microvm/types.js';
import { Reconciler } from '../reconcile/reconciler.js';
import type { ProviderEntry } from '../vmm.js';
import { HostRuntime } from './host-runtime.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

function record(): MicroVM {
  return {
    uid: UID,
    version: 1,
    spec: {
      name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
      rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r' } },
      additionalVolumes: [],
      interfaces: [{ deviceId: 'eth0', type: 'TAP', overrides: { bridgeName: 'br0' } }],
      metadata: {},
      provider: 'fake', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '', updatedAt: '',
  };
}

/** A store, the fake host, a reconciler over both and the power service, as the daemon wires them. */
function setup(pause = true) {
  const world = new FakeWorld();
  const provider = world.provider({ capabilities: { macvtap: true, virtiofs: true, vsock: true, metadataInterface: false, pause } });
  const store = new MemoryStore();
  store.insert(record());
  const runtime = new HostRuntime({ ...world.deps(), stateDir: '/state', deleteVmTimeoutMs: 7000, providers: new Map([['fake', provider]]) });
  const reconciler = new Reconciler({ store, runtime, clock: { now: () => new Date() }, logger: quiet, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 0 });
  const entries = new Map<string, ProviderEntry>([['fake', { descriptor: provider.descriptor, availability: { usable: true } }]]);
  const nudged: string[] = [];
  const power = new PowerService({ store, clock: { now: () => new Date() }, notifier: { changed: (uid) => nudged.push(uid) }, providers: entries });
  const pass = async () => {
    await reconciler.reconcile(UID);
    return store.get(UID) as MicroVM;
  };
  return { world, store, reconciler, power, pass, nudged };
}

describe('power: the desired state on the record, honoured by every reconcile pass', () => {
  it('stop -> start -> pause -> resume -> restart, each observed, none undone by a later pass', async () => {
    const { world, power, pass, nudged } = setup();
    let vm = await pass();
    assert.equal(vm.status.state, 'CREATED');
    assert.equal(vm.status.power, 'RUNNING');
    const firstPid = vm.status.vmmPid;

    power.stop(UID, { graceMs: 2500 });
    assert.deepEqual(nudged, [UID], 'the reconciler is told');
    vm = await pass();
    assert.equal(world.vmms.has(UID), false, 'the VMM is stopped');
    assert.ok(world.calls.includes('vmm stop grace 2500'), 'with the grace of the request');
    assert.equal(vm.status.state, 'CREATED');
    assert.equal(vm.status.power, 'STOPPED');
    assert.equal(vm.status.vmmPid, 0);
    // A resync (or a daemon or host restart: the plan is rebuilt from the record) keeps it off.
    const calls = world.calls.length;
    vm = await pass();
    assert.equal(world.vmms.has(UID), false, 'reconcile does not restart a VM the operator stopped');
    assert.deepEqual(world.calls.slice(calls), []);
    assert.equal(vm.status.power, 'STOPPED');

    power.start(UID);
    vm = await pass();
    assert.equal(vm.status.power, 'RUNNING');
    assert.ok(vm.status.vmmPid > 0 && vm.status.vmmPid !== firstPid);
    assert.equal(world.watched.get(UID), vm.status.vmmPid, 'supervised again');

    power.pause(UID);
    vm = await pass();
    assert.equal(vm.status.power, 'PAUSED');
    assert.equal(world.vmms.get(UID)?.paused, true);
    await pass();
    assert.equal(world.calls.filter((c) => c.startsWith('vmm pause')).length, 1, 'paused once');

    power.resume(UID);
    vm = await pass();
    assert.equal(vm.status.power, 'RUNNING');
    assert.equal(world.vmms.get(UID)?.paused, false);

    const before = vm.status.vmmPid;
    power.restart(UID);
    power.restart(UID);
    vm = await pass();
    assert.notEqual(vm.status.vmmPid, before, 'a new VMM');
    assert.equal(vm.status.power, 'RUNNING');
    assert.equal(vm.status.restarted, vm.power?.restart);
    const after = vm.status.vmmPid;
    vm = await pass();
    assert.equal(vm.status.vmmPid, after, 'a restart asked for twice before it ran restarts once');
  });

  it('a restart of a stopped VM starts one VMM in one pass, with no stop and no failure', async () => {
    const { world, power, pass } = setup();
    let vm = await pass();
    power.stop(UID);
    vm = await pass();
    assert.equal(vm.status.power, 'STOPPED');
    const calls = world.calls.length;
    power.restart(UID);
    vm = await pass();
    assert.equal(vm.status.state, 'CREATED', vm.status.lastError);
    assert.equal(vm.status.lastError, '');
    assert.equal(vm.status.retry, 0);
    assert.equal(vm.status.power, 'RUNNING');
    assert.equal(vm.status.restarted, vm.power?.restart);
    const pid = vm.status.vmmPid;
    assert.ok(pid > 0 && world.vmms.has(UID));
    assert.deepEqual(world.calls.slice(calls).filter((c) => c.startsWith('vmm stop')), [], 'nothing to stop: no VMM ran');
    vm = await pass();
    assert.equal(vm.status.vmmPid, pid, 'the next pass keeps the VMM the restart started');
  });

  it('a stopped VM that was never started is created without its VMM', async () => {
    const { world, power, pass } = setup();
    power.stop(UID);
    const vm = await pass();
    assert.equal(vm.status.state, 'CREATED');
    assert.equal(vm.status.power, 'STOPPED');
    assert.equal(world.vmms.size, 0);
    assert.ok(world.volumes.size > 0 && world.links.size > 2, 'everything else is made');
  });

  it('a VMM that exits while the VM should be stopped is no failure; while it should run, it is', async () => {
    const { world, power, pass, reconciler, store } = setup();
    let vm = await pass();
    const pid = vm.status.vmmPid;
    power.stop(UID);
    world.vmms.delete(UID);
    assert.equal(reconciler.vmmExited(UID, pid), undefined, 'nothing to retry');
    vm = store.get(UID) as MicroVM;
    assert.equal(vm.status.retry, 0);
    assert.equal(vm.status.lastError, '');
    assert.equal(vm.status.power, 'STOPPED');
    power.start(UID);
    vm = await pass();
    world.vmms.delete(UID);
    assert.ok(reconciler.vmmExited(UID, vm.status.vmmPid) !== undefined, 'retried');
    assert.equal((store.get(UID) as MicroVM).status.retry, 1);
  });

  it('refuses what cannot be done, naming why', async () => {
    const { power, store, pass } = setup(false);
    await pass();
    assert.throws(() => power.pause(UID), /provider fake cannot pause a guest/);
    assert.throws(() => power.stop(''), /uid: is required/);
    assert.throws(() => power.stop('01HZY3NDEKTSV4RRFFQ69G0000'), /microvm "01HZY3NDEKTSV4RRFFQ69G0000" not found/);
    assert.throws(() => power.stop(UID, { graceMs: -1 }), /grace: must be between 0s and 1h/);
    const v1 = power.stop(UID).version;
    assert.equal(power.stop(UID).version, v1, 'a repeated stop changes nothing');
    assert.equal(power.stop(UID, { force: true }).power?.stopGraceMs, 0, 'force: no grace');
    store.update(UID, (cur) => ({ ...cur, status: { ...cur.status, state: 'FAILED', lastError: 'pull failed' } }));
    assert.throws(() => power.start(UID), /is FAILED \(pull failed\); delete and create it again$/);
    store.update(UID, (cur) => ({ ...cur, status: { ...cur.status, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0' } }));
    assert.throws(() => power.start(UID), /is FAILED \(bridge br0 .*\); matchlockd retries it when br0 appears again, if br0 is still its bridge or macvtap parent/, 'it is not for good');
    store.update(UID, (cur) => ({ ...cur, status: { ...cur.status, state: 'DELETING' } }));
    assert.throws(() => power.start(UID), /is being deleted; it cannot start/);
  });

  it('pause and resume of a VM not CREATED yet are refused: there are no vCPUs to pause', () => {
    const { power, store } = setup();
    assert.equal(store.get(UID)?.status.state, 'PENDING');
    assert.throws(() => power.pause(UID), /is PENDING; pause needs a running VMM/);
    assert.throws(() => power.resume(UID), /is PENDING; resume needs a running VMM/);
    assert.equal(store.get(UID)?.power, undefined, 'nothing stored');
  });

  it('pause and resume of a stopped VM are refused: start it first', async () => {
    const { power, pass } = setup();
    await pass();
    power.stop(UID);
    assert.throws(() => power.pause(UID), /is stopped; start it before you pause it/);
    assert.throws(() => power.resume(UID), /is stopped; start it before you resume it/);
  });
});
