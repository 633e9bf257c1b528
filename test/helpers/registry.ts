import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { createServer as netServer } from 'node:net';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { registryClient } from '../../src/adapters/images/oci/registry.js';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from './daemon.js';

async function freePort(): Promise<number> {
  return await new Promise((resolve) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface Registry {
  host: string;
  /** Pushes an OCI layout (all its manifests with --all) as repo:tag. */
  push(layout: string, repoTag: string, all?: boolean): void;
  stop(): Promise<void>;
}

/** A real docker-registry on 127.0.0.1 (optionally inside a namespace), storage in a temp dir. */
export async function startRegistry(netns?: string): Promise<Registry> {
  const tmp = tempDir('registry');
  const port = await freePort();
  const config = join(tmp.path, 'config.yml');
  writeFileSync(config, `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${tmp.path}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  const wrap = (cmd: string[]) => (netns ? ['ip', 'netns', 'exec', netns, ...cmd] : cmd);
  const [bin, ...args] = wrap(['docker-registry', 'serve', config]);
  const proc: ChildProcess = spawn(bin ?? 'docker-registry', args, { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const [c, ...a] = wrap(['bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
    try {
      execFileSync(c ?? 'bash', a, { stdio: 'ignore' });
      break;
    } catch {
      if (i > 100 || proc.exitCode !== null) throw new Error('docker-registry did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    host,
    push(layout, repoTag, all = false) {
      const [c, ...a] = wrap(['skopeo', 'copy', '--quiet', ...(all ? ['--all'] : []), '--dest-tls-verify=false', `oci:${layout}`, `docker://${host}/${repoTag}`]);
      execFileSync(c ?? 'skopeo', a, { stdio: ['ignore', 'ignore', 'inherit'] });
    },
    async stop() {
      proc.kill();
      await new Promise((r) => (proc.exitCode !== null ? r(undefined) : proc.once('exit', r)));
      tmp.remove();
    },
  };
}

export interface ProxyOptions {
  /** user:password the token endpoint accepts; undefined serves without auth. */
  credentials?: string;
  /**
   * Demand a bearer token but hand it out anonymously (a public repository), as gcr.io and
   * Docker Hub do. The token endpoint insists on service=<service>.
   */
  anonymous?: { service: string };
  /** The WWW-Authenticate values of a 401, given the token endpoint's URL; one header each. */
  challenge?: (realm: string) => string[];
  /** Blob digests whose bodies are corrupted (first byte flipped). */
  corrupt?: Set<string>;
  /** Blob digest -> how many more downloads of it are cut off half-way. */
  cut?: Map<string, number>;
  /** Paths answered 404 (a mirror that does not hold them), after auth. */
  missing?: (path: string) => boolean;
}

export interface Proxy {
  host: string;
  /** GET /v2/.../blobs/<digest> requests seen, by digest. */
  blobGets: Map<string, number>;
  /** Paths of the /v2/ requests it answered after auth, in order (404s included). */
  served: string[];
  stop(): Promise<void>;
}

/**
 * A registry front written for the tests: it demands a bearer token from its own /token
 * endpoint (basic credentials), and can corrupt or cut off blob downloads; everything else is
 * passed to the real registry behind it.
 */
export async function startProxy(upstream: string, opts: ProxyOptions): Promise<Proxy> {
  const token = 'tok-' + Math.random().toString(36).slice(2);
  const blobGets = new Map<string, number>();
  const served: string[] = [];
  let self = '';
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/token' && opts.anonymous) {
      // distribution's token server refuses a request for another service.
      if (url.searchParams.get('service') !== opts.anonymous.service) {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: `invalid service ${JSON.stringify(url.searchParams.get('service'))}` }] }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
      return;
    }
    if (url.pathname === '/token') {
      const basic = Buffer.from((req.headers.authorization ?? '').replace(/^Basic /, ''), 'base64').toString();
      if (basic !== opts.credentials) {
        res.writeHead(401).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
      return;
    }
    if ((opts.credentials || opts.anonymous) && req.headers.authorization !== `Bearer ${token}`) {
      const challenges = opts.challenge?.(`http://${self}/token`) ?? [`Bearer realm="http://${self}/token",service="test-registry",scope="repository:x:pull"`];
      res.writeHead(401, [...challenges.map((c) => ['www-authenticate', c]), ['content-type', 'application/json']].flat());
      res.end('{"errors":[{"code":"UNAUTHORIZED"}]}');
      return;
    }
    if (url.pathname.startsWith('/v2/') && url.pathname !== '/v2/') served.push(url.pathname);
    if (opts.missing?.(url.pathname)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not on this mirror"}]}');
      return;
    }
    const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname)?.[1];
    if (blob) blobGets.set(blob, (blobGets.get(blob) ?? 0) + 1);
    const up = request({ host: '127.0.0.1', port: Number(upstream.split(':')[1]), path: req.url, method: req.method, headers: { ...req.headers, host: upstream } }, (ur) => {
      const cutsLeft = blob ? (opts.cut?.get(blob) ?? 0) : 0;
      if (blob && (opts.corrupt?.has(blob) || cutsLeft > 0)) {
        const chunks: Buffer[] = [];
        ur.on('data', (c: Buffer) => chunks.push(c));
        ur.on('end', () => {
          const body = Buffer.concat(chunks);
          if (cutsLeft > 0) {
            opts.cut?.set(blob, cutsLeft - 1);
            res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
            res.write(body.subarray(0, Math.floor(body.length / 2)));
            res.socket?.destroy();
            return;
          }
          body[0] = (body[0] ?? 0) ^ 0xff;
          res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' }).end(body);
        });
        return;
      }
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.writeHead(502).end());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  self = `127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    host: self,
    blobGets,
    served,
    stop: () => new Promise((r) => server.close(() => r())),
  };
}

/** docker-registry and skopeo, which pull tests need; a suite skips without them outside CI. */
export const PULL_TOOLS_MISSING = ['docker-registry', 'skopeo'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);

/**
 * For the calling describe block of pull tests: a temp dir, a registry started before the tests
 * and stopped after them, and image stores in the temp dir that pull from it (no credentials).
 */
export function pullSuite(label: string): { tmp: ReturnType<typeof tempDir>; readonly registry: Registry; storeAt: (name: string) => LocalImageStore } {
  const tmp = tempDir(label);
  let registry: Registry | undefined;
  before(async () => {
    registry = await startRegistry();
  });
  after(async () => {
    await registry?.stop();
    tmp.remove();
  });
  return {
    tmp,
    get registry() {
      if (!registry) throw new Error('the registry is started before the tests');
      return registry;
    },
    storeAt: (name) => new LocalImageStore(join(tmp.path, name), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [], mirrors: [] }, silentLogger)),
  };
}
