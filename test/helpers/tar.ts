import type { ReadInto } from '../../src/adapters/images/oci/tar-reader.js';

/**
 * A tar writer for tests that need entries no archiver writes on request: any bytes in names,
 * hard links to symlinks, base-256 fields (negative ones included), hand-picked pax records.
 * Layout: POSIX.1-2017 ustar headers, pax `x` records before an entry when it has any.
 */

/**
 * `\0` is the old-style regular file; `x` and `g` (pax local and global records) and `L`, `K`
 * (GNU long name and link) carry `data` as their body, like `0` and `\0`.
 */
export type TarType = '0' | '\0' | '1' | '2' | '3' | '4' | '5' | '6' | 'x' | 'g' | 'L' | 'K';

const WITH_DATA = new Set<string>(['0', '\0', 'x', 'g', 'L', 'K']);

/** A numeric field: a number is written in octal, a Buffer as is (e.g. from base256()). */
export type TarNumber = number | Buffer;

export interface TarSpec {
  /** The ustar name (at most 100 bytes); strings are written as UTF-8. */
  name: string | Buffer;
  type?: TarType;
  mode?: TarNumber;
  uid?: TarNumber;
  gid?: TarNumber;
  mtime?: TarNumber;
  linkname?: string | Buffer;
  data?: string | Buffer;
  devmajor?: TarNumber;
  devminor?: TarNumber;
  pax?: Record<string, string | Buffer>;
  /** The header's size field when it must differ from the data's length (no data is then added). */
  size?: TarNumber;
}

/** A base-256 field of `len` bytes: two's complement, the first byte's high bit marking the format. */
export function base256(value: bigint, len: number): Buffer {
  const out = Buffer.alloc(len);
  let v = BigInt.asUintN(len * 8, value);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  out[0] = (out[0] ?? 0) | 0x80;
  return out;
}

function put(h: Buffer, at: number, len: number, v: string | Buffer): void {
  const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
  if (b.length > len) throw new Error(`tar field of ${len} bytes cannot hold ${b.length}`);
  b.copy(h, at);
}

function octal(h: Buffer, at: number, len: number, v: TarNumber): void {
  put(h, at, len, typeof v === 'number' ? `${v.toString(8).padStart(len - 1, '0')}\0` : v);
}

function header(name: string | Buffer, type: string, size: number, s: Partial<TarSpec>): Buffer {
  const h = Buffer.alloc(512);
  put(h, 0, 100, name);
  octal(h, 100, 8, s.mode ?? 0o644);
  octal(h, 108, 8, s.uid ?? 0);
  octal(h, 116, 8, s.gid ?? 0);
  octal(h, 124, 12, s.size ?? size);
  octal(h, 136, 12, s.mtime ?? 1600000000);
  h.fill(0x20, 148, 156);
  put(h, 156, 1, type);
  put(h, 157, 100, s.linkname ?? '');
  put(h, 257, 8, 'ustar\x0000');
  octal(h, 329, 8, s.devmajor ?? 0);
  octal(h, 337, 8, s.devminor ?? 0);
  let sum = 0;
  for (const c of h) sum += c;
  put(h, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);

function paxRecords(pax: Record<string, string | Buffer>): Buffer {
  const recs: Buffer[] = [];
  for (const [k, v] of Object.entries(pax)) {
    const body = Buffer.concat([Buffer.from(` ${k}=`), typeof v === 'string' ? Buffer.from(v, 'utf8') : v, Buffer.from('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    recs.push(Buffer.concat([Buffer.from(String(len)), body]));
  }
  return Buffer.concat(recs);
}

/** One pax record with a key of any bytes (paxRecords writes string keys as UTF-8). */
export function paxRecord(key: Buffer, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(' '), key, Buffer.from('='), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

/** Pax records (`<len> <key>=<value>\n`) for a hand-made `x` or `g` entry's data. */
export { paxRecords };

/** An uncompressed tar archive of the entries, in order, with its two zero end blocks. */
export function tarOf(entries: TarSpec[]): Buffer {
  const out: Buffer[] = [];
  for (const e of entries) {
    if (e.pax && Object.keys(e.pax).length) {
      const recs = paxRecords(e.pax);
      out.push(header('PaxHeaders/entry', 'x', recs.length, {}), pad(recs));
    }
    const type = e.type ?? '0';
    const data = WITH_DATA.has(type) && e.size === undefined ? (typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0))) : Buffer.alloc(0);
    out.push(header(e.name, type, data.length, e), pad(data));
  }
  out.push(Buffer.alloc(1024));
  return Buffer.concat(out);
}

/** A read(2)-like source over an in-memory layer, as the applier reads a layer's stream. */
export function sourceOf(b: Buffer): ReadInto {
  let at = 0;
  return (into, offset, length) => {
    const n = b.copy(into, offset, at, at + length);
    at += n;
    return n;
  };
}
