import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { Ext4Volumes } from '../../src/adapters/volumes/ext4.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';

const MB = 1024 * 1024;
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root (loop mounts)']),
  ...['losetup', 'mount', 'umount', 'mkfs.ext4', 'fallocate'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0),
];

/**
 * A full disk never commits half an image: every write path (blobs, unpacked trees, base
 * volumes, VM volumes) fails with ENOSPC on a small loop-mounted filesystem, leaves no
 * temporary behind, and succeeds once there is room again.
 */
describe('a full disk', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('enospc');
  const mnt = join(tmp.path, 'mnt');
  let loop = '';
  before(() => {
    mkdirSync(mnt);
    execFileSync('truncate', ['-s', '160M', join(tmp.path, 'fs.img')]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', join(tmp.path, 'fs.img')]);
    loop = execFileSync('losetup', ['-f', '--show', join(tmp.path, 'fs.img')], { encoding: 'utf8' }).trim();
    execFileSync('mount', [loop, mnt]);
  });
  after(() => {
    spawnSync('umount', [mnt]);
    if (loop) spawnSync('losetup', ['-d', loop]);
    tmp.remove();
  });

  const free = () => {
    const s = statfsSync(mnt);
    return s.bavail * s.bsize;
  };
  /** Leaves about `room` bytes free on the filesystem. */
  const fillTo = (room: number) => {
    rmSync(join(mnt, 'filler'), { force: true });
    execFileSync('sync');
    execFileSync('fallocate', ['-l', String(Math.max(MB, free() - room)), join(mnt, 'filler')]);
  };
  const unfill = () => rmSync(join(mnt, 'filler'), { force: true });
  /** Everything under the store that is not a finished artifact (temporaries, partial files). */
  const leftovers = (root: string) => execFileSync('find', [root, '-name', '*.tmp*', '-o', '-name', '*.part', '-o', '-name', '.import*'], { encoding: 'utf8' }).trim();

  it('unpack, base volume, VM volume and blob writes fail cleanly with ENOSPC and succeed once there is room', async () => {
    // 40 files of 1 MiB that compress to almost nothing: the blob fits, the tree does not.
    const src = join(tmp.path, 'src');
    mkdirSync(src);
    execFileSync('sh', ['-c', `cd ${src} && mkdir data && for i in $(seq 1 40); do yes "line $i of a file that compresses well" | head -c ${MB} > data/f$i; done`]);
    const layout = join(tmp.path, 'layout');
    writeImageLayout(layout, [execFileSync('sh', ['-c', `tar -C ${src} -cf - . | gzip -9`], { maxBuffer: 1 << 28 })]);
    const root = join(mnt, 'images');
    const store = new LocalImageStore(root);
    const { digest } = await store.import(layout, 'example.com/big:1');

    fillTo(20 * MB);
    await assert.rejects(store.ensure('example.com/big:1', silentLogger), /ENOSPC/);
    assert.deepEqual(readdirSync(join(root, 'rootfs')), [], 'no tree committed, no temporary left');
    unfill();
    await store.ensure('example.com/big:1', silentLogger);
    const tree = join(store.rootfsPath(digest), 'data');
    assert.equal(readdirSync(tree).length, 40);
    for (const f of readdirSync(tree)) assert.equal(readFileSync(join(tree, f)).length, MB, `${f} complete`);
    assert.equal(createHash('sha256').update(readFileSync(join(tree, 'f40'))).digest('hex'), createHash('sha256').update(readFileSync(join(src, 'data/f40'))).digest('hex'));

    const volumes = new Ext4Volumes(store, join(root, 'base'));
    fillTo(8 * MB);
    await assert.rejects(volumes.base(digest, silentLogger), /mkfs\.ext4|No space|ENOSPC/);
    assert.deepEqual(readdirSync(join(root, 'base')), [], 'no base volume committed, no temporary left');
    unfill();
    await volumes.base(digest, silentLogger);

    const vmDir = join(mnt, 'vm');
    mkdirSync(vmDir);
    fillTo(4 * MB);
    await assert.rejects(volumes.create({ uid: 'A', volumeId: 'root', dir: vmDir }, digest, undefined, silentLogger), /cp|No space/);
    assert.deepEqual(readdirSync(vmDir), [], 'no VM volume, no temporary left');
    unfill();
    assert.equal(await volumes.create({ uid: 'A', volumeId: 'root', dir: vmDir }, digest, undefined, silentLogger), join(vmDir, 'volume-root.img'));

    // Blobs: an incompressible layer larger than the room left.
    const layout2 = join(tmp.path, 'layout2');
    writeImageLayout(layout2, [execFileSync('sh', ['-c', `head -c ${12 * MB} /dev/urandom | gzip -1`], { maxBuffer: 1 << 28 })]);
    fillTo(6 * MB);
    await assert.rejects(store.import(layout2, 'example.com/random:1'), /ENOSPC|no space/i);
    assert.equal(await store.resolve('example.com/random:1'), undefined);
    unfill();
    await store.import(layout2, 'example.com/random:1');
    assert.equal(leftovers(root), '');
    assert.equal(leftovers(vmDir), '');
  });
});
