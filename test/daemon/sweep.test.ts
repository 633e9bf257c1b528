import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { NodeHostFiles } from '../../src/adapters/system/files.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import { deviceAlias } from '../../src/core/microvm/host-names.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import type { HostNetwork, LinkInfo, Logger, VmmProvider } from '../../src/core/ports.js';
import { sweepOrphans, type SweptVolumes } from '../../src/daemon/sweep.js';
import { MemoryStore, silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';

const ME = '0123456789abcdef';
const OTHER = 'fedcba9876543210';
const LIVE = '01HZY3NDEKTSV4RRFFQ69G5FA1';
const BURIED = '01HZY3NDEKTSV4RRFFQ69G5FA2';
const LOST = '01HZY3NDEKTSV4RRFFQ69G5FA3';

function record(uid: string): MicroVM {
  return {
    uid, version: 1,
    spec: { name: 'n', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'k', filename: 'f', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false },
    status: initialStatus(), createdAt: '2026-01-01T00:00:00Z', updatedAt: '2026-01-01T00:00:00Z',
  };
}

// Port fakes: the sweep's decisions are what is under test, the host objects are names.
class Links implements HostNetwork {
  constructor(readonly links: Map<string, string>) {}
  async get(): Promise<LinkInfo | undefined> { return undefined; }
  async createTap(): Promise<LinkInfo> { throw new Error('not used'); }
  async adopt(): Promise<void> {}
  async createMacvtap(): Promise<LinkInfo> { throw new Error('not used'); }
  async remove(name: string): Promise<void> { this.links.delete(name); }
  async listOwned(): Promise<LinkInfo[]> {
    return [...this.links].map(([name, alias]) => ({ name, alias, ifindex: 1, mac: '', kind: 'tap' as const, up: true }));
  }
}

function setup() {
  const tmp = tempDir('sweep');
  const store = new MemoryStore();
  const dirOf = (uid: string) => join(tmp.path, 'vm', 'ns', 'n', uid);
  const stopped: string[] = [];
  const running = new Set<string>();
  // What the provider's delete steps gave back (a cgroup, a uid), by VM directory.
  const held = new Set<string>();
  const released: string[] = [];
  const failing = new Set<string>();
  const provider = {
    descriptor: { name: 'qemu' },
    instance: ({ dir }: { dir: string }) => ({
      running: async () => (running.has(dir) ? 4242 : undefined),
      stop: async () => { stopped.push(dir); running.delete(dir); },
      deleteSteps: () => [{
        name: 'release',
        needed: async () => held.has(dir),
        run: async () => {
          if (failing.has(dir)) throw new MatchlockError(ErrorCode.FailedPrecondition, `jail of ${dir} is still there`);
          released.push(dir);
          held.delete(dir);
        },
        verify: async () => undefined,
      }],
    }),
  } as unknown as VmmProvider;
  const network = new Links(new Map([
    ['mine-live', deviceAlias(ME, LIVE, 'eth0')],
    ['mine-buried', deviceAlias(ME, BURIED, 'eth0')],
    ['mine-lost', deviceAlias(ME, LOST, 'eth0')],
    ['other-buried', deviceAlias(OTHER, BURIED, 'eth0')],
    ['old-form', `matchlock:${BURIED}:eth1`],
  ]));
  const vols = [{ uid: LIVE, volumeId: 'root' }, { uid: BURIED, volumeId: 'root' }];
  const volumes: SweptVolumes = { owned: async () => [...vols], remove: async (k) => void vols.splice(vols.findIndex((v) => v.uid === k.uid), 1) };
  const sweep = () => sweepOrphans({ daemonId: ME, stateDir: tmp.path, store, network, files: new NodeHostFiles(), providers: new Map([['qemu', provider]]), volumes, stopTimeoutMs: 10, log: silentLogger as Logger });
  return { tmp, store, dirOf, stopped, running, held, released, failing, network, vols, sweep };
}

it('refuses to start, touching nothing, when VM directories have neither a record nor a tombstone', async () => {
  const s = setup();
  try {
    s.store.insert(record(LIVE));
    for (const uid of [LIVE, LOST]) mkdirSync(s.dirOf(uid), { recursive: true });
    s.running.add(s.dirOf(LOST));
    await assert.rejects(s.sweep(), (err: unknown) => {
      assert.ok(err instanceof MatchlockError && err.code === ErrorCode.FailedPrecondition);
      assert.match(err.message, new RegExp(s.dirOf(LOST)));
      assert.match(err.message, /restore \S*matchlock\.db from a backup, or stop those VMMs and remove their directories/);
      return true;
    });
    assert.ok(existsSync(s.dirOf(LOST)) && existsSync(s.dirOf(LIVE)));
    assert.deepEqual(s.stopped, []);
    assert.equal(s.network.links.size, 5);
  } finally {
    s.tmp.remove();
  }
});

it('an empty store with a VM directory on disk is refused the same way', async () => {
  const s = setup();
  try {
    mkdirSync(s.dirOf(LIVE), { recursive: true });
    s.running.add(s.dirOf(LIVE));
    // By the sweep the daemon has made its lock and identity files: it must not claim otherwise.
    const err = await s.sweep().then(() => assert.fail('the sweep went on'), (e: Error) => e);
    assert.match(err.message, /refusing to start.*no VM directory was touched/);
    assert.doesNotMatch(err.message, /nothing in .* was changed/);
    assert.deepEqual(s.stopped, []);
  } finally {
    s.tmp.remove();
  }
});

it("removes only what is this daemon's and tombstoned, then forgets the tombstone", async () => {
  const s = setup();
  try {
    s.store.insert(record(LIVE));
    s.store.bury({ uid: BURIED, namespace: 'ns', name: 'n', droppedAt: '2026-01-01T00:00:00Z', reason: 'tap busy' });
    for (const uid of [LIVE, BURIED]) mkdirSync(s.dirOf(uid), { recursive: true });
    s.running.add(s.dirOf(BURIED));
    s.running.add(s.dirOf(LIVE));
    s.held.add(s.dirOf(BURIED));
    s.held.add(s.dirOf(LIVE));
    assert.equal(await s.sweep(), 3);
    assert.deepEqual(s.stopped, [s.dirOf(BURIED)]);
    // A buried VM's delete steps ran (what its VMM held outside its directory); a live one's not.
    assert.deepEqual(s.released, [s.dirOf(BURIED)]);
    assert.equal(existsSync(s.dirOf(BURIED)), false);
    assert.ok(existsSync(s.dirOf(LIVE)));
    assert.deepEqual([...s.network.links.keys()].sort(), ['mine-live', 'mine-lost', 'old-form', 'other-buried']);
    assert.deepEqual(s.vols, [{ uid: LIVE, volumeId: 'root' }]);
    assert.equal(s.store.tombstone(BURIED), undefined);
  } finally {
    s.tmp.remove();
  }
});

it('a buried VM whose cleanup fails keeps its directory, link, volume and tombstone; the sweep goes on and does not refuse the start', async () => {
  const s = setup();
  const BURIED2 = '01HZY3NDEKTSV4RRFFQ69G5FA4';
  try {
    for (const uid of [BURIED, BURIED2]) {
      s.store.bury({ uid, namespace: 'ns', name: 'n', droppedAt: '2026-01-01T00:00:00Z', reason: 'tap busy' });
      mkdirSync(s.dirOf(uid), { recursive: true });
      s.held.add(s.dirOf(uid));
    }
    // The first one's release fails as Firecracker's jail check does: FailedPrecondition.
    s.failing.add(s.dirOf(BURIED));
    await s.sweep();
    assert.ok(existsSync(s.dirOf(BURIED)), 'kept for the next start');
    assert.ok(s.store.tombstone(BURIED), 'and its tombstone with it');
    assert.ok(s.network.links.has('mine-buried'), 'and its link: its VMM may still run on it');
    assert.ok(s.vols.some((v) => v.uid === BURIED), 'and its volume');
    assert.equal(existsSync(s.dirOf(BURIED2)), false, 'the next one is swept all the same');
    assert.equal(s.store.tombstone(BURIED2), undefined);
    assert.deepEqual(s.released, [s.dirOf(BURIED2)]);
  } finally {
    s.tmp.remove();
  }
});
