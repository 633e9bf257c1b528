/**
 * The layer tar reader parses every archive as Go's archive/tar reads it for containerd
 * (reader.go Next/next, applied by containerd's archive/tar.go applyNaive/createTarFile): each
 * crafted layer here is unpacked by matchlock and by a real containerd, and the trees (or the
 * refusals) must agree. A parse that differs lets a layer write files that containerd, and the
 * Go-based scanners that vetted the same diff_id, never see.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { ImageRoot } from '../../src/adapters/images/oci/layer-apply.js';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { containerdReference } from '../helpers/containerd.js';
import { tempDir } from '../helpers/daemon.js';
import { writeImageLayout } from '../helpers/oci.js';
import { base256, paxRecords, sourceOf, tarOf, type TarSpec } from '../helpers/tar.js';
import { describeTree, diffTrees } from '../helpers/tree.js';

const TOOLS = ['tar', 'zstd', 'getfattr', 'containerd', 'ctr'];
const missing = [
  ...(process.getuid?.() === 0 ? [] : ['root (owners, xattrs, containerd)']),
  ...TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0),
];

const TAR = 'application/vnd.oci.image.layer.v1.tar';
const END = Buffer.alloc(1024);

/** The entries' blocks without the end-of-archive blocks, to be joined with hand-made bytes. */
const blocks = (specs: TarSpec[]) => {
  const t = tarOf(specs);
  return t.subarray(0, t.length - 1024);
};

/** Sets the typeflag of the header at `at` (a byte the test writer does not offer) and its checksum. */
const retype = (tar: Buffer, at: number, flag: string) => patch(tar, at, [[156, flag]]);

/** Writes `edits` (offset in the header, latin1 bytes) into the header at `at` and sets its checksum. */
function patch(tar: Buffer, at: number, edits: [number, string][]): Buffer {
  const out = Buffer.from(tar);
  for (const [offset, bytes] of edits) out.write(bytes, at + offset, 'latin1');
  out.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = at; i < at + 512; i++) sum += out[i] ?? 0;
  out.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1');
  return out;
}

type Outcome = { tree: string } | { error: string };

describe('tar reader: a layer gives the tree containerd gives, parsed as Go\'s archive/tar parses it', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('tar-reader-go');
  let reference: Awaited<ReturnType<typeof containerdReference>> | undefined;
  let n = 0;
  before(async () => {
    reference = await containerdReference(join(tmp.path, 'containerd'));
  });
  after(async () => {
    await reference?.stop();
    tmp.remove();
  });

  const theirs = (layer: Buffer, mediaType = TAR): Outcome => {
    const layout = join(tmp.path, `layout-${++n}`);
    writeImageLayout(layout, [{ data: layer, mediaType }], 'latest');
    if (!reference) throw new Error('no containerd');
    return reference.unpack(layout);
  };
  const ours = (...layers: Buffer[]): Outcome => {
    const root = join(tmp.path, `ours-${++n}`);
    mkdirSync(root);
    try {
      const image = new ImageRoot(root);
      for (const l of layers) image.applyLayer(sourceOf(l));
      return { tree: root };
    } catch (err) {
      return { error: (err as Error).message };
    }
  };
  const tree = (o: Outcome) => {
    if ('error' in o) throw new Error(o.error);
    const t = describeTree(o.tree);
    t.delete('');
    return t;
  };

  /** Unpacks `layer` both ways; the trees must agree. Resolves ours. */
  const agree = (layer: Buffer) => {
    const mine = ours(layer);
    const reference = theirs(layer);
    assert.ok(!('error' in reference), `containerd refuses the layer: ${'error' in reference ? reference.error : ''}`);
    assert.ok(!('error' in mine), `we refuse the layer: ${'error' in mine ? mine.error : ''}`);
    const t = tree(mine);
    assert.deepEqual(diffTrees(t, tree(reference)), []);
    return t;
  };

  /** Both refuse `layer`: containerd with `theirsWant`, we with `oursWant`. */
  const bothRefuse = (layer: Buffer, theirsWant: RegExp, oursWant: RegExp) => {
    const reference = theirs(layer);
    assert.match('error' in reference ? reference.error : '(containerd unpacked it)', theirsWant);
    const mine = ours(layer);
    assert.match('error' in mine ? mine.error : '(we unpacked it)', oursWant);
  };

  it('takes only the last of two pax headers in a row (Go: `paxHdrs, err = parsePAX(tr)` replaces the first)', () => {
    const t = agree(Buffer.concat([blocks([
      { name: 'PaxHeaders/1', type: 'x', data: paxRecords({ path: 'evil', 'SCHILY.xattr.user.first': 'x' }) },
      { name: 'PaxHeaders/2', type: 'x', data: paxRecords({ comment: 'second' }) },
      { name: 'good', data: 'g' },
    ]), END]));
    assert.deepEqual([...t.keys()], ['good']);
    assert.equal(t.get('good')?.xattrs, '');
  });

  it('lets a GNU long name win over a pax path, and a long link over a pax linkpath (Go applies them after mergePAX)', () => {
    const t = agree(Buffer.concat([blocks([
      { name: '././@LongLink', type: 'L', data: 'long-name\0' },
      { name: 'PaxHeaders/n', type: 'x', data: paxRecords({ path: 'pax-name' }) },
      { name: 'ustar-name', data: 'n' },
      { name: 'PaxHeaders/l', type: 'x', data: paxRecords({ linkpath: 'pax-target' }) },
      { name: '././@LongLink', type: 'K', data: 'long-target\0' },
      { name: 'link', type: '2', linkname: 'ustar-target' },
      // An empty long name says nothing (Go: `if gnuLongName != ""`).
      { name: '././@LongLink', type: 'L', data: '' },
      { name: 'short', data: 's' },
    ]), END]));
    assert.deepEqual([...t.keys()].sort(), ['link', 'long-name', 'short']);
    assert.equal(t.get('link')?.link, 'long-target');
  });

  it('reads no data after a symlink, hard link or directory whatever its size says (Go: isHeaderOnlyType)', () => {
    const evil = blocks([{ name: 'evil', data: 'evil' }]);
    const t = agree(Buffer.concat([
      blocks([{ name: 'target', data: 't' }, { name: 's', type: '2', linkname: 'target', size: 512 }]),
      blocks([{ name: 'cover', data: evil }]),
      blocks([{ name: 'h', type: '1', linkname: 'target', size: 512 }]),
      blocks([{ name: 'cover2', data: evil }]),
      blocks([{ name: 'd', type: '5', size: 512 }]),
      blocks([{ name: 'cover3', data: evil }]),
      // An old-style `\0` entry named with a `/` is a directory, so it too has no data.
      blocks([{ name: 'd2/', type: '\0', size: 512 }]),
      blocks([{ name: 'cover4', data: evil }]),
      // A pax size on a symlink is no data either.
      blocks([{ name: 's2', type: '2', linkname: 'target', pax: { size: '512' } }]),
      blocks([{ name: 'cover5', data: evil }]),
      END,
    ]));
    assert.deepEqual([...t.keys()].sort(), ['cover', 'cover2', 'cover3', 'cover4', 'cover5', 'd', 'd2', 'h', 's', 's2', 'target']);
    assert.equal(t.get('cover')?.content?.split('/')[1], '1024');
  });

  it('drops the pax records and GNU long name pending before a global header (Go returns the global header as an entry)', () => {
    const t = agree(Buffer.concat([blocks([
      { name: 'PaxHeaders/x', type: 'x', data: paxRecords({ path: 'evil', uid: '1234' }) },
      { name: 'pax_global_header', type: 'g', data: paxRecords({ comment: 'g' }) },
      { name: 'plain', data: 'p' },
      { name: '././@LongLink', type: 'L', data: 'evil-long\0' },
      { name: 'pax_global_header', type: 'g', data: paxRecords({ comment: 'g' }) },
      { name: 'plain2', data: 'p' },
    ]), END]));
    assert.deepEqual([...t.keys()].sort(), ['plain', 'plain2']);
    assert.equal(t.get('plain')?.owner, '0:0');
  });

  it('removes what a global header names and makes its parents, as containerd\'s applyNaive does before skipping it', () => {
    const lower = tarOf([{ name: 'keep', data: 'k' }, { name: 'etc', type: '5' }, { name: 'etc/passwd', data: 'root' }, { name: 'other', data: 'o' }]);
    const upper = tarOf([
      { name: 'keep', type: 'g', data: paxRecords({ comment: 'named keep' }) },
      { name: 'pax_global_header', type: 'g', data: paxRecords({ path: 'etc' }) },
      { name: 'new/sub/pax_global_header', type: 'g', data: paxRecords({ comment: 'c' }) },
    ]);
    const layout = join(tmp.path, `layout-${++n}`);
    writeImageLayout(layout, [{ data: lower, mediaType: TAR }, { data: upper, mediaType: TAR }], 'latest');
    const reference = reference2(layout);
    const mine = ours(lower, upper);
    const t = tree(mine);
    assert.deepEqual(diffTrees(t, tree(reference)), []);
    assert.deepEqual([...t.keys()].sort(), ['new', 'new/sub', 'other']);
  });
  const reference2 = (layout: string) => {
    if (!reference) throw new Error('no containerd');
    return reference.unpack(layout);
  };

  it('refuses a lone zero block followed by more entries, as Go\'s readHeader does', () => {
    bothRefuse(Buffer.concat([blocks([{ name: 'a', data: 'a' }]), Buffer.alloc(512), blocks([{ name: 'hidden', data: 'h' }]), END]), /invalid tar header/, /a single zero block at offset 1024 is followed by more entries/);
    // One zero block and then the end of input is a clean end, for both.
    agree(Buffer.concat([blocks([{ name: 'a', data: 'a' }]), Buffer.alloc(512)]));
  });

  it('refuses the types containerd\'s applier has no case for (contiguous 7, old GNU sparse S) with its reason', () => {
    const contiguous = retype(tarOf([{ name: 'c', data: 'c' }]), 0, '7');
    bothRefuse(contiguous, /unhandled tar header type 55/, /^c: unhandled tar header type 55 \("7"\)/);
    const vendor = retype(tarOf([{ name: 'v', data: 'v' }]), 0, 'V');
    bothRefuse(vendor, /unhandled tar header type 86/, /^v: unhandled tar header type 86 \("V"\)/);
    const dir = join(tmp.path, 'gnu-sparse');
    mkdirSync(dir);
    execFileSync('sh', ['-c', 'cd "$1" && truncate -s 1M sp && printf x | dd of=sp bs=1 seek=600000 conv=notrunc status=none && tar --format=gnu --sparse -cf sp.tar sp', 'sh', dir]);
    bothRefuse(readFileSync(join(dir, 'sp.tar')), /unhandled tar header type 83/, /^sp: unhandled tar header type 83 \("S"\)/);
    // Whiteouts and the root are decided on the name alone, before the type: not refused.
    const whiteout = Buffer.concat([blocks([{ name: 'victim', data: 'v' }, { name: 'keep', data: 'k' }]), retype(blocks([{ name: '.wh.victim', data: 'xx' }]), 0, '7'), retype(blocks([{ name: './', data: 'r' }]), 0, '7'), END]);
    assert.deepEqual([...agree(whiteout).keys()], ['keep']);
  });

  it('reads numeric fields and pax numbers as Go does and owners as lchown(2) takes them', () => {
    const t = agree(tarOf([
      { name: 'uid-minus-one', data: 'x', uid: base256(-1n, 8), gid: 5 },
      { name: 'uid-2-32-plus-5', data: 'x', uid: base256(2n ** 32n + 5n, 8) },
      { name: 'pax-signed', data: 'x', pax: { uid: '-1', gid: '+7' } },
      { name: 'mode-minus-one', data: 'x', mode: base256(-1n, 8) },
      { name: 'leading-nuls', data: 'x', mode: Buffer.from('\0\0\x000640\0', 'latin1'), uid: Buffer.from(' 12\0junk', 'latin1') },
      { name: 'neg-major', data: 'x', devmajor: base256(-3n, 8) },
    ]));
    assert.equal(t.get('uid-minus-one')?.owner, '0:5');
    assert.equal(t.get('uid-2-32-plus-5')?.owner, '5:0');
    assert.equal(t.get('pax-signed')?.owner, '0:7');
    assert.equal(t.get('mode-minus-one')?.mode, '7777');
    assert.deepEqual([t.get('leading-nuls')?.mode, t.get('leading-nuls')?.owner], ['0640', '10:0']);
  });

  it('reads the name prefix of STAR and GNU headers where Go\'s readHeader reads it', () => {
    const entry = tarOf([{ name: 'n', data: 's' }]);
    // STAR (ustar magic, "tar" trailer): a 131-byte prefix, then atime and ctime.
    const star = patch(entry, 0, [[345, 'p'.repeat(131)], [476, '00000000000\0'], [488, '00000000000\0'], [508, 'tar\0']]);
    assert.deepEqual([...agree(star).keys()], ['p'.repeat(131), `${'p'.repeat(131)}/n`]);
    // GNU: atime and ctime where ustar has its prefix; when they are no numbers, Go reads the
    // prefix there (archives of a pre-Go 1.8 writer).
    const gnu = patch(entry, 0, [[257, 'ustar  \0'], [345, 'dir-prefix\0']]);
    assert.deepEqual([...agree(gnu).keys()], ['dir-prefix', 'dir-prefix/n']);
    // Neither ustar nor GNU (a GNU magic with another version): V7, no prefix at all.
    const v7 = patch(entry, 0, [[257, 'ustar x\0'], [345, 'ignored\0']]);
    assert.deepEqual([...agree(v7).keys()], ['n']);
  });

  it('finds pax sparse files as Go does: an unknown version is a regular file; 0.x needs its numblocks', () => {
    const t = agree(tarOf([
      { name: 'GNUSparseFile.0/v2', data: 'raw', pax: { 'GNU.sparse.major': '2', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'v2', 'GNU.sparse.realsize': '8' } },
      { name: 'GNUSparseFile.0/v1-no-minor', data: 'raw', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.name': 'v1', 'GNU.sparse.realsize': '8' } },
      { name: 'only-size', data: 'raw', pax: { 'GNU.sparse.size': '8' } },
    ]));
    assert.deepEqual([...t.keys()].sort(), ['GNUSparseFile.0', 'GNUSparseFile.0/v1-no-minor', 'GNUSparseFile.0/v2', 'only-size']);
    const v01 = (extra: Record<string, string>) => tarOf([{ name: 'GNUSparseFile.0/sp', data: 'abc', pax: { 'GNU.sparse.major': '0', 'GNU.sparse.minor': '1', 'GNU.sparse.name': 'sp', 'GNU.sparse.realsize': '8', 'GNU.sparse.map': '2,1,6,2', ...extra } }]);
    assert.equal(readFileSync(join((ours(v01({ 'GNU.sparse.numblocks': '2' })) as { tree: string }).tree, 'sp'), 'latin1'), '\0\0a\0\0\0bc');
    agree(v01({ 'GNU.sparse.numblocks': '2' }));
    // A 1.0 map's numbers may have any number of leading zeros (strconv.ParseInt).
    const head = Buffer.alloc(512);
    head.write(`2\n${'0'.repeat(40)}2\n1\n6\n${'0'.repeat(30)}2\n`);
    const v10 = tarOf([{ name: 'GNUSparseFile.0/sp10', data: Buffer.concat([head, Buffer.from('abc')]), pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'sp10', 'GNU.sparse.realsize': '8' } }]);
    assert.equal(agree(v10).get('sp10')?.content?.split('/')[1], '8');
    bothRefuse(v01({}), /invalid tar header/, /^sp: sparse GNU.sparse.numblocks "" is not a non-negative decimal integer/);
    bothRefuse(v01({ 'GNU.sparse.numblocks': '1' }), /invalid tar header/, /^sp: sparse GNU.sparse.map has 4 numbers where GNU.sparse.numblocks 1 needs 2/);
  });

  it('refuses pax records and headers Go refuses: a NUL where a record starts, no final newline, a bad field of an extended header', () => {
    const nulLed = tarOf([{ name: 'PaxHeaders/x', type: 'x', data: Buffer.concat([paxRecords({ mtime: '1' }), Buffer.from('\0'), paxRecords({ path: 'evil' })]) }, { name: 'f', data: 'f' }]);
    bothRefuse(nulLed, /invalid tar header/, /malformed pax record: no length|malformed pax record: bad length/);
    const noNewline = tarOf([{ name: 'PaxHeaders/x', type: 'x', data: Buffer.from('13 path=evilX') }, { name: 'f', data: 'f' }]);
    bothRefuse(noNewline, /invalid tar header/, /malformed pax record: no newline at its end/);
    const badMode = tarOf([{ name: 'PaxHeaders/x', type: 'x', data: paxRecords({ path: 'p' }), mode: Buffer.from('9\0', 'latin1') }, { name: 'f', data: 'f' }]);
    bothRefuse(badMode, /invalid tar header/, /PaxHeaders\/x: mode "9" is not an octal number/);
    // The checksum is octal only (Go's getFormat reads it with parseOctal): a base-256 one is no header.
    const entry = tarOf([{ name: 'b256', data: 'b' }]);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : entry[i] ?? 0;
    base256(BigInt(sum), 8).copy(entry, 148);
    bothRefuse(entry, /invalid tar header/, /invalid tar header checksum at offset 0/);
    const badAtime = tarOf([{ name: 'f', data: 'f', pax: { atime: 'soon' } }]);
    bothRefuse(badAtime, /invalid tar header/, /^f: pax atime "soon" is not a decimal number of seconds/);
  });

  it('ends the archive where the input ends inside an entry\'s padding, as Go\'s next() does', () => {
    const whole = tarOf([{ name: 'a', data: 'abc' }, { name: 'b', data: 'b' }]);
    assert.deepEqual([...agree(whole.subarray(0, 512 + 3)).keys()], ['a']);
    assert.deepEqual([...agree(whole.subarray(0, 512 + 100)).keys()], ['a']);
  });

  it('detects a layer\'s compression from its first bytes when the media type says it is compressed, and refuses bytes after a gzip stream, as containerd\'s DecompressStream does', async () => {
    const plain = tarOf([{ name: 'etc', type: '5' }, { name: 'etc/hostname', data: 'plain' }]);
    const zstd = execFileSync('zstd', ['-qc'], { input: plain });
    const cases: [string, Buffer, string][] = [
      ['gzip-says-plain', plain, `${TAR}+gzip`],
      ['zstd-says-plain', plain, `${TAR}+zstd`],
      ['gzip-says-zstd', zstd, `${TAR}+gzip`],
      ['zstd-says-gzip', gzipSync(plain), `${TAR}+zstd`],
    ];
    for (const [name, data, mediaType] of cases) {
      const layout = join(tmp.path, `layout-${name}`);
      // The diff_id is the uncompressed stream's, whatever the media type says.
      writeImageLayout(layout, [{ data, mediaType }], 'latest', { rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(plain).digest('hex')}`] } });
      const reference = reference2(layout);
      assert.ok(!('error' in reference), `${name}: containerd: ${'error' in reference ? reference.error : ''}`);
      const store = new LocalImageStore(join(tmp.path, `store-${name}`));
      const { digest } = await store.import(layout, `example.com/${name}:1`);
      await store.ensure(`example.com/${name}:1`, silentLogger);
      const mine = describeTree(store.rootfsPath(digest));
      const theirsTree = describeTree(reference.tree);
      mine.delete('');
      theirsTree.delete('');
      assert.deepEqual(diffTrees(mine, theirsTree), [], name);
      assert.equal(readFileSync(join(store.rootfsPath(digest), 'etc/hostname'), 'utf8'), 'plain', name);
    }
    // Zero bytes after the last gzip member: GNU gzip ignores them, Go's gzip reader does not.
    const padded = join(tmp.path, 'layout-gzip-zero-padded');
    writeImageLayout(padded, [{ data: Buffer.concat([gzipSync(plain), Buffer.alloc(64)]), mediaType: `${TAR}+gzip` }], 'latest', { rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(plain).digest('hex')}`] } });
    const reference = reference2(padded);
    assert.match('error' in reference ? reference.error : '(containerd unpacked it)', /gzip: invalid header/);
    const store = new LocalImageStore(join(tmp.path, 'store-gzip-zero-padded'));
    await store.import(padded, 'example.com/padded:1');
    await assert.rejects(store.ensure('example.com/padded:1', silentLogger), /layer 0 .*: gzip: bytes follow the last gzip member: containerd \(Go's compress\/gzip\) reads them as a member header and refuses the layer/);
  });
});
