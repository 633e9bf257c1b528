import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { ErrorCode, type MatchlockError } from '../../src/core/errors.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { run as cli } from '../../src/cli/main.js';
import { ListMicroVMsRequestSchema, type ListMicroVMsResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient } from '../helpers/client.js';
import { api, sleep, stateOf, waitFor } from '../e2e/vm.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { GUEST_REF, labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';

const MB = 1024 * 1024;
const missing = labMissing() ?? ['losetup', 'fallocate'].map((t) => (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0 ? `${t} is not installed` : '')).find(Boolean);
const skip = missing && !process.env.CI ? missing : false;

/** Every name under `dir` that is a temporary or a partial write. */
function temporaries(dir: string): string[] {
  return execFileSync('find', [dir, '-name', '*.tmp*', '-o', '-name', '*.part', '-o', '-name', '.import*'], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
}

/**
 * matchlockd with its whole state dir on a small loop-mounted ext4 that fills up during an image
 * import, a VM volume clone and a create. The daemon stays up, the failure names ENOSPC (on the
 * request or the VM's status), nothing half-written is committed, and everything completes once
 * space is freed. The adapter-level cases (unpack, base volume, blobs) are in
 * test/adapters/image-enospc.test.ts; these are the same faults seen through the daemon.
 */
describe('a full state dir, through the daemon', { skip }, () => {
  const tmp = tempDir('fulld');
  const mnt = join(tmp.path, 'm');
  let loop = '';
  let lab: Lab | undefined;
  before(async () => {
    assert.equal(missing, undefined, `the full-disk tests ${missing}`);
    mkdirSync(mnt);
    execFileSync('truncate', ['-s', '256M', join(tmp.path, 'fs.img')]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', join(tmp.path, 'fs.img')]);
    loop = execFileSync('losetup', ['-f', '--show', join(tmp.path, 'fs.img')], { encoding: 'utf8' }).trim();
    execFileSync('mount', [loop, mnt]);
    lab = await startLab(['--default-provider', 'scratch', '--retry-backoff', '500ms', '--maximum-retry', '50'], {
      entry: ['--import', 'tsx', join(ROOT, 'test/fakes/providers/scratch/matchlockd.ts')],
      stateDir: join(mnt, 'state'),
    });
  });
  after(async () => {
    await lab?.destroy();
    // Unmounted before anything is removed, so a busy mount never has its contents deleted;
    // the loop device is detached only while it still holds this test's image.
    const unmounted = spawnSync('umount', [mnt]).status === 0 || spawnSync('mountpoint', ['-q', mnt]).status !== 0;
    if (loop && spawnSync('losetup', ['-j', join(tmp.path, 'fs.img')], { encoding: 'utf8' }).stdout.startsWith(`${loop}:`)) spawnSync('losetup', ['-d', loop]);
    if (unmounted) tmp.remove();
  });

  const free = () => {
    const s = statfsSync(mnt);
    return s.bavail * s.bsize;
  };
  /** Leaves about `room` bytes free. */
  const fillTo = (room: number) => {
    rmSync(join(mnt, 'filler'), { force: true });
    execFileSync('sync');
    // A VM retrying in the background writes and frees space meanwhile: measure again and retry.
    for (let attempt = 0; ; attempt++) {
      const r = spawnSync('fallocate', ['-l', String(Math.max(4096, free() - Math.max(room, 256 * 1024) - attempt * MB)), join(mnt, 'filler')], { encoding: 'utf8' });
      if (r.status === 0) break;
      if (attempt === 10) throw new Error(`cannot fill the test filesystem: ${r.stderr}`);
    }
    // fallocate rounds to blocks and ext4 keeps a little back: top up with whatever is left.
    if (room === 0) spawnSync('sh', ['-c', `cat /dev/zero > ${join(mnt, 'filler2')}`]);
  };
  const unfill = () => {
    rmSync(join(mnt, 'filler'), { force: true });
    rmSync(join(mnt, 'filler2'), { force: true });
  };

  it('an import, a volume clone and a create fail with ENOSPC, commit nothing, and complete once there is room', { timeout: 5 * 60_000 }, async () => {
    if (!lab) throw new Error('no lab');
    const l = lab;
    const state = l.stateDir;
    const layout = testGuestLayout();
    const importGuest = async () => {
      let err = '';
      const code = await cli(['image', 'import', layout, '--name', GUEST_REF, '--state-dir', state], { out: () => undefined, err: (t) => (err += t) }, {});
      return { code, err };
    };

    // 1. An import into a full store: refused, naming ENOSPC; no blob, reference or temporary.
    fillTo(4 * MB);
    const refused = await importGuest();
    assert.notEqual(refused.code, 0);
    assert.match(refused.err, /ENOSPC|no space left/i);
    assert.equal(await new LocalImageStore(join(state, 'images')).resolve(GUEST_REF), undefined, 'no reference to a half-imported image');
    assert.deepEqual(temporaries(state), []);
    unfill();
    assert.equal((await importGuest()).code, 0, 'the import works once there is room');

    // 2. A VM with room (unpacks the image and builds the base volume), then a full disk while
    // the next VM's volume is cloned: its status names ENOSPC; no partial volume is committed.
    const vms = api(l);
    const a = await vms.create('roomy', [{ id: 'eth0', type: 'TAP' }]);
    await waitFor('roomy CREATED', async () => stateOf(await vms.get(a)) === 'CREATED', 120_000);
    fillTo(4 * MB);
    const b = await vms.create('cramped', [{ id: 'eth0', type: 'TAP' }]);
    const failed = await waitFor('cramped to record a failure', async () => { const vm = await vms.get(b); return vm?.status?.lastError ? vm : undefined; }, 120_000);
    assert.match(failed.status?.lastError ?? '', /ENOSPC|no space left/i);
    assert.notEqual(stateOf(failed), 'CREATED');
    const bDir = join(state, 'vm', 'e2e', 'cramped', b);
    assert.equal(existsSync(join(bDir, 'volume-root.img')), false, 'no partial volume under its final name');
    // The failure is retried every 500 ms, and a retry's clone has its own temporary while it
    // runs: none left means every temporary there now goes away. (That the failed clone itself
    // removes its temporary at once is test/adapters/image-enospc.test.ts's, with no retry.)
    const seen = temporaries(state);
    await waitFor(`the temporaries of failed clones to go: ${seen.join(', ')}`, async () => seen.every((t) => !existsSync(t)), 30_000);
    assert.equal(stateOf(await vms.get(a)), 'CREATED', 'the other VM is untouched');

    // 3. A create on a disk with no room at all: either refused naming ENOSPC with nothing
    // stored, or stored and failing on its status; the daemon answers reads all along.
    fillTo(0);
    let c: string | undefined;
    try {
      // Large user-data, so the record needs pages the store does not have yet.
      c = await vms.create('nospace', [{ id: 'eth0', type: 'TAP' }], `#!/bin/sh\n# ${'x'.repeat(900 * 1024)}\n`);
    } catch (err) {
      assert.equal((err as { code?: number }).code, 8, `RESOURCE_EXHAUSTED, not INTERNAL: ${(err as Error).message}`);
      assert.match((err as { details?: string }).details ?? '', /the store .* cannot be written: its file system is full \(ENOSPC, SQLITE_\w+\); nothing was stored\. Free space in the state dir and retry/);
      const rc = rawClient(l.daemon.target);
      try {
        const { microvm } = await rc.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'e2e', name: 'nospace' }));
        assert.deepEqual(microvm, [], 'nothing stored from the refused create');
      } finally {
        rc.close();
      }
    }
    process.stderr.write(`full disk: the create with no room at all was ${c ? 'stored, and failed on its status' : 'refused, naming ENOSPC'}\n`);
    if (c) {
      const vm = await waitFor('nospace to record a failure', async () => { const v = await vms.get(c ?? ''); return v?.status?.lastError ? v : undefined; }, 120_000);
      assert.match(vm.status?.lastError ?? '', /ENOSPC|no space left|full/i);
    }
    const listed = (await Promise.all([a, b].map((u) => vms.get(u)))).map(stateOf);
    assert.equal(listed[0], 'CREATED');
    assert.equal(l.daemon.proc.exitCode, null, 'matchlockd is still running');
    assert.equal(l.daemon.proc.signalCode, null);

    // 4. Room again: every VM converges without help.
    unfill();
    for (const uid of [b, ...(c ? [c] : [])]) await waitFor(`${uid} CREATED once there is room`, async () => stateOf(await vms.get(uid)) === 'CREATED', 120_000);
    for (const uid of [a, b, ...(c ? [c] : [])]) await vms.delete(uid);
    await waitFor('all gone', async () => (await Promise.all([a, b, c].filter(Boolean).map((u) => vms.get(u ?? '')))).every((v) => v === undefined), 60_000);
    await sleep(100);
    assert.deepEqual(readdirSync(join(state, 'vm')), []);
    assert.deepEqual(temporaries(state), []);
  });

  it('the store on a full disk: a write answers ResourceExhausted naming ENOSPC, stores nothing, and works once there is room', () => {
    const db = join(mnt, 'store-only', 'matchlock.db');
    const store = new SqliteStore(db);
    try {
      const big = (uid: string) => record(uid, 'y'.repeat(2 * MB));
      fillTo(0);
      assert.throws(() => store.insert(big('01JFULL0000000000000000000')), (err: MatchlockError) => {
        assert.equal(err.code, ErrorCode.ResourceExhausted, err.message);
        assert.match(err.message, new RegExp(`the store ${db} cannot be written: its file system is full \\(ENOSPC, SQLITE_\\w+\\); nothing was stored`));
        return true;
      });
      assert.equal(store.get('01JFULL0000000000000000000'), undefined, 'nothing stored');
      unfill();
      store.insert(big('01JFULL0000000000000000000'));
      assert.equal(store.get('01JFULL0000000000000000000')?.spec.metadata['user-data']?.length, 2 * MB);
    } finally {
      unfill();
      store.close();
    }
    const again = new SqliteStore(db);
    assert.equal(again.list({}).length, 1, 'the store opens intact');
    again.close();
  });
});

function record(uid: string, userData: string): MicroVM {
  return {
    uid, version: 1,
    spec: {
      name: 'full', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: { 'user-data': userData }, provider: 'qemu', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
  } as MicroVM;
}
