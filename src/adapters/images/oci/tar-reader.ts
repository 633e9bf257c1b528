/**
 * A streaming reader of tar archives as image layers carry them: POSIX ustar and pax (local
 * records, binary `SCHILY.xattr.*` values kept byte for byte; global records are checked and
 * dropped, as containerd applies none), GNU long names and links
 * (`L`, `K`), and sparse files in GNU's old format (`S`) and pax formats 0.0, 0.1 and 1.0.
 * Numbers may be octal or base-256 (two's complement, so negative: GNU tar and Go's archive/tar
 * write an mtime before 1970 that way; only an mtime may be negative). Sources: POSIX.1-2017 pax (ustar and extended headers),
 * GNU tar manual "Basic Tar Format" and "Sparse Formats".
 *
 * Names and link targets are kept as the archive's bytes, in strings of one char per byte
 * ('latin1'): a file system name is bytes, and containerd (Go strings) and GNU tar (in the C
 * locale) write them unchanged, so names that are not UTF-8 must neither be altered nor
 * collide. Pax `path`, `linkpath` and `GNU.sparse.name` are UTF-8 by the standard
 * (POSIX.1-2017 pax, "hdrcharset"), or any bytes under `hdrcharset=BINARY`: in both cases the
 * bytes are kept as they are, which for UTF-8 is the name itself.
 */

export type EntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarEntry {
  /**
   * The name as the archive states it (pax `path`, GNU long name or ustar prefix/name), one
   * char per byte ('latin1'; see showName for messages).
   */
  path: string;
  type: EntryType;
  /** Permission and setuid/setgid/sticky bits (`mode & 0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  /** Whole seconds since the epoch (floor: negative before 1970). */
  mtime: number;
  /** Nanoseconds past `mtime` (0 to 999999999), from a pax `mtime` with a fraction. */
  mtimeNsec: number;
  /** The link target, one char per byte like `path`. */
  linkpath: string;
  /** Bytes of data that follow in the archive (for sparse files: the stored chunks). */
  size: number;
  /** Apparent size of a sparse file; the data is `sparse` chunks, the rest holes. */
  realSize?: number;
  sparse?: { offset: number; length: number }[];
  /** Extended attributes by name (`security.capability`), values as raw bytes. */
  xattrs: Map<string, Buffer>;
  devmajor: number;
  devminor: number;
}

export class TarFormatError extends Error {}

const BLOCK = 512;

/** Fills `into[offset, offset + length)` and says how many bytes it wrote; 0 at the end of input. */
export type ReadInto = (into: Buffer, offset: number, length: number) => number;

const BUFFER = 1 << 20;

/**
 * Pulls bytes from a synchronous source (read(2)-like): exact reads and streamed skips/copies,
 * all through one reused buffer. Synchronous on purpose: see unpack-process.ts. A Buffer it
 * returns or hands to a sink is a view of that buffer, valid only until the next call on this
 * reader: keep a copy of anything needed longer. (Fresh memory for every read costs a page
 * fault per 4 KiB of the layer.)
 */
export class ChunkReader {
  private buf = Buffer.allocUnsafe(BUFFER);
  private start = 0;
  private end = 0;
  private done = false;
  /** Bytes consumed so far, for error messages. */
  offset = 0;

  constructor(private readonly source: ReadInto) {}

  private get have(): number {
    return this.end - this.start;
  }

  /** Reads until at least n bytes are buffered or the input ends; moves or grows the buffer as needed. */
  private fill(n: number): boolean {
    if (this.have >= n) return true;
    if (this.buf.length - this.start < n) {
      const size = Math.max(this.buf.length, n);
      const into = size === this.buf.length ? this.buf : Buffer.allocUnsafe(size);
      this.buf.copy(into, 0, this.start, this.end);
      this.buf = into;
      this.end -= this.start;
      this.start = 0;
    }
    while (this.have < n && !this.done) {
      const got = this.source(this.buf, this.end, this.buf.length - this.end);
      if (got <= 0) this.done = true;
      else this.end += got;
    }
    return this.have >= n;
  }

  private take(n: number): Buffer {
    const out = this.buf.subarray(this.start, this.start + n);
    this.start += n;
    this.offset += n;
    if (this.start === this.end) this.start = this.end = 0;
    return out;
  }

  /** Exactly n bytes, or undefined at a clean end of input before the first byte. */
  read(n: number): Buffer | undefined {
    if (!this.fill(n)) {
      if (this.have === 0) return undefined;
      throw new TarFormatError(`truncated archive: wanted ${n} bytes at offset ${this.offset}, got ${this.have}`);
    }
    return this.take(n);
  }

  /** Hands n bytes to `sink` in pieces as they arrive (views, no copy); fails on a short archive. */
  stream(n: number, sink: (b: Buffer) => void): void {
    let left = n;
    while (left > 0) {
      if (this.have === 0 && !this.fill(1)) throw new TarFormatError(`truncated archive: ${left} bytes of data missing at offset ${this.offset}`);
      const piece = this.take(Math.min(this.have, left));
      left -= piece.length;
      sink(piece);
    }
  }

  skip(n: number): void {
    this.stream(n, () => undefined);
  }
}

const padding = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

const utf8 = new TextDecoder('utf-8', { fatal: true });

const hex = (c: number) => `\\x${c.toString(16).padStart(2, '0')}`;

/**
 * A byte-string name (one char per byte) for messages: as UTF-8 when it is, other bytes as
 * \xNN; control characters (C0 and DEL: a NUL, a newline, a terminal escape) as \xNN always,
 * so a name can neither cut a message short nor rewrite the log line it is printed on.
 */
export function showName(bytes: string): string {
  const b = Buffer.from(bytes, 'latin1');
  let text: string;
  try {
    text = utf8.decode(b);
  } catch {
    let out = '';
    for (const c of b) out += c < 0x80 ? String.fromCharCode(c) : hex(c);
    text = out;
  }
  // eslint-disable-next-line no-control-regex
  return /[\x00-\x1f\x7f]/.test(text) ? text.replace(/[\x00-\x1f\x7f]/g, (c) => hex(c.charCodeAt(0))) : text;
}

/** A NUL-terminated field's bytes, one char per byte. */
function cstring(b: Buffer, start: number, len: number): string {
  const end = b.indexOf(0, start);
  return b.toString('latin1', start, end < 0 || end > start + len ? start + len : end);
}

/**
 * An octal field (trailing spaces/NULs allowed) or a base-256 one: the first byte's high bit
 * set, the rest of the field a big-endian two's complement number whose sign is the first
 * byte's next bit (GNU tar writes 0xff first for a negative one; Go's archive/tar parseNumeric
 * reads it so). May be negative: callers check the fields that cannot be (see nonNegative).
 */
function num(b: Buffer, start: number, len: number, field: string, path?: string): number {
  // The entry's name is made readable only for a message: most fields are read per entry.
  const label = () => (path === undefined ? field : `${showName(path)}: ${field}`);
  const first = b[start] ?? 0;
  if (first & 0x80) {
    let v = BigInt(first & 0x7f);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(b[start + i] ?? 0);
    if (first & 0x40) v = BigInt.asIntN(len * 8 - 1, v);
    const n = Number(v);
    if (!Number.isSafeInteger(n)) throw new TarFormatError(`${label()} ${v} in tar header is out of range`);
    return n;
  }
  // Octal digits between optional leading spaces and trailing spaces/NULs; parsed by hand, as
  // every header has eight such fields.
  let i = start;
  const end = start + len;
  while (i < end && b[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++, digits++) {
    const c = b[i] ?? 0;
    if (c < 0x30 || c > 0x37) break;
    v = v * 8 + (c - 0x30);
  }
  for (; i < end; i++) {
    const c = b[i] ?? 0;
    if (c !== 0 && c !== 0x20) {
      const s = b.toString('latin1', start, end).replace(/[\0 ]+$/, '').trim();
      throw new TarFormatError(`${label()} ${JSON.stringify(s)} is not an octal number`);
    }
  }
  return digits === 0 ? 0 : v;
}

/** A field that cannot be negative (all but mtime), named with its entry when it is. */
function nonNegative(v: number, field: string, path: string): number {
  if (v < 0) throw new TarFormatError(`${showName(path)}: ${field} ${v} in tar header is negative (only mtime may be)`);
  return v;
}

/** A pax uid, gid or size: a decimal integer (POSIX.1-2017 pax, "pax Extended Header"). */
function paxCount(v: string, key: string, path: string): number {
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || !Number.isSafeInteger(n)) throw new TarFormatError(`${showName(path)}: pax ${key} ${JSON.stringify(v)} is not a non-negative decimal integer`);
  return n;
}

/**
 * A pax mtime: decimal seconds, optionally negative, with any number of fraction digits
 * (POSIX.1-2017 pax; Go's archive/tar writes negative ones). Nanoseconds are kept exactly.
 */
function paxTime(v: string, path: string): { sec: number; nsec: number } {
  const m = /^(-?)([0-9]+)(?:\.([0-9]*))?$/.exec(v);
  const whole = Number(m?.[2]);
  if (!m || !Number.isSafeInteger(whole)) throw new TarFormatError(`${showName(path)}: pax mtime ${JSON.stringify(v)} is not a decimal number of seconds`);
  const frac = Number((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  if (!m[1]) return { sec: whole, nsec: frac };
  return frac === 0 ? { sec: -whole, nsec: 0 } : { sec: -whole - 1, nsec: 1e9 - frac };
}

function checksumOk(h: Buffer): boolean {
  let want: number;
  try {
    want = num(h, 148, 8, 'checksum');
  } catch {
    return false;
  }
  // The sum of all bytes with the checksum field read as spaces, unsigned or (old tars) signed.
  let unsigned = 8 * 32;
  let high = 0;
  for (let i = 0; i < BLOCK; i++) {
    if (i === 148) i = 156;
    const c = h[i] ?? 0;
    unsigned += c;
    if (c & 0x80) high++;
  }
  return want === unsigned || want === unsigned - 256 * high;
}

type Pax = Map<string, Buffer>;

/** Parses pax records (`<len> <key>=<value>\n`, len in bytes); values stay bytes. */
function parsePax(data: Buffer, into: Pax, sparsePairs: string[]): void {
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break;
    const space = data.indexOf(0x20, at);
    if (space < 0) throw new TarFormatError('malformed pax record: no length');
    const len = Number(data.toString('latin1', at, space));
    if (!Number.isInteger(len) || len <= 0 || at + len > data.length) throw new TarFormatError('malformed pax record: bad length');
    const rec = data.subarray(space + 1, at + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new TarFormatError('malformed pax record: no "="');
    // Kept as bytes (one char per byte), as names are: an xattr name is bytes to the kernel and
    // Go's archive/tar hands the key to containerd unchanged, UTF-8 or not. The keys this
    // reader looks up are ASCII, the same in either reading.
    const key = rec.toString('latin1', 0, eq);
    const value = rec.subarray(eq + 1);
    // Go's archive/tar (validPAXRecord) refuses a NUL in any key and in the value of a name.
    if (key.includes('\0')) throw new TarFormatError(`malformed pax record: key ${showName(key)} contains a NUL byte`);
    if ((key === 'uname' || key === 'gname') && value.includes(0)) throw new TarFormatError(`malformed pax record: ${key} contains a NUL byte`);
    // Format 0.0 repeats these two keys, one pair per chunk; order matters.
    if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') sparsePairs.push(value.toString('latin1'));
    else if (value.length === 0) into.delete(key);
    else into.set(key, Buffer.from(value));
    at += len;
  }
}

/**
 * The most an extended header (`x`, `g`) or GNU long name or link (`L`, `K`) may hold: Go's
 * archive/tar (reader.go, readSpecialFile, maxSpecialFileSize) refuses more than 1 MiB, so
 * containerd never applies a layer with a larger one.
 */
const MAX_SPECIAL = 1 << 20;

/** Names of the special headers, for messages. */
const SPECIAL: Record<string, string> = { x: 'pax extended header', g: 'pax global header', L: 'GNU long name', K: 'GNU long link name' };

/** A name or link target with a NUL is refused, as Go's archive/tar refuses it (validPAXRecord). */
function noNul(v: string, field: string, path: string): string {
  if (v.includes('\0')) throw new TarFormatError(`${showName(path)}: ${field} contains a NUL byte`);
  return v;
}

type Chunk = { offset: number; length: number };

/**
 * The longest line of a 1.0 sparse map: the digits of Number.MAX_SAFE_INTEGER (16), the most
 * sparseNumber takes, with room for a few leading zeros.
 */
const MAX_SPARSE_LINE = 20;

/**
 * A number of a GNU sparse map (pax GNU.sparse.* records, the 1.0 map's lines): decimal digits
 * only, within what a file offset can be. Go's archive/tar refuses anything else, or any
 * negative value, as an invalid header (reader.go, readGNUSparsePAXHeaders and
 * validateSparseEntries), so containerd never applies it.
 */
function sparseNumber(v: string | undefined, field: string, path: string): number {
  const n = Number(v);
  if (v === undefined || !/^[0-9]+$/.test(v)) throw new TarFormatError(`${showName(path)}: sparse ${field} ${JSON.stringify(showName(v ?? ''))} is not a non-negative decimal integer`);
  if (!Number.isSafeInteger(n)) throw new TarFormatError(`${showName(path)}: sparse ${field} ${v} is out of range`);
  return n;
}

/** Offset and length pairs of a flat sparse map, refused when one is left without its pair. */
function sparsePairsOf(flat: string[], field: string, path: string): Chunk[] {
  if (flat.length % 2 !== 0) throw new TarFormatError(`${showName(path)}: sparse ${field} has ${flat.length} numbers, not offset and length pairs`);
  const chunks: Chunk[] = [];
  for (let i = 0; i < flat.length; i += 2) {
    chunks.push({ offset: sparseNumber(flat[i], `${field} offset ${i / 2}`, path), length: sparseNumber(flat[i + 1], `${field} length ${i / 2}`, path) });
  }
  return chunks;
}

/**
 * The fragments must come in order of offset, not overlap and end within the real size: the
 * rules Go's archive/tar (validateSparseEntries, after BSD tar) holds every sparse format to.
 */
function checkSparse(chunks: Chunk[], realSize: number, path: string): void {
  let end = 0;
  chunks.forEach((c, i) => {
    if (c.offset < end) throw new TarFormatError(`${showName(path)}: sparse map fragment ${i} at offset ${c.offset} starts before the previous fragment ends (${end}): fragments must be in order and not overlap`);
    end = c.offset + c.length;
    if (!Number.isSafeInteger(end) || end > realSize) throw new TarFormatError(`${showName(path)}: sparse map fragment ${i} (offset ${c.offset}, length ${c.length}) ends beyond the real size ${realSize}`);
  });
}

const TYPES: Record<string, EntryType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo', S: 'file' };

/**
 * Reads entries one by one. `next()` resolves the next entry (or undefined at the end); its
 * data must then be consumed with `data()` before asking for the following one.
 */
export class TarReader {
  private pending = 0;

  constructor(private readonly r: ChunkReader) {}

  next(): TarEntry | undefined {
    if (this.pending > 0) this.r.skip(this.pending);
    this.pending = 0;
    const local: Pax = new Map();
    const sparsePairs: string[] = [];
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const h = this.r.read(BLOCK);
      if (!h) return undefined;
      if (h[0] === 0 && h[148] === 0 && h.every((b) => b === 0)) return undefined;
      if (!checksumOk(h)) throw new TarFormatError(`invalid tar header checksum at offset ${this.r.offset - BLOCK}`);
      const flag = String.fromCharCode(h[156] ?? 0);
      const size = num(h, 124, 12, 'size');
      if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
        const what = () => `${SPECIAL[flag]} ${showName(cstring(h, 0, 100))} at offset ${this.r.offset - BLOCK}`;
        if (size < 0) throw new TarFormatError(`${what()}: size ${size} is negative`);
        if (size > MAX_SPECIAL) throw new TarFormatError(`${what()}: size ${size} is over the ${MAX_SPECIAL} bytes an extended header may hold`);
        const body = this.r.read(size + padding(size));
        const data = (body ?? Buffer.alloc(0)).subarray(0, size);
        if (flag === 'x') parsePax(data, local, sparsePairs);
        // A global header's records are read (so a malformed one is refused, as Go's reader
        // refuses it) and dropped: Go's reader hands it over as an entry of its own
        // (TypeXGlobalHeader) and containerd's applier (archive/tar.go) skips it, so they
        // never reach the entries that follow.
        else if (flag === 'g') parsePax(data, new Map(), []);
        else if (flag === 'L') longName = cstring(data, 0, data.length);
        else longLink = cstring(data, 0, data.length);
        continue;
      }
      const pax = local;
      const str = (k: string) => pax.get(k)?.toString('utf8');
      const bytes = (k: string) => pax.get(k)?.toString('latin1');
      const magic = h.toString('latin1', 257, 263);
      const posix = magic === 'ustar\0';
      const gnu = magic === 'ustar ';
      let name = longName ?? cstring(h, 0, 100);
      if (!longName && posix) {
        const prefix = cstring(h, 345, 155);
        if (prefix) name = `${prefix}/${name}`;
      }
      const paxPath = bytes('path');
      const path = paxPath ?? name;
      if (paxPath !== undefined) noNul(paxPath, 'pax path', paxPath);
      // Go's archive/tar (reader.go, Reader.next) reads the old-style type `\0` as a directory
      // when the final name (pax path or GNU long name included) ends in `/`, as GNU tar does;
      // `0` and the rest keep their type.
      const type = flag === '\0' && path.endsWith('/') ? 'dir' : TYPES[flag];
      const field = (start: number, len: number, what: string) => nonNegative(num(h, start, len, what, path), what, path);
      const paxMtime = str('mtime');
      const time = paxMtime !== undefined ? paxTime(paxMtime, path) : { sec: num(h, 136, 12, 'mtime', path), nsec: 0 };
      const paxNum = (key: 'uid' | 'gid' | 'size') => {
        const v = str(key);
        return v === undefined ? undefined : paxCount(v, key, path);
      };
      const entry: TarEntry = {
        path,
        type: type ?? 'file',
        mode: field(100, 8, 'mode') & 0o7777,
        uid: paxNum('uid') ?? field(108, 8, 'uid'),
        gid: paxNum('gid') ?? field(116, 8, 'gid'),
        mtime: time.sec,
        mtimeNsec: time.nsec,
        linkpath: noNul(bytes('linkpath') ?? longLink ?? cstring(h, 157, 100), 'pax linkpath', path),
        size: paxNum('size') ?? nonNegative(size, 'size', path),
        xattrs: new Map(),
        devmajor: posix || gnu ? field(329, 8, 'devmajor') : 0,
        devminor: posix || gnu ? field(337, 8, 'devminor') : 0,
      };
      if (!type) throw new TarFormatError(`${showName(entry.path)}: unsupported tar entry type ${JSON.stringify(flag)}`);
      const total = entry.size;
      // SCHILY.xattr.* only: Go's archive/tar gives containerd those as Xattrs/PAXRecords and
      // containerd 1.7 (archive/tar.go) applies no other record, so libarchive's
      // LIBARCHIVE.xattr.* (URL-encoded names, base64 values) is left alone like any unknown key.
      for (const [k, v] of pax) {
        if (k.startsWith('SCHILY.xattr.')) entry.xattrs.set(k.slice(13), v);
      }
      // Sparse files: the header size counts stored bytes; the map says where they go.
      if (flag === 'S') {
        const chunks: { offset: number; length: number }[] = [];
        const take = (b: Buffer, at: number, count: number) => {
          for (let i = 0; i < count; i++) {
            const o = at + i * 24;
            if ((b[o] ?? 0) === 0) break;
            chunks.push({ offset: nonNegative(num(b, o, 12, 'sparse offset'), 'sparse offset', path), length: nonNegative(num(b, o + 12, 12, 'sparse length'), 'sparse length', path) });
          }
        };
        take(h, 386, 4);
        // h is a view of the reader's buffer: read all of it before reading on.
        entry.realSize = nonNegative(num(h, 483, 12, 'sparse real size'), 'sparse real size', path);
        let extended = (h[482] ?? 0) !== 0;
        while (extended) {
          const x = this.r.read(BLOCK);
          if (!x) throw new TarFormatError(`${showName(entry.path)}: truncated sparse header`);
          take(x, 0, 21);
          extended = (x[504] ?? 0) !== 0;
        }
        entry.sparse = chunks;
      } else if (pax.has('GNU.sparse.major') || pax.has('GNU.sparse.map') || sparsePairs.length || pax.has('GNU.sparse.size')) {
        entry.path = noNul(bytes('GNU.sparse.name') ?? entry.path, 'pax GNU.sparse.name', entry.path);
        const realKey = pax.has('GNU.sparse.realsize') ? 'GNU.sparse.realsize' : 'GNU.sparse.size';
        if (!pax.has(realKey)) throw new TarFormatError(`${showName(entry.path)}: sparse file without a real size`);
        entry.realSize = sparseNumber(str(realKey), realKey, entry.path);
        if (str('GNU.sparse.major') === '1') {
          // 1.0: the map leads the data, in decimal lines, padded to a block.
          const { chunks, bytes } = this.readSparseMap(entry.path, entry.size);
          entry.sparse = chunks;
          entry.size -= bytes;
        } else if (pax.has('GNU.sparse.map')) {
          const map = str('GNU.sparse.map') ?? '';
          entry.sparse = sparsePairsOf(map === '' ? [] : map.split(','), 'GNU.sparse.map', entry.path);
        } else {
          entry.sparse = sparsePairsOf(sparsePairs, 'GNU.sparse.offset/numbytes', entry.path);
        }
      }
      if (entry.sparse) checkSparse(entry.sparse, entry.realSize ?? 0, entry.path);
      if (entry.sparse && entry.sparse.reduce((n, c) => n + c.length, 0) !== entry.size) {
        throw new TarFormatError(`${showName(entry.path)}: sparse map does not match the stored data`);
      }
      const pad = padding(total);
      if (entry.type === 'file') {
        this.pending = entry.size + pad;
        this.dataPad = pad;
      } else {
        this.pending = total + pad;
        this.dataPad = 0;
      }
      return entry;
    }
  }

  private dataPad = 0;

  /**
   * The 1.0 map at the head of the data, which it cannot outgrow (`size`, the data's bytes).
   * Each block is scanned once for its newlines, as Go's archive/tar (reader.go,
   * readGNUSparseMap1x0) counts them per block, so the cost is linear in the map's length. A
   * line is a decimal number: one longer than MAX_SPARSE_LINE digits can be no offset a file
   * system holds, and is refused as soon as it is seen rather than read to the entry's end.
   * The count is refused when its lines (two a fragment, at least "0\n" each) cannot fit in
   * the data.
   */
  private readSparseMap(path: string, size: number): { chunks: Chunk[]; bytes: number } {
    let line = '';
    let bytes = 0;
    const nums: string[] = [];
    let count = -1;
    const push = (l: string) => {
      if (count >= 0) {
        nums.push(l);
        return;
      }
      count = sparseNumber(l, 'map entry count', path);
      if (count * 4 + l.length + 1 > size) throw new TarFormatError(`${showName(path)}: sparse map entry count ${count} needs more lines than the entry's ${size} bytes of data can hold`);
    };
    while (count < 0 || nums.length < count * 2) {
      if (bytes + BLOCK > size) throw new TarFormatError(`${showName(path)}: sparse map is longer than the entry's data`);
      const b = this.r.read(BLOCK);
      if (!b) throw new TarFormatError(`${showName(path)}: truncated sparse map`);
      bytes += BLOCK;
      for (let at = 0; at < BLOCK && (count < 0 || nums.length < count * 2); ) {
        const nl = b.indexOf(0x0a, at);
        const end = nl < 0 ? BLOCK : nl;
        if (line.length + end - at > MAX_SPARSE_LINE) {
          throw new TarFormatError(`${showName(path)}: sparse map line ${count < 0 ? 0 : nums.length + 1} is longer than ${MAX_SPARSE_LINE} bytes: no decimal file offset is`);
        }
        line += b.toString('latin1', at, end);
        if (nl < 0) break;
        push(line);
        line = '';
        at = nl + 1;
      }
    }
    return { chunks: sparsePairsOf(nums, 'map', path), bytes };
  }

  /** Streams the current entry's data to `sink`, then skips its padding. */
  data(sink: (b: Buffer) => void, size: number): void {
    this.r.stream(size, sink);
    this.pending = this.dataPad;
  }
}
