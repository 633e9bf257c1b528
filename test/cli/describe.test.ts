import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { run } from '../../src/cli/main.js';
import { EXIT } from '../../src/cli/client.js';
import { describeVm, readLeaseFile, splitLastError } from '../../src/cli/describe.js';
import { MicroVMSchema, MicroVMStatus_MicroVMState } from '../../src/gen/types/microvm_pb.js';
import { generatedMac } from '../../src/core/microvm/host-names.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

async function until(fn: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await run(args, { out: (t) => (out += t), err: (t) => (err += t) }, env);
  return { code, out, err };
}

describe('vm describe, in plain words', () => {
  const tmp = tempDir('describe');
  after(() => tmp.remove());
  const now = Date.parse('2026-01-01T00:00:00Z');
  const vm = create(MicroVMSchema, {
    version: 3,
    spec: {
      id: 'web', namespace: 'team', uid: '01J00000000000000000000000', provider: 'qemu', vcpu: 2, memoryInMb: 1024,
      interfaces: [{ deviceId: 'eth0', guestMac: '02:00:00:00:00:AA' }, { deviceId: 'eth1' }],
      createdAt: timestampFromDate(new Date(now - 90_000)),
    },
    status: {
      state: MicroVMStatus_MicroVMState.PENDING,
      retry: 3,
      lastError: 'vmm qemu: qemu exited with 1: could not open kernel',
      nextAttemptAt: timestampFromDate(new Date(now + 30_000)),
      vmmPid: 0,
      // As flintlock reports it: the MAC of the host's TAP, not the guest's.
      networkInterfaces: { eth0: { hostDeviceName: 'mlt0000000000a', macAddress: '0a:0a:97:37:6a:fa' } },
    },
  });

  it('splits the failing step from its reason', () => {
    // Step names as the plans give them (src/core/plan/steps).
    assert.deepEqual(splitLastError('vmm qemu: qemu exited with 1: x'), { step: 'vmm qemu', reason: 'qemu exited with 1: x' });
    assert.deepEqual(splitLastError('image localhost/guest:1: manifest unknown'), { step: 'image localhost/guest:1', reason: 'manifest unknown' });
    assert.deepEqual(splitLastError('vmm pid 12 exited unexpectedly'), { reason: 'vmm pid 12 exited unexpectedly' });
  });

  it('shows state, failing step, reason, next retry, boot, pid and addresses from a lease file', () => {
    const leases = join(tmp.path, 'dnsmasq.leases');
    const expiry = Math.floor(Date.now() / 1000) + 3600;
    // eth0's guest MAC is in the spec; eth1's is the one matchlock derives from the uid.
    writeFileSync(leases, `${expiry} 02:00:00:00:00:aa 10.9.0.51 web *\n${expiry} ${generatedMac('01J00000000000000000000000', 'eth1')} 10.9.0.52 web *\n`);
    const text = describeVm(vm, readLeaseFile(leases), now);
    const field = (k: string) => new RegExp(`^${k}:\\s+(.*)$`, 'm').exec(text)?.[1];
    assert.equal(field('Name'), 'team/web');
    assert.equal(field('State'), 'PENDING');
    assert.equal(field('Step'), 'vmm qemu (failed)');
    assert.equal(field('Reason'), 'qemu exited with 1: could not open kernel');
    assert.equal(field('Retry'), '3');
    assert.equal(field('Next retry'), '2026-01-01T00:00:30.000Z (in 30s)');
    assert.equal(field('VMM pid'), '-');
    assert.equal(field('Guest booted'), 'no');
    assert.match(text, /^ {2}eth0 {2}host mlt0000000000a {2}mac 02:00:00:00:00:aa {2}address 10\.9\.0\.51$/m);
    assert.match(text, /^ {2}eth1 .*address 10\.9\.0\.52$/m);
    assert.match(describeVm(vm, [], now), /^ {2}eth1 .*address no lease$/m);
    // Without a lease file it says where addresses would come from.
    assert.match(describeVm(vm, readLeaseFile(undefined), now), /eth0 .*address unknown \(no lease file: --leases-file\)/);
    // A lease file given that cannot be read is named, not asked for again.
    assert.match(describeVm(vm, readLeaseFile(join(tmp.path, 'absent.leases')), now), /eth0 .*address unknown \(cannot read the lease file .*absent\.leases: ENOENT\)$/m);
  });
});

describe('vm addressing by namespace/name, list REASON, -o json|yaml with every field', () => {
  const tmp = tempDir('cli-addr');
  let d: DaemonHandle;
  let host: string[];
  before(async () => {
    d = await startDaemon(join(tmp.path, 'state'), ['--default-provider', 'qemu']);
    host = ['--host', `127.0.0.1:${d.grpcPort}`];
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });
  const make = async (name: string) => {
    // An image no registry has: the record stays PENDING with the pull's error as its reason.
    const r = await cli([...host, '-o', 'json', 'vm', 'create', '--name', name, '--namespace', 'capmvm', '--kernel-image', '127.0.0.1:1/none/kernel:1', '--root-image', '127.0.0.1:1/none/root:1']);
    assert.equal(r.code, EXIT.ok, r.err);
    return (JSON.parse(r.out) as { spec: { uid: string } }).spec.uid;
  };

  it('finds a VM by namespace/name, and lists the candidates when a name is shared', async () => {
    const one = await make('solo');
    const a = await make('twin');
    const b = await make('twin');
    const got = await cli([...host, '-o', 'json', 'vm', 'get', 'capmvm/solo']);
    assert.equal(got.code, EXIT.ok, got.err);
    const doc = JSON.parse(got.out) as { spec: { uid: string }; status: Record<string, unknown> };
    assert.equal(doc.spec.uid, one);
    // Defaults are present, not omitted: scripts read status.state of a PENDING VM.
    assert.equal(doc.status.state, 'PENDING');
    assert.equal(typeof doc.status.retry, 'number');
    assert.ok('vmmPid' in doc.status && 'guestBooted' in doc.status && 'lastError' in doc.status, JSON.stringify(doc.status));
    const yaml = parse((await cli([...host, '-o', 'yaml', 'vm', 'get', one])).out) as { status: { state: string; guestBooted: boolean } };
    assert.equal(yaml.status.state, 'PENDING');
    assert.equal(yaml.status.guestBooted, false);

    const twin = await cli([...host, 'vm', 'get', 'capmvm/twin']);
    assert.equal(twin.code, EXIT.usage);
    assert.match(twin.err, /capmvm\/twin names 2 microvms; give one of their uids: /);
    assert.ok(twin.err.includes(a) && twin.err.includes(b), twin.err);
    const none = await cli([...host, 'vm', 'get', 'capmvm/nobody']);
    assert.equal(none.code, EXIT.notFound);
    assert.match(none.err, /microvm capmvm\/nobody not found/);
    const bad = await cli([...host, 'vm', 'get', 'capmvm/']);
    assert.equal(bad.code, EXIT.usage);

    // The table form of get is describe; its reason is the pull's error once it is recorded.
    let described = '';
    for (let i = 0; i < 300 && !/^Reason:\s+\S{2,}/m.test(described); i++) {
      described = (await cli([...host, 'vm', 'describe', 'capmvm/solo'])).out;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(described, /^State:\s+PENDING$/m);
    assert.match(described, /^Step:\s+\S+ .*\(failed\)$/m);
    assert.match(described, /^Next retry:\s+\d{4}-/m);
    assert.equal((await cli([...host, 'vm', 'get', 'capmvm/solo'])).out.split('\n')[0], described.split('\n')[0]);
    // Recent events come from the store's event log: the create, then the failed pull's update.
    const events = described.slice(described.indexOf('\nEvents:\n') + 9).trim().split('\n');
    assert.ok(described.includes('\nEvents:\n'), described);
    assert.match(events[0] ?? '', /^\d{4}-\S+ \(.*\)\s+CREATED\s+state PENDING$/, described);
    assert.ok(events.slice(1).some((l) => /\sUPDATED\s.*error: image 127\.0\.0\.1:1\/none/.test(l)), described);

    const list = await cli([...host, 'vm', 'list', '--namespace', 'capmvm']);
    const [header, ...rows] = list.out.trim().split('\n');
    assert.match(header ?? '', /\sAGE\s+REASON$/);
    const soloRow = rows.find((r) => r.startsWith(one)) ?? '';
    assert.match(soloRow, /\simage 127\.0\.0\.1:1\/none\/\S+: /, soloRow);

    const del = await cli([...host, 'vm', 'delete', 'capmvm/solo', a, b, a]);
    assert.equal(del.code, EXIT.ok, del.err);
    assert.equal(del.out, `${one} deleting\n${a} deleting\n${b} deleting\n`, 'each VM once');
    await until(async () => (await cli([...host, 'vm', 'get', one])).code === EXIT.notFound);
    const again = await cli([...host, 'vm', 'delete', one]);
    assert.equal(again.code, EXIT.ok, 'safe to repeat');
    assert.equal(again.out, `${one} not found: nothing to delete\n`);
  });
});
