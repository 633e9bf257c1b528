import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../package-root.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import type { Logger } from '../core/ports.js';

/**
 * Starting programs without forking the daemon. Every child_process spawn forks the whole
 * Node process (100 MB and more): the kernel copies its page tables, and both sides then take
 * copy-on-write faults until the child execs. The daemon instead starts one small Python
 * process (libexec/spawner.py, python3-minimal's modules only) at start-up and hands it every
 * program start over a pipe; that process starts them with posix_spawn, which glibc does
 * without copying any address space (CLONE_VM|CLONE_VFORK). When python3 cannot be started,
 * programs are spawned directly, as before.
 */

/** How a program ended: one of code (exit status) and signal is set. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A long-running program (a VMM), its output going to files. */
export interface Launch {
  file: string;
  args: readonly string[];
  cwd?: string;
  /** Start the program in its own session (setsid), so it outlives the daemon's terminal. */
  setsid?: boolean;
  /** Appended to. */
  stdout: string;
  /** Appended to; emptied first when `truncateStderr`. */
  stderr: string;
  truncateStderr?: boolean;
  /** Files opened read-write and given to the program as fd 3, 4, … in order (/dev/tapN). */
  fdPaths?: readonly string[];
}

/**
 * A started program. `exit` resolves when it ends, or with undefined when its end can no longer
 * be seen here (the spawner that started it died: the program lives on, reparented to init).
 */
export interface Launched {
  pid: number;
  exit: Promise<ChildExit | undefined>;
}

/** A short program whose output is read back. */
export interface RunOptions {
  input?: string | Buffer;
  /** SIGTERM after this many ms. */
  timeoutMs: number;
  /** Bytes kept of stdout and of stderr each; the program gets SIGTERM past it. */
  maxBytes: number;
  /** A file stdout is written to (emptied first) instead of being read back. */
  stdoutFile?: string;
  /**
   * Calls the run off: the program gets SIGTERM, and SIGKILL if it still runs CANCEL_KILL_MS
   * later; the run resolves once it has ended, with killed 'canceled'.
   */
  signal?: AbortSignal;
}

/** How long a program whose run was called off has between SIGTERM and SIGKILL. */
export const CANCEL_KILL_MS = 5000;

export interface RunOutcome extends ChildExit {
  stdout: Buffer;
  stderr: Buffer;
  /** Why the program was killed: its timeout ran out, it wrote more than maxBytes, or its run was called off (RunOptions.signal). */
  killed?: 'timeout' | 'maxbuffer' | 'canceled';
}

/**
 * Sends `kill(signal)` when `signal` aborts (at once if it has), then SIGKILL CANCEL_KILL_MS
 * later; returns whether it aborted and a function that stops both once the program ended.
 */
function onCancel(signal: AbortSignal | undefined, kill: (sig: NodeJS.Signals) => void): { canceled: () => boolean; done: () => void } {
  if (!signal) return { canceled: () => false, done: () => undefined };
  let timer: NodeJS.Timeout | undefined;
  const abort = () => {
    kill('SIGTERM');
    timer = setTimeout(() => kill('SIGKILL'), CANCEL_KILL_MS);
  };
  if (signal.aborted) abort();
  else signal.addEventListener('abort', abort, { once: true });
  return {
    canceled: () => signal.aborted,
    done: () => {
      signal.removeEventListener('abort', abort);
      clearTimeout(timer);
    },
  };
}

/** The spawner script, in the package's libexec/. */
export const SPAWNER_SCRIPT = join(PACKAGE_ROOT, 'libexec', 'spawner.py');

/**
 * The interpreter that runs the spawner: the distribution's /usr/bin/python3 (Debian's
 * python3-minimal) when it is there, otherwise python3 from PATH. The distribution's comes
 * first because the first python3 on a PATH may be a version manager's shim (pyenv's takes
 * about a second to start) or a build of its own.
 */
export function spawnerInterpreter(): string {
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

/**
 * How the interpreter is run: -I (no user site, no PYTHON* variables, not the script's
 * directory on sys.path) and -S (no site module): only the standard library's own modules,
 * and a start of about 20 ms.
 */
const INTERPRETER_FLAGS = ['-I', '-S'];

const errnoError = (code: string, message: string, syscall: string): NodeJS.ErrnoException =>
  Object.assign(new Error(message), { code, errno: -((osConstants.errno as Record<string, number>)[code] ?? 0), syscall });

const signalName = (n: number): NodeJS.Signals | null =>
  (Object.entries(osConstants.signals).find(([, v]) => v === n)?.[0] as NodeJS.Signals | undefined) ?? null;

function field(v: string | Buffer): Buffer[] {
  const b = typeof v === 'string' ? Buffer.from(v) : v;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return [len, b];
}

/**
 * The daemon's environment as the spawner is sent it: NAME=value entries joined by NUL (a NUL
 * cannot occur in either). Built with one pass and one string, since it is compared at every
 * request: entries are split out only when it changed.
 */
function environmentKey(): string {
  let key = '';
  const env = process.env;
  for (const k in env) {
    const v = env[k];
    if (v === undefined || k.includes('=') || k.includes('\0') || v.includes('\0')) continue;
    key += key === '' ? `${k}=${v}` : `\0${k}=${v}`;
  }
  return key;
}

function checkArgs(file: string, args: readonly string[]): void {
  for (const a of [file, ...args]) {
    // execve takes C strings: a NUL would cut the argument short without a word.
    if (a.includes('\0')) throw Object.assign(new TypeError(`argument ${JSON.stringify(a)} of ${file} holds a NUL byte`), { code: 'ERR_INVALID_ARG_VALUE' });
  }
}

interface Pending {
  spawned(pid: number): void;
  /** A streamed program wrote this (an `out` event). */
  output?(data: Buffer): void;
  failed(err: NodeJS.ErrnoException): void;
  exited(e: ChildExit, out?: { stdout: Buffer; stderr: Buffer; why: string }): void;
  /** The spawner died: the request's outcome cannot be known any more. */
  lost(): void;
}

/** One running spawner process and the requests it has not finished. */
class SpawnerProcess {
  private readonly child: ChildProcess;
  private chunks: Buffer[] = [];
  private have = 0;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  /** Pending requests that do not keep the event loop alive: idle streamed programs. */
  private readonly loose = new Set<string>();
  readonly ready: Promise<boolean>;
  private closed = false;
  private started = false;
  /**
   * The environment the spawner was last sent. None at first, so the first request sends the
   * daemon's: the spawner's own may differ from it (an interpreter shim that puts its own
   * directory first in PATH).
   */
  private env = '';

  constructor(
    interpreter: string,
    script: string,
    private readonly onClose: (p: SpawnerProcess) => void,
  ) {
    this.child = spawn(interpreter, [...INTERPRETER_FLAGS, script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let ready!: (ok: boolean) => void;
    this.ready = new Promise((r) => (ready = r));
    // Referenced until it answers, so a process awaiting the start is kept alive.
    void this.ready.then(() => {
      this.started = true;
      this.idle();
    });
    this.child.once('error', () => ready(false));
    this.child.stdin?.on('error', () => undefined);
    this.child.stdout?.on('data', (d: Buffer) => this.data(d, ready));
    this.child.once('close', () => {
      ready(false);
      this.closed = true;
      for (const p of this.pending.values()) p.lost();
      this.pending.clear();
      this.loose.clear();
      this.onClose(this);
    });
    this.idle();
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return !this.closed;
  }

  /** Unreferenced while nothing is pending, so a process that only holds the spawner may exit. */
  private idle(): void {
    const busy = this.pending.size > this.loose.size || !this.started;
    for (const h of [this.child, this.child.stdout, this.child.stdin] as ({ ref(): void; unref(): void } | null)[]) {
      if (busy) h?.ref();
      else h?.unref();
    }
  }

  private data(d: Buffer, ready: (ok: boolean) => void): void {
    // Chunks are joined only once a whole frame is in: joining at every read would copy a
    // large output again and again.
    this.chunks.push(d);
    this.have += d.length;
    while (this.have >= 4) {
      if ((this.chunks[0]?.length ?? 0) < 4) this.chunks = [Buffer.concat(this.chunks, this.have)];
      const len = this.chunks[0]?.readUInt32BE(0) ?? 0;
      if (this.have < 4 + len) break;
      const all = this.chunks.length === 1 ? (this.chunks[0] ?? Buffer.alloc(0)) : Buffer.concat(this.chunks, this.have);
      const body = all.subarray(4, 4 + len);
      const rest = all.subarray(4 + len);
      this.chunks = rest.length ? [rest] : [];
      this.have = rest.length;
      const fields: Buffer[] = [];
      for (let o = 0; o + 4 <= body.length; ) {
        const n = body.readUInt32BE(o);
        fields.push(body.subarray(o + 4, o + 4 + n));
        o += 4 + n;
      }
      const [verb, id] = [fields[0]?.toString(), fields[1]?.toString() ?? ''];
      if (verb === 'ready') {
        ready(true);
        continue;
      }
      const p = this.pending.get(id);
      if (!p) continue;
      const text = (i: number) => fields[i]?.toString() ?? '';
      if (verb === 'out') p.output?.(Buffer.from(fields[2] ?? ''));
      else if (verb === 'spawned') p.spawned(Number(text(2)));
      else if (verb === 'failed') {
        this.pending.delete(id);
        this.loose.delete(id);
        p.failed(errnoError(text(2), text(3), 'spawn'));
      } else if (verb === 'exit') {
        this.pending.delete(id);
        this.loose.delete(id);
        const exit = { code: text(2) === '' ? null : Number(text(2)), signal: text(3) === '' ? null : signalName(Number(text(3))) };
        p.exited(exit, fields.length > 4 ? { stdout: Buffer.from(fields[4] ?? ''), stderr: Buffer.from(fields[5] ?? ''), why: text(6) } : undefined);
      }
    }
    this.idle();
  }

  /** Sends a spawn request; returns its id, which later requests about the program name. */
  request(fields: [string, string | Buffer][], p: Pending): string {
    const id = String(this.nextId++);
    const parts: Buffer[] = [...field('spawn'), ...field(id)];
    for (const [k, v] of fields) parts.push(...field(k), ...field(v));
    // Programs get the daemon's environment as it is now, as a direct spawn would: it is sent
    // again whenever it changed since the spawner last heard it.
    const env = environmentKey();
    if (env !== this.env) {
      this.env = env;
      for (const e of env.split('\0')) parts.push(...field('env'), ...field(e));
    }
    const body = Buffer.concat(parts);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    this.pending.set(id, p);
    this.idle();
    this.child.stdin?.write(Buffer.concat([head, body]));
    return id;
  }

  /** A `write`, `close` or `kill` request about the streamed program of spawn request `id`. */
  send(verb: 'write' | 'close' | 'kill', id: string, value?: string | Buffer): void {
    if (!this.pending.has(id)) return;
    const body = Buffer.concat([...field(verb), ...field(id), ...(value === undefined ? [] : field(value))]);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    this.child.stdin?.write(Buffer.concat([head, body]));
  }

  /** Whether the pending request `id` keeps the event loop alive (see idle()). */
  hold(id: string, on: boolean): void {
    if (!this.pending.has(id)) return;
    if (on) this.loose.delete(id);
    else this.loose.add(id);
    this.idle();
  }

  /** Closes the request pipe: the spawner exits, leaving what it started running. */
  close(): void {
    this.child.stdin?.end();
  }
}

let log: Logger | undefined;
let current: SpawnerProcess | undefined;
let starting: Promise<SpawnerProcess | undefined> | undefined;
let wanted = false;

async function begin(interpreter: string, script: string): Promise<SpawnerProcess | undefined> {
  const p = new SpawnerProcess(interpreter, script, (dead) => {
    if (current !== dead) return;
    current = undefined;
    if (!wanted) return;
    log?.warn({ pid: dead.pid }, 'process spawner exited; starting another (programs it started keep running)');
    starting = begin(interpreter, script);
  });
  if (!(await p.ready)) {
    wanted = false;
    log?.warn({ interpreter, script }, 'process spawner (python3) could not be started; programs are forked from the daemon itself');
    return undefined;
  }
  current = p;
  starting = undefined;
  return p;
}

/**
 * Starts the spawner for this process (the daemon calls it once at start-up); resolves whether
 * it runs. Until it is called, and after it failed, programs are spawned directly. A spawner
 * that dies later is replaced; the programs it started keep running. `interpreter` is a
 * python3 (3.8 or later: posix_spawn's setsid), by default spawnerInterpreter().
 */
export async function startSpawner(logger: Logger, script = SPAWNER_SCRIPT, interpreter = spawnerInterpreter()): Promise<boolean> {
  log = logger;
  if (current?.alive) return true;
  wanted = true;
  if (!existsSync(script)) {
    wanted = false;
    logger.warn({ script }, 'process spawner script missing; programs are forked from the daemon itself');
    return false;
  }
  starting ??= begin(interpreter, script);
  return (await starting) !== undefined;
}

/** Lets the spawner exit (its request pipe is closed); later starts are direct spawns. */
export function stopSpawner(): void {
  wanted = false;
  current?.close();
  current = undefined;
  starting = undefined;
}

/** The spawner's pid while it runs (tests and benches trace it). */
export function spawnerPid(): number | undefined {
  return current?.pid;
}

async function spawner(): Promise<SpawnerProcess | undefined> {
  if (current?.alive) return current;
  return starting ? await starting : undefined;
}

/**
 * Starts a long-running program and resolves once it was executed, with its pid. Rejects with
 * an errno error (code ENOENT when the program is not found, or the errno of the failed open,
 * chdir or exec) when it could not be started.
 */
export async function launch(l: Launch): Promise<Launched> {
  checkArgs(l.file, l.args);
  const s = await spawner();
  if (!s) return launchDirect(l);
  return await new Promise<Launched>((resolve, reject) => {
    let exited!: (e: ChildExit | undefined) => void;
    const exit = new Promise<ChildExit | undefined>((r) => (exited = r));
    let pid: number | undefined;
    const fields: [string, string][] = [...[l.file, ...l.args].map((a): [string, string] => ['arg', a]), ['stdout', `a${l.stdout}`], ['stderr', `${l.truncateStderr ? 't' : 'a'}${l.stderr}`]];
    if (l.cwd !== undefined) fields.push(['cwd', l.cwd]);
    if (l.setsid) fields.push(['setsid', '1']);
    for (const f of l.fdPaths ?? []) fields.push(['fd', f]);
    s.request(fields, {
      spawned: (p) => {
        pid = p;
        resolve({ pid: p, exit });
      },
      failed: reject,
      exited: (e) => exited(e),
      lost: () => {
        if (pid === undefined) reject(errnoError('ECHILD', `process spawner exited while starting ${l.file}`, 'spawn'));
        exited(undefined);
      },
    });
  });
}

function launchDirect(l: Launch): Launched | Promise<Launched> {
  const out = openSync(l.stdout, 'a');
  const err = openSync(l.stderr, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | (l.truncateStderr ? constants.O_TRUNC : 0));
  const fds: number[] = [];
  try {
    for (const f of l.fdPaths ?? []) fds.push(openSync(f, 'r+'));
    const child = spawn(l.file, l.args, { detached: l.setsid ?? false, stdio: ['ignore', out, err, ...fds], cwd: l.cwd });
    child.unref();
    const exit = new Promise<ChildExit | undefined>((r) => child.once('exit', (code, signal) => r({ code, signal })));
    if (child.pid !== undefined) return { pid: child.pid, exit };
    return new Promise((_, reject) => child.once('error', reject));
  } finally {
    for (const fd of [out, err, ...fds]) closeSync(fd);
  }
}

/**
 * Runs a program to its end and resolves how it ended and what it wrote (a non-zero exit is
 * not an error here). Rejects with an errno error (code ENOENT when the program is not found)
 * when it could not be started.
 */
export async function runProgram(file: string, args: readonly string[], opts: RunOptions): Promise<RunOutcome> {
  checkArgs(file, args);
  // A run called off before it began (also while the spawner was being waited for) starts
  // nothing, through the spawner or not.
  const notRun = (): RunOutcome => ({ code: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), killed: 'canceled' });
  if (opts.signal?.aborted) return notRun();
  const s = await spawner();
  if (opts.signal?.aborted) return notRun();
  if (!s) return runDirect(file, args, opts);
  return await new Promise<RunOutcome>((resolve, reject) => {
    const fields: [string, string | Buffer][] = [...[file, ...args].map((a): [string, string] => ['arg', a]), ['capture', String(opts.maxBytes)], ['timeout', String(opts.timeoutMs)]];
    if (opts.input !== undefined) fields.push(['input', opts.input]);
    if (opts.stdoutFile !== undefined) fields.push(['stdout', `t${opts.stdoutFile}`]);
    let cancel: ReturnType<typeof onCancel> | undefined;
    const id = s.request(fields, {
      // Only a program that runs can be told to stop; one called off before it ran is killed at once.
      spawned: () => (cancel = onCancel(opts.signal, (sig) => s.send('kill', id, String(osConstants.signals[sig])))),
      failed: reject,
      exited: (e, out) => {
        cancel?.done();
        const why = cancel?.canceled() ? 'canceled' : out?.why;
        resolve({ ...e, stdout: out?.stdout ?? Buffer.alloc(0), stderr: out?.stderr ?? Buffer.alloc(0), ...(why === 'timeout' || why === 'maxbuffer' || why === 'canceled' ? { killed: why } : {}) });
      },
      lost: () => {
        cancel?.done();
        reject(errnoError('ECHILD', `process spawner exited while ${file} ran`, 'spawn'));
      },
    });
  });
}

function runDirect(file: string, args: readonly string[], opts: RunOptions): Promise<RunOutcome> {
  return new Promise((resolve, reject) => {
    const out = opts.stdoutFile === undefined ? undefined : openSync(opts.stdoutFile, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_APPEND);
    let child: ChildProcess;
    try {
      child = spawn(file, args, { stdio: ['pipe', out ?? 'pipe', 'pipe'] });
    } finally {
      if (out !== undefined) closeSync(out);
    }
    const kept = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
    const size = { stdout: 0, stderr: 0 };
    let killed: RunOutcome['killed'];
    let settled = false;
    const kill = (why: NonNullable<RunOutcome['killed']>) => {
      if (killed) return;
      killed = why;
      child.kill('SIGTERM');
    };
    for (const k of ['stdout', 'stderr'] as const) {
      child[k]?.on('data', (d: Buffer) => {
        const keep = d.subarray(0, Math.max(0, opts.maxBytes - size[k]));
        kept[k].push(keep);
        size[k] += keep.length;
        if (keep.length < d.length) kill('maxbuffer');
      });
    }
    const timer = setTimeout(() => kill('timeout'), opts.timeoutMs);
    const cancel = onCancel(opts.signal, (sig) => {
      killed ??= 'canceled';
      child.kill(sig);
    });
    child.once('error', (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      cancel.done();
      reject(e);
    });
    child.once('close', (code, signal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      cancel.done();
      resolve({ code, signal, stdout: Buffer.concat(kept.stdout), stderr: Buffer.concat(kept.stderr), ...(killed ? { killed } : {}) });
    });
    // A program that exits without reading its input makes stdin emit EPIPE; the exit status
    // is what matters, and an unheard 'error' event would end the process.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input);
  });
}

/** The default bound of what may wait to be written to a streamed program's stdin (bytes). */
export const MAX_STREAM_INPUT_BYTES = 64 * 1024 * 1024;

/** A program run with its stdin and stdout streamed (see streamProgram). */
export interface StreamOptions {
  /** Each piece of stdout as it arrives, in order. */
  onOutput(data: Buffer): void;
  /**
   * Once, after the last output: how the program ended; with `error` when it could not be
   * started (an errno error, code ENOENT for a missing program) or was killed for input past
   * maxInputBytes (a MatchlockError, ResourceExhausted); undefined when its end can no longer
   * be seen (the spawner died: its stdin closed with it).
   */
  onExit(exit: ChildExit | undefined, error?: Error): void;
  /**
   * The most bytes that may wait to be written to its stdin (written, not yet taken by the
   * program; default MAX_STREAM_INPUT_BYTES). Past it what waits is dropped, its stdin closed
   * and the program killed (SIGKILL).
   */
  maxInputBytes?: number;
  /** The program's name in errors, when `file` is a wrapper (`sh -c 'exec … ip …'`); default `file`. */
  name?: string;
}

/** What streamProgram hands the spawner or a direct child: the bound, and how to say it was passed. */
type BackendOptions = StreamOptions & { maxInputBytes: number; overflow(): void };

/** A running streamed program. Calls after it ended are ignored. */
export interface Streamed {
  /** Appended to its stdin, never blocking: bytes wait while it does not read, up to maxInputBytes. */
  write(data: string | Buffer): void;
  /** Closes its stdin once what waits was written. */
  end(): void;
  kill(signal: NodeJS.Signals): void;
  /** Whether it keeps this process's event loop alive (it does at first). */
  hold(on: boolean): void;
}

/**
 * Starts a long-lived program whose stdin is written and stdout read while it runs (stderr goes
 * to /dev/null: a shell's `2>&1` folds it into stdout). Through the spawner once started, like
 * every other program; spawned directly otherwise (a CLI). Returns at once: what is written
 * before the program started is sent after it. What waits to be written to its stdin is
 * bounded (StreamOptions.maxInputBytes), wherever it waits: here before the start, in the
 * spawner, or in this process's pipe to a direct child.
 */
export function streamProgram(file: string, args: readonly string[], options: StreamOptions): Streamed {
  checkArgs(file, args);
  const max = options.maxInputBytes ?? MAX_STREAM_INPUT_BYTES;
  // Set once the bound was passed, wherever the bytes waited: the exit reports it.
  let over: MatchlockError | undefined;
  const overflow = () => (over ??= new MatchlockError(ErrorCode.ResourceExhausted, `${options.name ?? file}: more than ${max} bytes waited to be written to its stdin (the bound of a streamed program's input); killed`));
  const opts: BackendOptions = {
    onOutput: (d) => options.onOutput(d),
    onExit: (e, err) => options.onExit(e, over ?? err),
    maxInputBytes: max,
    overflow,
  };
  type Backend = Streamed;
  let backend: Backend | undefined;
  let queued: ((b: Backend) => void)[] = [];
  // Bytes written before the program was started (the spawner itself still starting).
  let early = 0;
  const later = (op: (b: Backend) => void) => {
    if (backend) op(backend);
    else queued.push(op);
  };
  const use = (b: Backend) => {
    backend = b;
    for (const op of queued) op(b);
    queued = [];
  };
  const s = current?.alive ? current : undefined;
  if (s) use(streamSpawner(s, file, args, opts));
  else if (!starting) use(streamDirect(file, args, opts));
  else {
    void starting.then(
      (p) => use(p?.alive ? streamSpawner(p, file, args, opts) : streamDirect(file, args, opts)),
      () => use(streamDirect(file, args, opts)),
    );
  }
  return {
    write: (d) => {
      if (over) return;
      if (!backend && (early += Buffer.byteLength(d)) > max) {
        overflow();
        queued = [(b) => b.kill('SIGKILL')];
        return;
      }
      later((b) => b.write(d));
    },
    end: () => later((b) => b.end()),
    kill: (sig) => later((b) => b.kill(sig)),
    hold: (on) => later((b) => b.hold(on)),
  };
}

function streamSpawner(s: SpawnerProcess, file: string, args: readonly string[], opts: BackendOptions): Streamed {
  let ended = false;
  // The spawner keeps what waits for the program's stdin, and enforces the bound (inmax).
  const id = s.request([...[file, ...args].map((a): [string, string] => ['arg', a]), ['stream', '1'], ['inmax', String(opts.maxInputBytes)]], {
    spawned: () => undefined,
    output: (d) => opts.onOutput(d),
    failed: (err) => {
      ended = true;
      opts.onExit({ code: null, signal: null }, err);
    },
    exited: (e, out) => {
      ended = true;
      if (out?.why === 'maxinput') opts.overflow();
      opts.onExit(e);
    },
    lost: () => {
      ended = true;
      opts.onExit(undefined);
    },
  });
  return {
    write: (d) => !ended && s.send('write', id, d),
    end: () => !ended && s.send('close', id),
    kill: (sig) => !ended && s.send('kill', id, String(osConstants.signals[sig])),
    hold: (on) => !ended && s.hold(id, on),
  };
}

function streamDirect(file: string, args: readonly string[], opts: BackendOptions): Streamed {
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'ignore'] });
  let error: Error | undefined;
  // A program that exits while input is written makes stdin emit EPIPE: its exit tells.
  child.stdin?.on('error', () => undefined);
  child.stdout?.on('data', (d: Buffer) => opts.onOutput(d));
  child.once('error', (e) => (error = e));
  child.once('close', (code, signal) => opts.onExit({ code, signal }, error));
  return {
    write: (d) => {
      const stdin = child.stdin;
      if (!stdin || stdin.destroyed) return;
      stdin.write(d);
      // writableLength: what Node holds that the pipe did not take yet.
      if (stdin.writableLength > opts.maxInputBytes) {
        opts.overflow();
        stdin.destroy();
        child.kill('SIGKILL');
      }
    },
    end: () => void child.stdin?.end(),
    kill: (sig) => void child.kill(sig),
    hold: (on) => {
      for (const h of [child, child.stdin, child.stdout] as ({ ref(): void; unref(): void } | null)[]) {
        if (on) h?.ref();
        else h?.unref();
      }
    },
  };
}
