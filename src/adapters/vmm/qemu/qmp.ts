import { connect, type Socket } from 'node:net';

/**
 * A minimal QMP client: greeting, qmp_capabilities, then one command at a time. Events may
 * arrive before a reply, so replies are matched by the `return`/`error` key, events skipped.
 */
export async function qmpCommand(socketPath: string, command: string, timeoutMs = 3000): Promise<unknown> {
  const sock: Socket = connect(socketPath);
  const lines: string[] = [];
  let buffer = '';
  let wake: (() => void) | undefined;
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buffer += d;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      lines.push(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
    wake?.();
  });
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  const failed = new Promise<never>((_, reject) => sock.once('error', reject));
  const deadline = Date.now() + timeoutMs;
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const line = lines.shift();
      if (line !== undefined) return JSON.parse(line) as Record<string, unknown>;
      if (Date.now() > deadline) throw new Error(`QMP ${command}: no answer within ${timeoutMs} ms`);
      await Promise.race([new Promise<void>((r) => { wake = r; setTimeout(r, 100); }), failed, closed.then(() => { throw new Error(`QMP ${command}: connection closed`); })]);
    }
  };
  const reply = async () => {
    for (;;) {
      const msg = await next();
      if ('return' in msg) return msg.return;
      if ('error' in msg) throw new Error(`QMP ${command}: ${JSON.stringify(msg.error)}`);
    }
  };
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', () => resolve());
      sock.once('error', reject);
    });
    const greeting = await next();
    if (!('QMP' in greeting)) throw new Error('QMP: unexpected greeting');
    sock.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
    await reply();
    sock.write(JSON.stringify({ execute: command }) + '\n');
    return await reply();
  } finally {
    sock.destroy();
  }
}
