import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { MemoryStore } from '../../../test/fakes/memory-store.js';
import { MatchlockError } from '../errors.js';
import type { ProviderEntry } from '../vmm.js';
import { providerEntries } from '../../../test/fakes/provider-entries.js';
import { MicroVMService } from './service.js';
import { ULID_PATTERN } from './ulid.js';
import type { SpecInput } from './validate.js';

function input(over: Partial<SpecInput> = {}): SpecInput {
  return {
    id: 'vm1',
    namespace: '',
    labels: {},
    vcpu: 0,
    memoryInMb: 0,
    kernel: { image: 'ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
    rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'docker.io/library/alpine:3.20' } },
    additionalVolumes: [],
    interfaces: [{ deviceId: 'eth1', type: 1 }],
    metadata: {},
    allowGuestAgent: false,
    ...over,
  };
}

const allUsable = providerEntries();

function service(opts: { providers?: ReadonlyMap<string, ProviderEntry>; defaultProvider?: 'qemu' | 'firecracker' } = {}) {
  const store = new MemoryStore();
  const changed: string[] = [];
  let t = Date.parse('2026-01-01T00:00:00Z');
  const svc = new MicroVMService({
    store,
    clock: { now: () => new Date((t += 1000)) },
    random: { bytes: (n) => new Uint8Array(n).fill(7) },
    notifier: { changed: (uid) => changed.push(uid) },
    providers: opts.providers ?? allUsable,
    defaultProvider: opts.defaultProvider ?? 'qemu',
  });
  return { svc, store, changed };
}

const decode = (b64: string | undefined) => Buffer.from(b64 ?? '', 'base64').toString('utf8');

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MatchlockError, `expected MatchlockError, got ${String(err)}`);
    return `${err.code}: ${err.message}`;
  }
  assert.fail('expected an error');
}

describe('MicroVMService.create', () => {
  it('assigns a ULID, version 1, PENDING and the flintlock defaults, and notifies', () => {
    const { svc, store, changed } = service();
    const vm = svc.create(input());
    assert.match(vm.uid, ULID_PATTERN);
    assert.equal(vm.version, 1);
    assert.equal(vm.status.state, 'PENDING');
    assert.equal(vm.spec.namespace, 'default');
    assert.equal(vm.spec.vcpu, 2);
    assert.equal(vm.spec.memoryInMb, 1024);
    assert.equal(vm.spec.provider, 'qemu');
    assert.deepEqual(changed, [vm.uid]);
    assert.deepEqual(store.get(vm.uid), vm);
  });

  it('injects instance_id into meta-data and keeps the other keys', () => {
    const { svc } = service();
    const meta = Buffer.from('vm_host: host-a\nlocal_hostname: node-1\nplatform: liquid_metal\n').toString('base64');
    const vm = svc.create(input({ metadata: { 'meta-data': meta, 'user-data': Buffer.from('#cloud-config\n').toString('base64') } }));
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { vm_host: 'host-a', local_hostname: 'node-1', platform: 'liquid_metal', instance_id: vm.uid });
    assert.equal(decode(vm.spec.metadata['user-data']), '#cloud-config\n');
  });

  it('keeps an instance_id the client chose', () => {
    const { svc } = service();
    const vm = svc.create(input({ metadata: { 'meta-data': Buffer.from('instance_id: mine\n').toString('base64') } }));
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { instance_id: 'mine' });
  });

  it('creates meta-data when none was sent, and accepts raw (non-base64) values', () => {
    const { svc } = service();
    const vm = svc.create(input({ metadata: { 'user-data': '#cloud-config\nruncmd: [echo hi]\n' } }));
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { instance_id: vm.uid });
    assert.equal(decode(vm.spec.metadata['user-data']), '#cloud-config\nruncmd: [echo hi]\n');
  });

  it('prepends the MMDS eth0 for firecracker only, and not when eth0 exists', () => {
    const { svc } = service({ defaultProvider: 'firecracker' });
    const fc = svc.create(input());
    assert.deepEqual(fc.spec.interfaces.map((i) => i.deviceId), ['eth0', 'eth1']);
    assert.deepEqual(fc.spec.interfaces[0], { deviceId: 'eth0', type: 'TAP', guestMac: 'AA:FF:00:00:00:01', address: { address: '169.254.0.1/16', nameservers: [] } });
    const own = svc.create(input({ interfaces: [{ deviceId: 'eth0', type: 1 }] }));
    assert.deepEqual(own.spec.interfaces.map((i) => i.deviceId), ['eth0']);
    const q = svc.create(input({ provider: 'qemu' }));
    assert.deepEqual(q.spec.interfaces.map((i) => i.deviceId), ['eth1']);
  });

  it('refuses capability mismatches with FailedPrecondition', () => {
    const { svc, store } = service();
    assert.match(code(() => svc.create(input({ provider: 'firecracker', interfaces: [{ deviceId: 'eth1', type: 0 }] }))), /^FailedPrecondition: .*MACVTAP/);
    assert.match(
      code(() => svc.create(input({ additionalVolumes: [{ id: 'data', isReadOnly: false, source: { virtiofsSource: '/srv/data' } }] }))),
      /^FailedPrecondition: .*virtiofs/,
    );
    assert.match(code(() => svc.create(input({ allowGuestAgent: true }))), /^FailedPrecondition: .*vsock/);
    assert.equal(store.records.size, 0);
  });

  it('refuses a provider the host cannot run, saying why', () => {
    const { svc } = service({ providers: providerEntries((name) => (name === 'qemu' ? { usable: false, reason: 'VMM binary "qemu-system-x86_64" not found' } : { usable: true })) });
    assert.match(code(() => svc.create(input())), /^FailedPrecondition: provider qemu cannot run on this host: VMM binary/);
    assert.match(code(() => svc.create(input({ provider: 'vmware' }))), /^InvalidArgument: microvm.provider: must be one of/);
  });
});

describe('MicroVMService get/list/delete', () => {
  it('lists across namespaces when the namespace is empty, and filters by name', () => {
    const { svc } = service();
    const a = svc.create(input({ id: 'a', namespace: 'x' }));
    const b = svc.create(input({ id: 'b', namespace: 'y' }));
    const a2 = svc.create(input({ id: 'a', namespace: 'y' }));
    assert.deepEqual(svc.list('', undefined).map((v) => v.uid), [a.uid, b.uid, a2.uid]);
    assert.deepEqual(svc.list('y', undefined).map((v) => v.uid), [b.uid, a2.uid]);
    assert.deepEqual(svc.list('', 'a').map((v) => v.uid), [a.uid, a2.uid]);
    assert.deepEqual(svc.list('y', 'a').map((v) => v.uid), [a2.uid]);
    assert.deepEqual(svc.list('y', '').map((v) => v.uid), [b.uid, a2.uid]);
  });

  it('marks DELETING once (version + 1), repeats safely, and answers not found for unknown uids', () => {
    const { svc, changed } = service();
    const vm = svc.create(input());
    svc.delete(vm.uid);
    svc.delete(vm.uid);
    const got = svc.get(vm.uid);
    assert.equal(got.status.state, 'DELETING');
    assert.equal(got.version, 2);
    assert.ok(got.deletedAt);
    // Each delete call nudges the reconciler, so repeating one retries a slow teardown at once.
    assert.deepEqual(changed, [vm.uid, vm.uid, vm.uid]);
    assert.match(code(() => svc.get('01ARZ3NDEKTSV4RRFFQ69G5FAV')), /^NotFound: .*not found/);
    svc.delete('01ARZ3NDEKTSV4RRFFQ69G5FAV');
    assert.match(code(() => svc.get('')), /^InvalidArgument: uid: is required/);
    assert.match(code(() => svc.get('../etc')), /^InvalidArgument: uid: must be a 26-character ULID/);
  });
});
