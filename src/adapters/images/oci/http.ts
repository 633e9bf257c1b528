import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Accept any TLS certificate (a registry configured as insecure). */
  insecureTls?: boolean;
  timeoutMs?: number;
}

/**
 * One HTTP(S) request, following up to 5 redirects (registries send blob downloads elsewhere).
 * Credentials are dropped when a redirect leaves the original host.
 */
export async function httpGet(url: string, opts: HttpOptions = {}, redirects = 5): Promise<IncomingMessage> {
  const u = new URL(url);
  const ms = opts.timeoutMs ?? 30_000;
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    let response: IncomingMessage | undefined;
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
      u,
      { method: opts.method ?? 'GET', headers: opts.headers, ...(u.protocol === 'https:' ? { rejectUnauthorized: !opts.insecureTls } : {}) },
      (r) => {
        response = r;
        resolve(r);
      },
    );
    // The socket's idle timeout, before the answer's head and while its body is read. Once the
    // head came, destroying only the request would reach the body's reader as a bare "aborted".
    req.setTimeout(ms, () => {
      const err = new Error(response ? `${u.host} sent nothing more of its answer for ${ms} ms` : `no answer from ${u.host} within ${ms} ms`);
      response?.destroy(err);
      req.destroy(err);
    });
    req.on('error', reject);
    req.end();
  });
  const status = res.statusCode ?? 0;
  if (status >= 300 && status < 400 && res.headers.location && redirects > 0) {
    res.resume();
    const next = new URL(res.headers.location, u);
    const headers = { ...(opts.headers ?? {}) };
    if (next.host !== u.host) delete headers.authorization;
    return httpGet(next.toString(), { ...opts, headers }, redirects - 1);
  }
  return res;
}

export async function readAll(res: IncomingMessage, limit = 16 * 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res) {
    size += (c as Buffer).length;
    if (size > limit) throw new Error(`response larger than ${limit} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}
