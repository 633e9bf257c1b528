import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageRoot } from '../../src/adapters/images/oci/layer-apply.js';
import type { ReadInto } from '../../src/adapters/images/oci/tar-reader.js';
import { tempDir } from '../helpers/daemon.js';
import { tarOf } from '../helpers/tar.js';

const asRoot = process.getuid?.() === 0;

/** A read(2)-like source over an in-memory layer. */
function sourceOf(b: Buffer): ReadInto {
  let at = 0;
  return (into, offset, length) => {
    const n = b.copy(into, offset, at, at + length);
    at += n;
    return n;
  };
}

describe('layer apply: nothing outside the image root is touched', () => {
  const tmp = tempDir('layer-apply-escape');
  after(() => tmp.remove());
  let n = 0;

  /** A fresh image root beside a victim file (0644, "victim"); layers are applied in order. */
  const setup = () => {
    const dir = join(tmp.path, String(++n));
    const root = join(dir, 'root');
    mkdirSync(root, { recursive: true });
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'victim', { mode: 0o644 });
    const apply = (...layers: Buffer[]) => {
      const image = new ImageRoot(root);
      for (const l of layers) image.applyLayer(sourceOf(l));
      return image;
    };
    const unchanged = () => {
      const st = statSync(victim);
      assert.equal((st.mode & 0o7777).toString(8), '644', 'the victim keeps its mode');
      assert.equal(readFileSync(victim, 'utf8'), 'victim');
    };
    return { dir, root, victim, apply, unchanged };
  };

  it('a hard link to an absolute symlink does not change the mode of the file it names on the host', () => {
    const t = setup();
    t.apply(tarOf([
      { name: 'evil', type: '2', linkname: t.victim },
      { name: 'h', type: '1', linkname: 'evil', mode: 0o6777 },
    ]));
    t.unchanged();
    assert.ok(lstatSync(join(t.root, 'h')).isSymbolicLink(), 'the link is made to the symlink itself, as link(2) does');
  });

  it('a hard link to itself over a lower layer\'s symlink does not change the host file either', () => {
    const t = setup();
    t.apply(
      tarOf([{ name: 's', type: '2', linkname: t.victim }]),
      tarOf([{ name: 's', type: '1', linkname: 's', mode: 0o6777 }]),
    );
    t.unchanged();
  });

  it('a hard link to a relative symlink that climbs out of the root leaves the host alone', () => {
    const t = setup();
    t.apply(tarOf([
      { name: 'd', type: '5', mode: 0o755 },
      { name: 'd/up', type: '2', linkname: '../../victim' },
      { name: 'd/h', type: '1', linkname: 'd/up', mode: 0o4777 },
    ]));
    t.unchanged();
  });

  it('refuses a whiteout of "." or "..", which would remove the root\'s parent or the directory itself', () => {
    for (const name of ['.wh...', '.wh..', 'sub/.wh...', 'sub/.wh..']) {
      const t = setup();
      writeFileSync(join(t.root, 'keep'), 'keep');
      assert.throws(() => t.apply(tarOf([{ name: 'sub', type: '5', mode: 0o755 }, { name: 'sub/x', data: 'x' }, { name }])), /whiteout .* names no file/, name);
      t.unchanged();
      assert.ok(existsSync(join(t.root, 'keep')), `${name}: the root keeps its content`);
      assert.ok(existsSync(join(t.root, 'sub/x')), `${name}: the directory keeps its content`);
    }
  });

  it('sets a symlink\'s own mtime, never its target\'s', { skip: asRoot ? false : 'needs root' }, () => {
    const t = setup();
    const before = statSync(t.victim).mtimeMs;
    t.apply(tarOf([{ name: 'l', type: '2', linkname: t.victim, mtime: 1000 }]));
    assert.equal(statSync(t.victim).mtimeMs, before);
    assert.equal(lstatSync(join(t.root, 'l')).mtimeMs, 1000 * 1000);
  });
});

describe('layer apply: device nodes and FIFOs', () => {
  const tmp = tempDir('layer-apply-nodes');
  after(() => tmp.remove());
  let n = 0;
  const apply = (...layers: Buffer[]) => {
    const root = join(tmp.path, String(++n));
    mkdirSync(root);
    const image = new ImageRoot(root);
    for (const l of layers) image.applyLayer(sourceOf(l));
    return { root, image };
  };

  it('a skipped node replaces the lower layer\'s file, symlink or whole directory at its path', () => {
    const { root, image } = apply(
      tarOf([
        { name: 'dev', type: '5', mode: 0o755 },
        { name: 'dev/null', data: 'a file' },
        { name: 'dev/fifo', type: '2', linkname: 'null' },
        { name: 'dev/sda', type: '5', mode: 0o755 },
        { name: 'dev/sda/inside', data: 'x' },
      ]),
      tarOf([
        { name: 'dev/null', type: '3', devmajor: 1, devminor: 3 },
        { name: 'dev/fifo', type: '6' },
        { name: 'dev/sda', type: '4', devmajor: 8, devminor: 0 },
      ]),
    );
    for (const p of ['dev/null', 'dev/fifo', 'dev/sda']) assert.equal(existsSync(join(root, p)), false, p);
    assert.equal(image.stats.skipped, 3);
  });

  it('a hard link to a skipped node is skipped too (in the same layer or a later one) and replaces what its path held', () => {
    const { root, image } = apply(
      tarOf([
        { name: 'dev', type: '5', mode: 0o755 },
        { name: 'dev/zero', data: 'lower' },
        { name: 'dev/null', type: '3', devmajor: 1, devminor: 3 },
        { name: 'dev/null2', type: '1', linkname: 'dev/null' },
      ]),
      tarOf([
        { name: 'dev/zero', type: '1', linkname: 'dev/null2' },
        { name: 'dev/ok', data: 'ok' },
      ]),
    );
    assert.deepEqual(['dev/null', 'dev/null2', 'dev/zero'].filter((p) => existsSync(join(root, p))), []);
    assert.equal(readFileSync(join(root, 'dev/ok'), 'utf8'), 'ok');
    assert.equal(image.stats.skipped, 3);
  });

  it('a hard link to a node a later entry replaced by a file links to that file; to a removed one it fails', () => {
    const { root } = apply(tarOf([
      { name: 'n', type: '6' },
      { name: 'n', data: 'file now' },
      { name: 'l', type: '1', linkname: 'n' },
    ]));
    assert.equal(readFileSync(join(root, 'l'), 'utf8'), 'file now');
    assert.throws(() => apply(tarOf([{ name: 'n', type: '6' }]), tarOf([{ name: '.wh.n' }, { name: 'l', type: '1', linkname: 'n' }])), /hard link target n does not exist/);
  });
});
