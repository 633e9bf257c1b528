import { watch, type FSWatcher } from 'node:fs';
import { open, rename, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { ErrorCode, MatchlockError } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';

/** The previous generation of a bounded log: `<file>.1`. */
export const rotatedOf = (path: string) => `${path}.1`;

/**
 * Keeps a file a VMM appends to under `maxBytes`: once it is larger, its last `maxBytes` move to
 * `<file>.1` (replacing the older generation) and the file is truncated in place, so the VMM's
 * open descriptor stays valid (copytruncate). The VMM must write with O_APPEND (every provider
 * opens its logs so) for the next write to land at offset 0; bytes written between the copy
 * and the truncation are lost. At most about 2 * maxBytes stay on disk per file. Returns
 * whether the file was cut.
 */
export async function boundFile(path: string, maxBytes: number): Promise<boolean> {
  // A file under its bound (nearly every look) costs one stat, not an open, fstat and close:
  // each is a trip through libuv's thread pool, and a burst of creates looks at three files of
  // every new VM. The size is read again through the open file before anything is cut.
  const size = await stat(path).then((st) => st.size, () => undefined);
  if (size === undefined || size <= maxBytes) return false;
  let fh;
  try {
    fh = await open(path, 'r+');
  } catch {
    return false; // not made yet, or gone with its VM
  }
  try {
    const { size } = await fh.stat();
    if (size <= maxBytes) return false;
    const keep = Buffer.alloc(maxBytes);
    const { bytesRead } = await fh.read(keep, 0, maxBytes, size - maxBytes);
    const tmp = `${rotatedOf(path)}.tmp`;
    await writeFile(tmp, keep.subarray(0, bytesRead));
    await rename(tmp, rotatedOf(path));
    await fh.truncate(0);
    return true;
  } finally {
    await fh.close();
  }
}

/**
 * Bounds every file VMMs keep growing (`files()` names them), every `intervalMs`, while the
 * daemon runs. A detached VMM writes while the daemon is down; its files are cut on the first
 * pass after the daemon starts again. Each file is watched (inotify through fs.watch) once it
 * has been looked at, and a pass looks again only at files that changed since, so idle VMs cost
 * no file system call; a file that cannot be watched (not made yet, the watch refused) is looked
 * at on every pass until it can be.
 */
export class LogBound {
  private timer: NodeJS.Timeout | undefined;
  /** The pass under way, and the one to run after it (shared by every caller meanwhile). */
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;
  /** Watched files by path, and whether one changed since its last look. */
  private readonly watched = new Map<string, { watcher: FSWatcher; changed: boolean }>();

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
      for (const f of files) {
        const w = this.watched.get(f);
        if (w && !w.changed) continue;
        // Watched before the look, so a write during it is seen by the next pass.
        if (w) w.changed = false;
        else this.watch(f);
        try {
          if (await boundFile(f, this.maxBytes)) this.log.debug({ file: f, maxBytes: this.maxBytes }, 'log cut at its bound');
        } catch (err) {
          this.log.warn({ file: f, err: (err as Error).message }, 'could not bound log');
        }
      }
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'log bound pass failed');
    }
  }

  private watch(path: string): void {
    let watcher: FSWatcher;
    try {
      watcher = watch(path, { persistent: false });
    } catch {
      return; // not made yet, or no watch left: looked at on every pass instead
    }
    const entry = { watcher, changed: false };
    // 'rename': the file was moved or removed, and the watch follows the old inode: drop it,
    // so the next pass looks at whatever has the name now.
    watcher.on('change', (type) => (type === 'rename' ? this.unwatch(path) : (entry.changed = true)));
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

async function readAll(path: string): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return Buffer.alloc(0);
  }
  try {
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/**
 * The last `lines` lines of a bounded log (its `.1` generation first, then the file), and the
 * file's size when it was read, from where following continues. `lines` undefined: everything.
 */
export async function readTail(path: string, lines: number | undefined): Promise<{ data: Buffer; offset: number }> {
  const current = await readAll(path);
  if (lines === 0) return { data: Buffer.alloc(0), offset: current.length };
  const all = Buffer.concat([await readAll(rotatedOf(path)), current]);
  if (lines === undefined) return { data: all, offset: current.length };
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
  return { data: all.subarray(from), offset: current.length };
}

/**
 * Sends what is appended to `path` from `offset` on, until `signal` aborts. Wakes on inotify
 * (fs.watch) and polls every `pollMs` as well, since a VMM in another mount namespace or a
 * replaced file may not be seen by the watch. A file that shrank was cut at its bound: reading
 * starts over at its beginning.
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
  try {
    while (!signal.aborted) {
      arm();
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch {
        size = 0;
      }
      if (size < offset) offset = 0;
      if (size > offset) {
        const fh = await open(path, 'r').catch(() => undefined);
        if (fh) {
          try {
            while (offset < size && !signal.aborted) {
              const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - offset), offset);
              if (bytesRead === 0) break;
              offset += bytesRead;
              await send(Buffer.from(buf.subarray(0, bytesRead)));
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
