import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageRoot, LayerRefusal } from '../../src/adapters/images/oci/layer-apply.js';
import { tempDir } from '../helpers/daemon.js';
import { base256, paxRecord, paxRecords, sourceOf, tarOf, type TarSpec } from '../helpers/tar.js';

const asRoot = process.getuid?.() === 0;

/**
 * A temp dir for the calling describe block (removed after it) and a function applying layers,
 * in order, to a fresh image root in it: the root's path and its ImageRoot.
 */
function applier(label: string): (...layers: Buffer[]) => { root: string; image: ImageRoot } {
  const tmp = tempDir(label);
  after(() => tmp.remove());
  let n = 0;
  return (...layers) => {
    const root = join(tmp.path, String(++n));
    mkdirSync(root);
    const image = new ImageRoot(root);
    for (const l of layers) image.applyLayer(sourceOf(l));
    return { root, image };
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

  it('a hard link to itself over a lower layer\'s symlink is refused (as containerd refuses it) and does not change the host file', () => {
    const t = setup();
    assert.throws(() => t.apply(
      tarOf([{ name: 's', type: '2', linkname: t.victim }]),
      tarOf([{ name: 's', type: '1', linkname: 's', mode: 0o6777 }]),
    ), /s: hard link to itself/);
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

  it('applies a hard link\'s mtime to the inode it shares (the last link wins), to a symlink\'s own', () => {
    const t = setup();
    const before = statSync(t.victim).mtimeMs;
    t.apply(tarOf([
      { name: 'f', data: 'f', mtime: 1000 },
      { name: 'h', type: '1', linkname: 'f', mtime: 2000 },
      { name: 's', type: '2', linkname: t.victim, mtime: 1000 },
      { name: 'hs', type: '1', linkname: 's', mtime: 3000 },
    ]));
    assert.equal(lstatSync(join(t.root, 'f')).mtimeMs, 2000 * 1000);
    assert.equal(lstatSync(join(t.root, 's')).mtimeMs, 3000 * 1000);
    assert.equal(statSync(t.victim).mtimeMs, before);
    t.unchanged();
  });

  it('sets a symlink\'s own mtime, never its target\'s', { skip: asRoot ? false : 'needs root' }, () => {
    const t = setup();
    const before = statSync(t.victim).mtimeMs;
    t.apply(tarOf([{ name: 'l', type: '2', linkname: t.victim, mtime: 1000 }]));
    assert.equal(statSync(t.victim).mtimeMs, before);
    assert.equal(lstatSync(join(t.root, 'l')).mtimeMs, 1000 * 1000);
  });
});

describe('layer apply: whiteouts and a stale view of the tree never reach the host', () => {
  const tmp = tempDir('layer-apply-whiteout');
  after(() => tmp.remove());
  let n = 0;

  /** A fresh image root beside a victim directory holding `passwd` (0644) and `sub/` (0755). */
  const setup = () => {
    const dir = join(tmp.path, String(++n));
    const root = join(dir, 'root');
    const victim = join(dir, 'victim');
    mkdirSync(root, { recursive: true });
    mkdirSync(join(victim, 'sub'), { recursive: true, mode: 0o755 });
    writeFileSync(join(victim, 'passwd'), 'victim', { mode: 0o644 });
    writeFileSync(join(victim, 'sub/keep'), 'keep');
    const image = new ImageRoot(root);
    const apply = (...layers: Buffer[]) => {
      for (const l of layers) image.applyLayer(sourceOf(l));
    };
    const unchanged = () => {
      assert.deepEqual(readdirSync(victim).sort(), ['passwd', 'sub']);
      assert.deepEqual(readdirSync(join(victim, 'sub')), ['keep']);
      assert.equal((statSync(join(victim, 'passwd')).mode & 0o7777).toString(8), '644');
      assert.equal(readFileSync(join(victim, 'passwd'), 'utf8'), 'victim');
      const sub = statSync(join(victim, 'sub'));
      assert.deepEqual([(sub.mode & 0o7777).toString(8), sub.uid], ['755', process.getuid?.() ?? 0]);
    };
    return { root, victim, apply, unchanged };
  };

  it('refuses a whiteout named `.wh.` (no file), so a directory cannot be swapped for a symlink behind the cache', () => {
    const lower = tarOf([{ name: 'a', type: '5', mode: 0o755 }]);
    const cases: [string, (victim: string) => TarSpec[]][] = [
      ['write through an absolute symlink', (v) => [{ name: 'a/.wh.' }, { name: 'a', type: '2', linkname: v }, { name: 'a/passwd', data: 'pwned', mode: 0o4777 }]],
      ['write through a climbing symlink', () => [{ name: 'a/.wh.' }, { name: 'a', type: '2', linkname: '../../..' }, { name: 'a/passwd', data: 'pwned', mode: 0o4777 }]],
      ['opaque through a symlink', () => [{ name: 'a/.wh.' }, { name: 'a', type: '2', linkname: '../../victim' }, { name: 'a/.wh..wh..opq' }]],
      ['chmod through a symlink', (v) => [{ name: 'a/.wh.' }, { name: 'a', type: '2', linkname: v }, { name: 'a/sub', type: '5', mode: 0o777, uid: 1234 }]],
    ];
    for (const [what, entries] of cases) {
      const t = setup();
      t.apply(lower);
      assert.throws(() => t.apply(tarOf(entries(t.victim))), (err: Error) => {
        assert.equal(err.message, 'a/.wh.: whiteout .wh. names no file', what);
        return true;
      });
      t.unchanged();
    }
  });

  it('makes a whiteout\'s missing parents, as containerd\'s mkparent does before it converts the whiteout', () => {
    const t = setup();
    t.apply(tarOf([{ name: 'a/b/.wh.c' }, { name: 'o/p/.wh..wh..opq' }]));
    assert.deepEqual(readdirSync(t.root).sort(), ['a', 'o']);
    assert.deepEqual(readdirSync(join(t.root, 'a')), ['b']);
    assert.deepEqual(readdirSync(join(t.root, 'a/b')), []);
    assert.deepEqual(readdirSync(join(t.root, 'o/p')), []);
    assert.equal((statSync(join(t.root, 'a/b')).mode & 0o7777).toString(8), '755');
    t.unchanged();
  });

  it('writes inside the root when a directory the cache knows was replaced by a symlink out of it', () => {
    for (const link of ['abs', '../../victim']) {
      const t = setup();
      t.apply(tarOf([{ name: 'a', type: '5', mode: 0o755 }, { name: 'o', type: '5', mode: 0o755 }, { name: 'o/x', data: 'x' }]));
      // The tree changes behind the applier's back: what it knows of `a` and `o` is now wrong.
      rmSync(join(t.root, 'a'), { recursive: true });
      symlinkSync(link === 'abs' ? t.victim : link, join(t.root, 'a'));
      rmSync(join(t.root, 'o'), { recursive: true });
      symlinkSync(join(t.victim, 'sub'), join(t.root, 'o'));
      t.apply(tarOf([
        { name: 'a/passwd', data: 'inside', mode: 0o4777 },
        { name: 'a/sub', type: '5', mode: 0o777, mtime: 1000 },
        { name: 'o/.wh..wh..opq' },
        { name: 'o/.wh.x' },
      ]));
      t.unchanged();
      const inside = link === 'abs' ? join(t.root, t.victim) : join(t.root, 'victim');
      assert.equal(readFileSync(join(inside, 'passwd'), 'utf8'), 'inside', link);
    }
  });
});

describe('layer apply: device nodes and FIFOs', () => {
  const apply = applier('layer-apply-nodes');

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

  it('removing a directory forgets the nodes left out below it, and only those (not a sibling sharing its name\'s start)', () => {
    const lower = tarOf([{ name: 'a', type: '5', mode: 0o755 }, { name: 'a/b', type: '5', mode: 0o755 }, { name: 'a/b/p', type: '6' }, { name: 'ab', type: '6' }, { name: 'a/q', type: '6' }]);
    // a/b/p was forgotten with a: a link to it names nothing.
    assert.throws(() => apply(lower, tarOf([{ name: '.wh.a' }, { name: 'a/b/h', type: '1', linkname: 'a/b/p' }])), /a\/b\/h: hard link target a\/b\/p does not exist in the image/);
    // ab and a/q were not (a/b alone removed): links to them are left out with them.
    const { image } = apply(lower, tarOf([{ name: 'a/.wh.b' }, { name: 'h1', type: '1', linkname: 'ab' }, { name: 'h2', type: '1', linkname: 'a/q' }]));
    assert.equal(image.stats.skipped, 5);
  });
});

describe('layer apply: numeric fields and times', () => {
  const fresh = applier('layer-apply-numbers');
  const apply = (...layers: Buffer[]) => fresh(...layers).root;
  const mtimeNs = (p: string) => lstatSync(p, { bigint: true }).mtimeNs;
  // 1950: before 1970, which containerd's boundTime sets to the epoch.
  const YEAR_1950 = -631152000n;

  it('reads a negative base-256 mtime (GNU tar, Go archive/tar) and sets the epoch for it on files, directories and symlinks, as containerd\'s boundTime does', () => {
    const root = apply(tarOf([
      { name: 'old', type: '5', mode: 0o755, mtime: base256(YEAR_1950, 12) },
      { name: 'old/file', data: 'x', mtime: base256(-1n, 12) },
      { name: 'old/link', type: '2', linkname: 'file', mtime: base256(YEAR_1950 + 1n, 12) },
      { name: 'big-id', data: 'x', uid: base256(3000000n, 8), gid: base256(7n, 8), mtime: base256(1700000000n, 12) },
    ]));
    assert.equal(mtimeNs(join(root, 'old')), 0n);
    assert.equal(mtimeNs(join(root, 'old/file')), 0n);
    assert.equal(mtimeNs(join(root, 'old/link')), 0n);
    assert.equal(mtimeNs(join(root, 'big-id')), 1_700_000_000_000_000_000n);
    if (asRoot) assert.deepEqual([statSync(join(root, 'big-id')).uid, statSync(join(root, 'big-id')).gid], [3000000, 7]);
  });

  it('refuses a negative size of an entry with data and a pax time that is no number, naming the entry and the field', () => {
    // A negative uid, gid, mode or device number is no error: Go's archive/tar hands it on and
    // containerd applies it (see tar-reader-go.test.ts).
    const cases: [Parameters<typeof tarOf>[0][number], RegExp][] = [
      [{ name: 'neg-pax-size', data: 'x', pax: { size: '-1' } }, /neg-pax-size: size -1 is negative/],
      [{ name: 'bad-pax-size', data: 'x', pax: { size: '1e3' } }, /bad-pax-size: pax size "1e3" is not a decimal integer/],
      [{ name: 'bad-pax-mtime', data: 'x', pax: { mtime: '12e3' } }, /bad-pax-mtime: pax mtime "12e3" is not a decimal number of seconds/],
    ];
    for (const [entry, want] of cases) assert.throws(() => apply(tarOf([entry])), want, entry.name.toString());
    // A negative size: written by hand, as the writer derives the size from the data.
    const tar = tarOf([{ name: 'neg-size', data: '' }]);
    base256(-5n, 12).copy(tar, 124);
    tar.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += tar[i] ?? 0;
    tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    assert.throws(() => apply(tar), /neg-size: size -5 in tar header is negative/);
  });

  it('keeps a pax mtime to the microsecond; a negative one is the epoch (containerd\'s boundTime)', () => {
    const times: [string, bigint][] = [
      ['1234567890.123456789', 1234567890123456000n],
      ['1234567890.000001', 1234567890000001000n],
      ['1600000000.000007', 1600000000000007000n],
      ['1000000000.100001', 1000000000100001000n],
      ['-1.25', 0n],
      ['-1.2500007', 0n],
      ['-0.000001', 0n],
    ];
    const root = apply(tarOf([
      { name: 'd', type: '5', mode: 0o755, pax: { mtime: '-86400.5' } },
      ...times.map(([t], i) => ({ name: `d/f${i}`, data: 'x', pax: { mtime: t } })),
      { name: 'd/l', type: '2' as const, linkname: 'f0', pax: { mtime: '1000000000.100001' } },
    ]));
    assert.deepEqual(times.map(([t], i) => [t, mtimeNs(join(root, `d/f${i}`))]), times);
    assert.equal(mtimeNs(join(root, 'd/l')), 1000000000100001000n);
    assert.equal(mtimeNs(join(root, 'd')), 0n);
  });
});

describe('layer apply: names are bytes', () => {
  const fresh = applier('layer-apply-names');
  const apply = (...layers: Buffer[]) => Buffer.from(fresh(...layers).root);
  const b = (s: string) => Buffer.from(s, 'latin1');
  const at = (root: Buffer, rel: string) => Buffer.concat([root, b(`/${rel}`)]);
  const names = (dir: Buffer) => readdirSync(dir, { encoding: 'buffer' }).map((x) => x.toString('hex')).sort();

  it('keeps names that are not UTF-8 byte for byte, so distinct names stay distinct (ustar and pax names)', () => {
    const root = apply(tarOf([
      { name: b('caf\xe9'), data: 'e-acute' },
      { name: b('caf\xe8'), data: 'e-grave' },
      { name: 'pax-binary', data: 'pax', pax: { hdrcharset: 'BINARY', path: b('p\xff\xfe') } },
      { name: 'pax-utf8', data: 'utf8', pax: { path: 'ä' } },
      { name: b('l\xfc'), type: '2', linkname: b('caf\xe9') },
      { name: b('h\xfc'), type: '1', linkname: b('caf\xe8') },
    ]));
    assert.deepEqual(names(root), [b('caf\xe8'), b('caf\xe9'), b('h\xfc'), b('l\xfc'), b('p\xff\xfe'), Buffer.from('ä')].map((x) => x.toString('hex')).sort());
    assert.equal(readFileSync(at(root, 'caf\xe9'), 'utf8'), 'e-acute');
    assert.equal(readFileSync(at(root, 'caf\xe8'), 'utf8'), 'e-grave');
    assert.equal(readlinkSync(at(root, 'l\xfc'), { encoding: 'buffer' }).toString('hex'), b('caf\xe9').toString('hex'));
    assert.equal(readFileSync(at(root, 'h\xfc'), 'utf8'), 'e-grave');
  });

  it('resolves a lower layer\'s symlink with a non-UTF-8 target inside the root, and whiteouts and opaque directories remove such names', () => {
    const root = apply(
      tarOf([
        { name: b('d\xff'), type: '5', mode: 0o755 },
        { name: 'l', type: '2', linkname: b('d\xff') },
        { name: 'o', type: '5', mode: 0o755 },
        { name: b('o/\xfa'), data: 'lower' },
        { name: b('gone\xfb'), data: 'lower' },
      ]),
      tarOf([
        { name: 'l/f', data: 'through' },
        { name: 'o/.wh..wh..opq' },
        { name: b('.wh.gone\xfb') },
      ]),
    );
    assert.equal(readFileSync(at(root, 'd\xff/f'), 'utf8'), 'through');
    assert.deepEqual(names(at(root, 'o')), []);
    assert.equal(existsSync(at(root, 'gone\xfb')), false);
  });

  it('names a non-UTF-8 entry in an error with its bytes escaped', () => {
    assert.throws(() => apply(tarOf([{ name: b('x\xff'), type: '1', linkname: b('missing\xfe') }])), (err: Error) => {
      assert.equal(err.message, 'x\\xff: hard link target missing\\xfe does not exist in the image');
      return true;
    });
  });
});

describe('layer apply: entries read as Go\'s archive/tar reads them for containerd', () => {
  const fresh = applier('layer-apply-reader');
  const apply = (...layers: Buffer[]) => fresh(...layers).root;
  const message = (layer: Buffer, want: string) => assert.throws(() => apply(layer), (err: Error) => {
    assert.equal(err.message, want);
    return true;
  });

  it('reads an old-style entry (type NUL) whose name ends in `/` as a directory; `0` stays a file', () => {
    const root = apply(tarOf([
      { name: 'olddir/', type: '\0', mode: 0o750 },
      { name: 'olddir/f', type: '\0', data: 'f' },
      { name: 'ignored', type: '\0', mode: 0o700, pax: { path: 'paxdir/' } },
      { name: 'paxdir/g', data: 'g' },
      { name: 'regular/', type: '0', data: 'r' },
    ]));
    assert.ok(lstatSync(join(root, 'olddir')).isDirectory());
    assert.equal((lstatSync(join(root, 'olddir')).mode & 0o7777).toString(8), '750');
    assert.equal(readFileSync(join(root, 'olddir/f'), 'utf8'), 'f');
    assert.ok(lstatSync(join(root, 'paxdir')).isDirectory());
    assert.equal(readFileSync(join(root, 'regular'), 'utf8'), 'r');
  });

  it('applies no record of a global pax header to the entries after it, and reads on past it', () => {
    const root = apply(tarOf([
      { name: 'pax_global_header', type: 'g', data: paxRecords({ mtime: '1000', path: 'collapsed', uid: '4321', 'SCHILY.xattr.user.g': 'g' }) },
      { name: 'a', data: 'a', mtime: 1600000000 },
      { name: 'b', data: 'b', mtime: 1600000000 },
    ]));
    assert.deepEqual(readdirSync(root).sort(), ['a', 'b']);
    for (const f of ['a', 'b']) {
      const st = lstatSync(join(root, f));
      assert.equal(st.mtimeMs, 1600000000 * 1000, f);
      assert.equal(st.uid, process.getuid?.() ?? 0, f);
    }
  });

  it('refuses a NUL in a pax path or link target, naming the entry and the field with control characters escaped', () => {
    // Go's parsePAXRecord refuses these records as it reads them (validPAXRecord), before any entry.
    message(tarOf([{ name: 'n', data: 'x', pax: { path: Buffer.from('a\0b') } }]), 'malformed pax record: path a\\x00b contains a NUL byte');
    message(tarOf([{ name: 'l', type: '2', pax: { linkpath: Buffer.from('x\0y') } }]), 'malformed pax record: linkpath x\\x00y contains a NUL byte');
    message(tarOf([{ name: 'k', data: 'x', pax: { 'SCHILY.xattr.user.a\0b': 'v' } }]), 'malformed pax record: key SCHILY.xattr.user.a\\x00b contains a NUL byte');
    message(tarOf([{ name: 'h\nx\x1b[2J', type: '1', linkname: 'gone' }]), 'h\\x0ax\\x1b[2J: hard link target gone does not exist in the image');
  });

  it('refuses an extended header or GNU long name over 1 MiB (Go\'s limit), naming it and its size', () => {
    for (const [type, what] of [['x', 'pax extended header'], ['g', 'pax global header'], ['L', 'GNU long name'], ['K', 'GNU long link name']] as const) {
      message(tarOf([{ name: '././@LongLink', type, size: base256(2n ** 40n, 12) }, { name: 'f', data: 'x' }]), `${what} ././@LongLink at offset 0: size 1099511627776 is over the 1048576 bytes an extended header may hold`);
    }
    message(tarOf([{ name: 'PaxHeaders/big', type: 'x', data: Buffer.alloc((1 << 20) + 1, 0x0a) }, { name: 'f', data: 'x' }]), 'pax extended header PaxHeaders/big at offset 0: size 1048577 is over the 1048576 bytes an extended header may hold');
  });

  it('names the entry once in an error from its parent path', () => {
    message(tarOf([{ name: 'f', data: 'x' }, { name: 'f/g', data: 'y' }]), 'f/g: parent /f is not a directory');
  });
});

describe('layer apply: GNU sparse maps hold decimal, ordered fragments within the real size', () => {
  const fresh = applier('layer-apply-sparse');
  const apply = (layer: Buffer) => fresh(layer).root;
  const v01 = (realsize: string, map: string, data: string): TarSpec => ({
    name: 'GNUSparseFile.0/sp',
    data,
    pax: { 'GNU.sparse.major': '0', 'GNU.sparse.minor': '1', 'GNU.sparse.name': 'sp', 'GNU.sparse.realsize': realsize, 'GNU.sparse.map': map, 'GNU.sparse.numblocks': String(Math.floor(map.split(',').length / 2)) },
  });
  const v00 = (pairs: [string, string][], data: string): TarSpec[] => [
    { name: 'PaxHeaders/sp', type: 'x', data: Buffer.concat([paxRecords({ 'GNU.sparse.size': '8', 'GNU.sparse.numblocks': String(pairs.length) }), ...pairs.map(([o, l]) => Buffer.concat([paxRecords({ 'GNU.sparse.offset': o }), paxRecords({ 'GNU.sparse.numbytes': l })]))]) },
    { name: 'sp', data },
  ];
  const v10 = (map: string, data: string): TarSpec => {
    const head = Buffer.alloc(512);
    head.write(map);
    return { name: 'GNUSparseFile.0/sp', data: Buffer.concat([head, Buffer.from(data)]), pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'sp', 'GNU.sparse.realsize': '8' } };
  };

  it('applies well-formed maps of the 0.0, 0.1 and 1.0 formats', () => {
    for (const layer of [[v01('8', '2,1,6,2', 'abc')], v00([['2', '1'], ['6', '2']], 'abc'), [v10('2\n2\n1\n6\n2\n', 'abc')]]) {
      const root = apply(tarOf(layer));
      assert.equal(readFileSync(join(root, 'sp'), 'latin1'), '\0\0a\0\0\0bc');
    }
  });

  it('refuses negative, non-decimal, overflowing, unpaired, overlapping, out-of-order and too long fragments, naming the entry and field', () => {
    const cases: [TarSpec[], string][] = [
      [[v01('-5', '0,1', 'x')], 'sp: sparse GNU.sparse.realsize "-5" is not a non-negative decimal integer'],
      [[v01('8', '-10,1', 'x')], 'sp: sparse GNU.sparse.map offset 0 "-10" is not a non-negative decimal integer'],
      [[v01('8', 'x,1', 'x')], 'sp: sparse GNU.sparse.map offset 0 "x" is not a non-negative decimal integer'],
      [[v01('8', '0,1e0', 'x')], 'sp: sparse GNU.sparse.map length 0 "1e0" is not a non-negative decimal integer'],
      [[v01('8', '99999999999999999999,1', 'x')], 'sp: sparse GNU.sparse.map offset 0 99999999999999999999 is out of range'],
      [[v01('8', '0,1,5', 'x')], 'sp: sparse GNU.sparse.map has 3 numbers where GNU.sparse.numblocks 1 needs 2'],
      [[v01('8', '0,4,2,1', 'abcde')], 'sp: sparse map fragment 1 at offset 2 starts before the previous fragment ends (4): fragments must be in order and not overlap'],
      [[v01('8', '5,1,0,1', 'ab')], 'sp: sparse map fragment 1 at offset 0 starts before the previous fragment ends (6): fragments must be in order and not overlap'],
      [[v01('4', '3,2', 'ab')], 'sp: sparse map fragment 0 (offset 3, length 2) ends beyond the real size 4'],
      [v00([['-10', '1']], 'x'), 'sp: sparse GNU.sparse.map offset 0 "-10" is not a non-negative decimal integer'],
      [[v10('1\n-3\n1\n', 'x')], 'sp: sparse map offset 0 "-3" is not a non-negative decimal integer'],
      [[v10('-1\n', 'x')], 'sp: sparse map entry count "-1" is not a non-negative decimal integer'],
      [[v10('1000\n0\n1\n', 'x')], 'sp: sparse map entry count 1000 needs more lines than the entry\'s 513 bytes of data can hold'],
    ];
    for (const [layer, want] of cases) {
      assert.throws(() => apply(tarOf(layer)), (err: Error) => {
        assert.equal(err.message, want);
        return true;
      }, want);
    }
  });

  it('refuses a 1.0 map line longer than any decimal file offset as soon as it is read, not at the end of the data', () => {
    // 64 KiB of digits and no newline: read to its end, the map would instead be "longer than
    // the entry's data", each block rescanning all before it.
    const spec: TarSpec = { name: 'GNUSparseFile.0/sp', data: Buffer.alloc(65536, 0x31), pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'sp', 'GNU.sparse.realsize': '100' } };
    assert.throws(() => apply(tarOf([spec])), (err: Error) => {
      assert.equal(err.message, 'sp: sparse map line 0 is longer than 20 bytes without its leading zeros: no decimal file offset is');
      return true;
    });
  });
});

describe('layer apply: xattrs the kernel refuses are skipped as containerd skips them', () => {
  const apply = applier('layer-apply-xattrs');
  const xattrs = (p: string) => execFileSync('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', p], { encoding: 'utf8' }).split('\n').filter((l) => l && !l.startsWith('#')).sort();

  it('skips a name outside the Linux namespaces (macOS bsdtar), a user.* xattr on a hard link to a symlink and trusted.*, with a warning each', () => {
    const { root, image } = apply(tarOf([
      { name: 'app', data: 'x', pax: { 'SCHILY.xattr.com.apple.provenance': Buffer.from([1, 0, 2]), 'SCHILY.xattr.user.keep': 'k', 'SCHILY.xattr.trusted.admin': 'a' } },
      { name: 's', type: '2', linkname: 'app' },
      { name: 'h', type: '1', linkname: 's', pax: { 'SCHILY.xattr.user.onlink': 'l' } },
    ]));
    assert.deepEqual(xattrs(join(root, 'app')), ['user.keep="k"']);
    assert.deepEqual(image.stats.warnings.sort(), [
      'ignored xattr com.apple.provenance on /app: Operation not supported (not a Linux xattr namespace)',
      'ignored xattr trusted.admin on /app: trusted.* (admin) attributes are not applied from a layer',
      'ignored xattr user.onlink on /h: Operation not permitted (user.* xattrs go on files and directories only)',
    ]);
    assert.equal(image.stats.xattrs, 1);
  });

  it('sets xattrs on a symlink itself, as containerd does with lsetxattr; a user.* one there is skipped with a warning', () => {
    const { root, image } = apply(tarOf([
      { name: 'app', data: 'x' },
      { name: 's', type: '2', linkname: 'app', pax: { 'SCHILY.xattr.security.onlink': 'l', 'SCHILY.xattr.user.onlink': 'u' } },
    ]));
    assert.deepEqual(xattrs(join(root, 's')), ['security.onlink="l"']);
    assert.deepEqual(xattrs(join(root, 'app')), []);
    assert.deepEqual(image.stats.warnings, ['ignored xattr user.onlink on /s: Operation not permitted (user.* xattrs go on files and directories only)']);
    assert.equal(image.stats.xattrs, 1);
  });

  it('sets an xattr with an empty value, as containerd does', () => {
    const { root, image } = apply(tarOf([{ name: 'f', data: 'f', pax: { 'SCHILY.xattr.user.empty': '', 'SCHILY.xattr.user.one': 'v' } }]));
    assert.deepEqual(execFileSync('getfattr', ['-d', '-e', 'hex', '--absolute-names', join(root, 'f')], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith('user.')).sort(), ['user.empty=0x', 'user.one=0x76']);
    assert.equal(image.stats.xattrs, 2);
  });

  it('keeps the bytes of an xattr name that is not UTF-8, as it keeps a file name\'s', () => {
    const name = Buffer.concat([Buffer.from('user.'), Buffer.from([0xff, 0xe9])]);
    const { root, image } = apply(tarOf([
      { name: 'PaxHeaders/f', type: 'x', data: paxRecord(Buffer.concat([Buffer.from('SCHILY.xattr.'), name]), Buffer.from('v')) },
      { name: 'f', data: 'f' },
    ]));
    const dump = execFileSync('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', join(root, 'f')], { encoding: 'latin1' });
    assert.ok(dump.includes(`\n${name.toString('latin1')}="v"\n`), dump);
    assert.equal(image.stats.xattrs, 1);
  });

  it('ignores LIBARCHIVE.xattr.* records, well-formed or not, as containerd applies only SCHILY.xattr.*', () => {
    const { root, image } = apply(tarOf([
      { name: 'f', data: 'f', pax: { 'LIBARCHIVE.xattr.user.lib': Buffer.from('v').toString('base64'), 'LIBARCHIVE.xattr.user.%E0%A4%A': 'dg==', 'LIBARCHIVE.xattr.user.a%00b': 'dg==', 'SCHILY.xattr.user.s': 's' } },
    ]));
    assert.deepEqual(xattrs(join(root, 'f')), ['user.s="s"']);
    assert.equal(image.stats.xattrs, 1);
  });

  it('skips what the kernel refuses with ENOTSUP in a batch and sets the rest; fails naming the xattr and path on any other refusal', () => {
    const { root, image } = apply(tarOf([
      { name: 'a', data: 'a', pax: { 'SCHILY.xattr.system.no_such_attribute': 'x', 'SCHILY.xattr.user.a': 'a' } },
      { name: 'b', data: 'b', pax: { 'SCHILY.xattr.user.b': 'b' } },
    ]));
    assert.deepEqual(xattrs(join(root, 'a')), ['user.a="a"']);
    assert.deepEqual(xattrs(join(root, 'b')), ['user.b="b"']);
    assert.deepEqual(image.stats.warnings, ['ignored xattr system.no_such_attribute on /a: Operation not supported']);
    // Over XATTR_SIZE_MAX (64 KiB): E2BIG, which containerd does not skip either.
    assert.throws(() => apply(tarOf([{ name: 'f', data: 'f', pax: { 'SCHILY.xattr.user.big': Buffer.alloc(70000, 0x61) } }])), (err: Error) => {
      assert.equal(err.message, 'setting xattr user.big on /f: Argument list too long');
      assert.ok(err instanceof LayerRefusal, 'the layer\'s fault, not the host\'s');
      return true;
    });
  });
});
