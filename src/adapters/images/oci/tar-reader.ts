/**
 * A streaming reader of tar archives as image layers carry them, parsing each archive exactly
 * as Go's archive/tar (reader.go, Reader.next and readHeader; strconv.go) parses it for
 * containerd's applier (archive/tar.go, applyNaive and createTarFile): a layer whose bytes two
 * readers split into entries differently would give two trees under one diff_id, one that
 * containerd and Go-based scanners never see. Read so: ustar, GNU, STAR and V7 headers; pax
 * local records (the last `x` header before an entry is the one that counts; binary
 * `SCHILY.xattr.*` values kept byte for byte); global headers (no record applied; see next());
 * GNU long names and links (`L`, `K`, winning over pax path and linkpath); pax sparse files
 * (formats 0.0, 0.1 and 1.0). Types containerd's applier has no case for (contiguous `7`, GNU's
 * old sparse `S`, vendor types) are refused as it refuses them. Numbers may be octal or base-256
 * (two's complement, so negative: GNU tar and Go's archive/tar write an mtime before 1970 that
 * way). Sources: POSIX.1-2017 pax (ustar and extended headers), GNU tar manual "Basic Tar
 * Format" and "Sparse Formats", Go's archive/tar.
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
   * The name as the archive states it (GNU long name, else pax `path`, else ustar
   * prefix/name; GNU.sparse.name for a sparse file), one char per byte ('latin1'; see showName
   * for messages). A whiteout (`.wh.<name>`) also stands for a global header (see next()).
   */
  path: string;
  type: EntryType;
  /** Permission and setuid/setgid/sticky bits (`mode & 0o7777`). */
  mode: number;
  /**
   * Owner ids as lchown(2) takes them from containerd (0 to 2^32 - 1): Go's int reduced to its
   * low 32 bits, so 4294967295 (-1 in the archive) leaves the owner as it is.
   */
  uid: number;
  gid: number;
  /**
   * Whole seconds since the epoch as containerd applies them: bounded as boundTime says (0 to
   * 9223372036), so never negative.
   */
  mtime: number;
  /** Nanoseconds past `mtime` (0 to 999999999), from a pax `mtime` with a fraction. */
  mtimeNsec: number;
  /**
   * The access time containerd sets (archive/tar.go, createTarFile and applyNaive's directory
   * pass: `boundTime(latestTime(hdr.AccessTime, hdr.ModTime))`): the archive's atime (pax
   * `atime`, a GNU or STAR header's atime field) when later than the mtime, else the mtime;
   * bounded as `mtime` is.
   */
  atime: number;
  atimeNsec: number;
  /** The link target, one char per byte like `path`. */
  linkpath: string;
  /**
   * Bytes of data that follow in the archive (for sparse files: the stored chunks); 0 for the
   * types that have none whatever their header says (links, devices, fifos, directories).
   */
  size: number;
  /** Apparent size of a sparse file; the data is `sparse` chunks, the rest holes. */
  realSize?: number;
  sparse?: { offset: number; length: number }[];
  /**
   * Why the sparse map does not fit the stored data, when it does not. Go's archive/tar reports
   * it only when the data is read (errMissData, errUnrefData): an entry whose data is discarded
   * (a whiteout, the root) is no error, so whoever reads the data raises it.
   */
  sparseMismatch?: string;
  /** Extended attributes by name (`security.capability`), values as raw bytes. */
  xattrs: Map<string, Buffer>;
  /** Device numbers as containerd's Mkdev takes them (low 32 bits). */
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

  /** Skips up to n bytes; false when the input ends first. */
  skipToEnd(n: number): boolean {
    let left = n;
    while (left > 0) {
      if (this.have === 0 && !this.fill(1)) return false;
      left -= this.take(Math.min(this.have, left)).length;
    }
    return true;
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

const INT64_MAX = (1n << 63n) - 1n;

/**
 * An octal field as Go's archive/tar reads it (strconv.go, parseOctal): spaces and NULs trimmed
 * at both ends, the rest read up to a NUL, then octal digits only; an empty field is 0.
 */
function octal(b: Buffer, start: number, len: number, label: () => string): bigint {
  const pad = (c: number | undefined) => c === 0x20 || c === 0;
  let s = start;
  let e = start + len;
  while (s < e && pad(b[s])) s++;
  while (e > s && pad(b[e - 1])) e--;
  if (s === e) return 0n;
  const nul = b.indexOf(0, s);
  if (nul >= 0 && nul < e) e = nul;
  const text = b.toString('latin1', s, e);
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`${label()} ${JSON.stringify(showName(text))} is not an octal number`);
  return BigInt(`0o${text}`);
}

/**
 * A numeric header field as Go's archive/tar reads it (strconv.go, parseNumeric): base-256 when
 * the first byte's high bit is set (big-endian two's complement, the sign in the first byte's
 * next bit; GNU tar writes 0xff first for a negative number), refused beyond 63 bits; else
 * octal (see octal). May be negative: Go hands containerd whatever it reads.
 */
function numeric(b: Buffer, start: number, len: number, field: string, path?: string): bigint {
  // The entry's name is made readable only for a message: most fields are read per entry.
  const label = () => (path === undefined ? field : `${showName(path)}: ${field}`);
  const first = b[start] ?? 0;
  if (!(first & 0x80)) return octal(b, start, len, label);
  const inv = first & 0x40 ? 0xff : 0;
  let x = 0n;
  for (let i = 0; i < len; i++) x = (x << 8n) | BigInt(((b[start + i] ?? 0) ^ inv) & (i === 0 ? 0x7f : 0xff));
  if (x > INT64_MAX) throw new TarFormatError(`${label()} in tar header does not fit in 64 bits`);
  return inv ? -x - 1n : x;
}

/** A count this process can hold exactly (a size, an offset), refused beyond 2^53. */
function exact(v: bigint, field: string, path: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new TarFormatError(`${showName(path)}: ${field} ${v} is out of range`);
  return n;
}

/**
 * An owner id as the kernel takes it from containerd: Go hands `os.Lchown` the 64-bit number
 * it read and lchown(2) takes its low 32 bits (uid_t), so 2^32 is uid 0 and -1 (0xffffffff)
 * leaves the owner as it is. The same is done here rather than refusing what containerd applies.
 */
const ownerId = (v: bigint) => Number(BigInt.asUintN(32, v));

/**
 * A decimal integer as Go's strconv.ParseInt(v, 10, 64) takes it (an optional sign, digits
 * only, within 64 bits), or undefined when it does not.
 */
function parseInt64(v: string): bigint | undefined {
  if (!/^[+-]?[0-9]+$/.test(v)) return undefined;
  const n = BigInt(v);
  return n > INT64_MAX || n < -INT64_MAX - 1n ? undefined : n;
}

/** A pax uid, gid or size: Go's mergePAX refuses what strconv.ParseInt(v, 10, 64) refuses. */
function paxInt(v: string, key: string, path: string): bigint {
  const n = parseInt64(v);
  if (n === undefined) throw new TarFormatError(`${showName(path)}: pax ${key} ${JSON.stringify(showName(v))} is not a decimal integer`);
  return n;
}

/** A time as seconds (any 64-bit count) and nanoseconds past them (0 to 999999999). */
interface Time {
  sec: bigint;
  nsec: number;
}

/**
 * A pax time (mtime, atime, ctime) as Go's parsePAXTime (strconv.go) reads it: decimal seconds
 * as strconv.ParseInt(s, 10, 64) takes them (optionally signed, within 64 bits), then
 * optionally `.` and any number of fraction digits, of which 9 are kept; anything else is
 * refused (ErrHeader). Nanoseconds are kept exactly.
 */
function paxTime(v: string, key: string, path: string): Time {
  const m = /^([+-]?[0-9]+)(?:\.([0-9]*))?$/.exec(v);
  const whole = m ? parseInt64(m[1] ?? '') : undefined;
  if (!m || whole === undefined) throw new TarFormatError(`${showName(path)}: pax ${key} ${JSON.stringify(showName(v))} is not a decimal number of seconds within 64 bits`);
  const frac = Number((m[2] ?? '').slice(0, 9).padEnd(9, '0'));
  if (!m[1]?.startsWith('-') || frac === 0) return { sec: whole, nsec: frac };
  return { sec: whole - 1n, nsec: 1e9 - frac };
}

/** The latest time containerd sets: time.Unix(0, 0).Add(1<<63 - 1), in 2262. */
const MAX_TIME: Time = { sec: 9223372036n, nsec: 854775807 };

/**
 * A time as containerd applies it (archive/time.go, boundTime): one before the epoch or after
 * MAX_TIME is the epoch.
 */
function boundTime(t: Time): { sec: number; nsec: number } {
  if (t.sec < 0n || t.sec > MAX_TIME.sec || (t.sec === MAX_TIME.sec && t.nsec > MAX_TIME.nsec)) return { sec: 0, nsec: 0 };
  return { sec: Number(t.sec), nsec: t.nsec };
}

/** The later of two times (containerd's latestTime: `t2` unless `t1` is after it). */
const latest = (t1: Time, t2: Time): Time => (t1.sec > t2.sec || (t1.sec === t2.sec && t1.nsec > t2.nsec) ? t1 : t2);

/** The header checksum, octal only (Go's getFormat reads it with parseOctal), unsigned or signed. */
function checksumOk(h: Buffer): boolean {
  let want: bigint;
  try {
    want = octal(h, 148, 8, () => 'checksum');
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
  return want === BigInt(unsigned) || want === BigInt(unsigned - 256 * high);
}

/**
 * The records of one extended header, values as bytes. An empty value is kept: Go's parsePAX
 * keeps it, its mergePAX then leaves the header's own field alone, and containerd still sees
 * the record (an empty `SCHILY.xattr.*` is an xattr set to nothing).
 */
type Pax = Map<string, Buffer>;

/**
 * Parses pax records (`<len> <key>=<value>\n`, len in bytes) as Go's parsePAX and
 * parsePAXRecord do (reader.go, strconv.go): a length of at least 5 that ends on a newline, an
 * `=`; no NUL in a key, nor in the value of path, linkpath, uname or gname (validPAXRecord).
 * GNU sparse 0.0 `GNU.sparse.offset`/`numbytes` must alternate, offset first, without commas,
 * and are folded into `GNU.sparse.map`, replacing any such record of the header.
 */
function parsePax(data: Buffer): Pax {
  const into: Pax = new Map();
  const pairs: string[] = [];
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space < 0) throw new TarFormatError('malformed pax record: no length');
    const len = parseInt64(data.toString('latin1', at, space));
    if (len === undefined || len < 5n || len > BigInt(data.length - at) || at + Number(len) - 1 <= space) throw new TarFormatError('malformed pax record: bad length');
    const end = at + Number(len);
    if (data[end - 1] !== 0x0a) throw new TarFormatError('malformed pax record: no newline at its end');
    const rec = data.subarray(space + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new TarFormatError('malformed pax record: no "="');
    // Kept as bytes (one char per byte), as names are: an xattr name is bytes to the kernel and
    // Go's archive/tar hands the key to containerd unchanged, UTF-8 or not. The keys this
    // reader looks up are ASCII, the same in either reading.
    const key = rec.toString('latin1', 0, eq);
    const value = rec.subarray(eq + 1);
    // Go's validPAXRecord refuses an empty key (ErrHeader), and containerd the layer with it.
    if (key === '') throw new TarFormatError('malformed pax record: empty key');
    if (key === 'path' || key === 'linkpath' || key === 'uname' || key === 'gname') {
      if (value.includes(0)) throw new TarFormatError(`malformed pax record: ${key} ${showName(value.toString('latin1'))} contains a NUL byte`);
    } else if (key.includes('\0')) {
      throw new TarFormatError(`malformed pax record: key ${showName(key)} contains a NUL byte`);
    }
    if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
      const v = value.toString('latin1');
      if ((pairs.length % 2 === 0) !== (key === 'GNU.sparse.offset') || v.includes(',')) {
        throw new TarFormatError(`malformed pax record: ${key} ${JSON.stringify(showName(v))} out of order (offset and numbytes alternate, offset first) or with a comma`);
      }
      pairs.push(v);
    } else {
      into.set(key, Buffer.from(value));
    }
    at = end;
  }
  if (pairs.length) into.set('GNU.sparse.map', Buffer.from(pairs.join(','), 'latin1'));
  return into;
}

/**
 * The most an extended header (`x`, `g`) or GNU long name or link (`L`, `K`) may hold: Go's
 * archive/tar (reader.go, readSpecialFile, maxSpecialFileSize) refuses more than 1 MiB, so
 * containerd never applies a layer with a larger one.
 */
const MAX_SPECIAL = 1 << 20;

/** Names of the special headers, for messages. */
const SPECIAL: Record<string, string> = { x: 'pax extended header', g: 'pax global header', L: 'GNU long name', K: 'GNU long link name' };

/** A name with a NUL is refused: no file system call takes one (Go's syscall package refuses it). */
function noNul(v: string, field: string, path: string): string {
  if (v.includes('\0')) throw new TarFormatError(`${showName(path)}: ${field} contains a NUL byte`);
  return v;
}

type Chunk = { offset: number; length: number };

/**
 * The longest line of a 1.0 sparse map once its leading zeros are dropped: the digits of
 * Number.MAX_SAFE_INTEGER (16), the most sparseNumber takes, with room for a sign.
 */
const MAX_SPARSE_LINE = 20;

/**
 * A number of a GNU sparse map (pax GNU.sparse.* records, the 1.0 map's lines): what Go's
 * strconv.ParseInt(v, 10, 64) takes, and not negative: Go's archive/tar refuses anything else
 * as an invalid header (reader.go, readGNUSparseMap0x1/1x0, validateSparseEntries), so
 * containerd never applies it.
 */
function sparseNumber(v: string | undefined, field: string, path: string): number {
  const n = v === undefined || !/^[+-]?[0-9]+$/.test(v) ? undefined : BigInt(v);
  if (n === undefined || n < 0n) throw new TarFormatError(`${showName(path)}: sparse ${field} ${JSON.stringify(showName(v ?? ''))} is not a non-negative decimal integer`);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarFormatError(`${showName(path)}: sparse ${field} ${v} is out of range`);
  return Number(n);
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

/** The typeflags containerd's applier handles (archive/tar.go, createTarFile), after Go turns `\0` into `0` or `5`. */
const TYPES: Record<string, EntryType> = { '0': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

/**
 * Types whose header size says nothing of the data: Go's archive/tar (reader.go,
 * handleRegularFile, isHeaderOnlyType) reads no data after them whatever the size field or a
 * pax `size` says, so the next block is the next header.
 */
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6']);

/** The fields of one header block as Go's readHeader (reader.go) reads them. */
interface Header {
  flag: string;
  name: string;
  linkname: string;
  size: bigint;
  mode: bigint;
  uid: bigint;
  gid: bigint;
  mtime: bigint;
  /**
   * A GNU or STAR header's access time field, as Go's readHeader reads it (hdr.AccessTime);
   * undefined when it has none (a GNU field starting with NUL, or read as a prefix instead).
   */
  atime?: bigint;
  devmajor: bigint;
  devminor: bigint;
  gnu: boolean;
  /** Type `S` in GNU format: the map in the header block and its real size (extension blocks follow). */
  oldSparse?: { chunks: Chunk[]; realSize: bigint; extended: boolean };
}

/**
 * A name's components as containerd's applyNaive resolves them (filepath.Clean, then `..` held
 * at the image root): none for the root itself.
 */
function nameParts(path: string): string[] {
  const parts: string[] = [];
  for (const p of path.split('/')) {
    if (p === '..') parts.pop();
    else if (p && p !== '.') parts.push(p);
  }
  return parts;
}

const isZero = (b: Buffer) => b[0] === 0 && b[148] === 0 && b.every((c) => c === 0);

/** The fragments of an old GNU sparse map in `b` (count slots of 24 bytes from `at`), up to the first empty one. */
function oldSparseChunks(b: Buffer, at: number, count: number, into: Chunk[]): void {
  for (let i = 0; i < count; i++) {
    const o = at + i * 24;
    // The same end test as GNU, BSD and Go's tar (readOldGNUSparseMap).
    if ((b[o] ?? 0) === 0) break;
    const offset = numeric(b, o, 12, 'sparse offset');
    const length = numeric(b, o + 12, 12, 'sparse length');
    if (offset < 0n || length < 0n) throw new TarFormatError(`old GNU sparse map fragment (offset ${offset}, length ${length}) is negative`);
    into.push({ offset: exact(offset, 'sparse offset', ''), length: exact(length, 'sparse length', '') });
  }
}

/**
 * Reads entries one by one, as Go's archive/tar Reader.Next reads them for containerd
 * (reader.go): `next()` resolves the next entry (or undefined at the end); its data must then
 * be consumed with `data()` before asking for the following one.
 */
export class TarReader {
  /** Data of the current entry still to be skipped, then its padding. */
  private pending = 0;
  private pad = 0;

  constructor(private readonly r: ChunkReader) {}

  /**
   * The next header block, or undefined at the end: no more input, or a zero block followed
   * by the input's end or by a second zero block. A zero block followed by anything else is
   * refused, as Go's readHeader refuses it.
   */
  private header(): Header | undefined {
    const at = this.r.offset;
    let h = this.r.read(BLOCK);
    if (!h) return undefined;
    if (isZero(h)) {
      h = this.r.read(BLOCK);
      if (!h || isZero(h)) return undefined;
      throw new TarFormatError(`invalid tar header at offset ${at + BLOCK}: a single zero block at offset ${at} is followed by more entries (the archive ends with two zero blocks; Go's archive/tar, reader.go readHeader, refuses this as containerd does)`);
    }
    if (!checksumOk(h)) throw new TarFormatError(`invalid tar header checksum at offset ${at}`);
    const magic = h.toString('latin1', 257, 263);
    // Go's getFormat (format.go): the magic decides, GNU also needs its version, STAR its trailer.
    const star = magic === 'ustar\0' && h.toString('latin1', 508, 512) === 'tar\0';
    const ustar = magic === 'ustar\0' && !star;
    const gnu = magic === 'ustar ' && h.toString('latin1', 263, 265) === ' \0';
    const flag = String.fromCharCode(h[156] ?? 0);
    let name = cstring(h, 0, 100);
    const field = (start: number, len: number, what: string) => numeric(h, start, len, what, name);
    const hd: Header = {
      flag,
      name,
      linkname: cstring(h, 157, 100),
      size: field(124, 12, 'size'),
      mode: field(100, 8, 'mode'),
      uid: field(108, 8, 'uid'),
      gid: field(116, 8, 'gid'),
      mtime: field(136, 12, 'mtime'),
      devmajor: ustar || star || gnu ? field(329, 8, 'devmajor') : 0n,
      devminor: ustar || star || gnu ? field(337, 8, 'devminor') : 0n,
      gnu,
    };
    let prefix = '';
    if (ustar) prefix = cstring(h, 345, 155);
    if (star) {
      prefix = cstring(h, 345, 131);
      hd.atime = field(476, 12, 'atime');
      field(488, 12, 'ctime');
    }
    if (gnu) {
      // GNU has atime and ctime where ustar has its prefix; Go's readHeader reads the prefix
      // there instead when they are not numbers and it is ASCII (a pre-Go 1.8 writer's bug).
      try {
        if (h[345] !== 0) hd.atime = numeric(h, 345, 12, 'atime');
        if (h[357] !== 0) numeric(h, 357, 12, 'ctime');
      } catch {
        // Go then forgets the times it read (hdr.AccessTime = time.Time{}).
        delete hd.atime;
        const p = cstring(h, 345, 155);
        if ([...p].every((c) => c.charCodeAt(0) < 0x80)) prefix = p;
      }
    }
    if (prefix) name = `${prefix}/${name}`;
    hd.name = name;
    if (flag === 'S' && gnu) {
      const chunks: Chunk[] = [];
      oldSparseChunks(h, 386, 4, chunks);
      hd.oldSparse = { chunks, realSize: field(483, 12, 'sparse real size'), extended: (h[482] ?? 0) !== 0 };
    }
    return hd;
  }

  /** Skips the padding after data; false when the input ends within it (Go then ends the archive). */
  private skipPad(): boolean {
    const pad = this.pad;
    this.pad = 0;
    return this.r.skipToEnd(pad);
  }

  private exactly(n: number, what: () => string): Buffer {
    const b = this.r.read(n);
    if (!b && n > 0) throw new TarFormatError(`${what()}: truncated archive: ${n} bytes of data missing at offset ${this.r.offset}`);
    return Buffer.from(b ?? Buffer.alloc(0));
  }

  next(): TarEntry | undefined {
    if (this.pending > 0) this.r.skip(this.pending);
    this.pending = 0;
    if (!this.skipPad()) return undefined;
    // State a header's meta entries hand to the entry after them: Go's next() keeps the last
    // `x` header's records (each `x` replaces what an earlier one said) and the last GNU long
    // name and link; a `g` header ends the call (Go returns it as an entry of its own) and
    // so drops all three.
    let pax: Pax | undefined;
    let longName = '';
    let longLink = '';
    for (;;) {
      const at = this.r.offset;
      const hd = this.header();
      if (!hd) return undefined;
      const flag = hd.flag;
      // Go's handleRegularFile, before anything is merged: a negative size of a type with data.
      if (hd.size < 0n && !HEADER_ONLY.has(flag)) throw new TarFormatError(`${showName(hd.name)}: size ${hd.size} in tar header is negative`);
      if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
        const what = () => `${SPECIAL[flag]} ${showName(hd.name)} at offset ${at}`;
        if (hd.size > BigInt(MAX_SPECIAL)) throw new TarFormatError(`${what()}: size ${hd.size} is over the ${MAX_SPECIAL} bytes an extended header may hold`);
        const size = Number(hd.size);
        const data = this.exactly(size, what);
        this.pad = padding(size);
        if (!this.skipPad()) return undefined;
        if (flag === 'x') {
          pax = parsePax(data);
        } else if (flag === 'g') {
          // Go's next() returns a global header as an entry of its own, named by its header or
          // its own `path` record, and drops the `x`, `L` and `K` pending before it. containerd's
          // applier (archive/tar.go) applies none of its records (createTarFile skips it), but
          // applyNaive first makes the name's parents and removes whatever the name is: what a
          // whiteout of that name does, so it is handed on as one.
          const g = parsePax(data).get('path');
          const parts = nameParts(g && g.length ? g.toString('latin1') : hd.name);
          const base = parts.pop();
          if (base === undefined) continue;
          return this.headerOnlyEntry([...parts, base.startsWith('.wh.') ? base : `.wh.${base}`].join('/'));
        } else if (flag === 'L') {
          longName = cstring(data, 0, data.length);
        } else {
          longLink = cstring(data, 0, data.length);
        }
        continue;
      }
      return this.entry(hd, pax, longName, longLink);
    }
  }

  /** An entry with a name only, no data and no attributes. */
  private headerOnlyEntry(path: string): TarEntry {
    return { path, type: 'file', mode: 0, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, atime: 0, atimeNsec: 0, linkpath: '', size: 0, xattrs: new Map(), devmajor: 0, devminor: 0 };
  }

  /** The entry of header `hd` with what the meta entries before it said, as Go's next() merges them. */
  private entry(hd: Header, pax: Pax | undefined, longName: string, longLink: string): TarEntry {
    // Go's mergePAX: a record with an empty value leaves the header's field as it is.
    const rec = (k: string) => {
      const v = pax?.get(k);
      return v && v.length ? v.toString('latin1') : undefined;
    };
    let path = rec('path') ?? hd.name;
    let linkpath = rec('linkpath') ?? hd.linkname;
    let uid = hd.uid;
    let gid = hd.gid;
    let size = hd.size;
    const label = path;
    const paxMtime = rec('mtime');
    const mtime = paxMtime !== undefined ? paxTime(paxMtime, 'mtime', label) : { sec: hd.mtime, nsec: 0 };
    const paxAtime = rec('atime');
    // No atime at all is Go's zero Time (year 1), never the later one.
    const atime = paxAtime !== undefined ? paxTime(paxAtime, 'atime', label) : hd.atime !== undefined ? { sec: hd.atime, nsec: 0 } : undefined;
    const paxCtime = rec('ctime');
    if (paxCtime !== undefined) paxTime(paxCtime, 'ctime', label);
    const mtimeSet = boundTime(mtime);
    const atimeSet = boundTime(atime ? latest(atime, mtime) : mtime);
    const paxUid = rec('uid');
    if (paxUid !== undefined) uid = paxInt(paxUid, 'uid', label);
    const paxGid = rec('gid');
    if (paxGid !== undefined) gid = paxInt(paxGid, 'gid', label);
    const paxSize = rec('size');
    if (paxSize !== undefined) size = paxInt(paxSize, 'size', label);
    // Then the GNU long name and link, which win over pax records (Go's next(): `hdr.Name =
    // gnuLongName` after mergePAX); an empty one says nothing.
    if (longName) path = longName;
    if (longLink) linkpath = longLink;
    // The old-style type `\0` is a directory when its final name ends in `/`, as GNU tar has it.
    let flag = hd.flag;
    if (flag === '\0') flag = path.endsWith('/') ? '5' : '0';
    const headerOnly = HEADER_ONLY.has(flag);
    if (size < 0n && !headerOnly) throw new TarFormatError(`${showName(path)}: size ${size} is negative`);
    let data = headerOnly ? 0 : exact(size, 'size', path);
    let realSize: number | undefined;
    let chunks: Chunk[] | undefined;
    if (flag === 'S') {
      if (!hd.oldSparse) throw new TarFormatError(`${showName(path)}: old GNU sparse entry (type S) in a header that is not in GNU format`);
      chunks = hd.oldSparse.chunks;
      let extended = hd.oldSparse.extended;
      while (extended) {
        const x = this.r.read(BLOCK);
        if (!x) throw new TarFormatError(`${showName(path)}: truncated sparse header`);
        oldSparseChunks(x, 0, 21, chunks);
        extended = (x[504] ?? 0) !== 0;
      }
      realSize = exact(hd.oldSparse.realSize, 'sparse real size', path);
    } else if (pax) {
      ({ path, chunks, realSize, data } = this.paxSparse(pax, path, size, data));
    }
    if (chunks) {
      if (headerOnly) throw new TarFormatError(`${showName(path)}: a sparse map on an entry of type ${JSON.stringify(flag)}, which has no data`);
      if (realSize === undefined || realSize < 0) throw new TarFormatError(`${showName(path)}: sparse real size ${realSize} is negative`);
      checkSparse(chunks, realSize, path);
    }
    const mapped = chunks?.reduce((n, c) => n + c.length, 0);
    const type = TYPES[flag];
    this.pending = data;
    // A 1.0 map takes whole blocks, so the padding is the stored data's.
    this.pad = padding(data);
    const entry: TarEntry = {
      path,
      type: type ?? 'file',
      mode: Number(BigInt.asUintN(12, hd.mode)),
      uid: ownerId(uid),
      gid: ownerId(gid),
      mtime: mtimeSet.sec,
      mtimeNsec: mtimeSet.nsec,
      atime: atimeSet.sec,
      atimeNsec: atimeSet.nsec,
      linkpath,
      size: data,
      xattrs: new Map(),
      devmajor: Number(BigInt.asUintN(32, hd.devmajor)),
      devminor: Number(BigInt.asUintN(32, hd.devminor)),
    };
    if (chunks) {
      entry.sparse = chunks;
      entry.realSize = realSize ?? 0;
      if (mapped !== data) entry.sparseMismatch = `sparse map holds ${mapped} bytes of data where the entry stores ${data}`;
    }
    // SCHILY.xattr.* only: containerd (archive/tar.go) applies no other record, so libarchive's
    // LIBARCHIVE.xattr.* (URL-encoded names, base64 values) is left alone like any unknown key.
    for (const [k, v] of pax ?? []) {
      if (!k.startsWith('SCHILY.xattr.')) continue;
      // containerd's setxattr of an empty name fails (ERANGE) and with it the layer.
      if (k === 'SCHILY.xattr.') throw new TarFormatError(`${showName(path)}: pax record SCHILY.xattr. names no xattr (an empty name, which setxattr refuses)`);
      entry.xattrs.set(k.slice(13), v);
    }
    if (!type) this.unhandled(entry, hd.flag);
    return entry;
  }

  /**
   * A type containerd's applier has no case for (createTarFile: contiguous `7`, old GNU sparse
   * `S`, vendor types) is refused with its reason, "unhandled tar header type <code>". Its
   * applyNaive decides before that, on the name alone, whether the entry is the root (left
   * alone) or a whiteout (applied as one): those are handed on, as a file never written.
   */
  private unhandled(entry: TarEntry, flag: string): void {
    const base = nameParts(entry.path).at(-1);
    if (base === undefined || base.startsWith('.wh.')) return;
    const code = flag.charCodeAt(0);
    throw new TarFormatError(`${showName(entry.path)}: unhandled tar header type ${code} (${JSON.stringify(flag)}): containerd's applier (archive/tar.go, createTarFile) refuses it`);
  }

  /**
   * GNU sparse files in pax records, as Go's readGNUSparsePAXHeaders (reader.go) finds them:
   * GNU.sparse.major and minor 0.0, 0.1 or 1.0; any other version is no sparse file (a regular
   * one with the records ignored); without a version, a GNU.sparse.map (0.0 pairs are folded
   * into one) makes it 0.x. GNU.sparse.name renames the entry; GNU.sparse.size, else
   * GNU.sparse.realsize, is its real size, else the size the entry had.
   */
  private paxSparse(pax: Pax, path: string, size: bigint, data: number): { path: string; chunks?: Chunk[]; realSize?: number; data: number } {
    const rec = (k: string) => pax.get(k)?.toString('latin1') ?? '';
    const major = rec('GNU.sparse.major');
    const minor = rec('GNU.sparse.minor');
    let v1: boolean;
    if (major === '0' && (minor === '0' || minor === '1')) v1 = false;
    else if (major === '1' && minor === '0') v1 = true;
    else if (major !== '' || minor !== '') return { path, data };
    else if (rec('GNU.sparse.map') !== '') v1 = false;
    else return { path, data };
    const name = rec('GNU.sparse.name');
    if (name !== '') path = noNul(name, 'pax GNU.sparse.name', path);
    const sizeKey = rec('GNU.sparse.size') !== '' ? 'GNU.sparse.size' : 'GNU.sparse.realsize';
    let realSize: number;
    if (rec(sizeKey) !== '') {
      const n = parseInt64(rec(sizeKey));
      if (n === undefined) throw new TarFormatError(`${showName(path)}: sparse ${sizeKey} ${JSON.stringify(showName(rec(sizeKey)))} is not a non-negative decimal integer`);
      if (n < 0n) throw new TarFormatError(`${showName(path)}: sparse ${sizeKey} ${JSON.stringify(rec(sizeKey))} is not a non-negative decimal integer`);
      realSize = exact(n, `sparse ${sizeKey}`, path);
    } else {
      realSize = exact(size, 'size', path);
    }
    if (v1) {
      // 1.0: the map leads the data, in decimal lines, padded to a block.
      const { chunks, bytes } = this.readSparseMap(path, data);
      return { path, chunks, realSize, data: data - bytes };
    }
    // 0.0 and 0.1 (readGNUSparseMap0x1): GNU.sparse.numblocks pairs, no more and no fewer.
    const count = parseInt64(rec('GNU.sparse.numblocks'));
    if (count === undefined || count < 0n) throw new TarFormatError(`${showName(path)}: sparse GNU.sparse.numblocks ${JSON.stringify(showName(rec('GNU.sparse.numblocks')))} is not a non-negative decimal integer`);
    const map = rec('GNU.sparse.map');
    const flat = map === '' ? [] : map.split(',');
    if (BigInt(flat.length) !== 2n * count) throw new TarFormatError(`${showName(path)}: sparse GNU.sparse.map has ${flat.length} numbers where GNU.sparse.numblocks ${count} needs ${2n * count}`);
    return { path, chunks: sparsePairsOf(flat, 'GNU.sparse.map', path), realSize, data };
  }

  /**
   * The 1.0 map at the head of the data, which it cannot outgrow (`size`, the data's bytes).
   * Each block is scanned once for its newlines, as Go's archive/tar (reader.go,
   * readGNUSparseMap1x0) counts them per block, so the cost is linear in the map's length. A
   * line is a decimal number: one longer than MAX_SPARSE_LINE without its leading zeros can be
   * no offset a file system holds, and is refused as soon as it is seen rather than read to
   * the entry's end.
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
        // Leading zeros are dropped as they come (strconv.ParseInt takes any number of them),
        // so only the digits that count are held to the limit.
        line = (line + b.toString('latin1', at, end)).replace(/^([+-]?)0+(?=[0-9])/, '$1');
        if (line.length > MAX_SPARSE_LINE) {
          throw new TarFormatError(`${showName(path)}: sparse map line ${count < 0 ? 0 : nums.length + 1} is longer than ${MAX_SPARSE_LINE} bytes without its leading zeros: no decimal file offset is`);
        }
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
    this.pending -= size;
  }
}
