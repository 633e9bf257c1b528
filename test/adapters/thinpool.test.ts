import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { Ext4Volumes } from '../../src/adapters/volumes/ext4.js';
import { ThinPoolVolumes } from '../../src/adapters/volumes/thin.js';
import { NodeHostFiles } from '../../src/adapters/host/files.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import type { HostNetwork } from '../../src/core/ports.js';
import { sweepOrphans } from '../../src/daemon/sweep.js';
import { MemoryStore, silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';

// Our machines have no device-mapper: these tests drive the thin-pool backend against
// test/fakes/dmsetup.mjs, which enforces dmsetup's grammar and thin-pool rules (ids must exist,
// an origin must be suspended for a snapshot, in-use ids cannot be deleted).
const DMSETUP = fileURLToPath(new URL('../fakes/dmsetup.mjs', import.meta.url));

describe('thin-pool volumes (against a fake dmsetup)', () => {
  const tmp = tempDir('thin');
  const env = { FAKE_DM_STATE: join(tmp.path, 'dm.json'), FAKE_DM_DIR: join(tmp.path, 'mapper'), FAKE_DM_LOG: join(tmp.path, 'dm.log') };
  const saved = { ...process.env };
  const dm = (...args: string[]) => spawnSync(DMSETUP, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
  let store: LocalImageStore;
  let digest: string;
  before(async () => {
    Object.assign(process.env, env);
    mkdirSync(env.FAKE_DM_DIR);
    assert.equal(dm('fake-create-pool', 'flintlock-thinpool').status, 0);
    // A one-layer image with one file.
    const src = join(tmp.path, 'layout');
    mkdirSync(join(tmp.path, 'tree'), { recursive: true });
    writeFileSync(join(tmp.path, 'tree', 'hello'), 'world');
    writeImageLayout(src, [execFileSync('sh', ['-c', `tar -C ${join(tmp.path, 'tree')} -cf - . | gzip -n`])]);
    store = new LocalImageStore(join(tmp.path, 'images'));
    digest = (await store.import(src, 'example.com/thin:1')).digest;
    await store.ensure('example.com/thin:1', silentLogger);
  });
  after(() => {
    for (const k of Object.keys(env)) delete process.env[k];
    Object.assign(process.env, saved);
    tmp.remove();
  });

  it('the fake refuses what the real tool would: a snapshot of an active origin, unknown ids, bad tables', () => {
    assert.equal(dm('message', 'flintlock-thinpool', '0', 'create_thin 100').status, 0);
    assert.equal(dm('create', 'probe', '--table', '0 2048 thin /dev/mapper/flintlock-thinpool 100').status, 0);
    assert.match(dm('message', 'flintlock-thinpool', '0', 'create_snap 101 100').stderr, /suspend it before taking a snapshot/);
    assert.notEqual(dm('create', 'probe2', '--table', '0 2048 thin /dev/mapper/flintlock-thinpool 999').status, 0);
    assert.notEqual(dm('create', 'probe3', '--table', '0 2048 linear /dev/sda 0').status, 0);
    assert.match(dm('message', 'flintlock-thinpool', '0', 'delete 100').stderr, /in use/);
    assert.equal(dm('remove', 'probe').status, 0);
    assert.equal(dm('message', 'flintlock-thinpool', '0', 'delete 100').status, 0);
  });

  it('gives each VM a snapshot of one base thin volume per image, grown to size_in_mb, and removes it', async () => {
    writeFileSync(env.FAKE_DM_LOG, '');
    const volumes = new ThinPoolVolumes({
      pool: 'flintlock-thinpool',
      dmsetup: DMSETUP,
      devDir: env.FAKE_DM_DIR,
      idsFile: join(tmp.path, 'images', 'thin-ids.json'),
      ext4: new Ext4Volumes(store, join(tmp.path, 'images', 'base')),
    });
    const keyA = { uid: '01HZY3NDEKTSV4RRFFQ69G5FAA', volumeId: 'root', dir: tmp.path };
    const keyB = { uid: '01HZY3NDEKTSV4RRFFQ69G5FAB', volumeId: 'root', dir: tmp.path };
    const [a, b] = await Promise.all([volumes.create(keyA, digest, 300, silentLogger), volumes.create(keyB, digest, undefined, silentLogger)]);
    assert.equal(a, join(env.FAKE_DM_DIR, 'matchlock-01hzy3ndektsv4rrffq69g5faa-root'));
    assert.equal(await volumes.find(keyA), a);
    assert.equal(execFileSync('debugfs', ['-R', 'cat /hello', b], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), 'world');
    const blocks = execFileSync('dumpe2fs', ['-h', a], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.equal(Number(/Block count:\s+(\d+)/.exec(blocks)?.[1]) * Number(/Block size:\s+(\d+)/.exec(blocks)?.[1]), 300 * 1024 * 1024);
    const calls = readFileSync(env.FAKE_DM_LOG, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
    assert.equal(calls.filter((c) => c[0] === 'message' && c[3]?.startsWith('create_thin')).length, 1, 'one base thin volume for both VMs');
    assert.equal(calls.filter((c) => c[0] === 'message' && c[3]?.startsWith('create_snap')).length, 2);
    // Every snapshot is taken with its origin suspended.
    calls.forEach((c, i) => {
      if (c[3]?.startsWith('create_snap')) assert.deepEqual([calls[i - 1]?.[0], calls[i + 1]?.[0]], ['suspend', 'resume']);
    });

    await volumes.remove(keyA, silentLogger);
    await volumes.remove(keyA, silentLogger);
    assert.equal(await volumes.find(keyA), undefined);
    assert.equal(existsSync(a), false);
    const state = JSON.parse(readFileSync(env.FAKE_DM_STATE, 'utf8')) as { pools: Record<string, { thins: Record<string, unknown> }> };
    assert.equal(Object.keys(state.pools['flintlock-thinpool']?.thins ?? {}).length, 2, 'base and B remain');
    assert.equal(await volumes.find(keyB), b);
  });

  it("sweeps a tombstoned VM's thin volume and collects base thin volumes no image needs", async () => {
    const volumes = new ThinPoolVolumes({
      pool: 'flintlock-thinpool',
      dmsetup: DMSETUP,
      devDir: env.FAKE_DM_DIR,
      idsFile: join(tmp.path, 'images', 'thin-ids.json'),
      ext4: new Ext4Volumes(store, join(tmp.path, 'images', 'base')),
    });
    const live = { uid: '01HZY3NDEKTSV4RRFFQ69G5FB1', volumeId: 'root', dir: tmp.path };
    const dropped = { uid: '01HZY3NDEKTSV4RRFFQ69G5FB2', volumeId: 'data', dir: tmp.path };
    await volumes.create(live, digest, undefined, silentLogger);
    await volumes.create(dropped, digest, undefined, silentLogger);
    const owners = await volumes.owned();
    assert.ok(owners.some((o) => o.uid === live.uid && o.volumeId === 'root'), JSON.stringify(owners));
    assert.ok(owners.some((o) => o.uid === dropped.uid && o.volumeId === 'data'));

    const state = new MemoryStore();
    state.insert({ ...recordOf(live.uid) });
    state.bury({ uid: dropped.uid, namespace: 'ns', name: 'n', droppedAt: '2026-01-01T00:00:00Z', reason: 'dmsetup busy' });
    const network = { listOwned: async () => [] } as unknown as HostNetwork;
    await sweepOrphans({ daemonId: '0123456789abcdef', stateDir: tmp.path, store: state, network, files: new NodeHostFiles(), providers: new Map(), volumes, stopTimeoutMs: 10, log: silentLogger });
    assert.equal(await volumes.find(dropped), undefined, 'the tombstoned VM volume is gone');
    assert.ok(await volumes.find(live), 'the live VM volume stays');

    const baseName = `matchlock-base-${digest.replace(/^sha256:/, '').slice(0, 24)}`;
    assert.deepEqual(await volumes.collectBases(new Set([digest]), silentLogger), [], 'an image still in the store keeps its base');
    assert.deepEqual(await volumes.collectBases(new Set(), silentLogger), [baseName]);
    assert.equal(dm('info', baseName).status === 0, false, 'the base is no longer active');
    const ids = JSON.parse(readFileSync(join(tmp.path, 'images', 'thin-ids.json'), 'utf8')) as Record<string, number>;
    assert.equal(ids[baseName], undefined, 'and its thin id is deleted from the pool and the ids file');
    assert.ok(await volumes.find(live), 'snapshots outlive their origin');
    await volumes.remove(live, silentLogger);
  });
});

function recordOf(uid: string): MicroVM {
  return {
    uid, version: 1,
    spec: { name: 'n', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'k', filename: 'f', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false },
    status: initialStatus(), createdAt: '2026-01-01T00:00:00Z', updatedAt: '2026-01-01T00:00:00Z',
  };
}
