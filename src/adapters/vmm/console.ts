import { statSync, watch, type FSWatcher } from 'node:fs';
import { open, rename, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { ErrorCode, MatchlockError } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';

/** The previous generation of a bounded log: `<file>.1`. */
export const rotatedOf = (path: string) => `${path}.1`;

/**
 * Moves the files a VMM writes for one run (its console, log, metrics, stdout, stderr) to
 * `<file>.1` before the next run starts, so each start begins with empty files and the last
 * run's output (a crash reason) survives one restart. Needed because the VMMs do not start
 * their files afresh themselves: Firecracker opens its log and metrics read-write without
 * O_TRUNC or O_APPEND (v1.11.0 src/vmm/src/vmm_config/mod.rs open_file_nonblock, v1.16.1 src/vmm/src/utils/mod.rs), so a
 * new run writes over the old bytes from offset 0 and leaves the rest; the spawner appends the
 * console (stdout); Cloud Hypervisor truncates its serial and log files (File::create) and so
 * would lose the crash reason. An empty file is left in place: it holds no run's output, and
 * moving it would replace an older `.1` that does. Files that are missing are skipped.
 */
export async function rotateForStart(paths: readonly string[]): Promise<void> {
  for (const path of paths) {
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st || st.size === 0) continue;
    await rename(path, rotatedOf(path)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}

/** What `stat` says of a file: enough to tell which file a path names and what it holds. */
type FileStat = { ino: number; dev: number; size: number; blocks: number };

/**
 * Bytes of data a file holds, at most its size: its allocated blocks (`st_blocks`, 512-byte
 * units, stat(2)) when it has any. A writer that does not open with O_APPEND goes on at its own
 * offset after a cut, leaving a hole before it: the size then counts the hole, the blocks do not.
 * Blocks not reported (0) leave the size.
 */
const dataBytes = (st: FileStat) => (st.blocks > 0 ? Math.min(st.size, st.blocks * 512) : st.size);

/** `buf` without the NUL bytes it starts with: a hole left by a cut reads as zeros. */
function afterHole(buf: Buffer): Buffer {
  let i = 0;
  while (i < buf.length && buf[i] === 0) i++;
  return buf.subarray(i);
}

/**
 * Keeps a file a VMM writes to under `maxBytes` of data: once it holds more, its last `maxBytes`
 * move to `<file>.1` (replacing the older generation) and the file is truncated in place, so the
 * VMM's open descriptor stays valid (copytruncate); bytes written between the copy and the
 * truncation are lost. At most about 2 * maxBytes stay on disk per file. Returns whether the
 * file was cut.
 *
 * A writer with O_APPEND (QEMU's console with logappend, the spawner's stdout and stderr) goes
 * on at offset 0 after a cut. One without it (Firecracker's log and metrics files, Cloud
 * Hypervisor's) goes on at its own offset: the file's size stays what it was and the next write
 * lands after a hole (truncate(2) frees the blocks, the offset is the writer's). So the bound
 * counts the file's allocated blocks, not its size, and the NUL bytes a hole reads as are left
 * out of `.1`: a reader of such a file sees its size keep growing by all the VMM ever wrote,
 * the part before the last write since the cut reading as zeros, while its disk use stays
 * bounded. `readTail` skips the hole.
 */
export async function boundFile(path: string, maxBytes: number): Promise<boolean> {
  const st = await stat(path).catch(() => undefined);
  return st !== undefined && cut(path, maxBytes, st);
}

/** `boundFile` with the path's stat already made: a file under its bound costs nothing more. */
async function cut(path: string, maxBytes: number, seen: FileStat): Promise<boolean> {
  if (dataBytes(seen) <= maxBytes) return false;
  let fh;
  try {
    fh = await open(path, 'r+');
  } catch {
    return false; // gone with its VM
  }
  try {
    // Read again through the open file: the one cut is the one opened.
    const st = await fh.stat();
    if (dataBytes(st) <= maxBytes) return false;
    const from = Math.max(0, st.size - maxBytes);
    const keep = Buffer.alloc(st.size - from);
    const { bytesRead } = await fh.read(keep, 0, keep.length, from);
    const tmp = `${rotatedOf(path)}.tmp`;
    await writeFile(tmp, afterHole(keep.subarray(0, bytesRead)));
    await rename(tmp, rotatedOf(path));
    await fh.truncate(0);
    return true;
  } finally {
    await fh.close();
  }
}

/**
 * A file's stat, undefined when it cannot be had (not made yet, gone with its VM). Made in
 * place: every VM brings three new files to the bound's next pass, each looked at twice, and a
 * stat through fs/promises is a thread-pool round trip costing the main thread more than the
 * call.
 */
function lookAt(path: string): FileStat | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/**
 * Bounds every file VMMs keep growing (`files()` names them), every `intervalMs`, while the
 * daemon runs. A detached VMM writes while the daemon is down; its files are cut on the first
 * pass after the daemon starts again. Each file is watched (inotify through fs.watch) once it
 * has been looked at, and a pass looks again only at files that changed since, so idle VMs cost
 * no file system call; a file that cannot be watched (not made yet, the watch refused) is looked
 * at on every pass until it can be. A watch follows an inode, not a path: a file moved or
 * renamed over, removed and made again, is told by its inode (`st_ino`, `st_dev`) on the look
 * the change to the old one brings (inotify reports its link count or its move), and the new
 * file is watched instead.
 */
export class LogBound {
  private timer: NodeJS.Timeout | undefined;
  /** The pass under way, and the one to run after it (shared by every caller meanwhile). */
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;
  /** Watched files by path: the inode watched, and whether it changed since its last look. */
  private readonly watched = new Map<string, { watcher: FSWatcher; ino: number; dev: number; changed: boolean }>();

  constructor(
    private readonly files: () => Promise<string[]>,
    private readonly maxBytes: number,
    private readonly log: Logger,
    private readonly intervalMs = 1000,
  ) {}

  start(): void {
    if (this.maxBytes <= 0 || this.timer) return;
    void this.pass();
    this.timer = setInterval(() => void this.pass(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const path of [...this.watched.keys()]) this.unwatch(path);
  }

  /**
   * One pass over the files that changed or are not watched; errors are logged, never thrown
   * (runs from a timer). Resolves once a pass that began after the call has ended: while one
   * runs, callers share the one that follows it, so what was written before the call is seen.
   */
  pass(): Promise<void> {
    if (!this.running) {
      this.running = this.look().finally(() => (this.running = undefined));
      return this.running;
    }
    this.next ??= this.running.then(() => {
      this.next = undefined;
      return this.pass();
    });
    return this.next;
  }

  private async look(): Promise<void> {
    try {
      const files = await this.files();
      const listed = new Set(files);
      for (const path of this.watched.keys()) if (!listed.has(path)) this.unwatch(path);
      let looked = 0;
      for (const f of files) {
        const w = this.watched.get(f);
        if (w && !w.changed) continue;
        // The looks are made in place (see lookAt): a burst of new VMs brings hundreds of files
        // to one pass, which lets requests in between every 32 of them.
        if (++looked % 32 === 0) await new Promise<void>((r) => setImmediate(r));
        try {
          const st = w ? await this.lookAgain(f, w) : await this.lookFirst(f);
          if (st && (await cut(f, this.maxBytes, st))) this.log.debug({ file: f, maxBytes: this.maxBytes }, 'log cut at its bound');
        } catch (err) {
          this.log.warn({ file: f, err: (err as Error).message }, 'could not bound log');
        }
      }
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'log bound pass failed');
    }
  }

  /**
   * A file not watched: its inode is read before the watch is placed, and its size after, so a
   * file replaced in between is seen (the inodes differ; watched again on the next pass) and a
   * write in between is seen by the watch. Undefined: not made yet.
   */
  private async lookFirst(path: string): Promise<FileStat | undefined> {
    const before = lookAt(path);
    if (!before) return undefined;
    this.watch(path, before);
    const st = lookAt(path);
    if (st && (st.ino !== before.ino || st.dev !== before.dev)) this.unwatch(path);
    return st;
  }

  /** A watched file that changed: the same inode, or a new file (watched from scratch). */
  private async lookAgain(path: string, w: { ino: number; dev: number; changed: boolean }): Promise<FileStat | undefined> {
    // Cleared before the look, so a write during it is seen by the next pass.
    w.changed = false;
    const st = lookAt(path);
    if (st && st.ino === w.ino && st.dev === w.dev) return st;
    this.unwatch(path);
    return this.lookFirst(path);
  }

  private watch(path: string, st: FileStat): void {
    let watcher: FSWatcher;
    try {
      watcher = watch(path, { persistent: false });
    } catch {
      return; // gone, or no watch left: looked at on every pass instead
    }
    const entry = { watcher, ino: st.ino, dev: st.dev, changed: false };
    // Any event is a look: a write ('change'), a new link count (renamed over, removed: also
    // 'change', from IN_ATTRIB) or the file moved away ('rename'), which the inode then tells.
    watcher.on('change', () => (entry.changed = true));
    watcher.on('error', () => this.unwatch(path));
    this.watched.set(path, entry);
  }

  private unwatch(path: string): void {
    const w = this.watched.get(path);
    if (!w) return;
    this.watched.delete(path);
    w.watcher.close();
  }
}

/**
 * What a log holds, and its size. A file with fewer blocks than its size has a hole a cut left
 * before a writer without O_APPEND (see `boundFile`), as large as all that writer ever wrote: it
 * is read from its end back to the first 64 KiB of zeros only, and without the zeros it starts
 * with.
 */
async function readData(path: string): Promise<{ data: Buffer; size: number }> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return { data: Buffer.alloc(0), size: 0 };
  }
  try {
    const st = await fh.stat();
    if (dataBytes(st) >= st.size) {
      const data = await fh.readFile();
      return { data, size: data.length };
    }
    const chunks: Buffer[] = [];
    const chunk = 64 * 1024;
    for (let end = st.size; end > 0; ) {
      const from = Math.max(0, end - chunk);
      const buf = Buffer.alloc(end - from);
      const { bytesRead } = await fh.read(buf, 0, buf.length, from);
      const got = buf.subarray(0, bytesRead);
      chunks.unshift(got);
      if (got.every((b) => b === 0)) break;
      end = from;
    }
    return { data: afterHole(Buffer.concat(chunks)), size: st.size };
  } finally {
    await fh.close();
  }
}

/**
 * The last `lines` lines of a bounded log (its `.1` generation first, then the file), and the
 * file's size when it was read, from where following continues. `lines` undefined: everything.
 */
export async function readTail(path: string, lines: number | undefined): Promise<{ data: Buffer; offset: number }> {
  const { data: current, size } = await readData(path);
  if (lines === 0) return { data: Buffer.alloc(0), offset: size };
  const all = Buffer.concat([(await readData(rotatedOf(path))).data, current]);
  if (lines === undefined) return { data: all, offset: size };
  // A trailing newline ends the last line rather than starting an empty one.
  let pos = all.length > 0 && all[all.length - 1] === 0x0a ? all.length - 1 : all.length;
  let from = 0;
  for (let n = 0; n < lines; n++) {
    const nl = pos > 0 ? all.lastIndexOf(0x0a, pos - 1) : -1;
    if (nl < 0) {
      from = 0;
      break;
    }
    from = nl + 1;
    pos = nl;
  }
  return { data: all.subarray(from), offset: size };
}

/**
 * Sends what is appended to `path` from `offset` on, until `signal` aborts. Wakes on inotify
 * (fs.watch) and polls every `pollMs` as well, since a VMM in another mount namespace or a
 * replaced file may not be seen by the watch. A file that shrank was cut at its bound: reading
 * starts over at its beginning, past the zeros of a hole a writer without O_APPEND left.
 */
export async function followFile(path: string, offset: number, signal: AbortSignal, send: (data: Buffer) => Promise<void> | void, pollMs = 200): Promise<void> {
  let wake: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const arm = () => {
    if (watcher) return;
    try {
      watcher = watch(path, { persistent: false }, poke);
      watcher.on('error', () => {
        watcher?.close();
        watcher = undefined;
      });
    } catch {
      watcher = undefined; // not there yet; polling finds it
    }
  };
  signal.addEventListener('abort', poke, { once: true });
  const buf = Buffer.alloc(64 * 1024);
  let atCut = false;
  try {
    while (!signal.aborted) {
      arm();
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch {
        size = 0;
      }
      if (size < offset) {
        offset = 0;
        atCut = true;
      }
      if (size > offset) {
        const fh = await open(path, 'r').catch(() => undefined);
        if (fh) {
          try {
            while (offset < size && !signal.aborted) {
              const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - offset), offset);
              if (bytesRead === 0) break;
              offset += bytesRead;
              let data: Buffer = buf.subarray(0, bytesRead);
              // After a cut, a writer without O_APPEND went on past a hole (see boundFile).
              if (atCut) data = afterHole(data);
              if (data.length === 0) continue;
              atCut = false;
              await send(Buffer.from(data));
            }
          } finally {
            await fh.close();
          }
        }
        continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, pollMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  } finally {
    watcher?.close();
  }
}

/**
 * Interactive consoles: one client per VM at a time (QEMU's socket chardev serves one
 * connection; a second would wait unseen in its backlog). `attach` connects to the VMM's console
 * socket and hands back the socket; the VM is free again once it closes.
 */
export class ConsoleAttachments {
  private readonly attached = new Set<string>();

  /**
   * Errors: FailedPrecondition when another client is attached or the socket does not answer
   * (the VMM is not running).
   */
  async attach(uid: string, socketPath: string): Promise<Socket> {
    if (this.attached.has(uid)) throw new MatchlockError(ErrorCode.FailedPrecondition, `the console of ${uid} is attached by another client; detach it first`);
    this.attached.add(uid);
    try {
      const sock = await new Promise<Socket>((resolve, reject) => {
        const s = connect(socketPath);
        s.once('connect', () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
      sock.once('close', () => this.attached.delete(uid));
      return sock;
    } catch (err) {
      this.attached.delete(uid);
      throw new MatchlockError(ErrorCode.FailedPrecondition, `the console of ${uid} is not available (is its VMM running?): ${(err as Error).message}`, { cause: err });
    }
  }
}
