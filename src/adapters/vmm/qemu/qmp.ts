import { connect, type Socket } from 'node:net';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';

/**
 * A minimal QMP client: greeting, qmp_capabilities, then one command. Events may arrive before
 * a reply, so replies are matched by the `return`/`error` key and events skipped.
 *
 * Socket errors and close are recorded as state that the reader checks, never as a promise of
 * their own: a rejected promise that nobody awaits (a connect that fails before the first read)
 * would end the daemon. Errors: Unavailable when the socket cannot be reached or closes,
 * DeadlineExceeded after `timeoutMs`, Internal for a QMP error reply.
 */
export async function qmpCommand(socketPath: string, command: string, timeoutMs = 3000): Promise<unknown> {
  const sock: Socket = connect(socketPath);
  const lines: string[] = [];
  let buffer = '';
  let ended: Error | undefined;
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buffer += d;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      lines.push(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
    poke();
  });
  sock.on('error', (err) => {
    ended ??= err;
    poke();
  });
  sock.on('close', () => {
    ended ??= new Error('connection closed');
    poke();
  });
  const deadline = Date.now() + timeoutMs;
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const line = lines.shift();
      if (line !== undefined) return JSON.parse(line) as Record<string, unknown>;
      if (ended) throw new MatchlockError(ErrorCode.Unavailable, `QMP ${command} on ${socketPath}: ${ended.message}`, { cause: ended });
      const left = deadline - Date.now();
      if (left <= 0) throw new MatchlockError(ErrorCode.DeadlineExceeded, `QMP ${command} on ${socketPath}: no answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  };
  const reply = async () => {
    for (;;) {
      const msg = await next();
      if ('return' in msg) return msg.return;
      if ('error' in msg) throw new MatchlockError(ErrorCode.Internal, `QMP ${command}: ${JSON.stringify(msg.error)}`);
    }
  };
  try {
    const greeting = await next();
    if (!('QMP' in greeting)) throw new MatchlockError(ErrorCode.Internal, `QMP on ${socketPath}: unexpected greeting`);
    sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
    await reply();
    sock.write(JSON.stringify({ execute: command }) + '\n');
    return await reply();
  } finally {
    sock.destroy();
  }
}
