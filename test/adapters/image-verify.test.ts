import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { registryClient } from '../../src/adapters/images/oci/registry.js';
import { choosePlatform, hostPlatforms } from '../../src/adapters/images/oci/platform.js';
import { ImageRefusedError, LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { putBlob, writeImageLayout, type Descriptor } from '../helpers/oci.js';
import { PULL_TOOLS_MISSING, pullSuite, startProxy } from '../helpers/registry.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A tar holding one file `name` with `content`. */
function tarOf(dir: string, name: string, content: string): Buffer {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, name), content);
  return execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', dir, '-cf', '-', name]);
}

const unpack = { unpack: { log: silentLogger } };
const hostArch = process.arch === 'x64' ? 'amd64' : process.arch;
const otherArch = hostArch === 'amd64' ? 'arm64' : 'amd64';

/** Nothing of an unpack left in the store: no tree, no temporary, and no reference. */
function nothingRecorded(root: string): void {
  const rootfs = join(root, 'rootfs');
  assert.deepEqual(existsSync(rootfs) ? readdirSync(rootfs) : [], [], 'no tree and no temporary of the unpack');
  const refs = join(root, 'refs');
  assert.deepEqual(existsSync(refs) ? readdirSync(refs) : [], [], 'no image recorded');
}

/**
 * A layout whose index.json names one image index of the given images, each a layout of one
 * layer holding the file `which` = its position, with the given platform on its index entry.
 */
function indexLayout(dir: string, platforms: { os: string; architecture: string; variant?: string }[]): { dir: string; digests: string[] } {
  const out = join(dir, 'out');
  const entries = platforms.map((platform, i) => {
    const src = join(dir, `src${i}`);
    const m = writeImageLayout(src, [gzipSync(tarOf(join(dir, `tree${i}`), 'which', String(i)))], undefined, { architecture: platform.architecture, os: platform.os, ...(platform.variant ? { variant: platform.variant } : {}) });
    execFileSync('sh', ['-c', `mkdir -p ${out}/blobs && cp -r ${src}/blobs/. ${out}/blobs/`]);
    return { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m, platform };
  });
  const idx = putBlob(out, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: entries })));
  writeFileSync(join(out, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...idx }] }));
  writeFileSync(join(out, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return { dir: out, digests: entries.map((e) => e.digest) };
}

describe('platform choice (containerd\'s default matcher)', () => {
  it('on amd64 takes amd64 (no variant or v1) first, then 386, and never amd64/v2-v4', () => {
    const host = hostPlatforms('x64');
    const pick = (ps: { os: string; architecture: string; variant?: string }[]) => ps.indexOf(choosePlatform(ps.map((platform) => ({ platform })), host)?.platform as never);
    assert.equal(pick([{ os: 'linux', architecture: 'amd64', variant: 'v3' }, { os: 'linux', architecture: 'amd64' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: 'amd64', variant: 'v3' }, { os: 'linux', architecture: 'amd64', variant: 'v1' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: '386' }, { os: 'linux', architecture: 'amd64' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: 'amd64', variant: 'v2' }, { os: 'linux', architecture: '386' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: 'x86_64' }]), 0);
    assert.equal(pick([{ os: 'linux', architecture: 'amd64', variant: 'v2' }, { os: 'linux', architecture: 'amd64', variant: 'v3' }, { os: 'linux', architecture: 'arm64', variant: 'v8' }, { os: 'windows', architecture: 'amd64' }]), -1);
  });

  it('on arm64 takes arm64 (v8 or none) first, then arm/v8 down to arm/v5', () => {
    const host = hostPlatforms('arm64');
    const pick = (ps: { os: string; architecture: string; variant?: string }[]) => ps.indexOf(choosePlatform(ps.map((platform) => ({ platform })), host)?.platform as never);
    assert.equal(pick([{ os: 'linux', architecture: 'arm', variant: 'v7' }, { os: 'linux', architecture: 'arm64', variant: 'v8' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: 'arm', variant: 'v6' }, { os: 'linux', architecture: 'arm', variant: 'v7' }]), 1);
    assert.equal(pick([{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64', variant: 'v9' }]), -1);
  });
});

describe('image checks at pull, import and unpack', () => {
  const tmp = tempDir('img-verify');
  after(() => tmp.remove());

  it('refuses a layer whose uncompressed content is not its diff_id, naming the layer, the expected and the computed diff_id, and records nothing', async () => {
    const good = tarOf(join(tmp.path, 't-good'), 'a', 'a');
    const other = tarOf(join(tmp.path, 't-other'), 'b', 'b');
    const layout = join(tmp.path, 'wrong-diff');
    // The second layer's diff_id is that of another tar.
    const m = writeImageLayout(layout, [gzipSync(good), gzipSync(other)], undefined, { rootfs: { type: 'layers', diff_ids: [sha256(good), sha256(good)] } });
    const layer1 = (JSON.parse(readFileSync(join(layout, 'blobs/sha256', m.digest.slice(7)), 'utf8')) as { layers: Descriptor[] }).layers[1]!.digest;
    const root = join(tmp.path, 'store-wrong-diff');
    const store = new LocalImageStore(root);
    const err = await store.import(layout, 'example.com/wrong:1', undefined, unpack).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ImageRefusedError, String(err));
    assert.equal(err.message, `image ${m.digest}: layer 1 (${layer1}): its uncompressed content hashes to ${sha256(other)}, but the image config's rootfs.diff_ids[1] is ${sha256(good)}`);
    nothingRecorded(root);
    assert.equal(await store.resolve('example.com/wrong:1'), undefined);

    // The daemon's unpack on demand (an image stored before): refused the same way, no tree left.
    const plain = new LocalImageStore(join(tmp.path, 'store-wrong-diff-2'));
    const { digest } = await plain.import(layout, 'example.com/wrong:1');
    await assert.rejects(plain.unpacked(digest, silentLogger), (e: Error) => e instanceof ImageRefusedError && e.message.includes(`rootfs.diff_ids[1] is ${sha256(good)}`));
    await assert.rejects(plain.ensure('example.com/wrong:1', silentLogger), /layer 1 .* hashes to sha256:/);
    assert.deepEqual(readdirSync(join(tmp.path, 'store-wrong-diff-2', 'rootfs')), []);
  });

  it('checks the diff_id of an uncompressed and of a zstd layer too', async () => {
    const tar = tarOf(join(tmp.path, 't-z'), 'z', 'z');
    const zst = execFileSync('zstd', ['-q', '-c'], { input: tar });
    for (const [name, data, mediaType] of [['tar', tar, 'application/vnd.oci.image.layer.v1.tar'], ['zstd', zst, 'application/vnd.oci.image.layer.v1.tar+zstd']] as const) {
      const layout = join(tmp.path, `wrong-${name}`);
      writeImageLayout(layout, [{ data, mediaType }], undefined, { rootfs: { type: 'layers', diff_ids: [sha256(Buffer.from('x'))] } });
      const root = join(tmp.path, `store-wrong-${name}`);
      await assert.rejects(new LocalImageStore(root).import(layout, 'example.com/w:1', undefined, unpack), new RegExp(`layer 0 .*hashes to ${sha256(tar)}, but the image config's rootfs\\.diff_ids\\[0\\] is ${sha256(Buffer.from('x'))}`));
      nothingRecorded(root);
    }
  });

  it('refuses a config whose rootfs.diff_ids do not give one digest per layer', async () => {
    const tar = tarOf(join(tmp.path, 't-count'), 'c', 'c');
    for (const [name, config, why] of [
      ['short', { rootfs: { type: 'layers', diff_ids: [] } }, /rootfs\.diff_ids has 0 entries for the manifest's 1 layers/],
      ['long', { rootfs: { type: 'layers', diff_ids: [sha256(tar), sha256(tar)] } }, /rootfs\.diff_ids has 2 entries for the manifest's 1 layers/],
      ['none', { rootfs: { type: 'layers' } }, /rootfs\.diff_ids is missing/],
      ['md5', { rootfs: { type: 'layers', diff_ids: ['md5:0cc175b9c0f1b6a831c399e269772661'] } }, /rootfs\.diff_ids\[0\] "md5:.*" is not a sha256/],
    ] as const) {
      const layout = join(tmp.path, `count-${name}`);
      writeImageLayout(layout, [gzipSync(tar)], undefined, config);
      const root = join(tmp.path, `store-count-${name}`);
      await assert.rejects(new LocalImageStore(root).import(layout, 'example.com/c:1', undefined, unpack), (e: Error) => e instanceof ImageRefusedError && why.test(e.message));
      nothingRecorded(root);
    }
  });

  it('an import of an index for other platforms only is refused naming them, variants included; amd64/v3 listed before amd64 gives amd64', async () => {
    const { dir } = indexLayout(join(tmp.path, 'arm-only'), [{ os: 'linux', architecture: otherArch, variant: otherArch === 'arm64' ? 'v8' : 'v2' }]);
    const root = join(tmp.path, 'store-arm-only');
    await assert.rejects(new LocalImageStore(root).import(dir, 'example.com/arm:1', undefined, unpack), new RegExp(`has no image for this host \\(linux/${hostArch}.*\\); it has: linux/${otherArch}/v[28]$`));
    nothingRecorded(root);
    if (hostArch !== 'amd64') return;
    const v3 = indexLayout(join(tmp.path, 'v3-first'), [{ os: 'linux', architecture: 'amd64', variant: 'v3' }, { os: 'linux', architecture: 'amd64' }]);
    const store = new LocalImageStore(join(tmp.path, 'store-v3'));
    const got = await store.import(v3.dir, 'example.com/v3:1', undefined, unpack);
    assert.equal(got.digest, v3.digests[1]);
    assert.equal(readFileSync(join(store.rootfsPath(got.digest), 'which'), 'utf8'), '1');
  });

  it('an image manifest given without an index whose config is for another platform is refused at unpack and not recorded', async () => {
    const layout = join(tmp.path, 'foreign-config');
    writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-fc'), 'f', 'f'))], undefined, { architecture: otherArch });
    const root = join(tmp.path, 'store-foreign-config');
    await assert.rejects(new LocalImageStore(root).import(layout, 'example.com/fc:1', undefined, unpack), new RegExp(`the image is for linux/${otherArch}, which this host does not run`));
    nothingRecorded(root);
  });

  it('unpacks a Docker uncompressed layer (rootfs.diff.tar) and the other Docker and OCI layer types', async () => {
    const tar = tarOf(join(tmp.path, 't-docker'), 'hello', 'docker');
    const layers = [
      { data: tar, mediaType: 'application/vnd.docker.image.rootfs.diff.tar' },
      // containerd decompresses Docker's uncompressed types by their first bytes
      { data: gzipSync(tarOf(join(tmp.path, 't-dockergz'), 'dockergz', 'g')), mediaType: 'application/vnd.docker.image.rootfs.diff.tar' },
      { data: gzipSync(tarOf(join(tmp.path, 't-foreign'), 'foreign', 'f')), mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', urls: ['https://example.com/layer'] },
      { data: tarOf(join(tmp.path, 't-nd'), 'nd', 'n'), mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar' },
      { data: execFileSync('zstd', ['-q', '-c'], { input: tarOf(join(tmp.path, 't-ndz'), 'ndz', 'z') }), mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd' },
    ];
    const layout = join(tmp.path, 'docker-tar');
    writeImageLayout(layout, layers);
    const store = new LocalImageStore(join(tmp.path, 'store-docker-tar'));
    const { digest } = await store.import(layout, 'example.com/docker-tar:1', undefined, unpack);
    const root = store.rootfsPath(digest);
    assert.deepEqual(['hello', 'dockergz', 'foreign', 'nd', 'ndz'].map((f) => readFileSync(join(root, f), 'utf8')), ['docker', 'g', 'f', 'n', 'z']);
  });
});

describe('image checks at pull', { skip: PULL_TOOLS_MISSING.length && !process.env.CI ? `missing: ${PULL_TOOLS_MISSING.join(', ')}` : false }, () => {
  const pull = pullSuite('img-verify-pull');
  const { tmp, storeAt } = pull;

  it('chooses by the rule import follows: other platforms only are refused naming variants, amd64/v3 before amd64 gives amd64', async () => {
    const { dir } = indexLayout(join(tmp.path, 'arm-only'), [{ os: 'linux', architecture: otherArch, variant: otherArch === 'arm64' ? 'v8' : 'v2' }]);
    pull.registry.push(dir, 'm/arm:1', true);
    const s = storeAt('store-arm');
    await assert.rejects(s.pull(`${pull.registry.host}/m/arm:1`, silentLogger, undefined, unpack), new RegExp(`has no image for this host \\(linux/${hostArch}.*\\); it has: linux/${otherArch}/v[28]$`));
    nothingRecorded(join(tmp.path, 'store-arm'));
    if (hostArch !== 'amd64') return;
    const v3 = indexLayout(join(tmp.path, 'v3-first'), [{ os: 'linux', architecture: 'amd64', variant: 'v3' }, { os: 'linux', architecture: 'amd64' }]);
    pull.registry.push(v3.dir, 'm/v3:1', true);
    const store = storeAt('store-v3');
    const digest = await store.pull(`${pull.registry.host}/m/v3:1`, silentLogger, undefined, unpack);
    assert.equal(digest, v3.digests[1]);
    assert.equal(readFileSync(join(store.rootfsPath(digest), 'which'), 'utf8'), '1');
    // The daemon's ensure, by the index's digest, resolves it to the same image.
    const indexDigest = JSON.parse(readFileSync(join(v3.dir, 'index.json'), 'utf8')).manifests[0].digest as string;
    assert.equal(await storeAt('store-v3-ensure').ensure(`${pull.registry.host}/m/v3@${indexDigest}`, silentLogger), v3.digests[1]);
  });

  it('a pulled image whose layer is not its diff_id is refused and not recorded, by pull and by the daemon\'s ensure', async () => {
    const good = tarOf(join(tmp.path, 't-good'), 'a', 'a');
    const layout = join(tmp.path, 'wrong-diff');
    writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-bad'), 'a', 'b'))], 'latest', { rootfs: { type: 'layers', diff_ids: [sha256(good)] } });
    pull.registry.push(`${layout}:latest`, 'm/wrong:1');
    for (const [name, run] of [
      ['pull', (s: LocalImageStore) => s.pull(`${pull.registry.host}/m/wrong:1`, silentLogger, undefined, unpack)],
      ['ensure', (s: LocalImageStore) => s.ensure(`${pull.registry.host}/m/wrong:1`, silentLogger)],
    ] as const) {
      const s = storeAt(`store-wrong-${name}`);
      await assert.rejects(run(s), new RegExp(`layer 0 \\(sha256:[0-9a-f]{64}\\): its uncompressed content hashes to sha256:[0-9a-f]{64}, but the image config's rootfs\\.diff_ids\\[0\\] is ${sha256(good)}`));
      nothingRecorded(join(tmp.path, `store-wrong-${name}`));
    }
  });

  it('a foreign layer the registry does not hold is refused naming its urls, which are not fetched', async () => {
    const layout = join(tmp.path, 'foreign');
    const foreign = gzipSync(tarOf(join(tmp.path, 't-f'), 'f', 'f'));
    writeImageLayout(layout, [{ data: foreign, mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', urls: ['https://foreign.example/layer'] }], 'latest');
    pull.registry.push(`${layout}:latest`, 'm/foreign:1');
    // A registry that does not hold the foreign layer (it may decline to): a front that 404s its blob.
    const blobPath = `/blobs/${sha256(foreign)}`;
    const proxy = await startProxy(pull.registry.host, { missing: (p) => p.endsWith(blobPath) });
    try {
      const s = new LocalImageStore(join(tmp.path, 'store-foreign'), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [pull.registry.host], mirrors: [] }, silentLogger));
      await assert.rejects(s.pull(`${proxy.host}/m/foreign:1`, silentLogger, undefined, unpack), /is a foreign layer the registry does not hold; its descriptor names "https:\/\/foreign\.example\/layer", which matchlock does not fetch from/);
      nothingRecorded(join(tmp.path, 'store-foreign'));
    } finally {
      await proxy.stop();
    }
  });
});
