import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface Credentials {
  username: string;
  password: string;
}

/** Where Docker looks for credentials: $DOCKER_CONFIG/config.json, else ~/.docker/config.json. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_CONFIG ? join(env.DOCKER_CONFIG, 'config.json') : join(env.HOME ?? homedir(), '.docker', 'config.json');
}

/** Docker's keys are URLs or hosts ("https://index.docker.io/v1/", "ghcr.io"); matchlock's are hosts. */
function registryKey(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//, '').split('/')[0] ?? key;
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? 'docker.io' : host;
}

/**
 * Credentials from a Docker-style config.json (`auths.<registry>.auth` = base64 "user:pass", or
 * `username`/`password`). A missing file means no credentials; a broken one is an error.
 */
export function loadCredentials(path: string): Map<string, Credentials> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw new Error(`registry credentials ${path}: ${(err as Error).message}`);
  }
  let doc: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch (err) {
    throw new Error(`registry credentials ${path}: not JSON (${(err as Error).message})`);
  }
  const out = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(doc.auths ?? {})) {
    let username = entry.username;
    let password = entry.password;
    if (entry.auth) {
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

/** Parses `Bearer realm="…",service="…",scope="…"` (or Basic) from WWW-Authenticate. */
export function parseChallenge(header: string | undefined): { scheme: string; params: Record<string, string> } | undefined {
  if (!header) return undefined;
  const m = /^(\w+)\s*(.*)$/.exec(header.trim());
  if (!m?.[1]) return undefined;
  const params: Record<string, string> = {};
  for (const p of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) if (p[1]) params[p[1]] = p[2] ?? '';
  return { scheme: m[1].toLowerCase(), params };
}
