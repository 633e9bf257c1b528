import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseUidRange, UidPool } from '../../src/adapters/vmm/confine/uids.js';
import { tempDir } from '../helpers/daemon.js';

describe('per-VM uids (vmm-uid-range)', () => {
  const tmp = tempDir('uids');
  after(() => tmp.remove());

  it('parses FIRST-LAST and refuses ranges that reach into system accounts or run backwards', () => {
    assert.deepEqual(parseUidRange('300000-300009'), { first: 300000, last: 300009 });
    assert.equal(parseUidRange(''), undefined);
    assert.throws(() => parseUidRange('0-100'), /1000 <= FIRST <= LAST/);
    assert.throws(() => parseUidRange('5000-4000'), /FIRST-LAST/);
    assert.throws(() => parseUidRange('5000'), /FIRST-LAST/);
  });

  it('VMs claiming at the same time get distinct uids; a VM gets its own back; a full range is refused; release frees', async () => {
    const pool = new UidPool(join(tmp.path, 'claims'), { first: 5000, last: 5007 });
    const vms = Array.from({ length: 8 }, (_, i) => `VM${i}`);
    const uids = await Promise.all(vms.map((v) => pool.claim(v)));
    assert.deepEqual([...uids].sort(), [5000, 5001, 5002, 5003, 5004, 5005, 5006, 5007]);
    assert.equal(await pool.claim('VM3'), uids[3], 'the same VM, the same uid');
    await assert.rejects(pool.claim('VM8'), /no free uid left in vmm-uid-range 5000-5007/);
    await pool.release('VM3');
    assert.equal(await pool.claim('VM8'), uids[3]);
  });
});
