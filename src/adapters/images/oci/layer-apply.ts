/**
 * Applies OCI image layers (tar streams) to a directory, the way containerd's naive applier
 * does it, entirely synchronously: it runs in its own process (see unpack-process.ts), so
 * blocking calls cost no thread-pool or event-loop round trips and block nobody.
 *
 * Rules (OCI image spec, "Image Layer Filesystem Changeset"; containerd archive.Apply):
 * - every name is cleaned lexically and resolved chroot-style: symlinks of lower layers in the
 *   parent path are followed, absolute ones from the image root, `..` never above it;
 * - `.wh.<name>` removes `<name>` (`.wh.`, `.wh..` and `.wh...` name no file and are refused,
 *   as containerd refuses them); `.wh..wh..opq` removes everything in its directory that this
 *   layer did not write (before or after the marker); whiteouts themselves are never written;
 * - an entry replaces whatever its path holds unless both are directories (then the directory
 *   stays and takes the entry's owner, mode and xattrs);
 * - missing parents are made 0755 root:root; hard links point at paths resolved in the image,
 *   and each link's owner, mode and mtime go to the inode it shares;
 * - owner (numeric uid/gid), all mode bits including setuid/setgid/sticky, mtime and atime (to
 *   the microsecond, bounded as containerd bounds them: see fsTime) and xattrs
 *   (`SCHILY.xattr.*` only, as containerd; see xattrRefusal for those left out) are applied exactly: the process runs with umask 0,
 *   so a file is created with its permission bits, and chown/chmod are called only when what
 *   the kernel gave it differs (owner root and the group that directory hands down, no
 *   setuid/setgid/sticky): GNU tar makes six calls per file, this makes four;
 * - device nodes and FIFOs are skipped: the tree lives on the host and is never a place for them.
 *   A skipped entry still replaces what its path held, and a hard link to one is skipped too
 *   (containerd makes both; the tree is the same but for the nodes). What containerd refuses
 *   because of one is refused: an entry below it (no directory), an xattr the kernel refuses.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync, constants, fchmodSync, fchownSync, ftruncateSync, futimesSync, lchownSync, linkSync, lstatSync, lutimesSync,
  chmodSync, mkdirSync, openSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync, symlinkSync, writeSync,
} from 'node:fs';
import { ChunkReader, showName, TarFormatError, TarReader, type ReadInto, type TarEntry } from './tar-reader.js';

export interface ApplyStats {
  entries: number;
  files: number;
  bytes: number;
  /** Device nodes and FIFOs left out, and hard links to them. */
  skipped: number;
  xattrs: number;
  /**
   * What was left out with a warning, one line each naming the xattr and the path (at most
   * MAX_WARNINGS lines, then one saying how many more).
   */
  warnings: string[];
}

const MAX_WARNINGS = 100;

/**
 * Why an xattr of a layer is left out, or undefined when it is set. As containerd 1.7
 * (archive/tar.go, setting each PAX xattr record): `trusted.*` is dropped ("admin attributes
 * from archive not supported"), and what the kernel refuses with ENOTSUP or EPERM is skipped
 * with a log line ("ignored xattr … in archive"), the entry kept. Two refusals are known
 * without asking the kernel (xattr(7)): a name outside the security, system, trusted and user
 * namespaces (macOS bsdtar's `com.apple.provenance`) is ENOTSUP everywhere, and a user.* xattr
 * on a symlink (a hard link to one) is EPERM. Others are found when setfattr fails.
 */
export function xattrRefusal(name: string, onSymlink: boolean): string | undefined {
  if (name.startsWith('trusted.')) return 'trusted.* (admin) attributes are not applied from a layer';
  if (!/^(security|system|trusted|user)\./.test(name)) return 'Operation not supported (not a Linux xattr namespace)';
  if (onSymlink && name.startsWith('user.')) return 'Operation not permitted (user.* xattrs go on files and directories only)';
  return undefined;
}

/** PATH_MAX and NAME_MAX of Linux (limits.h): a path's bytes with its NUL, a component's. */
export const PATH_MAX = 4096;
export const NAME_MAX = 255;

/**
 * An owner id as the kernel gets it: the low 32 bits. containerd passes the header's Uid/Gid
 * (Go int, 64-bit) to os.Lchown, whose fchownat(2) syscall takes uid_t (32 bits), so a pax uid
 * 4294967296 owns the file as root; Node's chown refuses anything over 2^32-1 instead.
 * (uid_t -1, 4294967295, is "leave it": the kernel does so for both.)
 */
export function hostId(id: number): number {
  return id % 2 ** 32;
}

/** A name for a message: showName, its middle left out when long (a name may be kilobytes). */
export function shortName(bytes: string): string {
  const text = showName(bytes);
  if (text.length <= 160) return text;
  return `${text.slice(0, 80)}…${text.slice(-60)} (${Buffer.byteLength(bytes, 'latin1')} bytes)`;
}

/**
 * errno codes that an entry's own name, target or values cause on a sound host, so the same
 * layer fails them on any host (containerd fails the layer's apply alike): a name or target
 * longer than the kernel takes (ENAMETOOLONG), a hard link to a path the same layer removed or
 * an empty symlink target (ENOENT), a name resolved through the image's own symlinks and files
 * (ENOTDIR, EISDIR, ELOOP, EEXIST), a value the call refuses (EINVAL, ERANGE, E2BIG, EFBIG),
 * more links to one inode than the file system keeps (EMLINK), and Node refusing an argument
 * before any syscall (ERR_OUT_OF_RANGE, ERR_INVALID_ARG_VALUE). Every other code is the host's:
 * ENOSPC, EDQUOT, EIO, EROFS, EACCES, EPERM, ENOMEM, EMFILE, ENFILE, EBUSY, ESTALE, EUCLEAN…
 * — and ENOENT too when the image root itself is gone (see ImageRoot.rootInPlace).
 */
const CONTENT_CODES = new Set([
  'ENAMETOOLONG', 'ENOENT', 'ENOTDIR', 'EISDIR', 'ELOOP', 'EEXIST', 'EINVAL', 'ERANGE', 'E2BIG', 'EFBIG', 'EMLINK', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_VALUE',
]);

/**
 * A system error in one short line: the call and the kernel's words, without the paths Node
 * adds (already named by the caller, and possibly kilobytes each).
 */
function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (!e.syscall || !e.code) return (err as Error).message;
  const words = /^[A-Z0-9_]+: ([^,]*)/.exec(e.message)?.[1] ?? e.code;
  return `${e.syscall}: ${words} (${e.code})`;
}

/** An error with the errno code kept (ENOSPC, EDQUOT…), so callers can say what ran out. */
export class ApplyError extends Error {
  constructor(message: string, readonly code?: string) {
    super(message);
  }
}

/**
 * A refusal of what a layer holds (a whiteout naming no file, a hard link to nothing, a parent
 * that is a file, a symlink loop…), as against a failure of the host's file system. It carries
 * no errno code even where the refusal mirrors one, so the image is refused and not recorded
 * (containerd fails the layer's apply the same way, whatever the host).
 */
export class LayerRefusal extends ApplyError {
  constructor(message: string) {
    super(message);
  }
}

const MAX_LINK_HOPS = 40;
const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const asRoot = process.getuid?.() === 0;
const egid = process.getegid?.() ?? 0;
const SETGID = 0o2000;
const SPECIAL_BITS = 0o7000;

/** The group a new entry in a directory gets: the directory's own if it is setgid (inode_init_owner). */
function inheritedGid(mode: number, gid: number): number {
  return mode & SETGID ? gid : egid;
}

/** Splits and cleans a tar name lexically (as Go's filepath.Clean): `..` at the top is dropped. */
export function cleanParts(name: string): string[] {
  const out: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') out.pop();
    else out.push(p);
  }
  return out;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/**
 * A time as Node's fs takes it, from seconds (0 or more: the reader bounds every time as
 * containerd's boundTime does, archive/time.go, so one before 1970 is the epoch) and
 * nanoseconds. Node hands times to libuv as a double of seconds, and libuv
 * (uv__fs_to_timespec) truncates it toward zero and then to whole microseconds: the time is
 * given half a microsecond past its microsecond, so the truncation lands on it whatever the
 * double's rounding (exact to the microsecond up to 2106; nanoseconds are dropped).
 */
export function fsTime(sec: number, nsec: number): number {
  return (sec * 1e6 + Math.floor(nsec / 1000) + 0.5) / 1e6;
}

function writeAll(fd: number, b: Buffer, position: number | null): void {
  for (let at = 0; at < b.length; ) {
    const n = writeSync(fd, b, at, b.length - at, position === null ? null : position + at);
    if (n <= 0) throw new ApplyError('write made no progress', 'EIO');
    at += n;
  }
}

/**
 * Values keyed by canonical relative path (as cleanParts gives them, '' the root), with each
 * path's children at hand, so forgetting a path and all below it costs what lies below it, not
 * the number of paths kept (a layer may hold tens of thousands of FIFOs or xattr sets).
 */
class PathMap<V> {
  private readonly values = new Map<string, V>();
  /** Each path with kept paths at or below it, to those of its direct children that have. */
  private readonly children = new Map<string, Set<string>>();

  get size(): number {
    return this.values.size;
  }

  has(path: string): boolean {
    return this.values.has(path);
  }

  get(path: string): V | undefined {
    return this.values.get(path);
  }

  set(path: string, value: V): void {
    if (!this.values.has(path)) {
      for (let p = path; p !== ''; ) {
        const slash = p.lastIndexOf('/');
        const parent = slash < 0 ? '' : p.slice(0, slash);
        let set = this.children.get(parent);
        if (!set) this.children.set(parent, (set = new Set()));
        if (set.has(p)) break; // its ancestors are linked already
        set.add(p);
        p = parent;
      }
    }
    this.values.set(path, value);
  }

  /** Whether a value is kept for `path` or a path below it. */
  hasTree(path: string): boolean {
    return this.values.has(path) || this.children.has(path);
  }

  /** Forgets `path` and every path below it. */
  deleteTree(path: string): void {
    const todo = [path];
    for (let p = todo.pop(); p !== undefined; p = todo.pop()) {
      this.values.delete(p);
      const below = this.children.get(p);
      if (below) {
        this.children.delete(p);
        todo.push(...below);
      }
    }
    this.unlink(path);
  }

  /** Forgets `path` alone. */
  delete(path: string): void {
    if (!this.values.delete(path)) return;
    if (!this.children.has(path)) this.unlink(path);
  }

  /** Drops `path` from its parent's children, and so on up while a parent keeps nothing. */
  private unlink(path: string): void {
    for (let p = path; p !== ''; ) {
      const slash = p.lastIndexOf('/');
      const parent = slash < 0 ? '' : p.slice(0, slash);
      const set = this.children.get(parent);
      if (!set?.delete(p)) return;
      if (set.size > 0 || this.values.has(parent)) return;
      this.children.delete(parent);
      p = parent;
    }
  }

  clear(): void {
    this.values.clear();
    this.children.clear();
  }

  [Symbol.iterator](): IterableIterator<[string, V]> {
    return this.values.entries();
  }
}

/** An image root being built; keeps what it knows about its own directories between layers. */
export class ImageRoot {
  /**
   * Paths (relative, physical, canonical: components joined by one `/`, no `.`, `..`, empty
   * component or trailing slash, as cleanParts gives them) known to be real directories, every
   * prefix included, each with the group id an entry created in it gets (see inheritedGid).
   * A removal forgets the path and everything below it. It saves the lstat of every parent
   * component per entry; it is never trusted alone: see isRealDir.
   */
  private readonly dirs = new PathMap<number>();
  /**
   * The directory last found by isRealDir to be the real directory of that path inside the
   * root; forgotten on every removal (the only way a directory stops being one here).
   */
  private checked: string | undefined;
  /** The root as the kernel names it (symlinks resolved), one char per byte. */
  private readonly realRoot: string;
  /** Bytes an image path may take from the host's root to its own first byte (see checkLength). */
  private readonly rootLength: number;
  /** The root directory's identity, to tell a vanished root (the host's doing) from a name's error. */
  private readonly rootIno: { dev: number; ino: number };
  private readonly rootGid: number;
  private written = new Set<string>();
  private xattrs = new PathMap<Map<string, Buffer>>();
  /** The layer's directory entries, by their cleaned names: see finishLayer. */
  private dirTimes: { parts: string[]; atime: number; mtime: number }[] = [];
  /** Paths (physical) of device nodes and FIFOs left out, in any layer, so hard links to them are left out too. */
  private readonly skipped = new PathMap<true>();
  /**
   * Set once a layer carries a default ACL: the kernel then derives new entries' modes from it
   * instead of the umask, so every mode is set with chmod from then on.
   */
  private chmodAlways = false;
  readonly stats: ApplyStats = { entries: 0, files: 0, bytes: 0, skipped: 0, xattrs: 0, warnings: [] };
  private warned = 0;

  private warn(line: string): void {
    const w = this.stats.warnings;
    if (++this.warned <= MAX_WARNINGS) w.push(line);
    else w[MAX_WARNINGS] = `and ${this.warned - MAX_WARNINGS} more warnings`;
  }

  /**
   * With `relative`, the process has made `root` its working directory and paths are given
   * relative to it: the kernel then walks only the components inside the image (open(2) on a
   * deep absolute path costs twice as much per file).
   */
  /**
   * `rootLength`: the bytes of the longest absolute path the root will have (the store's final
   * image directory, or the temporary it is built in if longer); every path of the image must
   * fit PATH_MAX after it. Default: the root's own real path.
   */
  constructor(
    readonly root: string,
    private readonly relative = false,
    rootLength?: number,
  ) {
    // Modes are created exact (see the rules above); this process only ever applies layers.
    process.umask(0);
    this.rootBytes = Buffer.from(root);
    const st = statSync(root);
    this.rootIno = { dev: st.dev, ino: st.ino };
    this.rootGid = inheritedGid(st.mode, st.gid);
    this.dirs.set('', this.rootGid);
    this.realRoot = realpathSync(root, { encoding: 'latin1' });
    this.rootLength = Math.max(rootLength ?? 0, this.realRoot.length);
  }

  /** Whether the root is still the directory this began with, where it was. */
  private rootInPlace(): boolean {
    try {
      const st = statSync(this.root);
      return st.dev === this.rootIno.dev && st.ino === this.rootIno.ino;
    } catch {
      return false;
    }
  }

  /**
   * Refuses a path (relative, physical) whose absolute form would not fit PATH_MAX: the host
   * names every path of the tree from its root (removal, the base volume's mkfs.ext4 -d,
   * containerd's applier, which works with absolute paths under its snapshot directory and
   * fails such a layer).
   */
  private checkLength(rel: string): void {
    const total = this.rootLength + 1 + rel.length + 1;
    if (total > PATH_MAX) {
      throw new LayerRefusal(`path is ${rel.length} bytes inside the image: with the image directory of the store (${this.rootLength} bytes) that exceeds PATH_MAX (${PATH_MAX} bytes with the NUL)`);
    }
  }

  /**
   * Whether `rel` is, on the file system now, a directory reached from the root through real
   * directories only. The cache (dirs) decides the path an entry goes to; this is what makes a
   * wrong cache harmless: the directory is opened without following a final symlink and the
   * kernel's own name for the open directory (/proc/self/fd, Linux proc(5)) must be the root
   * followed by `rel`, so no symlink anywhere in the path was followed. Three syscalls (open,
   * readlink, close), once per run of entries in one directory: tar writers group a
   * directory's entries, and the answer holds until the next removal.
   */
  private isRealDir(rel: string): boolean {
    if (rel === this.checked) return true;
    this.checkLength(rel);
    let fd: number;
    try {
      fd = openSync(this.abs(rel), DIR_FLAGS);
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return false;
      throw err;
    }
    try {
      const real = readlinkSync(`/proc/self/fd/${fd}`, { encoding: 'latin1' });
      if (real !== (rel ? `${this.realRoot === '/' ? '' : this.realRoot}/${rel}` : this.realRoot)) return false;
    } finally {
      closeSync(fd);
    }
    this.checked = rel;
    return true;
  }

  /**
   * The path to hand the file system: names are kept as bytes (one char per byte, see
   * tar-reader.ts) and go to the kernel as those bytes, never re-encoded.
   */
  private abs(rel: string): Buffer {
    if (this.relative) return Buffer.from(rel || '.', 'latin1');
    return rel ? Buffer.concat([this.rootBytes, Buffer.from(`/${rel}`, 'latin1')]) : this.rootBytes;
  }

  private readonly rootBytes: Buffer;

  /**
   * Resolves directory components chroot-style. With `create`, missing directories are made
   * (0755 root:root); without, undefined is returned when one is missing. The directory found
   * is checked (isRealDir); if the cache led elsewhere, it is dropped and the path walked again
   * with lstat alone.
   */
  private resolveDir(parts: string[], create: boolean): string | undefined {
    const got = this.walk(parts, create);
    if (got === undefined || this.isRealDir(got)) return got;
    this.dirs.clear();
    this.dirs.set('', this.rootGid);
    this.checked = undefined;
    const again = this.walk(parts, create);
    if (again !== undefined && !this.isRealDir(again)) throw new LayerRefusal(`parent /${showName(again)} is not a directory of the image`);
    return again;
  }

  private walk(parts: string[], create: boolean): string | undefined {
    const direct = parts.join('/');
    if (this.dirs.has(direct)) return direct;
    const todo = [...parts];
    const done: string[] = [];
    for (let hops = 0; todo.length > 0; ) {
      const p = todo.shift() as string;
      if (p === '..') {
        done.pop();
        continue;
      }
      const cand = done.length ? `${done.join('/')}/${p}` : p;
      if (this.dirs.has(cand)) {
        done.push(p);
        continue;
      }
      const st = lstatSync(this.abs(cand), { throwIfNoEntry: false });
      // A node left out stands where containerd made it: no directory (its mkparent fails).
      if (!st && this.skipped.has(cand)) throw new LayerRefusal(`parent /${showName(cand)} is not a directory (a device node or FIFO of the image, left out here)`);
      if (!st) {
        if (!create) return undefined;
        mkdirSync(this.abs(cand), 0o755);
        // A setgid parent hands its bit down to a new directory.
        chmodSync(this.abs(cand), 0o755);
        this.dirs.set(cand, egid);
        done.push(p);
        continue;
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_LINK_HOPS) throw new LayerRefusal('too many levels of symbolic links');
        const target = readlinkSync(this.abs(cand), { encoding: 'latin1' });
        if (target.startsWith('/')) done.length = 0;
        todo.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'));
        continue;
      }
      if (!st.isDirectory()) throw new LayerRefusal(`parent /${showName(cand)} is not a directory`);
      this.dirs.set(cand, inheritedGid(st.mode, st.gid));
      done.push(p);
    }
    return done.join('/');
  }

  /**
   * Removes a path (not following it) and forgets what was known of it and below it. `path` is
   * made canonical first, so the cache is keyed as dirs says (`a/` is `a`).
   */
  private remove(path: string): void {
    const rel = cleanParts(path).join('/');
    if (!rel) return;
    // containerd set these xattrs when it wrote the entry, on an inode another hard link may
    // share and keep: they are set before the path goes.
    if (this.xattrs.hasTree(rel)) this.flushXattrs();
    this.checked = undefined;
    this.dirs.deleteTree(rel);
    this.xattrs.deleteTree(rel);
    this.skipped.deleteTree(rel);
    rmSync(this.abs(rel), { recursive: true, force: true });
  }

  /**
   * Runs `setfattr -h --restore` on a dump: undefined when every attribute was set, else its
   * error output (setfattr sets what it can and goes on). The C locale keeps the kernel's
   * messages (strerror) as the caller matches them.
   */
  private setfattr(dump: string): string | undefined {
    try {
      execFileSync('setfattr', ['-h', '--restore=-'], {
        cwd: this.relative ? '.' : this.root, input: dump, stdio: ['pipe', 'ignore', 'pipe'], maxBuffer: 16 << 20, env: { ...process.env, LC_ALL: 'C' },
      });
      return undefined;
    } catch (err) {
      if (errno(err) === 'ENOENT') throw new ApplyError('setfattr is not installed (Debian package attr): it sets the layer\'s xattrs', 'ENOENT');
      const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
      return stderr || (err as Error).message;
    }
  }

  /** Removes everything under `rel` that this layer has not written. */
  private opaque(rel: string): void {
    if (!this.isRealDir(rel)) return;
    let names: string[];
    try {
      names = readdirSync(this.abs(rel), { encoding: 'latin1' });
    } catch {
      return;
    }
    for (const n of names) {
      const child = rel ? `${rel}/${n}` : n;
      if (!this.written.has(child)) this.remove(child);
      else if (this.dirs.has(child)) this.opaque(child);
    }
  }

  /**
   * Applies one layer read from `source` (the decompressed tar stream, read(2)-like: 0 at its
   * end). `check` runs every few hundred entries (the caller's chance to give up).
   */
  applyLayer(source: ReadInto, check: () => void = () => undefined): void {
    this.written = new Set();
    this.xattrs = new PathMap();
    this.dirTimes = [];
    const tar = new TarReader(new ChunkReader(source));
    for (let e = tar.next(); e; e = tar.next()) {
      if (++this.stats.entries % 256 === 0) check();
      try {
        this.entry(e, tar);
      } catch (err) {
        throw this.classify(err, shortName(e.path));
      }
    }
    try {
      this.finishLayer();
    } catch (err) {
      throw this.classify(err, undefined);
    }
  }

  /**
   * The error of an entry (named `name`) as the layer's (LayerRefusal: the image is refused)
   * or the host's (ApplyError with its code), by where it comes from: see CONTENT_CODES.
   */
  private classify(err: unknown, name: string | undefined): ApplyError {
    const prefix = name === undefined ? '' : `${name}: `;
    if (err instanceof LayerRefusal || err instanceof TarFormatError) return new LayerRefusal(`${prefix}${(err as Error).message}`);
    const code = errno(err) ?? (err as ApplyError).code;
    if (code && CONTENT_CODES.has(code) && this.rootInPlace()) return new LayerRefusal(`${prefix}${describeError(err)}`);
    return new ApplyError(`${prefix}${describeError(err)}`, code);
  }

  private entry(e: TarEntry, tar: TarReader): void {
    const parts = cleanParts(e.path);
    const base = parts.pop();
    if (base === undefined) return; // the root itself: containerd leaves it alone
    for (const p of [...parts, base]) {
      if (p.length > NAME_MAX) throw new LayerRefusal(`a name component is ${p.length} bytes, over NAME_MAX (${NAME_MAX})`);
    }
    // As named, before its parents are made: a path too long anyway is refused as itself.
    this.checkLength([...parts, base].join('/'));
    e.uid = hostId(e.uid);
    e.gid = hostId(e.gid);
    if (base.startsWith('.wh.')) {
      const gone = base.slice(4);
      // `.wh.`, `.wh..` and `.wh...` would remove the directory itself or its parent (the
      // image root's parent at the top): no file system change is spelled that way, and
      // containerd refuses them (archive/tar.go: "invalid whiteout name"). A `/` cannot be in
      // a component; checked all the same, as the name goes to rm.
      if (base !== '.wh..wh..opq' && (gone === '' || gone === '.' || gone === '..' || gone.includes('/'))) {
        throw new LayerRefusal(`whiteout ${showName(base)} names no file`);
      }
      // Missing parents are made first, as for any entry: containerd 1.7's applyNaive
      // (archive/tar.go) calls mkparent before it converts the whiteout, so `a/b/.wh.c` over
      // nothing leaves the empty directories a and a/b.
      const parent = this.resolveDir(parts, true) as string;
      if (base === '.wh..wh..opq') this.opaque(parent);
      else if (!base.startsWith('.wh..wh.')) this.remove(parent ? `${parent}/${gone}` : gone);
      return;
    }
    const parent = this.resolveDir(parts, true) as string;
    const rel = parent ? `${parent}/${base}` : base;
    this.checkLength(rel);
    const at = this.abs(rel);
    this.written.add(rel);
    if (e.type === 'char' || e.type === 'block' || e.type === 'fifo') {
      this.skip(rel, e);
      return;
    }
    if (this.skipped.size) this.skipped.delete(rel);
    let onSymlink = false;
    switch (e.type) {
      case 'dir': {
        let made = this.make(() => mkdirSync(at, 0o700));
        if (!made && !lstatSync(at).isDirectory()) {
          this.remove(rel);
          mkdirSync(at, 0o700);
          made = true;
        }
        if (asRoot && (!made || e.uid !== 0 || e.gid !== this.dirs.get(parent))) lchownSync(at, e.uid, e.gid);
        chmodSync(at, e.mode);
        this.dirs.set(rel, inheritedGid(e.mode, e.gid));
        this.dirTimes.push({ parts: [...parts, base], atime: fsTime(e.atime, e.atimeNsec), mtime: fsTime(e.mtime, e.mtimeNsec) });
        break;
      }
      case 'file': {
        const fd = this.create(rel, () => openSync(at, WRITE_FLAGS, e.mode & 0o777));
        try {
          const sparse = e.sparse;
          // Go's sparse reader fails the read of such data (errMissData, errUnrefData), and
          // containerd the layer.
          if (e.sparseMismatch) throw new TarFormatError(e.sparseMismatch);
          if (sparse) {
            try {
              let i = 0;
              let into = 0;
              tar.data((b) => {
                for (let off = 0; off < b.length; ) {
                  const c = sparse[i];
                  if (!c) throw new LayerRefusal('sparse data beyond its map');
                  const take = Math.min(c.length - into, b.length - off);
                  writeAll(fd, b.subarray(off, off + take), c.offset + into);
                  off += take;
                  into += take;
                  if (into === c.length) {
                    i++;
                    into = 0;
                  }
                }
              }, e.size);
              ftruncateSync(fd, e.realSize ?? e.size);
            } catch (err) {
              // EFBIG: the map or real size reaches past the largest file the file system holds
              // (its s_maxbytes); a size no file here can have is the layer's, not the host's.
              if (errno(err) === 'EFBIG') throw new LayerRefusal(`sparse real size ${e.realSize ?? e.size} is beyond the largest file this file system holds`);
              throw err;
            }
          } else {
            tar.data((b) => writeAll(fd, b, null), e.size);
          }
          // chown drops setuid/setgid, so the mode comes after it.
          if (asRoot && (e.uid !== 0 || e.gid !== this.dirs.get(parent))) fchownSync(fd, e.uid, e.gid);
          if (e.mode & SPECIAL_BITS || this.chmodAlways) fchmodSync(fd, e.mode);
          futimesSync(fd, fsTime(e.atime, e.atimeNsec), fsTime(e.mtime, e.mtimeNsec));
        } finally {
          closeSync(fd);
        }
        this.stats.files++;
        this.stats.bytes += e.size;
        break;
      }
      case 'symlink': {
        this.create(rel, () => symlinkSync(Buffer.from(e.linkpath, 'latin1'), at));
        onSymlink = true;
        if (asRoot && (e.uid !== 0 || e.gid !== this.dirs.get(parent))) lchownSync(at, e.uid, e.gid);
        lutimesSync(at, fsTime(e.atime, e.atimeNsec), fsTime(e.mtime, e.mtimeNsec));
        break;
      }
      case 'hardlink': {
        const tparts = cleanParts(e.linkpath);
        const tbase = tparts.pop();
        const tparent = tbase === undefined ? undefined : this.resolveDir(tparts, false);
        const target = tparent === undefined ? undefined : tparent ? `${tparent}/${tbase}` : (tbase as string);
        const tst = target === undefined ? undefined : lstatSync(this.abs(target), { throwIfNoEntry: false });
        // containerd makes the node and links to it; without the node the link is left out too.
        if (!tst && target !== undefined && this.skipped.has(target)) {
          this.skip(rel, e);
          return;
        }
        if (target === undefined || !tst) throw new LayerRefusal(`hard link target ${showName(e.linkpath)} does not exist in the image`);
        if (tst.isDirectory()) throw new LayerRefusal(`hard link target ${showName(e.linkpath)} is a directory`);
        // containerd removes what the link's path holds before link(2) (archive/tar.go,
        // applyNaive), and with it the target: the link fails (ENOENT) and the layer with it.
        if (target === rel) throw new LayerRefusal(`hard link to itself (target ${showName(e.linkpath)}): containerd removes the path before linking it, so its target is gone`);
        this.create(rel, () => linkSync(this.abs(target), at));
        // containerd set the xattrs of earlier entries before this lchown, which drops a
        // security.capability of the shared inode: pending ones are set first, to be dropped alike.
        if (asRoot && this.xattrs.size) this.flushXattrs();
        // As containerd: the link's header owner and mode go to the shared inode too. A hard
        // link to a symlink is that symlink (link(2) does not follow): chmod would follow it
        // out of the image, and Linux has no lchmod, so its mode stays (containerd 1.x leaves
        // it, and what it points at, alone too).
        if (asRoot) lchownSync(at, e.uid, e.gid);
        if (!tst.isSymbolicLink()) chmodSync(at, e.mode);
        else onSymlink = true;
        // So do its times (containerd archive/tar.go sets every entry's times, without
        // following a symlink): the last link of an inode decides its mtime.
        lutimesSync(at, fsTime(e.atime, e.atimeNsec), fsTime(e.mtime, e.mtimeNsec));
        break;
      }
    }
    // Every entry type, symlinks too: containerd 1.7 (archive/tar.go, createTarFile) sets each
    // SCHILY.xattr.* record with lsetxattr whatever the entry is; setfattr -h does not follow.
    if (e.xattrs.size) {
      let attrs = e.xattrs;
      for (const name of e.xattrs.keys()) {
        const why = xattrRefusal(name, onSymlink);
        if (why === undefined) continue;
        if (attrs === e.xattrs) attrs = new Map(e.xattrs);
        attrs.delete(name);
        this.warn(`ignored xattr ${showName(name)} on /${showName(rel)}: ${why}`);
      }
      if (attrs.size) {
        // A directory over a directory keeps what the first entry set: as containerd, which
        // sets each entry's xattrs when it writes it.
        const earlier = this.xattrs.get(rel);
        this.xattrs.set(rel, earlier ? new Map([...earlier, ...attrs]) : attrs);
      }
      if (attrs.has('system.posix_acl_default')) this.chmodAlways = true;
      // ACLs are set now, not with the layer's batch: a default ACL decides the ACL and mode of
      // the entries created in the directory after it (in this layer too), and an access ACL
      // rewrites the group bits, which containerd's chmod after the xattrs (createTarFile:
      // Lchown, xattrs, chmod) sets back to the header's. Hard links to symlinks keep their mode.
      if (attrs.has('system.posix_acl_default') || attrs.has('system.posix_acl_access')) {
        this.flushXattrs();
        if (!onSymlink && this.dirs.has(parent) && this.isRealDir(parent)) chmodSync(at, e.mode);
      }
    }
  }

  /**
   * Leaves out a device node or FIFO (or a hard link to one). It still replaces what its path
   * held, as every entry does unless both are directories (OCI image spec, "Changeset
   * over existing files"): a lower layer's file or directory there is removed.
   */
  private skip(rel: string, e: TarEntry): void {
    this.stats.skipped++;
    this.remove(rel);
    if (e.xattrs.size) this.trySkippedXattrs(rel, e.xattrs);
    this.skipped.set(rel, true);
  }

  /**
   * containerd sets a node's xattrs as any entry's, and a value the kernel refuses (EINVAL for
   * a malformed security.capability, E2BIG…) fails the layer there too: they are set on a
   * regular file standing in for the node, then removed with it. As on a node, a user.* xattr
   * is skipped with a warning (xattr(7): EPERM on anything but files and directories), as are
   * trusted.* and unknown namespaces.
   */
  private trySkippedXattrs(rel: string, xattrs: Map<string, Buffer>): void {
    const attrs = new Map<string, Buffer>();
    for (const [name, value] of xattrs) {
      const why = name.startsWith('user.') ? 'Operation not permitted (user.* xattrs go on files and directories only)' : xattrRefusal(name, false);
      if (why === undefined) attrs.set(name, value);
      else this.warn(`ignored xattr ${showName(name)} on /${showName(rel)}: ${why}`);
    }
    if (!attrs.size) return;
    this.flushXattrs();
    closeSync(openSync(this.abs(rel), WRITE_FLAGS, 0o600));
    const counted = this.stats.xattrs;
    try {
      this.xattrs.set(rel, attrs);
      this.flushXattrs();
    } finally {
      this.stats.xattrs = counted;
      this.xattrs.clear();
      this.remove(rel);
    }
  }

  /** Runs `make`: true if it made the path, false if the path exists. */
  private make(make: () => void): boolean {
    try {
      make();
      return true;
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
      return false;
    }
  }

  /** Runs `make`; whatever the path held is removed first when it is in the way. */
  private create<T>(rel: string, make: () => T): T {
    try {
      return make();
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
    this.remove(rel);
    return make();
  }

  /**
   * Sets what xattrs are pending (flushXattrs), then the times of the layer's directory entries
   * (written after their content), as containerd's applyNaive does at the layer's end: each
   * entry's name is resolved again (fs.RootPath: symlinks followed, the last one too, never out
   * of the root) and whatever it names now takes the entry's times, a file that replaced the
   * directory included; a name that resolves to nothing fails the layer (UtimesNanoAt ENOENT).
   */
  private finishLayer(): void {
    this.flushXattrs();
    for (const d of this.dirTimes) {
      const rel = this.resolveName(d.parts);
      if (rel === undefined) {
        throw new LayerRefusal(`${shortName(d.parts.join('/'))}: setting the directory entry's times at the layer's end: no such file or directory (containerd's applier sets them by name then, and fails)`);
      }
      // A node left out: containerd sets its times, nothing to set here.
      if (rel === null) continue;
      // The parent is a real directory of the image (resolveDir); the name is not followed.
      lutimesSync(this.abs(rel), d.atime, d.mtime);
    }
  }

  /**
   * A name resolved chroot-style with every symlink followed, the last component's too (as
   * continuity's fs.RootPath resolves it): the physical path it names, undefined when nothing
   * is there, null when a device node or FIFO left out is.
   */
  private resolveName(parts: string[]): string | null | undefined {
    let todo = [...parts];
    for (let hops = 0; ;) {
      const base = todo.pop();
      if (base === undefined) return '';
      const parent = this.resolveDir(todo, false);
      if (parent === undefined) return undefined;
      const rel = parent ? `${parent}/${base}` : base;
      const st = lstatSync(this.abs(rel), { throwIfNoEntry: false });
      if (!st) return this.skipped.has(rel) ? null : undefined;
      if (!st.isSymbolicLink()) return rel;
      if (++hops > MAX_LINK_HOPS) throw new LayerRefusal('too many levels of symbolic links');
      const target = readlinkSync(this.abs(rel), { encoding: 'latin1' });
      todo = cleanParts(target.startsWith('/') ? target : `${parent}/${target}`);
    }
  }

  /**
   * Sets the pending xattrs in one batch (one setfattr for all: a process per entry would cost
   * a fork each), at the layer's end or as soon as their being late would show (see entry: ACLs,
   * a hard link's chown). If the batch fails (setfattr sets what it can and names only the path
   * of what it could not), every xattr is set again one by one to learn which the kernel
   * refuses: ENOTSUP and EPERM are skipped with a warning, as containerd skips them; anything
   * else fails the layer.
   */
  private flushXattrs(): void {
    if (this.xattrs.size) {
      let dump = '';
      const all: [string, string, Buffer][] = [];
      for (const [rel, attrs] of this.xattrs) {
        const slash = rel.lastIndexOf('/');
        // Every parent was resolved to a real directory when the entry was written and is
        // forgotten if removed since; checked again, so setfattr (which follows symlinks in
        // the parents) cannot be led out of the tree even by a wrong cache.
        const parent = slash < 0 ? '' : rel.slice(0, slash);
        if (!this.dirs.has(parent) || !this.isRealDir(parent)) continue;
        dump += `# file: ${quote(Buffer.from(rel, 'latin1'))}\n`;
        for (const [name, value] of attrs) {
          dump += xattrLine(name, value);
          all.push([rel, name, value]);
        }
        dump += '\n';
      }
      if (this.setfattr(dump) === undefined) this.stats.xattrs += all.length;
      else {
        for (const [rel, name, value] of all) {
          const stderr = this.setfattr(`# file: ${quote(Buffer.from(rel, 'latin1'))}\n${xattrLine(name, value)}\n`);
          if (stderr === undefined) this.stats.xattrs++;
          else if (/Operation not (supported|permitted)/.test(stderr)) this.warn(`ignored xattr ${showName(name)} on /${showName(rel)}: ${/supported/.test(stderr) ? 'Operation not supported' : 'Operation not permitted'}`);
          else {
            const message = `setting xattr ${showName(name)} on /${showName(rel)}: ${stderr.replace(/^setfattr: [^\n]*?: /, '')}`;
            // A value over XATTR_SIZE_MAX (E2BIG), one the namespace's handler rejects (EINVAL,
            // ERANGE) is the layer's; running out of room or quota is the host's.
            if (/Argument list too long|Numerical result out of range|Invalid argument/.test(stderr)) throw new LayerRefusal(message);
            throw new ApplyError(message, /No space left/.test(stderr) ? 'ENOSPC' : /Disk quota exceeded/.test(stderr) ? 'EDQUOT' : undefined);
          }
        }
      }
      this.xattrs.clear();
    }
  }
}

/**
 * One attribute of a setfattr --restore dump: the name (one char per byte) quoted, the value in
 * base64; an empty value as `""` (setfattr refuses an empty `0s`), set empty as containerd sets it.
 */
function xattrLine(name: string, value: Buffer): string {
  return `${quote(Buffer.from(name, 'latin1'))}=${value.length ? `0s${value.toString('base64')}` : '""'}\n`;
}

/** getfattr's quoting, which setfattr --restore undoes: anything unusual as a 3-digit octal escape. */
function quote(b: Buffer): string {
  let out = '';
  for (const c of b) {
    out += (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2e || c === 0x2f || c === 0x5f || c === 0x2d
      ? String.fromCharCode(c)
      : `\\${c.toString(8).padStart(3, '0')}`;
  }
  return out;
}
