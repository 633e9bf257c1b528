import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, ftruncateSync, openSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { ImageRefusedError, LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { putBlob, writeImageLayout, type Descriptor } from '../helpers/oci.js';
import { tarOf as tarOfEntries, type TarSpec } from '../helpers/tar.js';
import { PULL_TOOLS_MISSING, pullSuite } from '../helpers/registry.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const unpack = { unpack: { log: silentLogger } };
const hostArch = process.arch === 'x64' ? 'amd64' : process.arch;
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';

function tarOf(dir: string, name: string, content: string): Buffer {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, name), content);
  return execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', dir, '-cf', '-', name]);
}

/** Nothing of a refused image left in the store: no reference, no tree and no temporary. */
function nothingRecorded(root: string): void {
  for (const dir of ['refs', 'rootfs']) assert.deepEqual(existsSync(join(root, dir)) ? readdirSync(join(root, dir)) : [], [], `nothing in ${dir}`);
  assert.deepEqual(readdirSync(root).filter((n) => n.includes('.tmp-')), [], 'no temporary');
}

function manifestOf(layout: string, digest: string): { config: Descriptor; layers: (Descriptor & { mediaType: string })[] } {
  return JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as never;
}

/** Rewrites the layout's one manifest with `edit`, pointing index.json at the result. */
function editManifest(layout: string, digest: string, edit: (m: Record<string, unknown>) => void): string {
  const m = manifestOf(layout, digest) as unknown as Record<string, unknown>;
  edit(m);
  const d = putBlob(layout, Buffer.from(JSON.stringify(m)));
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MANIFEST, ...d }] }));
  return d.digest;
}

describe('images refused for their content are not recorded', () => {
  const tmp = tempDir('img-refusals');
  after(() => tmp.remove());

  it('a truncated layer, a corrupt gzip, gzip bytes labelled plain tar and an unknown layer media type: refused in one line naming the layer, nothing recorded', async () => {
    const tar = tarOf(join(tmp.path, 't-1'), 'f', 'x'.repeat(5000));
    const gz = gzipSync(tar);
    const crc = Buffer.from(gz);
    crc[crc.length - 6] = (crc[crc.length - 6] ?? 0) ^ 0xff; // the CRC32 in the gzip trailer
    const cases = [
      ['truncated', { data: tar.subarray(0, 1024), mediaType: 'application/vnd.oci.image.layer.v1.tar' }, /: truncated archive: /],
      ['crc', { data: crc, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, /: gzip: invalid compressed data--crc error$/],
      ['gzip-as-tar', { data: gz, mediaType: 'application/vnd.oci.image.layer.v1.tar' }, /: (?:invalid tar header checksum|truncated archive)/],
      ['bzip2', { data: tar, mediaType: 'application/vnd.oci.image.layer.v1.tar+bzip2' }, /has media type "application\/vnd\.oci\.image\.layer\.v1\.tar\+bzip2", which cannot be unpacked/],
    ] as const;
    for (const [name, layer, why] of cases) {
      const layout = join(tmp.path, name);
      const m = writeImageLayout(layout, [layer]);
      const digest = manifestOf(layout, m.digest).layers[0]?.digest ?? '';
      const root = join(tmp.path, `store-${name}`);
      const store = new LocalImageStore(root);
      const err = await store.import(layout, 'example.com/bad:1', undefined, unpack).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof ImageRefusedError, `${name}: ${String(err)}`);
      assert.match(err.message, why, name);
      assert.ok(err.message.includes(`layer 0 (${digest})`), `${name} names the layer: ${err.message}`);
      assert.ok(!err.message.includes('\n'), `${name} is one line: ${err.message}`);
      assert.ok(!err.message.includes(root), `${name} names no host path: ${err.message}`);
      nothingRecorded(root);
      assert.equal(await store.resolve('example.com/bad:1'), undefined);
      assert.deepEqual(await store.list(), []);
    }
  });

  it('a layer the applier refuses (whiteout naming no file, hard link to nothing or to a directory, a file or a symlink loop as a parent, a sparse size no file here holds) is refused, nothing recorded', async () => {
    const sparse = (realsize: string): TarSpec => ({ name: 'GNUSparseFile.0/sp', pax: { 'GNU.sparse.major': '0', 'GNU.sparse.minor': '1', 'GNU.sparse.name': 'sp', 'GNU.sparse.size': realsize, 'GNU.sparse.map': '', 'GNU.sparse.numblocks': '0' } });
    const huge = '9007199254740991';
    // The largest file is the file system's own (ext4: 16 TiB); where the store's holds this
    // size, the layer is not refused and that case is left out.
    const probe = join(tmp.path, 'huge-probe');
    const fd = openSync(probe, 'w');
    let fits = true;
    try {
      ftruncateSync(fd, Number(huge));
    } catch {
      fits = false;
    } finally {
      closeSync(fd);
    }
    const cases: [string, TarSpec[], RegExp][] = [
      ['whiteout', [{ name: 'd/', type: '5', mode: 0o755 }, { name: 'd/.wh.' }], /: d\/\.wh\.: whiteout \.wh\. names no file$/],
      ['link-missing', [{ name: 'h', type: '1', linkname: 'nowhere' }], /: h: hard link target nowhere does not exist in the image$/],
      ['link-dir', [{ name: 'd/', type: '5', mode: 0o755 }, { name: 'h', type: '1', linkname: 'd' }], /: h: hard link target d is a directory$/],
      ['parent-file', [{ name: 'f', data: 'f' }, { name: 'f/x', data: 'x' }], /: f\/x: parent \/f is not a directory$/],
      ['loop', [{ name: 'l', type: '2', linkname: 'l' }, { name: 'l/x', data: 'x' }], /: l\/x: too many levels of symbolic links$/],
      ...(fits ? [] : [['sparse-size', [sparse(huge)], new RegExp(`: sp: sparse real size ${huge} is beyond the largest file this file system holds$`)] as [string, TarSpec[], RegExp]]),
    ];
    for (const [name, entries, why] of cases) {
      const layout = join(tmp.path, `apply-${name}`);
      writeImageLayout(layout, [{ data: tarOfEntries(entries), mediaType: 'application/vnd.oci.image.layer.v1.tar' }]);
      const root = join(tmp.path, `store-apply-${name}`);
      const store = new LocalImageStore(root);
      const err = await store.import(layout, 'example.com/bad:1', undefined, unpack).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof ImageRefusedError, `${name}: ${String(err)}`);
      assert.match(err.message, why, name);
      nothingRecorded(root);
      assert.deepEqual(await store.list(), [], name);
    }
  });

  it('a config whose os/architecture this host runs is unpacked whatever its variant (amd64/v3)', async () => {
    const layout = join(tmp.path, 'variant');
    const variant = hostArch === 'amd64' ? 'v3' : 'v9';
    writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-v'), 'v', 'v'))], undefined, { architecture: hostArch, variant });
    const store = new LocalImageStore(join(tmp.path, 'store-variant'));
    const { digest } = await store.import(layout, 'example.com/variant:1', undefined, unpack);
    assert.equal(readFileSync(join(store.rootfsPath(digest), 'v'), 'utf8'), 'v');
  });

  it('unpacks a Docker foreign uncompressed layer (rootfs.foreign.diff.tar) and a Docker zstd layer (rootfs.diff.tar.zstd)', async () => {
    const layout = join(tmp.path, 'foreign-tar');
    writeImageLayout(layout, [
      { data: tarOf(join(tmp.path, 't-ft'), 'ft', 'foreign'), mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar', urls: ['https://example.com/l'] },
      { data: execFileSync('zstd', ['-q', '-c'], { input: tarOf(join(tmp.path, 't-dz'), 'dz', 'zstd') }), mediaType: 'application/vnd.docker.image.rootfs.diff.tar.zstd' },
    ]);
    const store = new LocalImageStore(join(tmp.path, 'store-foreign-tar'));
    const { digest } = await store.import(layout, 'example.com/ft:1', undefined, unpack);
    assert.deepEqual(['ft', 'dz'].map((f) => readFileSync(join(store.rootfsPath(digest), f), 'utf8')), ['foreign', 'zstd']);
  });

  it('refuses a sha512 diff_id, naming the field and the rule', async () => {
    const tar = tarOf(join(tmp.path, 't-512'), 's', 's');
    const layout = join(tmp.path, 'sha512');
    writeImageLayout(layout, [gzipSync(tar)], undefined, { rootfs: { type: 'layers', diff_ids: [`sha512:${createHash('sha512').update(tar).digest('hex')}`] } });
    const root = join(tmp.path, 'store-sha512');
    await assert.rejects(new LocalImageStore(root).import(layout, 'example.com/s:1', undefined, unpack), (e: Error) => e instanceof ImageRefusedError && /rootfs\.diff_ids\[0\] "sha512:[0-9a-f]{128}" is not a sha256:<64 hex> digest: containerd's applier computes every diff_id with sha256/.test(e.message));
    nothingRecorded(root);
  });

  it('a manifest without layers, without config, or with a config lacking its mediaType: refused naming the field', async () => {
    const tar = tarOf(join(tmp.path, 't-shape'), 'm', 'm');
    for (const [name, edit, why] of [
      ['no-layers', (m: Record<string, unknown>) => delete m.layers, /: layers is missing: an image manifest lists its layers/],
      ['no-config', (m: Record<string, unknown>) => delete m.config, /: config is missing: an image manifest names its config/],
      ['config-type', (m: Record<string, unknown>) => delete (m.config as Record<string, unknown>).mediaType, /: config\.mediaType undefined is not a media type/],
      ['layer-size', (m: Record<string, unknown>) => ((m.layers as Record<string, unknown>[])[0]!.size = -1), /: layers\[0\]\.size -1 is not a non-negative integer/],
      ['schema', (m: Record<string, unknown>) => (m.schemaVersion = 1), /: schemaVersion 1 is not 2/],
    ] as const) {
      const layout = join(tmp.path, `shape-${name}`);
      const m = writeImageLayout(layout, [gzipSync(tar)]);
      const digest = editManifest(layout, m.digest, edit);
      const root = join(tmp.path, `store-shape-${name}`);
      await assert.rejects(new LocalImageStore(root).import(layout, 'example.com/shape:1', undefined, unpack), (e: Error) => e instanceof ImageRefusedError && e.message.includes(`manifest ${digest}`) && why.test(e.message));
      nothingRecorded(root);
    }
  });

  /** A layout whose index.json names an index that names an index … (`depth` of them) of one image for this host. */
  function nestedLayout(dir: string, depth: number): { dir: string; manifest: string } {
    const m = writeImageLayout(dir, [gzipSync(tarOf(join(dir, '..', `t-${depth}`), 'n', String(depth)))]);
    let child: Descriptor & { mediaType: string; platform?: unknown } = { mediaType: MANIFEST, ...m, platform: { os: 'linux', architecture: hostArch } };
    for (let i = 0; i < depth; i++) {
      const other = { mediaType: MANIFEST, digest: `sha256:${'0'.repeat(64)}`, size: 2, platform: { os: 'linux', architecture: hostArch === 'amd64' ? 'arm64' : 'amd64' } };
      child = { mediaType: INDEX, ...putBlob(dir, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [other, child] }))) };
    }
    writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...child, annotations: { 'org.opencontainers.image.ref.name': 'example.com/nested:1' } }] }));
    return { dir, manifest: m.digest };
  }

  it('walks indexes nested in an index, choosing this host at each level; refuses a cycle and a chain too deep', async () => {
    const { dir, manifest } = nestedLayout(join(tmp.path, 'nested'), 3);
    const store = new LocalImageStore(join(tmp.path, 'store-nested'));
    assert.deepEqual(await store.import(dir, undefined, undefined, unpack), { ref: 'example.com/nested:1', digest: manifest });
    assert.equal(readFileSync(join(store.rootfsPath(manifest), 'n'), 'utf8'), '3');

    const deep = nestedLayout(join(tmp.path, 'deep'), 9);
    const deepRoot = join(tmp.path, 'store-deep');
    await assert.rejects(new LocalImageStore(deepRoot).import(deep.dir, undefined, undefined, unpack), (e: Error) => e instanceof ImageRefusedError && /image indexes nest more than 8 deep/.test(e.message));
    nothingRecorded(deepRoot);

    // An index file whose entry names itself (a layout's files are read before they are verified).
    const loop = join(tmp.path, 'loop');
    mkdirSync(join(loop, 'blobs', 'sha256'), { recursive: true });
    const self = `sha256:${'1'.repeat(64)}`;
    writeFileSync(join(loop, 'blobs', 'sha256', '1'.repeat(64)), JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: INDEX, digest: self, size: 10 }] }));
    writeFileSync(join(loop, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: INDEX, digest: self, size: 10 }] }));
    await assert.rejects(new LocalImageStore(join(tmp.path, 'store-loop')).import(loop, 'example.com/loop:1'), /names an index already walked \(a cycle\)/);
  });

  it('a layout of two different images for this host, each with a platform, is refused listing them; --ref chooses', async () => {
    const out = join(tmp.path, 'two');
    const entries = ['a', 'b'].map((ref) => {
      const m = writeImageLayout(out, [gzipSync(tarOf(join(tmp.path, `t-two-${ref}`), 'which', ref))]);
      return { mediaType: MANIFEST, ...m, platform: { os: 'linux', architecture: hostArch }, annotations: { 'org.opencontainers.image.ref.name': ref } };
    });
    writeFileSync(join(out, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: entries }));
    const store = new LocalImageStore(join(tmp.path, 'store-two'));
    await assert.rejects(store.import(out, 'localhost/two:1'), /holds 2 images \(org\.opencontainers\.image\.ref\.name: a, b\); choose one with --ref/);
    assert.deepEqual(await store.list(), []);
    assert.equal((await store.import(out, 'localhost/two:1', 'b', unpack)).digest, entries[1]?.digest);
    assert.equal((await store.import(out, 'localhost/two:a')).digest, entries[0]?.digest);
  });

  it('one image listed for several platforms under one ref.name gives this host\'s entry', async () => {
    const out = join(tmp.path, 'one-name');
    const other = hostArch === 'amd64' ? 'arm64' : 'amd64';
    const entries = [other, hostArch].map((architecture) => {
      const m = writeImageLayout(out, [gzipSync(tarOf(join(tmp.path, `t-on-${architecture}`), 'which', architecture))], undefined, { architecture });
      return { mediaType: MANIFEST, ...m, platform: { os: 'linux', architecture }, annotations: { 'org.opencontainers.image.ref.name': 'example.com/one:1' } };
    });
    writeFileSync(join(out, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: entries }));
    assert.deepEqual(await new LocalImageStore(join(tmp.path, 'store-one-name')).import(out, undefined, undefined, unpack), { ref: 'example.com/one:1', digest: entries[1]?.digest });
  });

  it('Ctrl-C (SIGINT to the process group) mid-unpack leaves nothing in the host\'s temporary directory; the store\'s sweep removes the rest', { skip: spawnSync('sh', ['-c', 'command -v setsid']).status !== 0 ? 'no setsid' : false }, async () => {
    const layout = join(tmp.path, 'sigint');
    writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-int'), 'i', 'i'))]);
    // A gzip that never answers holds the unpack at its first layer, FIFO open.
    const bin = join(tmp.path, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'gzip'), '#!/bin/sh\nexec sleep 600\n');
    chmodSync(join(bin, 'gzip'), 0o755);
    const hostTmp = join(tmp.path, 'host-tmp');
    mkdirSync(hostTmp);
    const root = join(tmp.path, 'store-sigint');
    const script = `import { LocalImageStore } from ${JSON.stringify(join(ROOT, 'src/adapters/images/oci/store.ts'))};
      const log = { info() {}, warn() {}, error() {}, debug() {}, child() { return this; } };
      await new LocalImageStore(${JSON.stringify(root)}).import(${JSON.stringify(layout)}, 'example.com/int:1', undefined, { unpack: { log } });`;
    const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: ROOT,
      stdio: 'ignore',
      detached: true,
      env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, TMPDIR: hostTmp },
    });
    const exited = new Promise((r) => proc.once('exit', r));
    // Held once the decompressor's FIFO exists, wherever it is made.
    const fifos = (dir: string): string[] => {
      if (!existsSync(dir)) return [];
      return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((n) => {
        try {
          return statSync(join(dir, n)).isFIFO();
        } catch {
          return false;
        }
      });
    };
    for (let i = 0; i < 1200 && fifos(hostTmp).length + fifos(root).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(fifos(hostTmp).length + fifos(root).length > 0, 'the unpack was caught in progress');
    process.kill(-(proc.pid ?? 0), 'SIGINT');
    await exited;
    // The group's other members (the unpacker, the stand-in gzip) go with the same signal.
    for (let i = 0; i < 100 && spawnSync('sh', ['-c', `pgrep -g ${proc.pid ?? 0}`]).status === 0; i++) await new Promise((r) => setTimeout(r, 50));
    // (tsx keeps its compile cache there.)
    assert.deepEqual(readdirSync(hostTmp).filter((n) => !n.startsWith('tsx-')), [], 'nothing left in the host\'s temporary directory');
    await new LocalImageStore(root).sweepTemporaries();
    nothingRecorded(root);
  });
});

describe('images refused for their content at pull', { skip: PULL_TOOLS_MISSING.length && !process.env.CI ? `missing: ${PULL_TOOLS_MISSING.join(', ')}` : false }, () => {
  const pull = pullSuite('img-refusals-pull');
  const { tmp, storeAt } = pull;

  /** PUTs a manifest document to the registry under `reference` (a tag or its digest). */
  async function putManifest(repo: string, reference: string, body: Buffer, mediaType: string): Promise<void> {
    const res = await fetch(`http://${pull.registry.host}/v2/${repo}/manifests/${reference}`, { method: 'PUT', headers: { 'content-type': mediaType }, body });
    assert.ok(res.ok, `PUT ${reference}: ${res.status} ${await res.text()}`);
  }

  it('a pulled image with a corrupt gzip layer is refused in one line and not recorded, by pull and by the daemon\'s ensure', async () => {
    const gz = gzipSync(tarOf(join(tmp.path, 't-crc'), 'c', 'c'.repeat(5000)));
    gz[gz.length - 6] = (gz[gz.length - 6] ?? 0) ^ 0xff;
    const layout = join(tmp.path, 'crc');
    writeImageLayout(layout, [gz], 'latest');
    pull.registry.push(`${layout}:latest`, 'm/crc:1');
    for (const [name, run] of [
      ['pull', (s: LocalImageStore) => s.pull(`${pull.registry.host}/m/crc:1`, silentLogger, undefined, unpack)],
      ['ensure', (s: LocalImageStore) => s.ensure(`${pull.registry.host}/m/crc:1`, silentLogger)],
    ] as const) {
      const s = storeAt(`store-crc-${name}`);
      await assert.rejects(run(s), /layer 0 \(sha256:[0-9a-f]{64}\): gzip: invalid compressed data--crc error$/);
      nothingRecorded(join(tmp.path, `store-crc-${name}`));
    }
  });

  it('walks an index nested in an index, as import does', async () => {
    const layout = join(tmp.path, 'nested');
    const m = writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-n'), 'n', 'pulled'))], 'latest');
    pull.registry.push(`${layout}:latest`, 'm/nested:m');
    const inner = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: MANIFEST, ...m, platform: { os: 'linux', architecture: hostArch } }] }));
    await putManifest('m/nested', sha256(inner), inner, INDEX);
    const outer = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: [{ mediaType: INDEX, digest: sha256(inner), size: inner.length }] }));
    await putManifest('m/nested', '1', outer, INDEX);
    const s = storeAt('store-nested');
    assert.equal(await s.pull(`${pull.registry.host}/m/nested:1`, silentLogger, undefined, unpack), m.digest);
    assert.equal(readFileSync(join(s.rootfsPath(m.digest), 'n'), 'utf8'), 'pulled');
    // The daemon's ensure by the outer index's digest resolves through both levels.
    assert.equal(await storeAt('store-nested-ensure').ensure(`${pull.registry.host}/m/nested@${sha256(outer)}`, silentLogger), m.digest);
  });

  it('a pulled manifest without layers is refused naming the field, nothing recorded', async () => {
    const layout = join(tmp.path, 'nolayers');
    const m = writeImageLayout(layout, [gzipSync(tarOf(join(tmp.path, 't-nl'), 'n', 'n'))], 'latest');
    pull.registry.push(`${layout}:latest`, 'm/nolayers:base');
    const doc = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', m.digest.slice(7)), 'utf8')) as Record<string, unknown>;
    delete doc.layers;
    await putManifest('m/nolayers', '1', Buffer.from(JSON.stringify(doc)), MANIFEST);
    await assert.rejects(storeAt('store-nolayers').pull(`${pull.registry.host}/m/nolayers:1`, silentLogger, undefined, unpack), /: layers is missing: an image manifest lists its layers/);
    nothingRecorded(join(tmp.path, 'store-nolayers'));
  });
});
