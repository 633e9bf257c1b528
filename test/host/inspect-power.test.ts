import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { loadConfig } from '../../src/daemon/config.js';
import { inspectHost } from '../../src/host/inspect.js';
import { tempDir } from '../helpers/daemon.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

describe('inspect and power', () => {
  const tmp = tempDir('inspect-power');
  after(() => tmp.remove());

  it('a VM stopped by request without a VMM is fine; one that should run is a fault', async () => {
    const state = join(tmp.path, 'state');
    const store = new SqliteStore(join(state, 'matchlock.db'));
    const vm: MicroVM = {
      uid: UID, version: 1,
      spec: {
        name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
        kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
        additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
      },
      status: { ...initialStatus(), state: 'CREATED', power: 'STOPPED' },
      createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
      power: { desired: 'STOPPED', restart: 0 },
    };
    store.insert(vm);
    store.close();
    const cfg = loadConfig({ flags: { 'state-dir': state, 'grpc-endpoint': `unix:${join(tmp.path, 'none.sock')}` }, file: { path: '/dev/null', explicit: true }, env: {} });
    const vmmCheck = async () => (await inspectHost(cfg, {})).find((c) => c.check === `vm ns/web (${UID}) vmm`);
    const stopped = await vmmCheck();
    assert.equal(stopped?.status, 'ok', JSON.stringify(stopped));
    assert.match(stopped?.evidence ?? '', /stopped by request/);

    const again = new SqliteStore(join(state, 'matchlock.db'));
    again.update(UID, (cur) => ({ ...cur, power: { desired: 'RUNNING', restart: 0 } }));
    again.close();
    assert.equal((await vmmCheck())?.status, 'fail');
  });
});
