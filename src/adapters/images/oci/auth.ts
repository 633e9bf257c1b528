import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { registryName } from '../../../core/images/reference.js';

export interface Credentials {
  username: string;
  password: string;
}

/** Where Docker looks for credentials: $DOCKER_CONFIG/config.json, else ~/.docker/config.json. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_CONFIG ? join(env.DOCKER_CONFIG, 'config.json') : join(env.HOME ?? homedir(), '.docker', 'config.json');
}

/**
 * Docker's keys are URLs or hosts ("https://index.docker.io/v1/", "Registry.Example:5000"), as
 * Docker's credential lookup strips them to the host; matchlock's are that host in registryName's
 * form, by which every registry is looked up. A key with no registry host is kept as written,
 * where nothing looks it up.
 */
function registryKey(key: string): string {
  const host = key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').split('/')[0] ?? key;
  return registryName(host) ?? key;
}

/** The auth file (registry-auth-file, else Docker's config.json) cannot be used: InvalidArgument naming it and why. */
function unreadable(path: string, why: string): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, `registry credentials ${path}: ${why}`, { field: 'registry-auth-file' });
}

/**
 * Credentials from a Docker-style config.json (`auths.<registry>.auth` = base64 "user:pass", or
 * `username`/`password`). A missing file means no credentials; one that cannot be read, is not
 * JSON or not an object is InvalidArgument (field registry-auth-file); an entry without
 * credentials (a credential helper's) is passed over.
 */
export function loadCredentials(path: string): Map<string, Credentials> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw unreadable(path, (err as Error).message);
  }
  let doc: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch (err) {
    throw unreadable(path, `not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw unreadable(path, 'must be a JSON object, as Docker\'s config.json');
  if (doc.auths !== undefined && (typeof doc.auths !== 'object' || doc.auths === null || Array.isArray(doc.auths))) throw unreadable(path, '"auths" must be an object of registries');
  const out = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(doc.auths ?? {})) {
    if (typeof entry !== 'object' || entry === null) continue;
    let username = typeof entry.username === 'string' ? entry.username : undefined;
    let password = typeof entry.password === 'string' ? entry.password : undefined;
    if (typeof entry.auth === 'string' && entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) {
        username = decoded.slice(0, colon);
        password = decoded.slice(colon + 1);
      }
    }
    if (username !== undefined && password !== undefined) out.set(registryKey(key), { username, password });
  }
  return out;
}

/** One challenge of a WWW-Authenticate header (RFC 7235 section 2.1). */
export interface Challenge {
  /** The auth scheme, lowercased (schemes are case-insensitive). */
  scheme: string;
  /** auth-params by lowercased name, values unquoted and unescaped; the first of a repeated name wins. */
  params: Record<string, string>;
  /** The token68 form (`Negotiate abc==`), when the challenge has one instead of params. */
  token68?: string;
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*/;

/**
 * Every challenge in WWW-Authenticate values (RFC 7235 section 4.1: one header may carry several
 * challenges, and a response may carry several headers). Parameter values are tokens or quoted
 * strings with backslash escapes (RFC 7230 section 3.2.6): `service=registry.test` and
 * `service="registry.test"` are the same. Throws an Error saying where a value is malformed.
 */
export function parseChallenges(header: string | readonly string[] | undefined): Challenge[] {
  const values = header === undefined ? [] : typeof header === 'string' ? [header] : header;
  return values.flatMap(parseChallengeList);
}

function parseChallengeList(s: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const ows = () => {
    while (s[i] === ' ' || s[i] === '\t') i++;
  };
  const fail = (what: string): never => {
    throw new Error(`malformed WWW-Authenticate ${JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s)}: ${what} at offset ${i}`);
  };
  const token = (): string => {
    const start = i;
    while (i < s.length && TCHAR.test(s[i] ?? '')) i++;
    return s.slice(start, i);
  };
  const quoted = (): string => {
    let v = '';
    i++;
    for (;;) {
      const c = s[i++];
      if (c === undefined) return fail('unterminated quoted string');
      if (c === '"') return v;
      if (c === '\\') {
        const e = s[i++];
        if (e === undefined) return fail('unterminated quoted string');
        v += e;
      } else v += c;
    }
  };
  // Is an auth-param (token BWS "=") next, rather than a new challenge's scheme?
  const paramAhead = (): boolean => {
    const m = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*=/.exec(s.slice(i));
    // "abc==" after a scheme is token68, but here a scheme was already read, so only
    // "name =value" (a single "=" not followed by another) is a parameter.
    return m !== null && s[i + m[0].length] !== '=';
  };
  for (;;) {
    while (s[i] === ',' || s[i] === ' ' || s[i] === '\t') i++;
    if (i >= s.length) return out;
    const scheme = token();
    if (!scheme) fail('expected an auth scheme');
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    ows();
    if (i >= s.length) return out;
    if (s[i] === ',') continue;
    const t68 = TOKEN68.exec(s.slice(i));
    if (t68 && !paramAhead()) {
      const after = i + t68[0].length;
      let j = after;
      while (s[j] === ' ' || s[j] === '\t') j++;
      if (j >= s.length || s[j] === ',') {
        challenge.token68 = t68[0];
        i = after;
        continue;
      }
    }
    for (;;) {
      const name = token().toLowerCase();
      if (!name) fail('expected a parameter name');
      ows();
      if (s[i] !== '=') fail(`expected "=" after ${name}`);
      i++;
      ows();
      const value = s[i] === '"' ? quoted() : token();
      if (!(name in challenge.params)) challenge.params[name] = value;
      ows();
      if (i >= s.length) return out;
      if (s[i] !== ',') fail('expected "," between parameters');
      while (s[i] === ',' || s[i] === ' ' || s[i] === '\t') i++;
      if (i >= s.length) return out;
      if (!paramAhead()) break;
    }
  }
}
