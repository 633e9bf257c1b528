import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Accept any TLS certificate (a registry configured as insecure). */
  insecureTls?: boolean;
  /**
   * Milliseconds, default 30,000: the longest wait for the answer's head from the request's start
   * (name lookup, connect, TLS and the registry's own time), then for each next chunk of its body.
   */
  timeoutMs?: number;
  /** Resolves the registry's host name (`dns.lookup`'s shape); `dns.lookup` when absent. */
  lookup?: LookupFunction;
}

/**
 * One HTTP(S) request, following up to 5 redirects (registries send blob downloads elsewhere).
 * Credentials are dropped when a redirect leaves the original host.
 */
export async function httpGet(url: string, opts: HttpOptions = {}, redirects = 5): Promise<IncomingMessage> {
  const u = new URL(url);
  const ms = opts.timeoutMs ?? 30_000;
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
      u,
      { method: opts.method ?? 'GET', headers: opts.headers, lookup: opts.lookup, ...(u.protocol === 'https:' ? { rejectUnauthorized: !opts.insecureTls } : {}) },
      (r) => {
        clearTimeout(head);
        // The body's idle bound, on the socket itself: req.setTimeout would hand it over through
        // a one-shot listener that the agent's own 5 s socket timeout may already have used up
        // while the head was awaited, and then never fire. The agent sets its own timeout again
        // when it keeps the socket for another request.
        const socket = r.socket;
        const idle = () => {
          const err = new Error(`${u.host} sent nothing more of its answer for ${ms} ms`);
          r.destroy(err);
          req.destroy(err);
        };
        socket.setTimeout(ms);
        socket.on('timeout', idle);
        r.once('close', () => socket.off('timeout', idle));
        resolve(r);
      },
    );
    // One deadline for everything before the head: a socket timeout starts only once connected,
    // so a resolver or a connect that never answers would otherwise be bounded by nothing of ours.
    const head = setTimeout(() => req.destroy(new Error(`no answer from ${u.host} within ${ms} ms`)), ms);
    req.on('error', (e) => {
      clearTimeout(head);
      reject(e);
    });
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
