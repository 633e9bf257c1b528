import { connect } from 'node:net';

/**
 * One raw HTTP/1.1 exchange on a fresh connection closed after it, so odd targets and bodies
 * reach the server exactly as written. `status` is the answer's status code, or when none came:
 * -1 the server closed without an answer, -2 a socket error (a reset, EPIPE), -3 no answer in
 * `timeoutMs` (20 s unless given). `body` is what followed the header, still in its transfer coding.
 */
export function rawHttp(port: number, method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}, timeoutMs = 20_000): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve) => {
    const payload = body === undefined ? Buffer.alloc(0) : typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    const head = `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${payload.length}\r\n${extra}Connection: close\r\n\r\n`;
    const sock = connect(port, '127.0.0.1');
    let got = '';
    const done = (fallback: number) => {
      sock.destroy();
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? fallback);
      const end = got.indexOf('\r\n\r\n');
      resolve({ status, head: end < 0 ? got : got.slice(0, end + 2), body: end < 0 ? '' : got.slice(end + 4) });
    };
    sock.on('data', (c: Buffer) => (got += c.toString('latin1')));
    sock.on('end', () => done(-1));
    sock.on('error', () => done(-2));
    sock.setTimeout(timeoutMs, () => done(-3));
    sock.write(Buffer.concat([Buffer.from(head, 'latin1'), payload]));
  });
}
