import { request } from 'node:http';

export interface UnixHttpResponse {
  status: number;
  /** The body parsed as JSON when it is JSON, else the text; undefined when empty. */
  body: unknown;
  text: string;
}

/**
 * One HTTP/1.1 request over a unix socket, for VMM APIs served by small embedded servers
 * (Firecracker's micro_http, Cloud Hypervisor's): the body is sent as one Buffer with an exact
 * Content-Length (micro_http has no chunked bodies and hangs on a Content-Length larger than
 * the body, firecracker#2017), one request per connection (no keep-alive), and the whole
 * exchange is bounded by `timeoutMs`. Rejects on connection errors and on the timeout; any
 * HTTP status resolves.
 */
export function unixHttp(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 3000): Promise<UnixHttpResponse> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8');
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { Accept: 'application/json', Connection: 'close' };
    if (data) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = data.length;
    }
    const req = request({ socketPath, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text === '' ? undefined : text;
        try {
          if (text !== '') parsed = JSON.parse(text);
        } catch {
          // not JSON: keep the text
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, text });
      });
      res.on('error', reject);
    });
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${path} on ${socketPath}: no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(data);
  });
}
