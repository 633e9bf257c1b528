import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageCatalog, LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';
import { tarOf, type TarSpec } from '../helpers/tar.js';

const TOOLS = ['setfattr', 'getfattr', 'containerd', 'ctr', 'rm'];
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root (owners, ACLs, containerd)']),
  ...TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0),
];
const skip = missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false;
const unpack = { unpack: { log: silentLogger } };
const TAR = 'application/vnd.oci.image.layer.v1.tar';

/** Removes a tree of any depth (fs.rm stops at PATH_MAX). */
const removeAll = (path: string) => execFileSync('rm', ['-rf', '--', path]);

/** A chain of `depth` directories named `name` under `at`, made with relative paths (any depth), with a file at the bottom. */
function deepTree(at: string, name: string, depth: number): void {
  mkdirSync(at, { recursive: true });
  // chdir(2) relative at each step: a shell's cd builds the full path and stops at PATH_MAX.
  execFileSync('python3', ['-c', 'import os, sys\nos.chdir(sys.argv[1])\nfor _ in range(int(sys.argv[2])):\n    os.mkdir(sys.argv[3]); os.chdir(sys.argv[3])\nopen("f", "w").write("x")', at, String(depth), name]);
}

describe('layer errors: the layer\'s or the host\'s, as containerd tells them', { skip }, () => {
  const tmp = tempDir('content-or-host');
  after(() => removeAll(tmp.path));

  const layout = (name: string, layers: TarSpec[][]) => {
    const at = join(tmp.path, `layout-${name}`);
    // A ref.name, or ctr imports (and unpacks) nothing.
    writeImageLayout(at, layers.map((l) => ({ data: tarOf(l), mediaType: TAR })), 'latest');
    return at;
  };
  it('removes trees and temporaries deeper than PATH_MAX (image rm, prune, the sweep), and goes on past one it cannot remove', async () => {
    const root = join(tmp.path, 'store-rm');
    const store = new LocalImageStore(root);
    const at = layout('small', [[{ name: 'f', data: 'f' }]]);
    const { digest } = await store.import(at, 'example.com/small:1', undefined, unpack);
    const rootfs = join(root, 'rootfs');
    // Trees as an older version left them, deeper than any absolute path the host can name.
    const [a, b] = ['a'.repeat(64), 'b'.repeat(64)];
    deepTree(join(rootfs, a), 'd'.repeat(250), 20);
    deepTree(join(rootfs, `${b}.tmp-999999999-0123abcd`), 'd'.repeat(250), 20);
    // One tree that cannot go: a file system mounted inside it (rm --one-file-system).
    const c = 'c'.repeat(64);
    mkdirSync(join(rootfs, c, 'mnt'), { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', 'none', join(rootfs, c, 'mnt')]);
    try {
      const warnings: string[] = [];
      const catalog = new ImageCatalog(store, { warn: (_o: object, m?: string) => warnings.push(m ?? '') });
      await catalog.remove('example.com/small:1', new Set());
      assert.deepEqual(readdirSync(rootfs).sort(), [c], 'every tree but the one with a mount in it, the temporary too');
      assert.equal(existsSync(store.rootfsPath(digest)), false);
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.match(warnings[0] ?? '', new RegExp(`cannot remove .*${c}, left for the next collection`));
    } finally {
      execFileSync('umount', [join(rootfs, c, 'mnt')]);
    }
    deepTree(join(rootfs, `${b}.tmp-999999999-0123abcd`), 'd'.repeat(250), 20);
    assert.deepEqual(await store.sweepTemporaries(), [join(rootfs, `${b}.tmp-999999999-0123abcd`)]);
    const removed = await new ImageCatalog(store).collect(new Set(), 0);
    assert.deepEqual(removed, []);
    assert.deepEqual(readdirSync(rootfs), []);
  });

});
