import { pino, stdSerializers, destination } from 'pino';
import { Writable } from 'node:stream';
import type { Logger } from '../core/ports.js';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** pino's JSON lines turned into one readable line each: time, level, message, key=value. */
function textStream(out: NodeJS.WritableStream): Writable {
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

export function createLogger(format: 'text' | 'json', verbosity: number, out: NodeJS.WritableStream = process.stderr): Logger {
  const level = verbosity > 0 ? 'debug' : 'info';
  const opts = { level, base: { pid: process.pid }, serializers: { err: stdSerializers.err } };
  return format === 'json' ? pino(opts, destination({ dest: 2, sync: true })) : pino(opts, textStream(out));
}
