import { randomBytes } from 'node:crypto';

/**
 * A FAT12/FAT16 filesystem image holding files in its root directory, each under its VFAT long
 * name, built in memory (no mkfs.vfat or mtools process). Layout and field meanings follow
 * Microsoft's "FAT: General Overview of On-Disk Format" (v1.03): one reserved sector (the boot
 * sector with the BIOS parameter block, padded to whole tracks), two FATs, the fixed root directory, then the data
 * clusters; the FAT type follows from the cluster count alone (< 4085 is FAT12), as every
 * reader decides it. Files are written in contiguous cluster runs.
 */

const SECTOR = 512;
const DIR_ENTRY = 32;
/** Readers take the FAT type from the cluster count; stay clear of the 4085 boundary. */
const FAT12_MAX_CLUSTERS = 4084;
const FAT16_MIN_CLUSTERS = 4101;
const FAT16_MAX_CLUSTERS = 65524;
/** mtools refuses a filesystem whose sector count is not a multiple of the sectors per track. */
const SECTORS_PER_TRACK = 32;
const HEADS = 64;
const ATTR_ARCHIVE = 0x20;
const ATTR_VOLUME_ID = 0x08;
const ATTR_LONG_NAME = 0x0f;
const LFN_CHARS = 13;

export interface FatOptions {
  /** Volume label, at most 11 characters of A-Z 0-9 and space (cloud-init looks for CIDATA). */
  label: string;
  /** Smallest image size in bytes; the image grows to hold the files. */
  minBytes?: number;
  /** Time stamped on the directory entries; now by default. */
  time?: Date;
}

/** The 8.3 name stored beside a long name: unique in the directory, in the numeric-tail form. */
function shortNames(names: readonly string[]): Buffer[] {
  const used = new Set<string>();
  return names.map((name) => {
    const clean = (s: string) => s.toUpperCase().replace(/[^A-Z0-9_-]/g, '_');
    const dot = name.lastIndexOf('.');
    const base = clean(dot > 0 ? name.slice(0, dot) : name).replace(/^_*$/, '_') || '_';
    const ext = dot > 0 ? clean(name.slice(dot + 1)).slice(0, 3) : '';
    for (let n = 1; ; n++) {
      const tail = `~${n}`;
      const short = `${base.slice(0, 8 - tail.length)}${tail}`.padEnd(8, ' ') + ext.padEnd(3, ' ');
      if (!used.has(short)) {
        used.add(short);
        return Buffer.from(short, 'ascii');
      }
    }
  });
}

function lfnChecksum(short: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + (short[i] ?? 0)) & 0xff;
  return sum;
}

/** The long-name entries for `name`, in the order they are stored (last part first). */
function lfnEntries(name: string, checksum: number): Buffer[] {
  const units: number[] = [];
  for (let i = 0; i < name.length; i++) units.push(name.charCodeAt(i));
  if (units.length % LFN_CHARS !== 0) units.push(0x0000);
  while (units.length % LFN_CHARS !== 0) units.push(0xffff);
  const count = units.length / LFN_CHARS;
  const out: Buffer[] = [];
  for (let seq = count; seq >= 1; seq--) {
    const e = Buffer.alloc(DIR_ENTRY);
    e[0] = seq | (seq === count ? 0x40 : 0);
    e[11] = ATTR_LONG_NAME;
    e[13] = checksum;
    const part = units.slice((seq - 1) * LFN_CHARS, seq * LFN_CHARS);
    const offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    part.forEach((u, i) => e.writeUInt16LE(u, offsets[i] ?? 0));
    out.push(e);
  }
  return out;
}

function dosTime(d: Date): { date: number; time: number } {
  const year = Math.min(Math.max(d.getUTCFullYear(), 1980), 2107);
  return {
    date: ((year - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate(),
    time: (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | Math.floor(d.getUTCSeconds() / 2),
  };
}

function shortEntry(name: Buffer, attr: number, cluster: number, size: number, when: { date: number; time: number }): Buffer {
  const e = Buffer.alloc(DIR_ENTRY);
  name.copy(e, 0, 0, 11);
  e[11] = attr;
  e.writeUInt16LE(when.time, 14);
  e.writeUInt16LE(when.date, 16);
  e.writeUInt16LE(when.date, 18);
  e.writeUInt16LE(when.time, 22);
  e.writeUInt16LE(when.date, 24);
  e.writeUInt16LE(cluster, 26);
  e.writeUInt32LE(size, 28);
  return e;
}

interface Geometry {
  sectorsPerCluster: number;
  reservedSectors: number;
  clusters: number;
  fatBits: 12 | 16;
  fatSectors: number;
  rootSectors: number;
  totalSectors: number;
}

function geometry(sizes: readonly number[], rootEntries: number, minBytes: number): Geometry {
  const rootSectors = Math.ceil((rootEntries * DIR_ENTRY) / SECTOR);
  for (let spc = 1; spc <= 128; spc *= 2) {
    const clusterBytes = spc * SECTOR;
    const needed = sizes.reduce((n, s) => n + Math.ceil(s / clusterBytes), 0);
    let clusters = Math.max(needed, Math.ceil(minBytes / clusterBytes));
    if (clusters > FAT12_MAX_CLUSTERS && clusters < FAT16_MIN_CLUSTERS) clusters = FAT16_MIN_CLUSTERS;
    if (clusters > FAT16_MAX_CLUSTERS) continue;
    const fatBits = clusters <= FAT12_MAX_CLUSTERS ? 12 : 16;
    const fatSectors = Math.ceil((fatBits === 12 ? Math.ceil(((clusters + 2) * 3) / 2) : (clusters + 2) * 2) / SECTOR);
    // The reserved area (the boot sector, then padding) rounds the size to whole tracks.
    const rest = 2 * fatSectors + rootSectors + clusters * spc;
    const reservedSectors = 1 + ((SECTORS_PER_TRACK - ((1 + rest) % SECTORS_PER_TRACK)) % SECTORS_PER_TRACK);
    return { sectorsPerCluster: spc, reservedSectors, clusters, fatBits, fatSectors, rootSectors, totalSectors: reservedSectors + rest };
  }
  throw new RangeError(`${sizes.reduce((a, b) => a + b, 0)} bytes do not fit a FAT16 filesystem`);
}

/** A FAT image as the bytes that are not zero: `parts` at their offsets in an image of `size` bytes. */
export interface FatLayout {
  size: number;
  parts: { offset: number; data: Buffer }[];
}

/** Builds the image. Names must already be valid FAT long names (src/core/microvm/seed-names.ts). */
export function fatImage(files: Readonly<Record<string, Buffer>>, opts: FatOptions): Buffer {
  const { size, parts } = fatLayout(files, opts);
  const img = Buffer.alloc(size);
  for (const p of parts) p.data.copy(img, p.offset);
  return img;
}

/**
 * The image as fatImage builds it, without the free clusters: the reserved area, both FATs and
 * the root directory in one part, the files' clusters in another. Written at their offsets into
 * a file of `size` bytes they make the same image as a sparse file, without a zeroed buffer of
 * the whole image.
 */
export function fatLayout(files: Readonly<Record<string, Buffer>>, opts: FatOptions): FatLayout {
  const names = Object.keys(files).sort();
  const shorts = shortNames(names);
  const entries: Buffer[] = [];
  const when = dosTime(opts.time ?? new Date());
  const label = Buffer.from(opts.label.toUpperCase().padEnd(11, ' ').slice(0, 11), 'ascii');
  entries.push(shortEntry(label, ATTR_VOLUME_ID, 0, 0, when));
  // Entry count first (clusters are assigned once the geometry is known).
  const lfnCount = names.map((n) => Math.ceil((n.length + 1) / LFN_CHARS));
  const used = 1 + lfnCount.reduce((a, b) => a + b + 1, 0);
  const rootEntries = Math.max(512, Math.ceil(used / 16) * 16);
  const sizes = names.map((n) => files[n]?.length ?? 0);
  const g = geometry(sizes, rootEntries, opts.minBytes ?? 1024 * 1024);
  const dataStart = (g.reservedSectors + 2 * g.fatSectors + g.rootSectors) * SECTOR;
  const clusterBytes = g.sectorsPerCluster * SECTOR;
  // Two parts: everything before the data area, and the files' clusters.
  const boot = Buffer.alloc(dataStart);
  const area = Buffer.alloc(sizes.reduce((n, sz) => n + Math.ceil(sz / clusterBytes), 0) * clusterBytes);

  // Boot sector and BIOS parameter block.
  boot.set([0xeb, 0x3c, 0x90], 0);
  boot.write('MATCHLCK', 3, 'ascii');
  boot.writeUInt16LE(SECTOR, 11);
  boot[13] = g.sectorsPerCluster;
  boot.writeUInt16LE(g.reservedSectors, 14);
  boot[16] = 2;
  boot.writeUInt16LE(rootEntries, 17);
  if (g.totalSectors < 0x10000) boot.writeUInt16LE(g.totalSectors, 19);
  else boot.writeUInt32LE(g.totalSectors, 32);
  boot[21] = 0xf8;
  boot.writeUInt16LE(g.fatSectors, 22);
  boot.writeUInt16LE(SECTORS_PER_TRACK, 24);
  boot.writeUInt16LE(HEADS, 26);
  boot[36] = 0x80;
  boot[38] = 0x29;
  randomBytes(4).copy(boot, 39);
  label.copy(boot, 43);
  boot.write(g.fatBits === 12 ? 'FAT12   ' : 'FAT16   ', 54, 'ascii');
  boot[510] = 0x55;
  boot[511] = 0xaa;

  const fat = Buffer.alloc(g.fatSectors * SECTOR);
  const setFat = (n: number, v: number) => {
    if (g.fatBits === 16) {
      fat.writeUInt16LE(v & 0xffff, n * 2);
      return;
    }
    const o = Math.floor((n * 3) / 2);
    if (n % 2 === 0) {
      fat[o] = v & 0xff;
      fat[o + 1] = ((fat[o + 1] ?? 0) & 0xf0) | ((v >> 8) & 0x0f);
    } else {
      fat[o] = ((fat[o] ?? 0) & 0x0f) | ((v & 0x0f) << 4);
      fat[o + 1] = (v >> 4) & 0xff;
    }
  };
  const eoc = g.fatBits === 12 ? 0xfff : 0xffff;
  setFat(0, g.fatBits === 12 ? 0xff8 : 0xfff8);
  setFat(1, eoc);

  let next = 2;
  names.forEach((name, i) => {
    const data = files[name] ?? Buffer.alloc(0);
    const short = shorts[i] ?? Buffer.alloc(11, 0x20);
    const count = Math.ceil(data.length / clusterBytes);
    const first = count ? next : 0;
    for (let c = 0; c < count; c++) setFat(next + c, c === count - 1 ? eoc : next + c + 1);
    data.copy(area, (next - 2) * clusterBytes);
    next += count;
    entries.push(...lfnEntries(name, lfnChecksum(short)), shortEntry(short, ATTR_ARCHIVE, first, data.length, when));
  });
  for (let copy = 0; copy < 2; copy++) fat.copy(boot, (g.reservedSectors + copy * g.fatSectors) * SECTOR);
  Buffer.concat(entries).copy(boot, (g.reservedSectors + 2 * g.fatSectors) * SECTOR);
  return { size: g.totalSectors * SECTOR, parts: [{ offset: 0, data: boot }, { offset: dataStart, data: area }] };
}
