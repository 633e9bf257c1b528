import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { MemoryStore } from '../../../test/fakes/memory-store.js';
import { ErrorCode, MatchlockError, invalid } from '../errors.js';
import type { MetaDataReader, ReadMetaData } from '../ports.js';
import type { ProviderEntry } from '../vmm.js';
import { providerEntries } from '../../../test/fakes/provider-entries.js';
import { MicroVMService } from './service.js';
import { ULID_PATTERN } from './ulid.js';
import { META_DATA_FIELD, type SpecInput } from './validate.js';

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

function service(opts: { providers?: ReadonlyMap<string, ProviderEntry>; defaultProvider?: 'qemu' | 'firecracker'; metaData?: MetaDataReader } = {}) {
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
    metaData: opts.metaData,
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
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { vm_host: 'host-a', local_hostname: 'node-1', platform: 'liquid_metal', instance_id: vm.uid, 'instance-id': vm.uid, 'local-hostname': 'node-1' });
    assert.equal(decode(vm.spec.metadata['user-data']), '#cloud-config\n');
  });

  it('keeps an instance_id the client chose', () => {
    const { svc } = service();
    const vm = svc.create(input({ metadata: { 'meta-data': Buffer.from('instance_id: mine\n').toString('base64') } }));
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { instance_id: 'mine', 'instance-id': 'mine' });
  });

  it('creates meta-data when none was sent, and accepts raw (non-base64) values', () => {
    const { svc } = service();
    const vm = svc.create(input({ metadata: { 'user-data': '#cloud-config\nruncmd: [echo hi]\n' } }));
    assert.deepEqual(parse(decode(vm.spec.metadata['meta-data'])), { instance_id: vm.uid, 'instance-id': vm.uid });
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

  it('names the providers that support virtiofs in a sentence that agrees with their number', () => {
    const { svc } = service();
    const virtiofs = input({ additionalVolumes: [{ id: 'data', isReadOnly: false, source: { virtiofsSource: '/srv/data' } }] });
    assert.match(code(() => svc.create(virtiofs)), /provider qemu does not support virtiofs \(cloudhypervisor does\)$/);
  });

  // Firecracker builds the kernel command line into 2048 bytes with the NUL (x86_64
  // CMDLINE_MAX_SIZE): boot_args, then pci=off, root=/dev/vda rw and one
  // virtio_mmio.device=4K@0x...:N per device.
  const fcNic = (n: number) => ({ deviceId: `eth${n}`, type: 1, address: { address: `10.0.${n}.2/24`, gateway: `10.0.${n}.1`, nameservers: ['10.0.0.53', '10.0.1.53', '10.0.2.53'] } });

  it('refuses on firecracker a command line over 2048 bytes made by add_network_config for 8 static interfaces', () => {
    const { svc, store } = service({ defaultProvider: 'firecracker' });
    const err = code(() => svc.create(input({ interfaces: [1, 2, 3, 4, 5, 6, 7, 8].map(fcNic) })));
    assert.match(err, /^FailedPrecondition: microvm\.kernel\.add_network_config: the kernel command line provider firecracker would pass is (\d+) bytes with its NUL \(.*network-config of 9 interfaces \(add_network_config\) (\d+).*\), over the 2048 bytes Firecracker allows \(CMDLINE_MAX_SIZE/);
    const [, total, network] = /is (\d+) bytes.*add_network_config\) (\d+)/.exec(err) ?? [];
    assert.ok(Number(network) > 2048 && Number(total) > Number(network), err);
    assert.equal(store.records.size, 0);
    // Without the seed on the command line the same interfaces fit.
    svc.create(input({ interfaces: [1, 2, 3, 4, 5, 6, 7, 8].map(fcNic), kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false } }));
  });

  it('refuses on firecracker a kernel.cmdline within the common 2048-byte rule that Firecracker\'s additions push over', () => {
    const { svc } = service({ defaultProvider: 'firecracker' });
    const cmdline = Object.fromEntries(Array.from({ length: 60 }, (_, n) => [`opt${String(n).padStart(2, '0')}`, 'x'.repeat(26)]));
    const err = code(() => svc.create(input({ kernel: { image: 'k', filename: 'boot/vmlinux', cmdline, addNetworkConfig: false } })));
    assert.match(err, /^FailedPrecondition: microvm\.kernel\.cmdline: the kernel command line provider firecracker would pass is 2247 bytes with its NUL \(boot_args 2116, of which kernel\.cmdline 1979, Firecracker's own pci=off, root= and virtio_mmio\.device= for 3 devices 130\), over the 2048 bytes/);
    // The same entries on QEMU are over the guest kernel's COMMAND_LINE_SIZE once its defaults are in.
    assert.match(code(() => svc.create(input({ provider: 'qemu', kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: { ...cmdline, pad: 'y'.repeat(20) }, addNetworkConfig: false } }))), /^FailedPrecondition: microvm\.kernel\.cmdline: the kernel command line provider qemu would pass is \d+ bytes .*COMMAND_LINE_SIZE/);
  });

  it('refuses on firecracker more virtio devices than its 19 interrupt lines less VMGenID and VMClock serve', () => {
    const { svc } = service({ defaultProvider: 'firecracker' });
    const vols = (n: number) => Array.from({ length: n }, (_, i) => ({ id: `v${i}`, isReadOnly: false, source: { containerSource: 'docker.io/library/alpine:3.20' } }));
    const noSeed = { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false };
    const err = code(() => svc.create(input({ kernel: noSeed, additionalVolumes: vols(16), interfaces: [{ deviceId: 'eth1', type: 1 }, { deviceId: 'eth2', type: 1 }] })));
    assert.equal(err, 'FailedPrecondition: microvm.additional_volumes: provider firecracker has interrupt lines for at most 17 virtio devices (GSIs 5 to 23, less one each for VMGenID and VMClock); this spec (the metadata interface eth0 included) needs 20: 17 drives, 3 network interfaces');
    // 17 fit: root, 14 volumes, eth0 and eth1; an 18th (the guest agent's vsock) does not.
    svc.create(input({ kernel: noSeed, additionalVolumes: vols(14) }));
    assert.match(code(() => svc.create(input({ kernel: noSeed, additionalVolumes: vols(14), allowGuestAgent: true }))), /needs 18: 15 drives, 2 network interfaces, 1 vsock$/);
  });

  it('refuses non-ASCII in the command line on cloudhypervisor (linux-loader) but not on firecracker or qemu', () => {
    const { svc } = service();
    const cafe = input({ kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: { hostname_label: 'café' }, addNetworkConfig: false } });
    assert.equal(
      code(() => svc.create({ ...cafe, provider: 'cloudhypervisor' })),
      'FailedPrecondition: microvm.kernel.cmdline["hostname_label"]: provider cloudhypervisor refuses a kernel command line with characters outside printable ASCII (\' \' to \'~\', rust-vmm linux-loader\'s rule); the value has U+00E9',
    );
    svc.create({ ...cafe, provider: 'firecracker' });
    svc.create({ ...cafe, provider: 'qemu' });
  });

  it('refuses on cloudhypervisor a kernel.cmdline the guest kernel would cut once the defaults are in', () => {
    const { svc } = service();
    const cmdline = { long: 'z'.repeat(2040) };
    assert.match(code(() => svc.create(input({ provider: 'cloudhypervisor', kernel: { image: 'k', filename: 'boot/vmlinux', cmdline, addNetworkConfig: false } }))), /^FailedPrecondition: microvm\.kernel\.cmdline: the kernel command line provider cloudhypervisor would pass is 2094 bytes with its NUL \(kernel\.cmdline 2045, .*\), over the 2048 bytes the guest kernel keeps/);
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
    assert.match(code(() => svc.delete('')), /^InvalidArgument: uid: is required/);
    // Any other shape is looked up and simply not found (flintlock answers so; CAPMVM matches
    // the text): a ULID-length uid with a letter outside Crockford's alphabet, paths, huge ones.
    for (const uid of ['01ARZ3NDEKTSV4RRFFQ69G5FAU', '01arz3ndektsv4rrffq69g5fav', '../etc', 'a/b', ' ', '\u0000', 'x'.repeat(100_000)]) {
      const got = code(() => svc.get(uid));
      assert.match(got, /^NotFound: microvm .* not found$/);
      assert.ok(got.length < 200, `the error quotes at most a bounded part of the uid (${got.length} characters)`);
      svc.delete(uid);
    }
    assert.deepEqual(changed, [vm.uid, vm.uid, vm.uid], 'deleting unknown uids changes nothing');
  });
});

describe('MicroVMService.createEncodedAsync', () => {
  /** A MetaDataReader that answers each reading with `answer` and records what it was asked. */
  const reader = (answer: (value: string, uid: string) => Promise<ReadMetaData | undefined>) => {
    const asked: { value: string; uid: string; field: string }[] = [];
    // Takes every value but those under 8 characters, as the daemon's takes those over 16 KiB.
    return { asked, reader: { takes: (value: string) => value.length >= 8, read: (value: string, uid: string, field: string) => (asked.push({ value, uid, field }), answer(value, uid)) } };
  };
  const meta = Buffer.from('local_hostname: a\n').toString('base64');

  it("stores the reader's meta-data for the request's value and uid, with the time and uid of the request's arrival", async () => {
    const r = reader(async (value, uid) => ({ value, uid, outcome: Buffer.from('from: the reader\n') }));
    const { svc, store } = service({ metaData: r.reader });
    const { vm } = await svc.createEncodedAsync(input({ metadata: { 'meta-data': meta } }));
    assert.deepEqual(r.asked, [{ value: meta, uid: vm.uid, field: META_DATA_FIELD }]);
    assert.equal(decode(store.get(vm.uid)?.spec.metadata['meta-data']), 'from: the reader\n');
    assert.equal(vm.createdAt, '2026-01-01T00:00:01.000Z', 'the clock was read once, before the reading');
  });

  it('reads in line what the reader leaves (undefined) or what is not of the same value and uid', async () => {
    for (const answer of [async () => undefined, async (_v: string, uid: string) => ({ value: 'other', uid, outcome: Buffer.from('x: 1\n') }), async (value: string) => ({ value, uid: 'another', outcome: Buffer.from('x: 1\n') })]) {
      const { svc, store } = service({ metaData: reader(answer).reader });
      const { vm } = await svc.createEncodedAsync(input({ metadata: { 'meta-data': meta } }));
      assert.match(decode(store.get(vm.uid)?.spec.metadata['meta-data']), /^local_hostname: a\ninstance_id: /);
    }
  });

  it("throws the reader's refusal where validation reaches the meta-data, so an earlier field's fault comes first", async () => {
    const refusal = invalid(META_DATA_FIELD, 'refused by the reader');
    const r = reader(async (value, uid) => ({ value, uid, outcome: refusal }));
    const { svc, store } = service({ metaData: r.reader });
    await assert.rejects(svc.createEncodedAsync(input({ metadata: { 'meta-data': meta } })), (err) => err === refusal);
    await assert.rejects(svc.createEncodedAsync(input({ vcpu: 1000, metadata: { 'meta-data': meta } })), /microvm\.vcpu/);
    assert.equal(store.list({}).length, 0);
  });

  it('refuses what validation refuses before the meta-data without reading it; a later fault waits for the reading, which comes first', async () => {
    const refusal = invalid(META_DATA_FIELD, 'refused by the reader');
    const r = reader(async (value, uid) => ({ value, uid, outcome: refusal }));
    const { svc } = service({ metaData: r.reader });
    // Over the 1 MiB metadata limit once decoded, and a field before the meta-data: neither is read.
    await assert.rejects(svc.createEncodedAsync(input({ metadata: { 'meta-data': 'x'.repeat(1024 * 1024 + 1) } })), /metadata must total at most 1048576 bytes/);
    await assert.rejects(svc.createEncodedAsync(input({ vcpu: 1000, metadata: { 'meta-data': meta } })), /microvm\.vcpu/);
    assert.equal(r.asked.length, 0, 'the reader was not asked');
    // A fault found after the meta-data (QEMU has no vsock for the guest agent): the reading's
    // refusal is the first fault, as in line.
    await assert.rejects(svc.createEncodedAsync(input({ allowGuestAgent: true, metadata: { 'meta-data': meta } })), (err) => err === refusal);
    assert.equal(r.asked.length, 1);
    // ...and with meta-data the reading accepts, the later fault.
    const fine = reader(async (value, uid) => ({ value, uid, outcome: Buffer.from('x: 1\n') }));
    const other = service({ metaData: fine.reader });
    await assert.rejects(other.svc.createEncodedAsync(input({ allowGuestAgent: true, metadata: { 'meta-data': meta } })), /^.*vsock/);
  });

  it('stores nothing for a client that gave up while its meta-data was read', async () => {
    const { svc, store } = service({ metaData: reader(async (value, uid) => ({ value, uid, outcome: Buffer.from('x: 1\n') })).reader });
    await assert.rejects(svc.createEncodedAsync(input({ metadata: { 'meta-data': meta } }), () => false), (err) => err instanceof MatchlockError && err.code === ErrorCode.Canceled && /nothing was created/.test(err.message));
    assert.equal(store.list({}).length, 0);
  });

  it('a meta-data the reader does not take is read in line: readsAhead says so and the reader is not asked', async () => {
    const r = reader(async () => assert.fail('not asked'));
    const { svc, store } = service({ metaData: r.reader });
    // Raw text, five characters: under what the reader takes.
    const small = 'a: 1\n';
    assert.equal(svc.readsAhead(input({ metadata: { 'meta-data': small } })), false);
    assert.equal(svc.readsAhead(input({ metadata: { 'meta-data': meta } })), true);
    assert.equal(svc.readsAhead(input()), false);
    const { vm } = await svc.createEncodedAsync(input({ metadata: { 'meta-data': small } }));
    assert.equal(r.asked.length, 0);
    assert.ok(store.get(vm.uid));
  });

  it('rejects with the error of a reading that could not run, storing nothing; without meta-data the reader is not asked', async () => {
    const down = new MatchlockError(ErrorCode.Internal, 'reader gone');
    const r = reader(() => Promise.reject(down));
    const { svc, store } = service({ metaData: r.reader });
    await assert.rejects(svc.createEncodedAsync(input({ metadata: { 'meta-data': meta } })), (err) => err === down);
    assert.equal(store.list({}).length, 0);
    const { vm } = await svc.createEncodedAsync(input());
    assert.equal(r.asked.length, 1);
    assert.ok(store.get(vm.uid));
  });
});
