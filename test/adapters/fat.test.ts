import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { VfatCloudInitDisk } from '../../src/adapters/metadata/cidata.js';
import { tempDir } from '../helpers/daemon.js';

const tools = ['fsck.vfat', 'mdir', 'mtype', 'blkid'];
const missing = tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = missing.length && !process.env.CI ? `missing: ${missing.join(', ')} (apt-get install dosfstools mtools util-linux)` : false;

/** Every file as mtools reads it back, by long name. */
function readBack(img: string): Map<string, Buffer> {
  const dir = spawnSync('mdir', ['-i', img, '-b', '::/'], { encoding: 'utf8' });
  assert.equal(dir.status, 0, dir.stderr);
  const out = new Map<string, Buffer>();
  for (const line of dir.stdout.split('\n').filter(Boolean)) {
    const name = line.replace(/^::\//, '');
    const r = spawnSync('mtype', ['-i', img, `::/${name}`], { maxBuffer: 64 * 1024 * 1024 });
    assert.equal(r.status, 0, `mtype ${name}: ${r.stderr.toString()}`);
    out.set(name, r.stdout);
  }
  return out;
}

describe('the in-process FAT seed against dosfstools, mtools and blkid', { skip }, () => {
  const tmp = tempDir('fat');
  after(() => tmp.remove());

  const cases: [label: string, files: Record<string, Buffer>][] = [
    ['the usual seed (FAT12)', { 'meta-data': Buffer.from('instance-id: i-1\nlocal-hostname: vm\n'), 'user-data': Buffer.from('#cloud-config\nruncmd: [echo hi]\n'), 'network-config': Buffer.from('version: 2\n'), 'vendor-data': Buffer.alloc(0) }],
    ['names of 13, 26 and 255 characters, mixed case, dots, one that fits 8.3, non-ASCII', {
      ['a'.repeat(13)]: Buffer.from('13'), ['b'.repeat(26)]: Buffer.from('26'), ['c'.repeat(255)]: Buffer.from('255'),
      'Mixed.Case.Name': Buffer.from('m'), LPT: Buffer.from('short'), 'x_y-z': Buffer.from('xyz'), 'grüße-données': Buffer.from('utf'), '0': Buffer.from('zero'),
    }],
    ['3 MB of user-data across clusters (FAT16) and 40 files', {
      'user-data': randomBytes(3 * 1024 * 1024 + 17),
      ...Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`file-${i}`, randomBytes(i * 100)])),
    }],
    ['30 MB, past the 1-sector cluster limit of FAT16', { 'user-data': randomBytes(33 * 1024 * 1024) }],
  ];
  for (const [label, files] of cases) {
    it(`${label}: fsck finds nothing, every file reads back byte for byte, the label is CIDATA`, async () => {
      assert.equal(skip, false, String(skip));
      const img = join(tmp.path, `${label.length}.img`);
      await new VfatCloudInitDisk().write(img, files);
      const fsck = spawnSync('fsck.vfat', ['-n', '-v', img], { encoding: 'utf8' });
      assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
      assert.doesNotMatch(fsck.stdout, /differ|invalid|bad|free cluster|lost/i, fsck.stdout);
      const back = readBack(img);
      assert.deepEqual([...back.keys()].sort(), Object.keys(files).sort());
      for (const [name, data] of Object.entries(files)) assert.ok(back.get(name)?.equals(data), `${name} reads back as written`);
      const blkid = spawnSync('blkid', ['-o', 'export', img], { encoding: 'utf8' });
      assert.match(blkid.stdout, /^LABEL=CIDATA$/m);
      assert.match(blkid.stdout, /^TYPE=vfat$/m);
      assert.equal(readFileSync(img).length % 512, 0);
    });
  }

  it('writes only the clusters in use: the usual seed is a sparse megabyte', async () => {
    const img = join(tmp.path, 'sparse.img');
    await new VfatCloudInitDisk().write(img, cases[0]?.[1] ?? {});
    const st = statSync(img);
    assert.ok(st.size >= 1024 * 1024, `${st.size} bytes: at least the 1 MiB minimum`);
    assert.ok(st.blocks * 512 <= 64 * 1024, `${st.blocks * 512} bytes allocated`);
  });
});
