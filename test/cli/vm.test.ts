import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { run } from '../../src/cli/main.js';
import { EXIT } from '../../src/cli/client.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import type { MicroVM } from '../../src/core/microvm/types.js';
import { seededUid, storedMicroVM } from '../helpers/records.js';

async function cli(args: string[]): Promise<{ code: number; out: string; err: string; writes: number }> {
  let out = '';
  let err = '';
  let writes = 0;
  const code = await run(args, { out: (t) => ((out += t), writes++), err: (t) => (err += t) }, {});
  return { code, out, err, writes };
}

describe('matchlock vm', () => {
  const tmp = tempDir('cli');
  let d: DaemonHandle;
  let host: string[];
  before(async () => {
    d = await startDaemon(join(tmp.path, 'state'), ['--basic-auth-token', 't0k']);
    host = ['--host', `127.0.0.1:${d.grpcPort}`, '--token', 't0k'];
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });

  it('creates from a YAML spec in snake_case with enum names, and from flags with metadata files', async () => {
    const spec = join(tmp.path, 'spec.yaml');
    writeFileSync(spec, [
      'id: from-file', 'namespace: team-a', 'vcpu: 4', 'memory_in_mb: 2048',
      'kernel: {image: "ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77", filename: boot/vmlinux, add_network_config: true}',
      'root_volume: {id: root, source: {container_source: "alpine:3.20"}}',
      'interfaces: [{device_id: eth1, type: TAP, guest_mac: "02:00:00:00:00:10"}]', '',
    ].join('\n'));
    const a = await cli([...host, '-o', 'json', 'vm', 'create', '-f', spec]);
    assert.equal(a.code, EXIT.ok, a.err);
    const vm = JSON.parse(a.out) as { spec: { uid: string; vcpu: number; namespace: string }; status: { state?: string } };
    assert.equal(vm.spec.vcpu, 4);
    assert.equal(vm.spec.namespace, 'team-a');

    const userData = join(tmp.path, 'user-data');
    writeFileSync(userData, '#cloud-config\nruncmd: [echo from-cli]\n');
    const b = await cli([...host, '-o', 'yaml', 'vm', 'create', '--name', 'from-flags', '--namespace', 'team-a', '--kernel-image', 'k:1',
      '--root-image', 'alpine:3.20', '--interface', 'id=eth1,type=tap,mac=02:00:00:00:00:11,bridge=br0', '--metadata-from-file', `user-data=${userData}`, '--label', 'role=worker']);
    assert.equal(b.code, EXIT.ok, b.err);
    const vm2 = parse(b.out) as { spec: { uid: string; labels: Record<string, string>; metadata: Record<string, string>; interfaces: { overrides: { bridgeName: string } }[] } };
    assert.deepEqual(vm2.spec.labels, { role: 'worker' });
    assert.equal(Buffer.from(vm2.spec.metadata['user-data'] ?? '', 'base64').toString(), '#cloud-config\nruncmd: [echo from-cli]\n');
    assert.equal(vm2.spec.interfaces[0]?.overrides.bridgeName, 'br0');

    const list = await cli([...host, 'vm', 'list', '--namespace', 'team-a']);
    assert.equal(list.code, EXIT.ok);
    const lines = list.out.trim().split('\n');
    assert.match(lines[0] ?? '', /^UID\s+NAMESPACE\s+NAME\s+STATE/);
    assert.equal(lines.length, 3);
    assert.match(list.out, new RegExp(`${vm.spec.uid}\\s+team-a\\s+from-file\\s+PENDING\\s+\\S+\\s+4\\s+2048Mi`));

    // Records stay PENDING until a runtime runs them, so waiting for CREATED times out.
    const watch = await cli([...host, 'vm', 'watch', vm.spec.uid, '--until', 'CREATED', '--timeout', '1s']);
    assert.equal(watch.code, EXIT.timeout);
    assert.match(watch.out, /PENDING/);

    const del = await cli([...host, 'vm', 'delete', vm.spec.uid, vm2.spec.uid]);
    assert.equal(del.code, EXIT.ok, del.err);
    const gone = await cli([...host, 'vm', 'watch', vm.spec.uid, '--until', 'gone', '--timeout', '10s']);
    assert.equal(gone.code, EXIT.ok, gone.err);
    const get = await cli([...host, 'vm', 'get', vm.spec.uid]);
    assert.equal(get.code, EXIT.notFound);
    assert.match(get.err, /^matchlock: microvm \S+ not found\n$/);
  });

  it('delete and watch print documents for -o json and -o yaml', async () => {
    const made = await cli([...host, '-o', 'json', 'vm', 'create', '--name', 'formats', '--namespace', 'team-f', '--kernel-image', 'k:1', '--root-image', 'r:1']);
    assert.equal(made.code, EXIT.ok, made.err);
    const uid = (JSON.parse(made.out) as { spec: { uid: string } }).spec.uid;
    // An event carries the VM as `vm get -o json` writes it: every field, unset ones as zero values.
    const got = JSON.parse((await cli([...host, '-o', 'json', 'vm', 'get', uid])).out) as { spec: Record<string, unknown> };
    for (const format of ['json', 'yaml'] as const) {
      const events = await cli([...host, '-o', format, 'vm', 'events', '--uid', uid, '--max-events', '1']);
      assert.equal(events.code, EXIT.ok, events.err);
      const event = (format === 'json' ? JSON.parse(events.out) : (parse(events.out) as unknown[])[0]) as { stateChanged?: unknown; microvm: { spec: Record<string, unknown> } };
      assert.equal(event.stateChanged, false, format);
      assert.deepEqual(Object.keys(event.microvm.spec).sort(), Object.keys(got.spec).sort(), format);
      assert.deepEqual(event.microvm.spec.labels, {}, format);
    }
    const del = await cli([...host, '-o', 'yaml', 'vm', 'delete', uid]);
    assert.equal(del.code, EXIT.ok, del.err);
    assert.deepEqual(parse(del.out), [{ uid, found: true }]);
    const watch = await cli([...host, '-o', 'json', 'vm', 'watch', uid, '--until', 'gone', '--timeout', '10s']);
    assert.equal(watch.code, EXIT.ok, watch.err);
    const changes = watch.out.trim().split('\n').map((l) => JSON.parse(l) as { uid: string; gone?: boolean });
    assert.deepEqual(changes.at(-1) && { uid: changes.at(-1)?.uid, gone: changes.at(-1)?.gone }, { uid, gone: true });
    const again = await cli([...host, '-o', 'json', 'vm', 'delete', uid]);
    assert.deepEqual(JSON.parse(again.out), [{ uid, found: false }]);
  });

  it('exits with codes scripts can rely on, errors in one line', async () => {
    const bad = await cli([...host, 'vm', 'create', '--name', 'x', '--kernel-image', 'k:1', '--root-image', 'r:1', '--vcpu', '99']);
    assert.equal(bad.code, EXIT.usage);
    assert.equal(bad.err, 'matchlock: microvm.vcpu: must be between 1 and 64\n');
    const noAuth = await cli(['--host', `127.0.0.1:${d.grpcPort}`, 'vm', 'list']);
    assert.equal(noAuth.code, EXIT.unauthenticated);
    const down = await cli(['--host', '127.0.0.1:1', '--request-timeout', '2s', 'vm', 'list']);
    assert.equal(down.code, EXIT.unavailable);
    assert.match(down.err, /^matchlock: cannot reach matchlockd at 127\.0\.0\.1:1/);
    assert.doesNotMatch(down.err, /Resolution note:\s*$/, 'no empty note left by grpc-js');
    const remote = await cli(['--host', '192.0.2.1:9090', 'vm', 'list']);
    assert.equal(remote.code, EXIT.usage, 'plaintext to a non-loopback host needs --insecure; nothing is sent');
    const both = await cli([...host, 'vm', 'create', '-f', 'x.yaml', '--name', 'y']);
    assert.equal(both.code, EXIT.usage);
    const missingFile = await cli([...host, 'vm', 'create', '-f', join(tmp.path, 'nope.yaml')]);
    assert.equal(missingFile.code, EXIT.usage);
    assert.match(missingFile.err, /nope\.yaml: ENOENT/);
    const named = join(tmp.path, 'named.yaml');
    writeFileSync(named, 'name: web1\nnamespace: team\n');
    const wrongKey = await cli([...host, 'vm', 'create', '-f', named]);
    assert.equal(wrongKey.code, EXIT.usage);
    assert.match(wrongKey.err, /key "name" is unknown \(a MicroVMSpec names its VM with "id"; --name is the flag for it\)/);
    const unknownCmd = await cli(['vm', 'explode']);
    assert.equal(unknownCmd.code, EXIT.usage);
  });
});

describe('matchlock vm list of many VMs', () => {
  const RECORDS = 1100;
  const { host, uids } = daemonOver('cli-list', () => Array.from({ length: RECORDS }, (_, i) => seeded(i)));

  it('fetches page by page: one aligned table, one JSON document printed as pages come, one YAML document', async () => {
    const t = await cli([...host, 'vm', 'list']);
    assert.equal(t.code, EXIT.ok, t.err);
    const lines = t.out.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^UID\s+NAMESPACE\s+NAME\s+STATE/);
    assert.deepEqual(lines.slice(1).map((l) => l.split(/\s+/)[0]), uids);
    // Columns line up across pages, also after a column whose width changes between pages
    // (vm-999, vm-1000): NAMESPACE and STATE start at the same place in every row.
    assert.equal(new Set(lines.map((l) => l.indexOf(l.includes('NAMESPACE') ? 'NAMESPACE' : 'team-'))).size, 1);
    assert.deepEqual([...new Set(lines.map((l) => l.search(/ (STATE|FAILED)/)))].length, 1, lines.filter((l, i) => i === 0 || /vm-(499|500|999|1000) /.test(l)).join('\n'));

    const j = await cli([...host, '-o', 'json', 'vm', 'list']);
    assert.equal(j.code, EXIT.ok, j.err);
    const docs = JSON.parse(j.out) as { spec: { uid: string } }[];
    assert.deepEqual(docs.map((v) => v.spec.uid), uids);
    assert.ok(j.writes >= 3, `JSON printed in ${j.writes} writes`);
    // The same text as printing the whole array at once.
    assert.equal(j.out, JSON.stringify(docs, null, 2) + '\n');

    const y = await cli([...host, '-o', 'yaml', 'vm', 'list', '--namespace', 'team-1']);
    assert.equal(y.code, EXIT.ok, y.err);
    assert.deepEqual((parse(y.out) as { spec: { uid: string; namespace: string } }[]).map((v) => v.spec.namespace), Array(RECORDS / 2).fill('team-1'));

    const none = await cli([...host, '-o', 'json', 'vm', 'list', '--namespace', 'nobody']);
    assert.equal(none.out, '[]\n');
    const noneTable = await cli([...host, 'vm', 'list', '--namespace', 'nobody']);
    assert.match(noneTable.out, /^UID\s+NAMESPACE\s+NAME\s+STATE.*REASON\n$/);
  });
});

describe('matchlock vm watch on a FAILED VM', () => {
  const uids = { link: seededUid(1), pull: seededUid(2) };
  const { host } = daemonOver('cli-failed', () => [
    storedMicroVM(uids.link, { name: 'link', interfaces: [{ deviceId: 'eth1', type: 'TAP', overrides: { bridgeName: 'mlnobr7' } }] }, { retry: 11, lastError: 'interface eth1 (tap mlt0000000010): bridge mlnobr7 for interface eth1 not found on this host', missingLink: 'mlnobr7' }),
    storedMicroVM(uids.pull, { name: 'pull' }, { retry: 11, lastError: 'image r:1: pull failed: 503' }),
  ]);

  it('ends (exit 8) saying why: the link whose return retries it, or that it must be recreated', async () => {
    const link = await cli([...host, 'vm', 'watch', uids.link, '--until', 'CREATED', '--timeout', '10s']);
    assert.equal(link.code, EXIT.failed, link.err);
    assert.match(link.err, /is FAILED \(interface eth1 .*\); state=CREATED cannot hold until mlnobr7 appears again \(matchlockd retries the VM then, if mlnobr7 is still its bridge or macvtap parent/);
    const pull = await cli([...host, 'vm', 'watch', uids.pull, '--until', 'CREATED', '--timeout', '10s']);
    assert.equal(pull.code, EXIT.failed, pull.err);
    assert.match(pull.err, /is FAILED \(image r:1: pull failed: 503\); state=CREATED cannot hold until it is deleted and created again/);
  });
});

/**
 * A daemon started (before the suite's tests) over a store holding `records`, written straight
 * into it: FAILED ones, which nothing reconciles. `host` is the CLI's flag for it and `uids` the
 * store's uids in its order, both filled once it runs. The daemon and its directory go after
 * the suite.
 */
function daemonOver(name: string, records: () => MicroVM[]): { host: string[]; uids: string[] } {
  const tmp = tempDir(name);
  const out = { host: [] as string[], uids: [] as string[] };
  let d: DaemonHandle | undefined;
  before(async () => {
    const stateDir = join(tmp.path, 'state');
    const store = new SqliteStore(join(stateDir, 'matchlock.db'));
    for (const vm of records()) store.insert(vm);
    out.uids.push(...store.uids({}, {}));
    store.close();
    d = await startDaemon(stateDir);
    out.host.push('--host', `127.0.0.1:${d.grpcPort}`);
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });
  return out;
}

function seeded(n: number): MicroVM {
  return storedMicroVM(seededUid(n), { name: `vm-${n}`, namespace: `team-${n % 2}`, metadata: { 'user-data': Buffer.from('#cloud-config\n').toString('base64') } });
}
