import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { ImageRefusedError, LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';

const unpack = { unpack: { log: silentLogger } };
const hostArch = process.arch === 'x64' ? 'amd64' : process.arch;

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

describe('images refused for their content are not recorded', () => {
  const tmp = tempDir('img-refusals');
  after(() => tmp.remove());

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

});
