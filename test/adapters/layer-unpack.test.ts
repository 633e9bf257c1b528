import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { Ext4Volumes } from '../../src/adapters/volumes/ext4.js';
import { silentLogger } from '../fakes/memory-store.js';
import { containerdUnpack } from '../helpers/containerd.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { buildLayerCorpus, gnuSparseLayer, PING_CAPABILITY } from '../helpers/layer-corpus.js';
import { writeImageLayout } from '../helpers/oci.js';
import { describeExt4, describeTree, diffTrees } from '../helpers/tree.js';

const TOOLS = ['tar', 'zstd', 'setfattr', 'getfattr', 'python3', 'debugfs', 'mkfs.ext4', 'containerd', 'ctr'];
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root (owners, trusted.* xattrs, containerd)']),
  ...TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0),
];

describe('layer unpack against containerd and GNU tar', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('layers');
  after(() => tmp.remove());
  let store: LocalImageStore;
  let digest = '';
  let ours = '';

  before(async () => {
    const corpus = join(tmp.path, 'corpus');
    mkdirSync(corpus);
    const layers = buildLayerCorpus(corpus);
    writeImageLayout(join(tmp.path, 'layout'), layers.map((l) => ({ data: readFileSync(l.file), mediaType: l.mediaType })), 'corpus');
    store = new LocalImageStore(join(tmp.path, 'store'));
    ({ digest } = await store.import(join(tmp.path, 'layout'), 'example.com/corpus:1'));
    await store.ensure('example.com/corpus:1', silentLogger);
    ours = store.rootfsPath(digest);
  });

  it('unpacks every rule of the corpus exactly as containerd does (type, mode, owner, xattrs, content, link, hard links)', async () => {
    const reference = await containerdUnpack(join(tmp.path, 'containerd'), join(tmp.path, 'layout'));
    try {
      const theirs = describeTree(reference.tree);
      const mine = describeTree(ours);
      assert.ok(mine.size > 60, `corpus unpacked to ${mine.size} paths`);
      assert.deepEqual(diffTrees(mine, theirs), []);
      // The reported cases, spelled out.
      assert.equal(mine.get('usr/lib/modules/6.1/kernel.ko')?.type, 'file', 'written through lib -> usr/lib');
      assert.equal(mine.get('lib')?.link, 'usr/lib');
      assert.equal(mine.get('usr/share/through-dotdot')?.type, 'file', 'a/up -> ../../../../usr resolved inside the image');
      assert.equal(mine.get('r/d2f')?.type, 'file', 'a file replaces a lower directory');
      assert.equal(mine.get('r/s2d/c')?.type, 'file', 'a directory replaces a lower symlink');
      assert.equal(mine.get('tmp')?.mode, '1777');
      assert.deepEqual([mine.get('bin/wall')?.mode, mine.get('bin/wall')?.owner], ['2755', '0:5']);
      assert.deepEqual([mine.get('var/mail')?.mode, mine.get('var/mail')?.owner], ['2775', '0:8']);
      // Entries of a setgid directory take the layer's group and mode, not the directory's.
      assert.deepEqual(['root-file', 'mail-file', 'root-dir', 'root-link', 'later-root', 'later-mail', 'later-dir'].map((n) => `${n} ${mine.get(`var/mail/${n}`)?.mode ?? '-'} ${mine.get(`var/mail/${n}`)?.owner}`), [
        'root-file 0644 0:0', 'mail-file 0660 0:8', 'root-dir 0755 0:0', 'root-link - 0:0', 'later-root 0640 0:0', 'later-mail 2640 0:8', 'later-dir 0750 0:0',
      ]);
      assert.equal(mine.get('m/f0666')?.mode, '0666');
      assert.equal(mine.get('m/f7777')?.mode, '7777');
      assert.equal(mine.get('bin/ping')?.xattrs, `security.capability=${PING_CAPABILITY}`);
      assert.equal(mine.get('m/trusted')?.xattrs, '', 'trusted.* dropped, as containerd drops it');
      assert.equal(mine.get('ids/uid3000000')?.owner, '3000000:3000001', 'base-256 ids');
      assert.equal(mine.get('h/three')?.hardlinks, 'h/one,h/two', 'a hard link to a file of an earlier layer');
      assert.equal(mine.has('etc/old/a') || mine.has('etc/old/sub/deep') || mine.has('etc/gone'), false, 'whiteouts and the opaque dir');
      assert.equal(existsSync('/escaped-abs'), false);
      const sparse = statSync(join(ours, 's/pax00'));
      assert.ok(sparse.blocks * 512 < 1024 * 1024 && sparse.size === 5 * 1024 * 1024, 'holes stay holes');
    } finally {
      await reference.stop();
    }
  });

  it('builds an ext4 base volume that carries the same tree, xattrs and owners included (read back with debugfs)', async () => {
    const volumes = new Ext4Volumes(store, join(tmp.path, 'store', 'base'));
    const image = await volumes.base(digest, silentLogger);
    const mine = describeTree(ours);
    const scratch = join(tmp.path, 'rdump');
    mkdirSync(scratch);
    const inVolume = describeExt4(image, [...mine.keys()], scratch);
    assert.deepEqual(diffTrees(mine, inVolume), []);
    assert.equal(inVolume.get('bin/ping')?.xattrs, `security.capability=${PING_CAPABILITY}`);
  });

  it('reads GNU tar\'s own format (base-256 ids, long names) as GNU tar does, and refuses its old sparse type S as containerd does', async () => {
    const dir = join(tmp.path, 'gnu');
    mkdirSync(dir);
    const layer = gnuSparseLayer(dir, false);
    const layout = join(tmp.path, 'gnu-layout');
    writeImageLayout(layout, [{ data: readFileSync(layer), mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    const s = new LocalImageStore(join(tmp.path, 'store-gnu'));
    const { digest: d } = await s.import(layout, 'example.com/gnu:1');
    await s.ensure('example.com/gnu:1', silentLogger);
    const reference = join(dir, 'reference');
    mkdirSync(reference);
    execFileSync('tar', ['-xpf', layer, '--numeric-owner', '--same-owner', '-C', reference]);
    const mine = describeTree(s.rootfsPath(d));
    const theirs = describeTree(reference);
    mine.delete('');
    theirs.delete('');
    assert.deepEqual(diffTrees(mine, theirs), []);
    assert.equal(statSync(join(s.rootfsPath(d), 's/gnu-sparse')).size, 9 * 1024 * 1024);
    // Go's archive/tar reads type S, but containerd's applier (createTarFile) has no case for it.
    const sparseDir = join(tmp.path, 'gnu-sparse');
    mkdirSync(sparseDir);
    const sparseLayout = join(tmp.path, 'gnu-sparse-layout');
    writeImageLayout(sparseLayout, [{ data: readFileSync(gnuSparseLayer(sparseDir)), mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
    const sp = new LocalImageStore(join(tmp.path, 'store-gnu-sparse'));
    await sp.import(sparseLayout, 'example.com/gnu-sparse:1');
    await assert.rejects(sp.ensure('example.com/gnu-sparse:1', silentLogger), /layer 0 .*: \.\/s\/gnu-sparse: unhandled tar header type 83 \("S"\)/);
  });
});

describe('layers that cannot be unpacked', () => {
  const tmp = tempDir('bad-layers');
  after(() => tmp.remove());

  const attempt = async (name: string, layers: { data: Buffer; mediaType: string }[]) => {
    const layout = join(tmp.path, `layout-${name}`);
    writeImageLayout(layout, layers);
    const store = new LocalImageStore(join(tmp.path, `store-${name}`));
    await store.import(layout, `example.com/${name}:1`);
    const err = await store.ensure(`example.com/${name}:1`, silentLogger).then(() => undefined, (e: Error) => e);
    const rootfs = join(tmp.path, `store-${name}`, 'rootfs');
    return { err, left: existsSync(rootfs) ? readdirSync(rootfs) : [] };
  };
  const tarOf = (files: Record<string, string>) => {
    const dir = join(tmp.path, `t-${Object.keys(files).join('-').replace(/\W/g, '')}`);
    for (const [p, c] of Object.entries(files)) {
      mkdirSync(join(dir, p, '..'), { recursive: true });
      writeFileSync(join(dir, p), c);
    }
    return execFileSync('tar', ['--sort=name', '-C', dir, '-cf', '-', '.']);
  };

  it('refuses an unknown layer media type, naming the layer and the type', async () => {
    const { err, left } = await attempt('unknown', [{ data: gzipSync(tarOf({ a: 'a' })), mediaType: 'application/vnd.example.layer.v1.tar+lz4' }]);
    assert.match(err?.message ?? '', /layer 0 \(sha256:[0-9a-f]{64}\) has media type "application\/vnd\.example\.layer\.v1\.tar\+lz4", which cannot be unpacked; supported: .*tar\+zstd/);
    assert.deepEqual(left, []);
  });

  it('fails broken zstd, gzip and tar layers with a message, leaving nothing behind, and keeps working', async () => {
    const good = tarOf({ 'etc/hostname': 'ok' });
    const cases: [string, Buffer, string, RegExp][] = [
      // Not zstd by its first bytes, so read as it is (containerd's DecompressStream): a short tar.
      ['zstd-garbage', Buffer.from('not zstd at all'), 'application/vnd.oci.image.layer.v1.tar+zstd', /layer 0 .*truncated archive/],
      ['zstd-truncated', execFileSync('zstd', ['-qc'], { input: good }).subarray(0, 40), 'application/vnd.oci.image.layer.v1.tar+zstd', /layer 0 .*zstd: /],
      ['gzip-truncated', gzipSync(good).subarray(0, 60), 'application/vnd.oci.image.layer.v1.tar+gzip', /layer 0 .*(unexpected end|truncated)/i],
      ['tar-garbage', Buffer.alloc(2048, 7), 'application/vnd.oci.image.layer.v1.tar', /layer 0 .*invalid tar header checksum/],
      ['tar-truncated', good.subarray(0, 700), 'application/vnd.oci.image.layer.v1.tar', /layer 0 .*truncated archive/],
    ];
    for (const [name, data, mediaType, want] of cases) {
      const { err, left } = await attempt(name, [{ data, mediaType }]);
      assert.match(err?.message ?? '(no error)', want, name);
      assert.deepEqual(left, [], `${name}: no tree and no temporary left`);
    }
    const ok = await attempt('zstd-good', [{ data: execFileSync('zstd', ['-qc'], { input: good }), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }]);
    assert.equal(ok.err, undefined);
    assert.equal(ok.left.length, 1);
    assert.equal(readFileSync(join(tmp.path, 'store-zstd-good', 'rootfs', ok.left[0] ?? '', 'etc/hostname'), 'utf8'), 'ok');
  });

  it('removes the temporary a killed process left (kill -9 mid-unpack) and keeps those of live operations', { skip: process.getuid?.() !== 0 && !process.env.CI ? 'needs root' : false }, async () => {
    // A layer big enough to be caught mid-unpack: many files, slowly decompressed.
    const dir = join(tmp.path, 'many');
    mkdirSync(dir);
    execFileSync('sh', ['-c', `cd ${dir} && for d in $(seq 1 40); do mkdir d$d; for f in $(seq 1 100); do echo $d$f > d$d/f$f; done; done; head -c 30000000 /dev/urandom > big`]);
    const layer = execFileSync('sh', ['-c', `tar -C ${dir} -cf - . | gzip -1`], { maxBuffer: 1 << 28 });
    const layout = join(tmp.path, 'layout-many');
    writeImageLayout(layout, [layer]);
    const root = join(tmp.path, 'store-kill');
    const { digest } = await new LocalImageStore(root).import(layout, 'example.com/many:1');
    const script = `import { LocalImageStore } from ${JSON.stringify(join(ROOT, 'src/adapters/images/oci/store.ts'))};
      await new LocalImageStore(${JSON.stringify(root)}).ensure('example.com/many:1', { info() {}, warn() {}, error() {}, debug() {}, child() { return this; } });`;
    const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: 'ignore' });
    const rootfs = join(root, 'rootfs');
    // The tree's temporary, not the decompressor's FIFO directory beside it.
    const tmpName = () => (existsSync(rootfs) ? readdirSync(rootfs).find((n) => n.includes('.tmp-') && !n.includes('.fifo.')) : undefined);
    for (let i = 0; i < 600 && !(tmpName() && readdirSync(join(rootfs, tmpName() ?? '')).length > 3); i++) await new Promise((r) => setTimeout(r, 50));
    const name = tmpName();
    assert.ok(name, 'the unpack was caught in progress');
    const live = new LocalImageStore(root);
    assert.deepEqual(await live.sweepTemporaries(), [], 'a live process owns its temporary');
    proc.kill('SIGKILL');
    await new Promise((r) => proc.once('exit', r));
    // The unpacker notices its parent is gone and stops within a second.
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(existsSync(join(rootfs, name)), 'kill -9 left the temporary');
    const fifoDir = readdirSync(rootfs).find((n) => n.includes('.fifo.tmp-'));
    assert.ok(fifoDir, 'kill -9 left the FIFO directory in the store');
    assert.deepEqual((await live.sweepTemporaries()).sort(), [join(rootfs, name), join(rootfs, fifoDir)].sort());
    assert.deepEqual(readdirSync(rootfs), []);
    await live.ensure('example.com/many:1', silentLogger);
    assert.deepEqual(readdirSync(rootfs), [digest.slice(7)]);
    assert.equal(readdirSync(join(rootfs, digest.slice(7))).length, 41);
  });
});
