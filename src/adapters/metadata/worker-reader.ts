import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { ErrorCode, MatchlockError } from '../../core/errors.js';
import type { MetaDataReader, ReadMetaData } from '../../core/ports.js';
import { PACKAGE_ROOT } from '../../package-root.js';
import type { ReadAnswer, ReadJob } from './read-worker.js';

/**
 * Below this many characters a meta-data entry is read in line: the plain `key: value` lines
 * CAPMVM sends take microseconds, and a document of this size under a millisecond or so.
 */
export const IN_LINE_MAX = 16 * 1024;

/** How long an idle reader thread is kept for the next large meta-data (ms). */
const IDLE_MS = 30_000;

/**
 * Heap of the reader thread (MiB): a nested document at the 1 MiB metadata limit needs about
 * 370 (bench/README.md, "Large meta-data off the event loop"); a document that needs more is
 * refused, where in line it would have grown the daemon's own heap.
 */
export const READER_HEAP_MB = 1024;

/**
 * Characters of meta-data waiting for the thread, at most: creates sent faster than it reads
 * are refused past this (ResourceExhausted, to be sent again) rather than queued without end,
 * which a daemon reading in line never did (it took one request at a time).
 */
export const QUEUED_MAX = 32 * 1024 * 1024;

const STOPPING = 'matchlockd is stopping: the meta-data was not read; create the VM again once matchlockd is back';

let workerSource: Promise<{ source: string; eval: boolean }> | undefined;

/**
 * What the thread runs. Compiled, tsc's output of read-worker.ts (also for a daemon running
 * from its bundle, as the unpack process does); from the TypeScript sources, read-worker.ts
 * bundled once per process by esbuild into one script (a worker does not take tsx's hooks).
 */
function source(): Promise<{ source: string; eval: boolean }> {
  const self = import.meta.url;
  if (!self.endsWith('.ts')) return Promise.resolve({ source: join(PACKAGE_ROOT, 'dist', 'adapters', 'metadata', 'read-worker.js'), eval: false });
  workerSource ??= import('esbuild').then(async (esbuild) => {
    const out = await esbuild.build({ entryPoints: [fileURLToPath(new URL('./read-worker.ts', self))], bundle: true, platform: 'node', format: 'cjs', target: 'node20', write: false, logLevel: 'silent' });
    const text = out.outputFiles[0]?.text;
    if (!text) throw new Error('esbuild wrote no bundle of the meta-data reader');
    return { source: text, eval: true };
  });
  return workerSource;
}

interface Pending {
  resolve: (r: ReadMetaData) => void;
  reject: (e: MatchlockError) => void;
  value: string;
  uid: string;
  field: string;
}

/**
 * The daemon's MetaDataReader: a meta-data entry of more than `inLineMax` characters (default
 * IN_LINE_MAX) is read by cloudInitMetaData on a worker thread, started at the first such create
 * and ended after `idleMs` (default 30 s) without one, so an idle daemon holds no second heap.
 * Readings are made one after the other; past `queuedMax` characters waiting (default
 * QUEUED_MAX) a reading is refused with ResourceExhausted. A document that needs more than the thread's heap
 * (`heapMb`, default READER_HEAP_MB) ends the thread and is refused with InvalidArgument naming
 * its field; readings queued behind it fail with Unavailable, to be sent again. A thread that
 * ends otherwise fails what it held with Internal naming why. The next reading starts a new
 * thread; the daemon never waits on one to exit. After close(), every value is left to the
 * caller (undefined).
 */
export class WorkerMetaDataReader implements MetaDataReader {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private queued = 0;
  private idle: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: { inLineMax?: number; idleMs?: number; heapMb?: number; queuedMax?: number } = {}) {}

  takes(value: string): boolean {
    return value.length > (this.opts.inLineMax ?? IN_LINE_MAX) && !this.closed;
  }

  async read(value: string, uid: string, field: string): Promise<ReadMetaData | undefined> {
    if (!this.takes(value)) return undefined;
    const max = this.opts.queuedMax ?? QUEUED_MAX;
    if (this.queued > 0 && this.queued + value.length > max) {
      throw new MatchlockError(ErrorCode.ResourceExhausted, `${field}: ${this.pending.size} large meta-data documents are being read (${this.queued} characters, at most ${max} wait at once); send the create again shortly`, { field });
    }
    // Counted as waiting from here, while the thread may still be starting.
    const id = this.nextId++;
    clearTimeout(this.idle);
    this.queued += value.length;
    const answer = new Promise<ReadMetaData>((resolve, reject) => this.pending.set(id, { resolve, reject, value, uid, field }));
    try {
      const worker = await this.thread();
      // Not still pending: the reader closed, or a thread ended and failed it, meanwhile.
      if (this.pending.has(id)) worker.postMessage({ id, value, uid, field } satisfies ReadJob);
    } catch (err) {
      this.take(id);
      throw err;
    }
    return answer;
  }

  /** Ends the thread; readings still pending fail with Unavailable. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idle);
    const w = this.worker;
    this.worker = undefined;
    this.failAll(new MatchlockError(ErrorCode.Unavailable, STOPPING));
    await w?.terminate();
  }

  private async thread(): Promise<Worker> {
    if (this.worker) return this.worker;
    const { source: src, eval: isEval } = await source();
    if (this.worker) return this.worker;
    const w = new Worker(src, { eval: isEval, resourceLimits: { maxOldGenerationSizeMb: this.opts.heapMb ?? READER_HEAP_MB } });
    this.worker = w;
    // The daemon's servers keep it running; the thread alone never does.
    w.unref();
    w.on('message', (a: ReadAnswer) => this.answer(a));
    w.on('error', (err: Error & { code?: string }) => this.lost(w, err.code === 'ERR_WORKER_OUT_OF_MEMORY', `it failed: ${err.message}`));
    w.on('exit', (code) => this.lost(w, false, `it exited with code ${code}`));
    return w;
  }

  /** The pending reading `id`, no longer pending. */
  private take(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (!p) return undefined;
    this.pending.delete(id);
    this.queued -= p.value.length;
    return p;
  }

  private answer(a: ReadAnswer): void {
    const p = this.take(a.id);
    if (!p) return;
    const outcome = a.ok ? Buffer.from(a.metaData.buffer, a.metaData.byteOffset, a.metaData.byteLength) : new MatchlockError(a.code as ErrorCode, a.message, a.field === undefined ? {} : { field: a.field });
    p.resolve({ value: p.value, uid: p.uid, outcome });
    if (this.pending.size === 0) this.armIdle();
  }

  private armIdle(): void {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      const w = this.worker;
      if (!w || this.pending.size > 0) return;
      this.worker = undefined;
      void w.terminate();
    }, this.opts.idleMs ?? IDLE_MS);
    this.idle.unref();
  }

  /**
   * The thread ended with readings pending. Out of heap, the oldest pending one (the thread
   * reads in order) is the document that needed it: refused naming its field; the others ask
   * for a retry.
   */
  private lost(w: Worker, outOfMemory: boolean, why: string): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    const [oldest] = this.pending.keys();
    const first = outOfMemory && oldest !== undefined ? this.take(oldest) : undefined;
    if (first) {
      const f = first.field;
      first.reject(new MatchlockError(ErrorCode.InvalidArgument, `${f}: reading it as cloud-init would needs more than the ${this.opts.heapMb ?? READER_HEAP_MB} MiB matchlockd gives a meta-data reading; give a smaller or simpler document`, { field: f }));
      this.failAll(new MatchlockError(ErrorCode.Unavailable, 'the meta-data reader restarted while this create waited for it; create the VM again'));
      return;
    }
    this.failAll(new MatchlockError(ErrorCode.Internal, `the meta-data reader (a worker thread) ended before it answered: ${why}; the VM was not created`));
  }

  private failAll(err: MatchlockError): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    this.queued = 0;
    for (const p of all) p.reject(err);
  }
}
