import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import { rm } from 'node:fs/promises';
import { renameDurably } from '../../durable.js';
import type { IncomingMessage } from 'node:http';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { isLoopbackHost } from '../../../core/endpoint.js';
import { DEFAULT_REGISTRY, registryName, type ImageReference } from '../../../core/images/reference.js';
import type { Logger } from '../../../core/ports.js';
import { dockerConfigPath, loadCredentials, parseChallenges, type Credentials } from './auth.js';
import { httpGet, readAll } from './http.js';
import { claimTemporary, releaseTemporary } from '../temporaries.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');

export interface RegistrySettings {
  /** Speak plain HTTP. Loopback registries get this without any setting, as Docker does. */
  plainHttp: boolean;
  /** Accept any TLS certificate. */
  insecureTls: boolean;
  /** Hosts to try before the registry itself, in order, each with its own transport. */
  mirrors: MirrorHost[];
}

/** A registry mirror: its host[:port] and how to reach it. */
export interface MirrorHost {
  host: string;
  scheme: 'http' | 'https';
  insecureTls: boolean;
}

export interface RegistryOptions {
  /** `registry` as a reference writes it; compared in registryName's form. */
  settings(registry: string): RegistrySettings | Promise<RegistrySettings>;
  /** `registry` as a reference or a mirror writes it; compared in registryName's form. */
  credentials(registry: string): Credentials | undefined;
  /** Where credentials are looked up, for error messages. */
  credentialsSource: string;
  log: Logger;
  attempts?: number;
}

export interface FetchedManifest {
  digest: string;
  mediaType: string;
  body: Buffer;
  /** The mirror that served it; undefined: the registry itself. */
  mirror?: string;
}

/**
 * An HTTP answer for an error message: the status and the registry's own words, from the
 * distribution API's `{"errors":[{"code","message"}]}` body when it is one, else the body's start.
 */
function answer(status: number, body: string): string {
  let words = body.trim().slice(0, 200);
  try {
    const doc = JSON.parse(body) as { errors?: { code?: unknown; message?: unknown }[]; error?: unknown; details?: unknown };
    const errs = Array.isArray(doc.errors) ? doc.errors.map((e) => [e.code, e.message].filter((x) => typeof x === 'string' && x).join(': ')).filter(Boolean) : [];
    if (errs.length) words = errs.join('; ').slice(0, 200);
    else if (typeof doc.error === 'string') words = [doc.error, typeof doc.details === 'string' ? doc.details : ''].filter(Boolean).join(': ').slice(0, 200);
  } catch {
    // not JSON: the body's start is the best account
  }
  return words ? `${status} (${words})` : String(status);
}

/** docker.io's API lives at registry-1.docker.io; `registry` is in registryName's form. */
function apiHost(registry: string): string {
  return registry === 'docker.io' ? 'registry-1.docker.io' : registry;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A registry request's failure whose last request went to a mirror (registry-mirrors), not to
 * the registry the reference names: `mirror` is that mirror's host, as configured. Code and
 * message are the failure's own.
 */
export class MirrorError extends MatchlockError {
  constructor(readonly mirror: string, err: MatchlockError) {
    super(err.code, err.message, { cause: err, ...(err.field === undefined ? {} : { field: err.field }) });
    this.name = 'MirrorError';
  }
}

/** `err` as a MatchlockError, a MirrorError when the request that failed went to `mirror`. */
export function askedMirror(err: unknown, mirror: string | undefined): MatchlockError {
  const e = MatchlockError.from(err);
  return mirror === undefined || e instanceof MirrorError ? e : new MirrorError(mirror, e);
}

/**
 * A client for the OCI distribution API (v2): manifests and blobs, anonymous, bearer-token and
 * basic auth, mirrors, and retries with back-off on network errors and 5xx answers.
 */
export class RegistryClient {
  private readonly tokens = new Map<string, string>();

  constructor(private readonly o: RegistryOptions) {}

  /** The hosts to ask, mirrors first; `mirror` is set on a mirror's. */
  private async bases(written: string): Promise<{ base: string; insecureTls: boolean; mirror?: string }[]> {
    // A reference keeps its registry as written (`LOCALHOST:5000/x`); settings, Docker Hub's
    // API host and the loopback rule know it by its one name.
    const registry = registryName(written) ?? written;
    const s = await this.o.settings(registry);
    const base = (host: string, plainHttp: boolean) => `${plainHttp || isLoopbackHost(host) ? 'http' : 'https'}://${host}`;
    return [
      ...s.mirrors.map((m) => ({ base: `${m.scheme}://${m.host}`, insecureTls: m.insecureTls, mirror: m.host })),
      { base: base(apiHost(registry), s.plainHttp), insecureTls: s.insecureTls },
    ];
  }

  /**
   * GET with auth and retries; resolves a 2xx response and the mirror that gave it (undefined:
   * the registry itself), or throws a MatchlockError saying why (a MirrorError when the last
   * host asked was a mirror). A mirror that does not have the thing (404) or refuses access is
   * passed over for the next host, ending with the registry, as Docker's and containerd's
   * mirrors are; the registry's own 404 or refusal is final.
   */
  private async get(ref: ImageReference, path: string, headers: Record<string, string>): Promise<{ res: IncomingMessage; mirror: string | undefined }> {
    const attempts = this.o.attempts ?? 3;
    let lastErr: MatchlockError | undefined;
    for (const { base, insecureTls, mirror } of await this.bases(ref.registry)) {
      for (let attempt = 1; attempt <= attempts; attempt++) {
        try {
          return { res: await this.authorizedGet(ref, `${base}${path}`, headers, insecureTls, mirror), mirror };
        } catch (err) {
          lastErr = askedMirror(err, mirror);
          // Auth failures and missing things do not get better by asking the same host again.
          if (lastErr.code === ErrorCode.Unauthenticated || lastErr.code === ErrorCode.NotFound) {
            if (mirror === undefined) throw lastErr;
            this.o.log.warn({ url: `${base}${path}`, err: lastErr.message }, 'registry mirror cannot serve this; asking the next host');
            break;
          }
          this.o.log.warn({ url: `${base}${path}`, attempt, err: lastErr.message }, 'registry request failed');
          if (attempt < attempts) await sleep(200 * 2 ** (attempt - 1));
        }
      }
    }
    throw lastErr ?? new MatchlockError(ErrorCode.Unavailable, `registry ${ref.registry} unreachable`);
  }

  /**
   * One GET of `url` on the registry or on `mirror`: a mirror gets its own credentials (the auth
   * file's entry for its host) and tokens, never the registry's.
   */
  private async authorizedGet(ref: ImageReference, url: string, headers: Record<string, string>, insecureTls: boolean, mirror?: string): Promise<IncomingMessage> {
    const key = `${mirror ?? ref.registry}/${ref.repository}`;
    const token = this.tokens.get(key);
    const withAuth = (auth?: string) => httpGet(url, { headers: { ...headers, ...(auth ? { authorization: auth } : {}) }, insecureTls });
    let res = await withAuth(token);
    if (res.statusCode === 401) {
      res.resume();
      const auth = await this.authenticate(ref, res.headersDistinct['www-authenticate'], insecureTls, mirror);
      this.tokens.set(key, auth);
      res = await withAuth(auth);
    }
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return res;
    const body = (await readAll(res, 64 * 1024).catch(() => Buffer.alloc(0))).toString('utf8').slice(0, 300);
    if (status === 401 || status === 403) throw this.authError(ref, `${url} answered ${answer(status, body)}`, true, mirror);
    // The URL names the host that answered: a mirror's 404 is not the registry's.
    if (status === 404) throw new MatchlockError(ErrorCode.NotFound, `${url} not found: ${body}`);
    throw new MatchlockError(status >= 500 ? ErrorCode.Unavailable : ErrorCode.Internal, `${url}: registry answered ${status} ${body}`);
  }

  /**
   * Access refused: says what the registry answered and whether credentials were sent, so a
   * public repository refused for another reason (a token request the endpoint did not like)
   * is not blamed on credentials.
   */
  private authError(ref: ImageReference, answered: string, refusal = false, mirror?: string): MatchlockError {
    const host = mirror ?? ref.registry;
    const creds = this.o.credentials(host);
    const source = this.o.credentialsSource;
    const sent = creds
      ? refusal ? `the credentials for ${host} in ${source} were rejected` : `the credentials for ${host} in ${source} were sent`
      : `the request was anonymous (no credentials for ${host} in ${source})`;
    const who = mirror === undefined ? `registry ${ref.registry}` : `mirror ${mirror} of ${ref.registry}`;
    return new MatchlockError(ErrorCode.Unauthenticated, `${who} refused access to ${ref.repository}: ${answered}; ${sent}`);
  }

  /**
   * Answers a 401: a bearer token from the realm of a Bearer challenge (anonymous, or with basic
   * credentials when configured), or basic credentials for a Basic one. Every challenge of
   * every WWW-Authenticate header is considered; Bearer wins over Basic.
   */
  private async authenticate(ref: ImageReference, header: readonly string[] | undefined, insecureTls: boolean, mirror?: string): Promise<string> {
    const authError = (answered: string, refusal = false) => this.authError(ref, answered, refusal, mirror);
    let challenges;
    try {
      challenges = parseChallenges(header);
    } catch (err) {
      throw authError(`401 with ${(err as Error).message}`);
    }
    const creds = this.o.credentials(mirror ?? ref.registry);
    const basic = creds ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}` : undefined;
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    if (!bearer) {
      if (challenges.some((c) => c.scheme === 'basic')) {
        if (!basic) throw authError('401 asking for basic credentials');
        return basic;
      }
      throw authError(`401 with no challenge matchlock can answer (WWW-Authenticate: ${header === undefined ? 'absent' : JSON.stringify(header.join(', ').slice(0, 200))})`);
    }
    let realm: URL;
    try {
      realm = new URL(bearer.params.realm ?? '');
    } catch {
      throw authError(`401 with a Bearer realm that is not a URL: ${JSON.stringify((bearer.params.realm ?? '').slice(0, 200))}`);
    }
    if (bearer.params.service) realm.searchParams.set('service', bearer.params.service);
    // A challenge may name several scopes separated by spaces (distribution's token spec);
    // each is its own scope parameter.
    for (const scope of (bearer.params.scope ?? `repository:${ref.repository}:pull`).split(' ').filter(Boolean)) realm.searchParams.append('scope', scope);
    const res = await httpGet(realm.toString(), { headers: basic ? { authorization: basic } : {}, insecureTls });
    const body = await readAll(res, 1024 * 1024);
    const text = body.toString('utf8');
    const status = res.statusCode ?? 0;
    if (status !== 200) throw authError(`token endpoint ${realm.origin}${realm.pathname} answered ${answer(status, text)}`, status === 401 || status === 403);
    let doc: { token?: unknown; access_token?: unknown };
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch {
      throw authError(`token endpoint ${realm.origin}${realm.pathname} answered 200 with a body that is not JSON: ${JSON.stringify(text.slice(0, 200))}`);
    }
    const token = typeof doc.token === 'string' && doc.token ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : '';
    if (!token) throw authError(`token endpoint ${realm.origin}${realm.pathname} answered 200 without a token`);
    return `Bearer ${token}`;
  }

  /** A manifest or index by tag or digest, with its digest checked against the content. */
  async manifest(ref: ImageReference, reference: string): Promise<FetchedManifest> {
    const { res, mirror } = await this.get(ref, `/v2/${ref.repository}/manifests/${reference}`, { accept: ACCEPT });
    try {
      const body = await readAll(res);
      const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
      if (reference.startsWith('sha256:') && reference !== digest) {
        throw new MatchlockError(ErrorCode.Internal, `manifest ${reference} of ${ref.repository} hashes to ${digest}: refusing it`);
      }
      const mediaType = (res.headers['content-type'] ?? '').split(';')[0]?.trim() || (JSON.parse(body.toString('utf8')) as { mediaType?: string }).mediaType || MEDIA.ociManifest;
      return { digest, mediaType, body, ...(mirror === undefined ? {} : { mirror }) };
    } catch (err) {
      throw askedMirror(err, mirror);
    }
  }

  /**
   * Streams a blob to `dest`, verifying its sha256 on the way; only a verified blob is renamed
   * into place, so a corrupt or cut-off download is never seen by anyone.
   */
  async blob(ref: ImageReference, digest: string, dest: string, onBytes: (n: number) => void): Promise<void> {
    const attempts = this.o.attempts ?? 3;
    for (let attempt = 1; ; attempt++) {
      const tmp = claimTemporary(dest);
      // The mirror the body came from, for the error of one cut off or failing verification.
      let from: string | undefined;
      try {
        const { res, mirror } = await this.get(ref, `/v2/${ref.repository}/blobs/${digest}`, {});
        from = mirror;
        const hash = createHash('sha256');
        let received = 0;
        const count = new Transform({
          transform(chunk: Buffer, _enc, done) {
            hash.update(chunk);
            received += chunk.length;
            onBytes(chunk.length);
            done(null, chunk);
          },
        });
        await pipeline(res, count, createWriteStream(tmp));
        const got = `sha256:${hash.digest('hex')}`;
        if (got !== digest) throw new MatchlockError(ErrorCode.Internal, `blob ${digest} of ${ref.registry}/${ref.repository} failed verification: content (${received} bytes) hashes to ${got}`);
        // Durable: the store trusts a blob that exists and never hashes it again.
        await renameDurably(tmp, dest);
        releaseTemporary(tmp);
        return;
      } catch (err) {
        await rm(tmp, { force: true });
        releaseTemporary(tmp);
        onBytes(0);
        const e = askedMirror(err, from);
        if (attempt >= attempts || e.code === ErrorCode.Unauthenticated || e.code === ErrorCode.NotFound) throw e;
        this.o.log.warn({ digest, attempt, err: e.message }, 'blob download failed; retrying');
        await sleep(200 * 2 ** (attempt - 1));
      }
    }
  }
}

export interface RegistryConfig {
  /** Docker-style config.json; empty means $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
  authFile: string;
  /** Registries reached over HTTPS without certificate checks. */
  insecure: string[];
  /** Registries reached over plain HTTP. */
  plainHttp: string[];
  /** `registry=mirror` pairs: the mirror is tried first. */
  mirrors: string[];
}

/**
 * The registry client's settings from the daemon's (`registry-auth-file`,
 * `insecure-registries`, `plain-http-registries`, `registry-mirrors`, each list
 * comma-separated), as matchlockd and `matchlock image` read them.
 */
export function registryConfigOf(s: { registryAuthFile: string; insecureRegistries: string; plainHttpRegistries: string; registryMirrors: string }): RegistryConfig {
  return { authFile: s.registryAuthFile, insecure: listSetting(s.insecureRegistries), plainHttp: listSetting(s.plainHttpRegistries), mirrors: listSetting(s.registryMirrors) };
}

/** Splits a comma-separated setting, dropping blanks. */
export function listSetting(s: string): string[] {
  return s.split(',').map((x) => x.trim()).filter(Boolean);
}

/** A host name or an IPv6 address in brackets, and an optional port (RFC 3986 host, no user info). */
const MIRROR_HOST = /^(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)(?::([0-9]{1,5}))?$/;

/** What every registry named in a setting must be, for the errors that refuse one. */
const REGISTRY_RULE = 'host[:port] as image references name it, without a scheme or path (compared without regard to case; index.docker.io and registry-1.docker.io mean docker.io)';

/**
 * A list setting: registries by name, and subnets that hold a registry by its addresses (CIDR,
 * as Docker's `insecure-registries` takes them).
 */
interface RegistryList {
  names: Set<string>;
  subnets: BlockList | undefined;
}

/** An IPv4 or IPv6 subnet in CIDR notation: its address and prefix length. */
const CIDR = /^([0-9A-Fa-f.:]+)\/([0-9]{1,3})$/;

/**
 * A list setting's entries: registries in registryName's form, and subnets. Throws
 * InvalidArgument naming the setting and the entry for one that is neither.
 */
function registryList(field: 'insecure-registries' | 'plain-http-registries', entries: readonly string[], warn: (msg: string) => void): RegistryList {
  const list: RegistryList = { names: new Set(), subnets: undefined };
  for (const written of entries) {
    // Docker's daemon.json takes `https://reg:5000` here and drops the scheme with a warning:
    // so does this, so a host configured as for Docker starts.
    const entry = /^https?:\/\//i.test(written) ? written.replace(/^https?:\/\//i, '').replace(/\/$/, '') : written;
    if (entry !== written) warn(`${field} "${written}": read as "${entry}" (a scheme names no registry; Docker drops it too)`);
    const cidr = CIDR.exec(entry);
    const family = cidr ? isIP(cidr[1] ?? '') : 0;
    if (cidr && family && Number(cidr[2]) <= (family === 4 ? 32 : 128)) {
      (list.subnets ??= new BlockList()).addSubnet(cidr[1] ?? '', Number(cidr[2]), family === 4 ? 'ipv4' : 'ipv6');
      continue;
    }
    // A bare IPv6 address (no brackets, so no port) is that one address.
    if (isIP(entry) === 6) {
      (list.subnets ??= new BlockList()).addAddress(entry, 'ipv6');
      continue;
    }
    const name = registryName(entry);
    if (name === undefined) throw new MatchlockError(ErrorCode.InvalidArgument, `${field} "${written}": must be a registry, ${REGISTRY_RULE}, or a subnet in CIDR notation (10.0.0.0/8)`, { field });
    list.names.add(name);
  }
  return list;
}

/** The host of host[:port] (an IPv6 address without its brackets). */
function hostOf(hostPort: string): string {
  const v6 = /^\[([^\]]+)\]/.exec(hostPort);
  return v6?.[1] ?? hostPort.replace(/:[0-9]+$/, '');
}

/** How long a host name's addresses are kept for the subnet lists, in ms. */
const ADDRESSES_KEPT_MS = 60_000;

/** A mirror as `registry-mirrors` writes it: its host[:port] and the scheme written, if any. */
interface MirrorEntry {
  host: string;
  scheme: 'http' | 'https' | undefined;
}

/**
 * The per-registry settings, looked up by registry: `insecure-registries`,
 * `plain-http-registries` and the `registry-mirrors` pairs. Every registry they name, and the
 * one looked up, is compared in registryName's form: host[:port] as image references write it,
 * without regard to case, and `index.docker.io` and `registry-1.docker.io` mean `docker.io`.
 * An entry of the two lists may also be a subnet in CIDR notation, as Docker's
 * `insecure-registries` takes it: it holds a registry (or a mirror) whose address is in it, the
 * host name resolved with the system's resolver (`resolve`; addresses kept for a minute, none
 * when it fails), as Docker resolves it.
 * A mirror URL (`http://` or `https://`) without `registry=` is Docker Hub's, as in Docker's
 * `registry-mirrors`.
 * A mirror is `host[:port]` (an IPv6 address in brackets), or a URL of one with `http://` or
 * `https://` as Docker's daemon.json writes it (a trailing `/` allowed; no user, path, query
 * or fragment). A mirror written with a scheme is reached as written, and accepts any
 * certificate only when itself is in `insecure-registries`. Without a scheme it is reached over
 * plain HTTP when it is on loopback or in `plain-http-registries`, or its registry is, and
 * accepts any certificate when it or its registry is in `insecure-registries`.
 * An `http://` or `https://` before a list entry is dropped with a warning (`warn`), as Docker
 * drops it. Throws InvalidArgument (field: the setting) naming the setting, the entry and the
 * rule for a registry no reference could name (another scheme, a path) and any other form of a
 * pair.
 */
export function registrySettings(
  cfg: Pick<RegistryConfig, 'mirrors' | 'plainHttp' | 'insecure'>,
  resolve: (host: string) => Promise<string[]> = async (host) => (await lookup(host, { all: true })).map((a) => a.address),
  warn: (msg: string) => void = () => undefined,
): (registry: string) => Promise<RegistrySettings> {
  const insecure = registryList('insecure-registries', cfg.insecure, warn);
  const plainHttp = registryList('plain-http-registries', cfg.plainHttp, warn);
  const mirrors = new Map<string, MirrorEntry[]>();
  for (const pair of cfg.mirrors) {
    // A mirror URL without `registry=` is Docker Hub's, as every entry of Docker's
    // registry-mirrors is (Docker requires the scheme there; a bare word stays ambiguous).
    const at = pair.indexOf('=');
    const dockerStyle = at < 0 && /^https?:\/\//i.test(pair);
    const registry = at > 0 ? registryName(pair.slice(0, at)) : dockerStyle ? 'docker.io' : undefined;
    const written = at > 0 ? pair.slice(at + 1) : dockerStyle ? pair : '';
    const scheme = /^(https?):\/\//i.exec(written)?.[1]?.toLowerCase() as 'http' | 'https' | undefined;
    const host = written.slice(scheme ? scheme.length + 3 : 0).replace(/\/$/, '').toLowerCase();
    const m = MIRROR_HOST.exec(host);
    const port = m?.[2] === undefined ? undefined : Number(m[2]);
    if (registry === undefined || !m || (port !== undefined && (port < 1 || port > 65535))) {
      throw new MatchlockError(
        ErrorCode.InvalidArgument,
        `registry-mirrors "${pair}": must be registry=mirror or, for docker.io, a mirror URL alone, the registry ${REGISTRY_RULE}, the mirror host[:port] with http:// or https:// or neither`,
        { field: 'registry-mirrors' },
      );
    }
    mirrors.set(registry, [...(mirrors.get(registry) ?? []), { host, scheme }]);
  }
  const resolved = new Map<string, { until: number; addresses: Promise<string[]> }>();
  const addresses = (hostPort: string): Promise<string[]> => {
    const host = hostOf(hostPort);
    if (isIP(host)) return Promise.resolve([host]);
    const kept = resolved.get(host);
    if (kept && kept.until > Date.now()) return kept.addresses;
    // A failed lookup is not kept: the next request asks again, as Docker does every time.
    const found = resolve(host).catch(() => {
      if (resolved.get(host)?.addresses === found) resolved.delete(host);
      return [] as string[];
    });
    resolved.set(host, { until: Date.now() + ADDRESSES_KEPT_MS, addresses: found });
    return found;
  };
  /** Whether `list` holds the registry or mirror `name` (registryName's form), by name or by an address. */
  const holds = async (list: RegistryList, name: string): Promise<boolean> => {
    if (list.names.has(name)) return true;
    const subnets = list.subnets;
    // Docker Hub is never held by a subnet, as in Docker (its index is always secure): a broad
    // one (0.0.0.0/0) must not turn off its certificate checks.
    if (!subnets || name === DEFAULT_REGISTRY) return false;
    return (await addresses(name)).some((a) => subnets.check(a, isIP(a) === 6 ? 'ipv6' : 'ipv4'));
  };
  return async (written) => {
    const registry = registryName(written) ?? written;
    const out: MirrorHost[] = [];
    for (const { host, scheme } of mirrors.get(registry) ?? []) {
      // A mirror's own entries in the lists are found by the same rule as a registry's.
      const own = registryName(host) ?? host;
      const insecureTls = (await holds(insecure, own)) || (scheme === undefined && (await holds(insecure, registry)));
      const reached = scheme ?? ((await holds(plainHttp, own)) || (await holds(plainHttp, registry)) || isLoopbackHost(host) ? 'http' : 'https');
      out.push({ host, scheme: reached, insecureTls });
    }
    return { plainHttp: await holds(plainHttp, registry), insecureTls: await holds(insecure, registry), mirrors: out };
  };
}

/**
 * A client with the per-registry settings and the credentials of `cfg`; every registry a
 * setting, a credential key or a pull names is compared in registryName's form. Throws what
 * registrySettings throws for a bad setting, and what loadCredentials throws for an auth file
 * that cannot be used (InvalidArgument naming it); it reaches no registry, so a caller may
 * build it to check the settings before it opens anything.
 */
export function registryClient(cfg: RegistryConfig, log: Logger): RegistryClient {
  const settings = registrySettings(cfg, undefined, (msg) => log.warn({}, msg));
  const source = cfg.authFile || dockerConfigPath();
  const creds = loadCredentials(source);
  return new RegistryClient({
    settings,
    credentials: (registry) => creds.get(registryName(registry) ?? registry),
    credentialsSource: source,
    log,
  });
}
