// ListMicroVMs pages through an independent client: Python grpcio with stubs of matchlock's
// protos reads pages with the new fields; stubs of flintlock's reference protos still get
// everything and read a paged answer without tripping on next_page_token.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { seededUid, storedMicroVM } from '../helpers/records.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { PYTHON, pythonMissing, pythonStubs } from './stubs.js';

const missing = pythonMissing();

const RECORDS = 20;

const seeded = (n: number) => storedMicroVM(seededUid(n), { name: `vm-${n}`, namespace: `ns-${n % 3}` });

describe('ListMicroVMs pages from Python grpcio', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('py-paging');
  let daemon: DaemonHandle;
  let uids: string[];
  const stubs: Record<'reference' | 'matchlock', string> = { reference: '', matchlock: '' };
  before(async () => {
    assert.deepEqual(missing, [], 'tools needed for this test');
    for (const k of ['reference', 'matchlock'] as const) {
      mkdirSync(join(tmp.path, k));
      stubs[k] = pythonStubs(join(tmp.path, k), k);
    }
    const stateDir = join(tmp.path, 'state');
    const store = new SqliteStore(join(stateDir, 'matchlock.db'));
    for (let i = 0; i < RECORDS; i++) store.insert(seeded(i));
    uids = store.uids({}, {});
    store.close();
    daemon = await startDaemon(stateDir);
  });
  after(async () => {
    await daemon?.stop();
    tmp.remove();
  });

  const client = (mode: 'new' | 'old', dir: string) => {
    const r = spawnSync(PYTHON, [join(ROOT, 'test/interop/paging_client.py'), mode, dir, `127.0.0.1:${daemon.grpcPort}`], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  };

  it('a client of the new schema pages with page_size and next_page_token; a token with another namespace is INVALID_ARGUMENT', () => {
    const report = client('new', stubs.matchlock) as { pages: number[]; uids: string[]; other_namespace: { code: string; details: string } | null };
    assert.deepEqual(report.pages, [7, 7, 6]);
    assert.deepEqual(report.uids, uids);
    assert.equal(report.other_namespace?.code, 'INVALID_ARGUMENT');
    assert.match(report.other_namespace?.details ?? '', /^page_token: /);
  });

  it('a client of the old schema gets every record, and reads a paged answer ignoring next_page_token', () => {
    const report = client('old', stubs.reference) as { all: string[]; paged: string[]; paged_has_unknown: boolean };
    assert.deepEqual(report.all, uids);
    assert.deepEqual(report.paged, uids.slice(0, 7));
    assert.equal(report.paged_has_unknown, true, 'the answer carried next_page_token');
  });
});
