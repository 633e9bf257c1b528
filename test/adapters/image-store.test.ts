import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageCatalog, LocalImageStore, resolveInImage } from '../../src/adapters/images/oci/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { Ext4Volumes } from '../../src/adapters/volumes/ext4.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { putBlob, writeImageLayout } from '../helpers/oci.js';

/** An OCI layout built by hand from directory trees, one gzip'd tar layer per tree. */
function layout(dir: string, layers: ((root: string) => void)[]): string {
  const tgz = layers.map((fill, n) => {
    const root = join(dir, `tree${n}`);
    mkdirSync(root, { recursive: true });
    fill(root);
    return execFileSync('sh', ['-c', `tar --sort=name --owner=0 --group=0 --numeric-owner -C ${root} -cf - . | gzip -n`]);
  });
  writeImageLayout(dir, tgz);
  return dir;
}

describe('local image store', () => {
  const tmp = tempDir('images');
  after(() => tmp.remove());

  it('applies layers in order with whiteouts and opaque dirs, keeps absolute symlinks for the guest, and finds files through them', async () => {
    const src = layout(join(tmp.path, 'l1'), [
      (r) => {
        mkdirSync(join(r, 'etc/old'), { recursive: true });
        writeFileSync(join(r, 'etc/old/a'), 'a');
        writeFileSync(join(r, 'etc/gone'), 'x');
        mkdirSync(join(r, 'boot'));
        writeFileSync(join(r, 'boot/vmlinuz-6.1'), 'kernel');
        symlinkSync('/boot/vmlinuz-6.1', join(r, 'boot/vmlinuz'));
        mkdirSync(join(r, 'bin'));
        writeFileSync(join(r, 'bin/busybox'), 'bb');
        symlinkSync('/bin/busybox', join(r, 'bin/sh'));
      },
      (r) => {
        mkdirSync(join(r, 'etc/old'), { recursive: true });
        writeFileSync(join(r, 'etc/old/.wh..wh..opq'), '');
        writeFileSync(join(r, 'etc/old/b'), 'b');
        writeFileSync(join(r, 'etc/.wh.gone'), '');
      },
    ]);
    const store = new LocalImageStore(join(tmp.path, 'store'));
    const { ref, digest } = await store.import(src, 'example.com/guest:1');
    assert.equal(ref, 'example.com/guest:1');
    assert.equal(await store.ensure('example.com/guest:1', silentLogger), digest);
    const root = store.rootfsPath(digest);
    assert.equal(existsSync(join(root, 'etc/old/a')), false, 'opaque dir hid the lower entry');
    assert.equal(readFileSync(join(root, 'etc/old/b'), 'utf8'), 'b');
    assert.equal(existsSync(join(root, 'etc/gone')), false, 'whiteout removed the lower file');
    assert.equal(existsSync(join(root, 'etc/.wh.gone')), false);
    assert.equal(readlinkSync(join(root, 'bin/sh')), '/bin/busybox');
    assert.equal(await store.file(digest, 'boot/vmlinuz', 'example.com/guest:1'), join(root, 'boot/vmlinuz-6.1'));
    await assert.rejects(store.file(digest, 'boot/vmlinux', 'example.com/guest:1'), /file boot\/vmlinux not found in image example\.com\/guest:1; it contains: .*boot\/vmlinuz-6\.1/);
    await assert.rejects(store.ensure('example.com/other:1', silentLogger), /not found in the image store/);
  });

  it('a kernel path that is a symlink to a host path: refused, saying where the link leads and listing what the image holds', async () => {
    const src = layout(join(tmp.path, 'l-link'), [
      (r) => {
        mkdirSync(join(r, 'boot'));
        symlinkSync('/etc/passwd', join(r, 'boot/vmlinuz'));
        symlinkSync('../../..', join(r, 'esc'));
        mkdirSync(join(r, 'tmp'));
      },
    ]);
    const store = new LocalImageStore(join(tmp.path, 'store-link'));
    const { digest } = await store.import(src, 'example.com/link:1');
    await store.ensure('example.com/link:1', silentLogger);
    await assert.rejects(store.file(digest, 'boot/vmlinuz', 'example.com/link:1'), (err: Error) => {
      assert.match(err.message, /^file boot\/vmlinuz not found in image example\.com\/link:1: boot\/vmlinuz -> \/etc\/passwd, and the image holds no \/etc \(symlinks resolve inside the image/);
      assert.match(err.message, /; it contains: boot\/, boot\/vmlinuz -> \/etc\/passwd, esc -> \.\.\/\.\.\/\.\., tmp\/$/);
      return true;
    });
    await assert.rejects(store.file(digest, 'tmp', 'example.com/link:1'), /file tmp in image example\.com\/link:1 is not a regular file; it contains:/);
  });

  it('an unpack another process finished first is taken as done, not failed (the CLI pulling beside the daemon)', async () => {
    const src = layout(join(tmp.path, 'race'), [(r) => writeFileSync(join(r, 'f'), 'x'.repeat(100_000))]);
    const root = join(tmp.path, 'race-store');
    const { digest } = await new LocalImageStore(root).import(src, 'example.com/race:1');
    // Two stores on one directory share no in-process single flight, as two processes would not.
    const [a, b] = await Promise.all([new LocalImageStore(root).unpacked(digest, silentLogger), new LocalImageStore(root).unpacked(digest, silentLogger)]);
    assert.equal(a, b);
    assert.equal(readFileSync(join(a, 'f'), 'utf8').length, 100_000);
    assert.deepEqual(readdirSync(join(root, 'rootfs')), [digest.slice(7)], 'no temporary tree is left');
  });

  it('refuses layers that try to escape: ../ paths, absolute paths, writes through a symlink, device nodes', async () => {
    const outside = join(tmp.path, 'outside');
    mkdirSync(outside);
    const layers = join(tmp.path, 'hostile');
    mkdirSync(layers);
    // Python's tarfile writes the names a hostile image would carry; GNU tar refuses to.
    execFileSync('python3', ['-c', `
import io, tarfile, sys
def layer(path, entries):
    with tarfile.open(path, 'w:gz') as t:
        for name, kind, data in entries:
            i = tarfile.TarInfo(name)
            if kind == 'file':
                i.size = len(data); i.mode = 0o644; t.addfile(i, io.BytesIO(data))
            elif kind == 'setuid':
                i.size = len(data); i.mode = 0o4755; t.addfile(i, io.BytesIO(data))
            elif kind == 'symlink':
                i.type = tarfile.SYMTYPE; i.linkname = data.decode(); t.addfile(i)
            elif kind == 'chr':
                i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)
            elif kind == 'dir':
                i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
out, outside = sys.argv[1], sys.argv[2]
layer(out + '/a.tgz', [
    ('etc', 'dir', b''),
    ('../../escape-up.txt', 'file', b'up'),
    ('/escape-abs.txt', 'file', b'abs'),
    ('etc/evil', 'symlink', outside.encode()),
    ('dev-null', 'chr', b''),
    ('bin/su', 'setuid', b'su'),
    ('ok.txt', 'file', b'fine'),
])
layer(out + '/b.tgz', [('etc/evil/pwned', 'file', b'pwned')])
`, layers, outside]);
    const src = join(tmp.path, 'l-hostile');
    writeImageLayout(src, ['a.tgz', 'b.tgz'].map((f) => readFileSync(join(layers, f))));
    const store = new LocalImageStore(join(tmp.path, 'store-hostile'));
    const { digest } = await store.import(src, 'example.com/hostile:1');
    await store.ensure('example.com/hostile:1', silentLogger);
    const root = store.rootfsPath(digest);
    assert.equal(readFileSync(join(root, 'ok.txt'), 'utf8'), 'fine', 'the harmless entries are there');
    assert.deepEqual(readdirSync(outside), [], 'nothing was written through the symlink to the host');
    assert.equal(readlinkSync(join(root, 'etc/evil')), outside, 'the link itself is kept for the guest');
    for (const p of [join(tmp.path, 'escape-up.txt'), join(tmp.path, '..', 'escape-up.txt'), join(root, '..', 'escape-up.txt'), '/escape-abs.txt']) {
      assert.equal(existsSync(p), false, `${p} must not exist`);
    }
    assert.equal(existsSync(join(root, 'dev-null')), false, 'no device node');
    assert.equal(statSync(join(tmp.path, 'store-hostile', 'rootfs')).mode & 0o777, 0o700, 'unpacked trees are root-only, so setuid files inside cannot be run by host users');
  });

  it('never resolves a path out of the image, whatever the symlinks say', async () => {
    const root = join(tmp.path, 'r');
    mkdirSync(join(root, 'a'), { recursive: true });
    symlinkSync('../../../../etc', join(root, 'a/up'));
    symlinkSync('/etc', join(root, 'a/abs'));
    symlinkSync('loop2', join(root, 'loop1'));
    symlinkSync('loop1', join(root, 'loop2'));
    assert.equal(await resolveInImage(root, 'a/up/passwd'), undefined);
    assert.equal(await resolveInImage(root, 'a/abs/passwd'), undefined);
    assert.equal(await resolveInImage(root, '../../etc/passwd'), undefined);
    assert.equal(await resolveInImage(root, 'loop1'), undefined);
  });

  it('builds one base volume per image and gives each VM its own clone, grown to size_in_mb', async () => {
    const src = layout(join(tmp.path, 'l3'), [(r) => writeFileSync(join(r, 'hello'), 'world')]);
    mkdirSync(join(tmp.path, 'vm-a'));
    mkdirSync(join(tmp.path, 'vm-b'));
    const store = new LocalImageStore(join(tmp.path, 'store3'));
    const { digest } = await store.import(src, 'example.com/vol:1');
    await store.ensure('example.com/vol:1', silentLogger);
    const volumes = new Ext4Volumes(store, join(tmp.path, 'store3', 'base'));
    const [a, b] = await Promise.all([
      volumes.create({ uid: 'A', volumeId: 'root', dir: join(tmp.path, 'vm-a') }, digest, 200, silentLogger),
      volumes.create({ uid: 'B', volumeId: 'root', dir: join(tmp.path, 'vm-b') }, digest, undefined, silentLogger),
    ]);
    assert.equal(a, join(tmp.path, 'vm-a', 'volume-root.img'));
    assert.equal(readdirSync(join(tmp.path, 'store3', 'base')).length, 1, 'one base for both');
    assert.equal(statSync(a).size, 200 * 1024 * 1024);
    const blocks = (img: string) => {
      const out = execFileSync('dumpe2fs', ['-h', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      return Number(/Block count:\s+(\d+)/.exec(out)?.[1]) * Number(/Block size:\s+(\d+)/.exec(out)?.[1]);
    };
    assert.equal(blocks(a), 200 * 1024 * 1024, 'the filesystem was grown, not only the file');
    assert.ok(blocks(b) < 200 * 1024 * 1024);
    assert.equal(execFileSync('debugfs', ['-R', 'cat /hello', b], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), 'world');
  });

  it('counts an image as used by a VM that pinned it and by one that has not pinned it yet', async () => {
    const store = new LocalImageStore(join(tmp.path, 'store-usage'));
    const a = await store.import(layout(join(tmp.path, 'u-a'), [(r) => writeFileSync(join(r, 'a'), 'a')]), 'example.com/a:1');
    const b = await store.import(layout(join(tmp.path, 'u-b'), [(r) => writeFileSync(join(r, 'b'), 'b')]), 'example.com/b:1');
    const c = await store.import(layout(join(tmp.path, 'u-c'), [(r) => writeFileSync(join(r, 'c'), 'c')]), 'example.com/c:1');
    const vm = (name: string, ref: string, pinned?: string): MicroVM => ({
      uid: name, version: 1, createdAt: '', updatedAt: '',
      spec: { name, namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: ref, filename: 'k', cmdline: {}, addNetworkConfig: false }, additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: { ...initialStatus(), ...(pinned ? { imageDigests: { [ref]: pinned } } : {}) },
    });
    const catalog = new ImageCatalog(store);
    const usage = await catalog.usage([vm('pinned', 'example.com/a:1', a.digest), vm('waiting', 'example.com/b:1')]);
    assert.deepEqual([...usage.entries()].sort(), [[a.digest, ['ns/pinned']], [b.digest, ['ns/waiting']]].sort());
    assert.deepEqual(await catalog.collect(new Set(usage.keys()), 0), ['example.com/c:1']);
    assert.equal(await store.resolve('example.com/b:1'), b.digest, 'the waiting VM keeps its image');
    assert.notEqual(c.digest, b.digest);
  });

  it('usage of many VMs of one image: each user once, in order, and the reference read once', async () => {
    const store = new LocalImageStore(join(tmp.path, 'store-usage-many'));
    const a = await store.import(layout(join(tmp.path, 'm-a'), [(r) => writeFileSync(join(r, 'a'), 'a')]), 'example.com/a:1');
    const vm = (name: string): MicroVM => ({
      uid: name, version: 1, createdAt: '', updatedAt: '',
      spec: { name, namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'example.com/a:1', filename: 'k', cmdline: {}, addNetworkConfig: false }, initrd: { image: 'example.com/a:1', filename: 'i' }, additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: initialStatus(),
    });
    let reads = 0;
    const resolve = store.resolve.bind(store);
    store.resolve = (ref) => {
      reads++;
      return resolve(ref);
    };
    const names = Array.from({ length: 300 }, (_, i) => `vm-${i}`);
    const usage = await new ImageCatalog(store).usage(names.map(vm));
    assert.deepEqual([...usage.keys()], [a.digest]);
    assert.deepEqual(usage.get(a.digest), names.map((n) => `ns/${n}`), 'each VM once although it names the image twice');
    assert.equal(reads, 1, 'the reference is resolved once per call, not once per VM');
  });

  it('a reference by the digest of a layer or config names no image: a clear refusal, not a parse error', async () => {
    const src = layout(join(tmp.path, 'by-digest'), [(r) => writeFileSync(join(r, 'f'), 'x')]);
    const store = new LocalImageStore(join(tmp.path, 'by-digest-store'));
    const { digest } = await store.import(src, 'example.com/d:1');
    const manifest = JSON.parse(readFileSync(join(src, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as { config: { digest: string }; layers: { digest: string }[] };
    const refused = (why: RegExp) => (err: Error) => {
      assert.match(err.message, why, err.message);
      return true;
    };
    // A gzip'd layer is no JSON; a config is, but no manifest.
    await assert.rejects(store.ensure(`example.com/d@${manifest.layers[0]?.digest}`, silentLogger), refused(/names a blob of the image store that is not an image manifest or index/));
    await assert.rejects(store.ensure(`example.com/d@${manifest.config.digest}`, silentLogger), refused(/is not an image manifest: nothing to unpack/));
    assert.equal(await store.ensure(`example.com/d@${digest}`, silentLogger), digest);
    // A blob larger than any manifest is refused unread, though it is JSON.
    const big = Buffer.from(JSON.stringify({ pad: 'x'.repeat(5 * 1024 * 1024) }));
    const bigLayout = join(tmp.path, 'by-digest-big');
    mkdirSync(bigLayout);
    const bigManifest = writeImageLayout(bigLayout, [{ data: big, mediaType: 'application/vnd.oci.image.layer.v1.tar' }], 'example.com/big:1');
    await store.import(bigLayout);
    const bigBlob = (JSON.parse(readFileSync(join(bigLayout, 'blobs', 'sha256', bigManifest.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] }).layers[0]?.digest;
    await assert.rejects(store.ensure(`example.com/big@${bigBlob}`, silentLogger), refused(/names a blob of the image store that is not an image manifest or index/));
  });

  it('ensure looks for a stored manifest blob once, whether the reference is a tag, a digest or pinned', async () => {
    const store = new LocalImageStore(join(tmp.path, 'store-looks'));
    const { digest } = await store.import(layout(join(tmp.path, 'looks'), [(r) => writeFileSync(join(r, 'f'), 'x')]), 'example.com/looks:1');
    const looked: string[] = [];
    const has = store.has.bind(store);
    store.has = (d) => {
      looked.push(d);
      return has(d);
    };
    const looks = async (ref: string, pinned?: string) => {
      looked.length = 0;
      assert.equal(await store.ensure(ref, silentLogger, pinned), digest);
      return [...looked];
    };
    assert.deepEqual(await looks('example.com/looks:1'), [digest], 'by tag');
    assert.deepEqual(await looks(`example.com/looks@${digest}`), [digest], 'by digest');
    assert.deepEqual(await looks('example.com/looks:1', digest), [digest], 'pinned');
  });

  it("sees another process's import or removal of a reference at once", async () => {
    const root = join(tmp.path, 'store-refs');
    const store = new LocalImageStore(root);
    const a = await store.import(layout(join(tmp.path, 'r-a'), [(r) => writeFileSync(join(r, 'a'), 'a')]), 'example.com/r:1');
    assert.equal(await store.resolve('example.com/r:1'), a.digest);
    // Another process (the CLI) imports another image under the same name into this store.
    const b = await new LocalImageStore(root).import(layout(join(tmp.path, 'r-b'), [(r) => writeFileSync(join(r, 'b'), 'b')]), 'example.com/r:1');
    assert.notEqual(a.digest, b.digest);
    assert.equal(await store.resolve('example.com/r:1'), b.digest);
    rmSync(join(root, 'refs', encodeURIComponent('example.com/r:1')));
    assert.equal(await store.resolve('example.com/r:1'), undefined);
  });

  it('refuses a blob whose content does not match its digest, and stores nothing', async () => {
    const src = layout(join(tmp.path, 'l2'), [(r) => writeFileSync(join(r, 'f'), 'data')]);
    const index = JSON.parse(readFileSync(join(src, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const manifest = JSON.parse(readFileSync(join(src, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
    writeFileSync(join(src, 'blobs/sha256', manifest.layers[0]!.digest.slice(7)), 'tampered');
    const store = new LocalImageStore(join(tmp.path, 'store2'));
    await assert.rejects(store.import(src, 'example.com/bad:1'), /is corrupt: its content hashes to sha256:/);
    assert.equal(await store.resolve('example.com/bad:1'), undefined);
  });

  /** One layout holding an image per name, each a manifest of its own, listed in index.json or in an image index it names. */
  function severalImages(dir: string, names: { ref?: string; platform?: { os: string; architecture: string } }[], nested: boolean): string[] {
    const entries = names.map((n, i) => {
      layout(join(dir, `src${i}`), [(r) => writeFileSync(join(r, 'which'), String(i))]);
      const src = JSON.parse(readFileSync(join(dir, `src${i}`, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      execFileSync('sh', ['-c', `mkdir -p ${join(dir, 'out', 'blobs')} && cp -r ${join(dir, `src${i}`, 'blobs')}/. ${join(dir, 'out', 'blobs')}/`]);
      const digest = src.manifests[0]!.digest;
      const size = statSync(join(dir, 'out', 'blobs', 'sha256', digest.slice(7))).size;
      return { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size, ...(n.ref ? { annotations: { 'org.opencontainers.image.ref.name': n.ref } } : {}), ...(n.platform ? { platform: n.platform } : {}) };
    });
    const out = join(dir, 'out');
    let top = entries;
    if (nested) {
      const idx = putBlob(out, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: entries })));
      top = [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...idx }];
    }
    writeFileSync(join(out, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: top }));
    writeFileSync(join(out, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    return [out, ...entries.map((e) => e.digest)];
  }

  it('a layout holding several images imports the one its ref.name names (--ref, or --name\'s tag or whole reference), and refuses to guess, listing them', async () => {
    for (const nested of [true, false]) {
      const [src, a, rel, c] = severalImages(join(tmp.path, `several-${nested}`), [{ ref: 'a' }, { ref: 'rel' }, { ref: 'example.com/other:c' }], nested);
      const store = new LocalImageStore(join(tmp.path, `several-store-${nested}`));
      assert.equal((await store.import(src!, 'localhost/sym:rel')).digest, rel, `nested ${nested}`);
      assert.equal((await store.import(src!, 'localhost/sym:x', 'a')).digest, a);
      assert.deepEqual(await store.import(src!, undefined, 'example.com/other:c'), { ref: 'example.com/other:c', digest: c });
      assert.equal((await store.import(src!, 'example.com/other:c')).digest, c);
      await assert.rejects(store.import(src!, 'localhost/sym:none'), /holds 3 images \(org\.opencontainers\.image\.ref\.name: a, rel, example\.com\/other:c\); choose one with --ref/);
      await assert.rejects(store.import(src!, 'localhost/sym'), /holds 3 images/);
      await assert.rejects(store.import(src!, 'localhost/sym:x', 'nope'), /--ref nope: no image in .* it holds: .*a, rel, example\.com\/other:c/);
    }
  });

  it('an image index for several platforms still gives this host\'s image, with or without a tag in --name', async () => {
    const arch = process.arch === 'x64' ? 'amd64' : process.arch;
    const other = arch === 'amd64' ? 'arm64' : 'amd64';
    const [src, , host] = severalImages(join(tmp.path, 'platforms'), [{ platform: { os: 'linux', architecture: other } }, { platform: { os: 'linux', architecture: arch } }], true);
    const store = new LocalImageStore(join(tmp.path, 'platforms-store'));
    assert.equal((await store.import(src!, 'localhost/multi:1')).digest, host);
    assert.equal((await store.import(src!, 'localhost/multi')).digest, host);
  });
});
