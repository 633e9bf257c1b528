import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ImageCatalog, ImageRefusedError, LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { containerdReference, containerdUnpack } from '../helpers/containerd.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';
import { base256, tarOf, type TarSpec } from '../helpers/tar.js';
import { describeTree, diffTrees } from '../helpers/tree.js';

const TOOLS = ['setfattr', 'getfattr', 'containerd', 'ctr', 'rm', 'zstd', 'xz'];
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root (owners, ACLs, containerd)']),
  ...TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0),
];
const skip = missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false;
const unpack = { unpack: { log: silentLogger } };
const TAR = 'application/vnd.oci.image.layer.v1.tar';

/** Removes a tree of any depth (fs.rm stops at PATH_MAX). */
const removeAll = (path: string) => execFileSync('rm', ['-rf', '--', path]);

/** Nothing of a refused image left in the store: no reference, no tree and no temporary. */
function nothingRecorded(root: string): void {
  for (const dir of ['refs', 'rootfs']) assert.deepEqual(existsSync(join(root, dir)) ? readdirSync(join(root, dir)) : [], [], `nothing in ${dir}`);
}

/** A chain of `depth` directories named `name` under `at`, made with relative paths (any depth), with a file at the bottom. */
function deepTree(at: string, name: string, depth: number): void {
  mkdirSync(at, { recursive: true });
  // chdir(2) relative at each step: a shell's cd builds the full path and stops at PATH_MAX.
  execFileSync('python3', ['-c', 'import os, sys\nos.chdir(sys.argv[1])\nfor _ in range(int(sys.argv[2])):\n    os.mkdir(sys.argv[3]); os.chdir(sys.argv[3])\nopen("f", "w").write("x")', at, String(depth), name]);
}

/** A POSIX ACL as the kernel's xattr holds it (posix_acl_xattr v2): user::rwx user:1234:rwx group::r-x mask::rwx other::r-x. */
function aclXattr(): Buffer {
  const entries: [number, number, number][] = [[0x01, 7, 0xffffffff], [0x02, 7, 1234], [0x04, 5, 0xffffffff], [0x10, 7, 0xffffffff], [0x20, 5, 0xffffffff]];
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id, 8 + 8 * i);
  });
  return b;
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
  /** Whether containerd unpacks the layout; its tree when it does. */
  const reference = async (name: string, at: string) => {
    const ref = await containerdUnpack(join(tmp.path, `containerd-${name}`), at).then((r) => r, (e: Error) => e);
    if (ref instanceof Error) return { error: ref.message };
    try {
      return { tree: describeTree(ref.tree) };
    } finally {
      await ref.stop();
    }
  };

  it('refuses as the image\'s (not recorded) what an entry\'s own name, target or link causes, as containerd refuses the layer', async () => {
    const cases: [string, TarSpec[][], RegExp, RegExp][] = [
      // The link replaces d, and with it d/f, its own target: link(2) ENOENT.
      ['link-to-own-child', [[{ name: 'd/', type: '5', mode: 0o755 }, { name: 'd/f', data: 'f' }], [{ name: 'd', type: '1', linkname: 'd/f' }]], /: d: link: no such file or directory \(ENOENT\)$/, /failed to extract layer .*: link \S+\/d\/f \S+\/d: no such file or directory/],
      ['name-too-long', [[{ name: 'x', pax: { path: 'n'.repeat(300) }, data: 'x' }]], /: n{80}…n{60} \(300 bytes\): a name component is 300 bytes, over NAME_MAX \(255\)$/, /failed to extract layer .*: open \S+\/n{300}: file name too long/],
      ['empty-symlink', [[{ name: 's', type: '2', linkname: '' }]], /: s: symlink: no such file or directory \(ENOENT\)$/, /failed to extract layer .*: symlink {2}\S+\/s: no such file or directory/],
    ];
    for (const [name, layers, why, theirWhy] of cases) {
      const at = layout(name, layers);
      const root = join(tmp.path, `store-${name}`);
      const store = new LocalImageStore(root);
      const err = await store.import(at, 'example.com/bad:1', undefined, unpack).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof ImageRefusedError, `${name}: ${String(err)}`);
      assert.match(err.message, why, name);
      nothingRecorded(root);
      assert.deepEqual(await store.list(), [], name);
      const theirs = await reference(name, at);
      assert.match(theirs.error ?? '(unpacked)', theirWhy, `${name}: containerd refuses the layer too`);
    }
  });

  it('owns a file by the low 32 bits of a pax uid and gid over 2^32-1, as containerd (Go int to the uid_t of fchownat)', async () => {
    const at = layout('uid', [[{ name: 'f', data: 'f', pax: { uid: '4294967296', gid: '4294967301' } }, { name: 'g', data: 'g', pax: { uid: '4294968296', gid: '8589934593' } }]]);
    const store = new LocalImageStore(join(tmp.path, 'store-uid'));
    const { digest } = await store.import(at, 'example.com/uid:1', undefined, unpack);
    const mine = describeTree(store.rootfsPath(digest));
    const theirs = await reference('uid', at);
    assert.ok(theirs.tree, `containerd unpacks it: ${theirs.error}`);
    assert.deepEqual([mine.get('f')?.owner, mine.get('g')?.owner], ['0:5', '1000:1']);
    mine.delete('');
    theirs.tree.delete('');
    assert.deepEqual(diffTrees(mine, theirs.tree), []);
  });

  it('refuses a path that would not fit PATH_MAX under the store\'s image directory, in a short message; containerd refuses it too', async () => {
    const dir = 'd'.repeat(200);
    const deep = `${Array(20).fill(dir).join('/')}/f`;
    const at = layout('deep', [[{ name: 'x', pax: { path: deep }, data: 'x' }]]);
    const root = join(tmp.path, 'store-deep');
    const store = new LocalImageStore(root);
    const err = await store.import(at, 'example.com/deep:1', undefined, unpack).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof ImageRefusedError, String(err));
    assert.match(err.message, /: d{80}…d{58}\/f \(4021 bytes\): path is 4021 bytes inside the image: with the image directory of the store \(\d+ bytes\) that exceeds PATH_MAX \(4096 bytes with the NUL\)$/);
    assert.ok(err.message.length < 600, `a short message: ${err.message.length} chars`);
    nothingRecorded(root);
    assert.deepEqual(readdirSync(join(root, 'rootfs')), [], 'no temporary left');
    const theirs = await reference('deep', at);
    assert.match(theirs.error ?? '(unpacked)', /failed to extract layer .*: file name too long/, 'containerd refuses the layer too');
  });

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

  it('applies a default ACL to the entries after it in the same layer, with their modes, as containerd does', async () => {
    const acl = aclXattr();
    const at = layout('acl', [[
      { name: 'd/', type: '5', mode: 0o755, pax: { 'SCHILY.xattr.system.posix_acl_default': acl } },
      { name: 'd/f', data: 'f', mode: 0o640 },
      { name: 'd/sub/', type: '5', mode: 0o750 },
      { name: 'd/x', data: 'x', mode: 0o4755 },
      { name: 'a', data: 'a', mode: 0o640, pax: { 'SCHILY.xattr.system.posix_acl_access': acl } },
    ]]);
    const store = new LocalImageStore(join(tmp.path, 'store-acl'));
    const { digest } = await store.import(at, 'example.com/acl:1', undefined, unpack);
    const mine = describeTree(store.rootfsPath(digest));
    const theirs = await reference('acl', at);
    assert.ok(theirs.tree, `containerd unpacks it: ${theirs.error}`);
    assert.match(mine.get('d/f')?.xattrs ?? '', /system\.posix_acl_access=/, 'd/f inherits the access ACL');
    assert.match(mine.get('d/sub')?.xattrs ?? '', /system\.posix_acl_access=.*system\.posix_acl_default=|system\.posix_acl_default=.*system\.posix_acl_access=/, 'd/sub inherits both');
    assert.equal(mine.get('a')?.mode, '0640', 'the header\'s mode after an access ACL');
    mine.delete('');
    theirs.tree.delete('');
    assert.deepEqual(diffTrees(mine, theirs.tree), []);
  });
});

/**
 * Layers fed to matchlock and to a real containerd side by side: each case is accepted by both
 * with the same tree (times included), or refused by both.
 */
describe('layers containerd refuses are refused, and those it applies give its tree', { skip }, () => {
  const tmp = tempDir('content-or-host-ref');
  let ref: Awaited<ReturnType<typeof containerdReference>> | undefined;
  before(async () => {
    ref = await containerdReference(join(tmp.path, 'containerd'));
  });
  after(async () => {
    await ref?.stop();
    removeAll(tmp.path);
  });
  let n = 0;

  /**
   * Paths' mtimes and atimes (ns), read before anything reads the files (relatime). Not the
   * atime of a directory or symlink: containerd reads them (readdir, readlink) after setting it.
   */
  const times = (root: string) => {
    const out = new Map<string, string>();
    const walk = (rel: string) => {
      const st = lstatSync(rel ? join(root, rel) : root, { bigint: true });
      if (rel) out.set(rel, `mtime ${st.mtimeNs}${st.isDirectory() || st.isSymbolicLink() ? '' : ` atime ${st.atimeNs}`}`);
      if (st.isDirectory()) for (const name of readdirSync(join(root, rel))) walk(rel ? `${rel}/${name}` : name);
    };
    walk('');
    return out;
  };

  /**
   * `layers`: each a tar and its blob as the layer's media type has it. Resolves matchlock's
   * error, or undefined with the trees compared.
   */
  const both = async (name: string, layers: { tar: Buffer; blob?: Buffer; mediaType?: string }[], opts: { skipped?: string[] } = {}) => {
    const at = join(tmp.path, `layout-${name}-${++n}`);
    const diffIds = layers.map((l) => `sha256:${createHash('sha256').update(l.tar).digest('hex')}`);
    writeImageLayout(at, layers.map((l) => ({ data: l.blob ?? l.tar, mediaType: l.mediaType ?? TAR })), 'latest', { rootfs: { type: 'layers', diff_ids: diffIds } });
    const root = join(tmp.path, `store-${name}-${n}`);
    const store = new LocalImageStore(root);
    const mine = await store.import(at, 'example.com/x:1', undefined, unpack).then((r) => store.rootfsPath(r.digest), (e: unknown) => e as Error);
    const theirs = ref?.unpack(at) ?? { error: 'no containerd' };
    if (mine instanceof Error) {
      assert.ok(mine instanceof ImageRefusedError, `${name}: refused as the image's: ${String(mine)}`);
      nothingRecorded(root);
      assert.ok('error' in theirs, `${name}: containerd applies what matchlock refuses (${mine.message})`);
      return mine.message;
    }
    assert.ok('tree' in theirs, `${name}: containerd refuses what matchlock applies: ${'error' in theirs ? theirs.error : ''}`);
    // Device nodes and FIFOs are left out by design; all else is the same.
    const skipped = new Set(opts.skipped ?? []);
    const theirTimes = times(theirs.tree);
    for (const p of skipped) theirTimes.delete(p);
    assert.deepEqual(times(mine), theirTimes, `${name}: times`);
    const a = describeTree(mine);
    const b = describeTree(theirs.tree, (p) => skipped.has(p));
    a.delete('');
    b.delete('');
    assert.deepEqual(diffTrees(a, b), [], name);
    removeAll(root);
    return undefined;
  };

  it('refuses a zstd layer with a frame of another format after its zstd frame (gzip, xz), as klauspost\'s decoder does ("magic number mismatch")', async () => {
    const tar = tarOf([{ name: 'f', data: 'f' }]);
    const zeros = Buffer.alloc(1024);
    for (const tool of ['gzip', 'xz']) {
      const blob = Buffer.concat([execFileSync('zstd', ['-qc'], { input: tar }), execFileSync(tool, ['-c'], { input: zeros })]);
      const why = await both(`zstd-then-${tool}`, [{ tar: Buffer.concat([tar, zeros]), blob, mediaType: `${TAR}+zstd` }]);
      assert.match(why ?? '(applied)', /layer 0 \(sha256:[0-9a-f]{64}\): zstd: the frame at byte \d+ is not a zstd frame/, tool);
    }
  });

  it('applies a zstd layer whose window is up to the 512 MiB klauspost\'s decoder takes by default, and refuses a larger one, as containerd', async () => {
    const tar = tarOf([{ name: 'f', data: 'f' }]);
    for (const [log, applied] of [[28, true], [29, true], [30, false]] as const) {
      // From a pipe, so zstd cannot shrink the window to the input's size.
      const blob = execFileSync('sh', ['-c', `cat | zstd -qc --long=${log}`], { input: tar });
      const why = await both(`zstd-window-${log}`, [{ tar, blob, mediaType: `${TAR}+zstd` }]);
      if (applied) assert.equal(why, undefined);
      else assert.match(why ?? '(applied)', /zstd: .*[Ww]indow/);
    }
  });

  it('refuses a pax record with an empty key and an SCHILY.xattr. record with an empty xattr name, as Go\'s archive/tar and containerd do', async () => {
    const why = await both('pax-empty-key', [{ tar: tarOf([{ name: 'f', data: 'f', pax: { '': 'v' } }]) }]);
    assert.match(why ?? '(applied)', /malformed pax record: empty key/);
    const why2 = await both('pax-empty-xattr', [{ tar: tarOf([{ name: 'f', data: 'f', pax: { 'SCHILY.xattr.': 'v' } }]) }]);
    assert.match(why2 ?? '(applied)', /f: pax record SCHILY\.xattr\. names no xattr/);
  });

  it('sets a time before 1970 or after 2262-04-11 to the epoch, and a later atime, as containerd\'s boundTime and latestTime do', async () => {
    const why = await both('times', [{
      tar: tarOf([
        { name: 'd', type: '5', mode: 0o755, mtime: base256(-631152000n, 12) },
        { name: 'd/neg', data: 'x', mtime: base256(-1n, 12) },
        { name: 'd/link', type: '2', linkname: 'neg', mtime: base256(-631152000n, 12) },
        { name: 'pax-huge', data: 'x', pax: { mtime: '99999999999999999', atime: '99999999999999999' } },
        { name: 'b256-huge', data: 'x', mtime: base256(1n << 60n, 12) },
        { name: 'octal-4147', data: 'x', mtime: Buffer.from('777777777777') },
        // The latest whole second (microseconds are exact to 2^53, in 2255).
        { name: 'pax-max', data: 'x', pax: { mtime: '9223372036' } },
        { name: 'pax-past-max', data: 'x', pax: { mtime: '9223372036.854775808' } },
        { name: 'later-atime', data: 'x', mtime: 1600000000, pax: { atime: '1700000000' } },
        { name: 'earlier-atime', data: 'x', mtime: 1600000000, pax: { atime: '1500000000' } },
        { name: 'neg-pax', data: 'x', pax: { mtime: '-0.5', atime: '-3' } },
        { name: 'dir-atime', type: '5', mode: 0o755, pax: { mtime: '1600000000', atime: '1700000000' } },
      ]),
    }]);
    assert.equal(why, undefined);
  });

  it('refuses a hard link to itself, which containerd removes before linking', async () => {
    const why = await both('self-link', [{ tar: tarOf([{ name: 'a', data: 'a' }, { name: 'a', type: '1', linkname: 'a' }]) }]);
    assert.match(why ?? '(applied)', /a: hard link .*to itself/);
  });

  it('refuses what containerd refuses below or on a FIFO it would have made, though matchlock leaves the FIFO out', async () => {
    const cases: [string, TarSpec[], RegExp][] = [
      ['fifo-parent', [{ name: 'x', type: '6' }, { name: 'x/y', data: 'y' }], /x\/y: parent \/x is not a directory/],
      ['link-to-fifo-parent', [{ name: 'p', type: '6' }, { name: 'h', type: '1', linkname: 'p' }, { name: 'h/y', data: 'y' }], /h\/y: parent \/h is not a directory/],
      ['fifo-bad-capability', [{ name: 'q', type: '6', pax: { 'SCHILY.xattr.security.capability': 'bad' } }], /q: setting xattr security\.capability on \/q: Invalid argument/],
      ['link-to-fifo-bad-capability', [{ name: 'q', type: '6' }, { name: 'h', type: '1', linkname: 'q', pax: { 'SCHILY.xattr.security.capability': 'bad' } }], /h: setting xattr security\.capability on \/h: Invalid argument/],
    ];
    for (const [name, entries, want] of cases) assert.match(await both(name, [{ tar: tarOf(entries) }]) ?? '(applied)', want, name);
    // What containerd applies on a FIFO, it still applies: the rest of the tree is the same.
    const ok = await both('fifo-ok', [{ tar: tarOf([{ name: 'q', type: '6', pax: { 'SCHILY.xattr.user.x': 'v', 'SCHILY.xattr.security.y': 'v' } }, { name: 'f', data: 'f' }]) }], { skipped: ['q'] });
    assert.equal(ok, undefined);
  });

  it('applies a whiteout and a root entry whose sparse map does not fit their data, which containerd never reads; refuses a file so', async () => {
    // GNU sparse 0.1: one fragment of 5 bytes where 3 are stored.
    const bad = { 'GNU.sparse.major': '0', 'GNU.sparse.minor': '1', 'GNU.sparse.numblocks': '1', 'GNU.sparse.map': '0,5', 'GNU.sparse.realsize': '10' };
    const lower = { tar: tarOf([{ name: 'x', data: 'x' }, { name: 'y', data: 'y' }]) };
    assert.equal(await both('sparse-unread', [lower, { tar: tarOf([{ name: '.wh.x', data: 'abc', pax: bad }, { name: './', data: 'abc', pax: bad }]) }]), undefined);
    const why = await both('sparse-read', [lower, { tar: tarOf([{ name: 'f', data: 'abc', pax: bad }]) }]);
    assert.match(why ?? '(applied)', /f: sparse map holds 5 bytes of data where the entry stores 3/);
  });

  it('keeps the xattrs an entry set on an inode another hard link keeps when its path is removed or replaced in the same layer, as containerd sets them at once', async () => {
    const x = (v: string) => ({ 'SCHILY.xattr.user.a': v });
    const why = await both('xattr-inode', [{
      tar: tarOf([
        { name: 'f', data: 'f' },
        { name: 'h', type: '1', linkname: 'f', pax: x('link') },
        { name: '.wh.h', data: '' },
        { name: 'g', data: 'g', pax: x('file') },
        { name: 'k', type: '1', linkname: 'g' },
        { name: 'g', data: 'new' },
        { name: 'd/', type: '5', mode: 0o755 },
        { name: 'd/m', data: 'm', pax: x('below') },
        { name: 'n', type: '1', linkname: 'd/m' },
        { name: 'd', data: 'd' },
      ]),
    }]);
    assert.equal(why, undefined);
  });

  it('sets each directory entry\'s times at the layer\'s end on what its name then resolves to, and refuses a name gone, as containerd does', async () => {
    assert.equal(await both('dir-times', [{
      tar: tarOf([
        { name: 'd/', type: '5', mode: 0o755, mtime: 1000 },
        { name: 'd', data: 'now a file', mtime: 5000 },
        { name: 't/', type: '5', mode: 0o755, mtime: 1000 },
        { name: 'e/', type: '5', mode: 0o755, mtime: 2000 },
        { name: 'e', type: '2', linkname: 't', mtime: 3000 },
        { name: 'q/', type: '5', mode: 0o755, mtime: 4000 },
        { name: 'q', type: '6' },
      ]),
    }], { skipped: ['q'] }), undefined);
    const cases: [string, TarSpec[]][] = [
      ['whited-out', [{ name: 'd/', type: '5', mode: 0o755 }, { name: '.wh.d', data: '' }]],
      ['dangling', [{ name: 'e/', type: '5', mode: 0o755 }, { name: 'e', type: '2', linkname: 'nowhere' }]],
    ];
    for (const [name, entries] of cases) assert.match(await both(name, [{ tar: tarOf(entries) }]) ?? '(applied)', /[de]: setting the directory entry's times at the layer's end: no such file or directory/, name);
  });
});
