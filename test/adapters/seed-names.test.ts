import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { VfatCloudInitDisk } from '../../src/adapters/metadata/cidata.js';
import { MatchlockError } from '../../src/core/errors.js';
import { validateSpec, type SpecInput } from '../../src/core/microvm/validate.js';
import { tempDir } from '../helpers/daemon.js';

const missing = ['mkfs.vfat', 'mcopy', 'mdir'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = missing.length ? `missing: ${missing.join(', ')} (apt-get install dosfstools mtools)` : false;

const UID = '01ARZ3NDEKTSV4RRFFQ69G5FAV';
const spec = (metadata: Record<string, string>): SpecInput => ({
  id: 'vm1',
  namespace: 'ns1',
  labels: {},
  vcpu: 0,
  memoryInMb: 0,
  kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
  rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r:1' } },
  additionalVolumes: [],
  interfaces: [{ deviceId: 'eth1', type: 1 }],
  metadata,
  allowGuestAgent: false,
});
const refusal = (metadata: Record<string, string>): string => {
  try {
    validateSpec(spec(metadata), UID, 'qemu');
  } catch (err) {
    assert.ok(err instanceof MatchlockError && err.code === 'InvalidArgument', String(err));
    return err.message;
  }
  return '';
};

/** The long names mtools lists in the image's root, as the guest's vfat driver will see them. */
function listing(img: string): string[] {
  const r = spawnSync('mdir', ['-i', img, '-b', '::/'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean).map((l) => l.replace(/^::\//, '')).sort();
}

describe('metadata keys and the seed\'s FAT filesystem (mtools)', { skip: skip && !process.env.CI ? skip : false }, () => {
  const tmp = tempDir('seed-names');
  after(() => tmp.remove());

  it('every key validation accepts is written by the real seed writer under exactly its name', async () => {
    assert.equal(skip, false, String(skip));
    const keys = ['user-data', 'vendor-data', 'a.b.c', 'a..b', 'x_y-z', 'LPT', 'conx', 'com10', 'nul-1', 'Mixed.Case', '0', 'k'.repeat(64), 'aux_data.txt', 'con_'];
    const metadata = Object.fromEntries(keys.map((k) => [k, Buffer.from(`content of ${k}\n`).toString('base64')]));
    const validated = validateSpec(spec(metadata), UID, 'qemu');
    const files = Object.fromEntries(Object.entries(validated.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')]));
    const img = join(tmp.path, 'ok.img');
    await new VfatCloudInitDisk().write(img, files);
    assert.deepEqual(listing(img), Object.keys(files).sort());
    for (const k of keys) {
      const r = spawnSync('mtype', ['-i', img, `::/${k}`], { encoding: 'utf8' });
      assert.equal(r.stdout, `content of ${k}\n`, k);
    }
  });

  // Each refused set, written by mtools as the seed writer would, fails or comes out under
  // other names: the refusal at create stands in for a VM that would end FAILED or see wrong files.
  const refused: [label: string, keys: string[], message: RegExp][] = [
    ['two keys that differ only in case', ['user-data', 'user-DATA'], /^microvm\.metadata\["user-(data|DATA)"\]: key collides with "user-(DATA|data)": the seed's FAT filesystem compares names without case/],
    ['a key that is the injected meta-data in other case', ['META-DATA'], /^microvm\.metadata\["META-DATA"\]: key collides with "meta-data"/],
    ['a key in another case than network-config', ['Network-Config'], /collides with "network-config"/],
    ['a trailing dot', ['a.'], /^microvm\.metadata\["a\."\]: key must not end with a dot/],
    ['a device name', ['CON'], /DOS device name/],
    ['a device name in lowercase', ['nul'], /DOS device name/],
    ['a device name with a number', ['com1'], /DOS device name/],
  ];
  for (const [label, keys, message] of refused) {
    it(`refuses ${label}, which mtools cannot hold as given`, () => {
      assert.equal(skip, false, String(skip));
      assert.match(refusal(Object.fromEntries(keys.map((k) => [k, 'eA==']))), message);
      const dir = tempDir('seed-refused');
      try {
        const img = join(dir.path, 'seed.img');
        assert.equal(spawnSync('mkfs.vfat', ['-n', 'CIDATA', '-C', img, '1024']).status, 0);
        const names = label.includes('injected') ? [...keys, 'meta-data'] : label.includes('network-config') ? [...keys, 'network-config'] : keys;
        const paths = names.map((k, n) => {
          const p = join(dir.path, `f${n}`, k);
          spawnSync('mkdir', ['-p', join(dir.path, `f${n}`)]);
          writeFileSync(p, k);
          return p;
        });
        // stdin closed, so a name clash prompt fails instead of waiting.
        const r = spawnSync('mcopy', ['-i', img, ...paths, '::/'], { stdio: ['ignore', 'pipe', 'pipe'] });
        const ok = r.status === 0 && JSON.stringify(listing(img)) === JSON.stringify([...names].sort());
        assert.equal(ok, false, `mtools held ${JSON.stringify(names)} after all: ${JSON.stringify(listing(img))}`);
      } finally {
        dir.remove();
      }
    });
  }

  it('refuses device names with an extension too (reserved by the naming rules even where mtools lets one through), and names both colliding keys', () => {
    assert.match(refusal({ 'aux.txt': 'eA==' }), /^microvm\.metadata\["aux\.txt"\]: key must not be a DOS device name/);
    assert.match(refusal({ 'LPT9.cfg': 'eA==' }), /DOS device name/);
    assert.match(refusal({ 'user-data.': 'eA==' }), /must not end with a dot/);
    const both = refusal({ 'user-data': 'eA==', 'User-Data': 'eA==' });
    assert.ok(both.includes('"user-data"') && both.includes('"User-Data"'), both);
  });
});
