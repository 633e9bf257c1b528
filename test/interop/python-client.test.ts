import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { PYTHON, pythonMissing, pythonStubs } from './stubs.js';

const missing = pythonMissing();

describe('an independent Python grpcio client (CAPMVM-shaped)', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('py');
  let daemon: DaemonHandle;
  let stubs: string;
  before(async () => {
    assert.deepEqual(missing, [], 'tools needed for this test');
    stubs = pythonStubs(tmp.path, 'reference');
    daemon = await startDaemon(join(tmp.path, 'state'), ['--basic-auth-token', 's3cret']);
  });
  after(async () => {
    await daemon?.stop();
    tmp.remove();
  });

  it('creates, gets, lists and deletes; Get then answers NOT_FOUND "not found"; meta-data carries instance_id = uid', () => {
    const r = spawnSync(PYTHON, [join(ROOT, 'test/interop/capmvm_client.py'), stubs, `127.0.0.1:${daemon.grpcPort}`, 's3cret'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout) as {
      create: { uid: string; state: string; version: number; provider: string; labels: Record<string, string> };
      get: { uid: string; name: string; namespace: string; meta_data: string; user_data: string; interfaces: string[][]; mount_point: string; has_created_at: boolean };
      list_ns: string[]; list_all: string[]; list_name: string[]; stream: string[];
      after_delete: { code: string; details: string } | null;
      refusals: Record<string, { code: string; details_len: number; details?: string }>;
    };
    const uid = report.create.uid;
    assert.match(uid, /^[0-9A-HJKMNP-TV-Z]{26}$/);
    assert.notEqual(uid, 'client-chosen');
    assert.equal(report.create.state, 'PENDING');
    assert.equal(report.create.version, 1);
    assert.ok(['qemu', 'cloudhypervisor'].includes(report.create.provider), report.create.provider);
    assert.equal(report.create.labels['cluster-name'], 'mycluster');
    assert.equal(report.get.uid, uid);
    assert.equal(report.get.name, 'capmvm-cp-abc12');
    assert.equal(report.get.namespace, 'capmvm-ns');
    assert.deepEqual(parse(report.get.meta_data), { local_hostname: 'capmvm-cp-abc12', platform: 'liquid_metal', vm_host: 'host-1', instance_id: uid, 'instance-id': uid, 'local-hostname': 'capmvm-cp-abc12' });
    assert.equal(report.get.user_data, '#cloud-config\nruncmd:\n  - echo hello\n');
    assert.deepEqual(report.get.interfaces, [['eth1', 'MACVTAP', ''], ['eth2', 'TAP', '02:00:00:00:00:2a']]);
    assert.equal(report.get.mount_point, '/lib/modules/5.10.77');
    assert.equal(report.get.has_created_at, true);
    assert.deepEqual(report.list_ns, [uid]);
    assert.deepEqual(report.list_all, [uid]);
    assert.deepEqual(report.list_name, [uid]);
    assert.deepEqual(report.stream, [uid]);
    assert.equal(report.after_delete?.code, 'NOT_FOUND');
    assert.match(report.after_delete?.details ?? '', /not found/);

    // Errors quote only a bounded part of what the client sent, so grpcio (which refuses
    // trailers over 8 KiB with RESOURCE_EXHAUSTED) sees the real code.
    const refused = report.refusals;
    for (const name of ['label key', 'label key wide', 'metadata key', 'cmdline key', 'name', 'kernel image']) {
      assert.equal(refused[name]?.code, 'INVALID_ARGUMENT', `${name}: ${JSON.stringify(refused[name])}`);
      assert.ok((refused[name]?.details_len ?? Infinity) <= 1000, `${name}: ${JSON.stringify(refused[name])}`);
    }
    for (const name of ['uid huge', 'uid not crockford']) {
      assert.equal(refused[name]?.code, 'NOT_FOUND', `${name}: ${JSON.stringify(refused[name])}`);
      assert.match(refused[name]?.details ?? '', /not found/);
    }
  });
});
