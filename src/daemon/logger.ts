import { pino, stdSerializers } from 'pino';
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';
import type { Logger } from '../core/ports.js';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** Where log lines go: anything with a `write(line)`. */
export interface LineSink {
  write(line: string): unknown;
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Lines written synchronously to a file descriptor (2: the daemon's stderr), in order and whole.
 * When the reader is gone (EPIPE: the pipe's reader exited, a log collector stopped; EIO, EBADF)
 * the sink goes quiet for good instead of throwing: a daemon whose log output closed keeps
 * serving its VMs, and an error about writing a log line must never be logged to the same
 * output (that was a loop that kept the event loop busy and the daemon deaf to signals). A
 * non-blocking descriptor that is full (EAGAIN) is retried for up to about 100 ms, then the
 * line is dropped.
 */
export function fdSink(fd = 2): LineSink & { readonly broken: boolean } {
  let broken = false;
  return {
    get broken() {
      return broken;
    },
    write(line: string) {
      if (broken) return;
      let buf = Buffer.from(line, 'utf8');
      let waits = 0;
      while (buf.length > 0) {
        try {
          buf = buf.subarray(writeSync(fd, buf));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN' && waits++ < 100) {
            Atomics.wait(pause, 0, 0, 1);
            continue;
          }
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') broken = true;
          return;
        }
      }
    },
  };
}

/**
 * Keeps a closed stdout or stderr from ending the daemon: Node reports a failed write to them
 * (EPIPE) as an 'error' event, which unhandled would be an uncaught exception. The log has its
 * own sink (fdSink); anything else written there is dropped.
 */
export function ignoreBrokenStdio(): void {
  for (const s of [process.stdout, process.stderr]) if (s.listenerCount('error') === 0) s.on('error', () => undefined);
}

/** pino's JSON lines turned into one readable line each: time, level, message, key=value. */
function textStream(out: LineSink): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          const { time, level, msg, pid: _pid, hostname: _host, ...rest } = JSON.parse(line) as Record<string, unknown>;
          const fields = Object.entries(rest)
            .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
            .join(' ');
          out.write(`${new Date(Number(time)).toISOString()} ${LEVELS[Number(level)] ?? level} ${String(msg ?? '')}${fields ? ' ' + fields : ''}\n`);
        } catch {
          out.write(line + '\n');
        }
      }
      done();
    },
  });
}

/** The daemon's logger: pino, JSON lines or readable text, to `out` (by default stderr through fdSink). */
export function createLogger(format: 'text' | 'json', verbosity: number, out: LineSink = fdSink(2)): Logger {
  const level = verbosity > 0 ? 'debug' : 'info';
  const opts = { level, base: { pid: process.pid }, serializers: { err: stdSerializers.err } };
  return format === 'json' ? pino(opts, out) : pino(opts, textStream(out));
}
