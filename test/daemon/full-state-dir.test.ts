import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { DeleteMicroVMRequestSchema, GetMicroVMRequestSchema, ListMicroVMsRequestSchema, type GetMicroVMResponse, type ListMicroVMsResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMStatus_MicroVMState as MicroVMState } from '../../src/gen/types/microvm_pb.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { run } from '../../src/cli/main.js';
import type { Check } from '../../src/host/inspect.js';
import { rawClient } from '../helpers/client.js';
import { daemonFailsToStart, startDaemon, tempDir } from '../helpers/daemon.js';

const UID = '01JFULLD15KST0REC0RD000001';

/** A FAILED record: terminal, so the daemon's reconciler leaves it alone (no image pull, no VMM). */
function failedRecord(): MicroVM {
  return {
    uid: UID, version: 1,
    spec: {
      name: 'kept', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'localhost/none:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: { ...initialStatus(), state: 'FAILED' },
    createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
  } as MicroVM;
}

/** `matchlock inspect -o json` against the daemon's state dir and endpoint. */
async function inspect(state: string, target: string): Promise<Check[]> {
  let out = '';
  await run(['-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', target], { out: (t) => (out += t), err: () => undefined }, {});
  return JSON.parse(out || '[]') as Check[];
}

/** The store check and the space check: the daemon holds the store alone; the disk is full or not. */
function assertHeldStore(checks: Check[], full: boolean): void {
  const store = checks.find((c) => c.check === 'store');
  assert.equal(store?.status, 'warn', JSON.stringify(checks, null, 1));
  assert.match(store?.evidence ?? '', /holds the store for itself since it started on a full state dir.*until that daemon restarts.*nothing is wrong with the store/);
  const space = checks.find((c) => c.check === 'state dir space');
  if (full) {
    assert.equal(space?.status, 'fail', JSON.stringify(checks, null, 1));
    assert.match(space?.fix ?? '', /free space in the state dir/);
  } else assert.equal(space, undefined, JSON.stringify(space));
}

const skip = process.getuid?.() !== 0 && !process.env.CI ? 'needs root to mount a tmpfs' : false;

/**
 * A 4 MiB tmpfs at a temp dir's `m`, mounted by `mount()`; unmounted and removed after the
 * suite that calls this (the temp dir is kept if the unmount failed, not to delete through it).
 */
function smallTmpfs(name: string): { mnt: string; mount(): void } {
  const tmp = tempDir(name);
  const mnt = join(tmp.path, 'm');
  let mounted = false;
  after(() => {
    if (mounted) spawnSync('umount', [mnt]);
    if (!mounted || spawnSync('mountpoint', ['-q', mnt]).status !== 0) tmp.remove();
  });
  return {
    mnt,
    mount() {
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0755', 'matchlock-test', mnt]);
      mounted = true;
    },
  };
}

/**
 * matchlockd stopped, its state dir's file system filled, started again: it starts, serves
 * List and Get, says in its log that the disk is full, and answers a write RESOURCE_EXHAUSTED
 * naming ENOSPC. Before, the state-dir lock's write failed and the daemon exited 1.
 */
describe('matchlockd starts on a full state dir', { skip }, () => {
  const { mnt, mount } = smallTmpfs('full-start');

  it('serves reads, logs the full disk, and refuses writes with RESOURCE_EXHAUSTED (ENOSPC)', async () => {
    mount();
    const state = join(mnt, 'state');
    mkdirSync(state, { mode: 0o750 });
    const seeded = new SqliteStore(join(state, 'matchlock.db'));
    seeded.insert(failedRecord());
    seeded.close();
    // A daemon's earlier run leaves its identity and lock file; the store's -wal and -shm are
    // gone after a clean close, so this start must make them on the full file system.
    const first = await startDaemon(state, ['--vmm-cgroups', 'false']);
    await first.stop();
    assert.deepEqual(readdirSync(state).filter((f) => f.startsWith('matchlock.db-')), []);
    spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'fill')}`, 'bs=64k']);
    assert.equal(spawnSync('sh', ['-c', `echo x > "${join(mnt, 'probe')}"`]).status !== 0, true, 'the file system is full');

    const d = await startDaemon(state, ['--vmm-cgroups', 'false']);
    try {
      assert.ok(
        d.logs.some((l) => /"level":50/.test(l) && /state dir is on a FULL file system/.test(l)),
        `no error line about the full disk in:\n${d.logs.join('\n')}`,
      );
      const c = rawClient(d.grpcPort);
      try {
        const list = await c.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, {}));
        assert.deepEqual(list.microvm.map((m) => m.spec?.uid), [UID]);
        const got = await c.call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid: UID }));
        assert.equal(got.microvm?.spec?.uid, UID);
        await assert.rejects(c.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: UID })), (err: grpc.ServiceError) => {
          assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.message);
          assert.match(err.message, /ENOSPC/);
          return true;
        });
        // Nothing was changed: the record is there as it was.
        const again = await c.call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid: UID }));
        assert.equal(again.microvm?.status?.state, MicroVMState.FAILED, 'still FAILED');
        assertHeldStore(await inspect(state, d.target), true);
        // Once there is room the same daemon takes writes again, without a restart.
        rmSync(join(mnt, 'fill'));
        await c.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: UID }));
        // The daemon keeps the store to itself until it stops, with room or not.
        assertHeldStore(await inspect(state, d.target), false);
      } finally {
        c.close();
      }
    } finally {
      await d.stop();
    }
    assert.equal(d.proc.exitCode, 0, d.logs.join('\n'));
    assert.equal(existsSync(join(state, 'matchlockd.pid')), false);
  });
});

const args = (state: string) => ['run', '--state-dir', state, '--grpc-endpoint', '127.0.0.1:0', '--config', '/dev/null', '--log-format', 'json', '--vmm-cgroups', 'false'];

/** The pid file and the lock file on a file system filled to the last block. */
describe('matchlockd on a full state dir: the lock', { skip }, () => {
  const { mnt, mount } = smallTmpfs('full-lock');

  it('a second daemon is refused naming the first one\'s pid, which the first could not write', async () => {
    mount();
    const state = join(mnt, 's');
    const once = await startDaemon(state, ['--vmm-cgroups', 'false']);
    await once.stop();
    rmSync(join(state, 'matchlockd.pid'), { force: true });
    spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'fill')}`, 'bs=64k']);
    const first = await startDaemon(state, ['--vmm-cgroups', 'false']);
    try {
      assert.equal(existsSync(join(state, 'matchlockd.pid')), false, 'the disk is too full for the pid file');
      const { code, output } = await daemonFailsToStart(args(state));
      assert.notEqual(code, 0);
      assert.match(output, new RegExp(`state-dir ${state} is in use by another matchlockd \\(pid ${first.proc.pid}\\)`));
    } finally {
      await first.stop();
      rmSync(join(mnt, 'fill'));
    }
  });

  it('a never-used state dir is refused naming ENOSPC, and nothing this start made is left', async () => {
    spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'fill')}`, 'bs=64k']);
    const fresh = join(mnt, 'n', 's');
    const { code, output } = await daemonFailsToStart(args(fresh));
    rmSync(join(mnt, 'fill'));
    assert.equal(code, 1, output);
    assert.match(output, /ENOSPC/);
    assert.match(output, /free space/);
    assert.equal(existsSync(join(mnt, 'n')), false, `left behind: ${existsSync(fresh) ? readdirSync(fresh).join(' ') : 'the parent'}`);
  });
});
