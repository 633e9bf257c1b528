import assert from 'node:assert/strict';
import { it } from 'node:test';
import { silentLogger as quiet } from '../../../test/fakes/memory-store.js';
import { noCloudSeed } from '../microvm/cloudinit.js';
import { initialStatus, type MicroVM } from '../microvm/types.js';
import type { ProviderDescriptor, VmmInstance } from '../vmm.js';
import { CreateContext, type PlanDeps } from './context.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

const record: MicroVM = {
  uid: UID,
  version: 1,
  spec: {
    name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
    kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
    additionalVolumes: [],
    interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'TAP' }],
    metadata: { 'meta-data': Buffer.from(`instance_id: ${UID}\ninstance-id: ${UID}\n`).toString('base64') },
    provider: 'fake', allowGuestAgent: false,
  },
  status: initialStatus(),
  createdAt: '', updatedAt: '',
};

function context(): CreateContext {
  const descriptor = { metadata: { kind: 'nocloud-disk', file: 'cidata.img' } } as ProviderDescriptor;
  return new CreateContext(record, { uid: UID, namespace: 'ns', name: 'web', dir: '/vm', runDir: '/run' }, descriptor, {} as VmmInstance, {} as PlanDeps, quiet);
}

const nic = (n: number, mac: string) => ({ deviceId: `eth${n}`, type: 'TAP' as const, hostDevice: `tap${n}`, ifindex: 10 + n, mac });
const nicStatus = { hostDeviceName: 'tap', index: 10, macAddress: '' };

it('makes the seed once for the NICs a pass has observed: the seed disk and the launch share it', () => {
  const ctx = context();
  ctx.recordNic(1, nic(1, 'AA:BB:CC:00:00:01'), nicStatus);
  const first = ctx.seed();
  const again = ctx.seed();
  // The same buffers: noCloudSeed (a YAML parse and a YAML document) was not run again.
  for (const name of Object.keys(first)) assert.equal(again[name], first[name], name);
  assert.deepEqual(Object.keys(again).sort(), Object.keys(first).sort());
  delete first['user-data'];
  assert.ok(ctx.seed()['user-data'], 'each caller gets a record of its own');
});

it('makes the seed again once a NIC is observed after it was made, by position', () => {
  const ctx = context();
  ctx.recordNic(1, nic(1, 'AA:BB:CC:00:00:01'), nicStatus);
  const before = ctx.seed()['network-config']?.toString() ?? '';
  assert.match(before, /aa:bb:cc:00:00:01/);
  assert.doesNotMatch(before, /02:00:00:00:00:00/);
  ctx.recordNic(0, nic(0, '02:00:00:00:00:00'), nicStatus);
  const after = ctx.seed();
  // What noCloudSeed makes of the NICs as the context holds them now (eth0 at 0, eth1 at 1).
  const want = noCloudSeed(record, [{ deviceId: 'eth0', mac: '02:00:00:00:00:00' }, { deviceId: 'eth1', mac: 'AA:BB:CC:00:00:01' }]);
  assert.deepEqual(after, want);
  assert.match(after['network-config']?.toString() ?? '', /02:00:00:00:00:00/);
});

it('keeps interface n paired with the NIC at position n when an earlier one is not observed yet', () => {
  const ctx = context();
  ctx.recordNic(1, nic(1, 'AA:BB:CC:00:00:01'), nicStatus);
  const sparse: { deviceId: string; mac: string }[] = [];
  sparse[1] = { deviceId: 'eth1', mac: 'AA:BB:CC:00:00:01' };
  assert.deepEqual(ctx.seed(), noCloudSeed(record, sparse));
});
