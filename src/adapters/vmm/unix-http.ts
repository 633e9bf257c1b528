import { request } from 'node:http';

export interface UnixHttpResponse {
  status: number;
  contentType: string;
  body: string;
}

/**
 * One HTTP/1.1 request to a server on a unix socket (the VMMs' REST APIs), one connection per
 * request and no keep-alive: Cloud Hypervisor's and Firecracker's servers handle a connection
 * at a time, and flintlock's clients disable keep-alive for the same reason. JSON bodies are
 * sent with a Content-Length (Firecracker refuses chunked bodies). Rejects on connection errors
 * and after `timeoutMs` without a complete answer; any HTTP status resolves.
 */
export function unixRequest(socketPath: string, method: 'GET' | 'PUT' | 'PATCH', path: string, body?: unknown, timeoutMs = 3000): Promise<UnixHttpResponse> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        agent: false,
        headers: {
          accept: 'application/json',
          connection: 'close',
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : { 'content-length': 0 }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path} on ${socketPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}
