import { connect } from 'node:net';
import { rm, stat } from 'node:fs/promises';
import { configError } from './config.js';

/**
 * A unix socket left behind by a daemon that was killed blocks the next bind. If nothing
 * answers on it, it is stale and removed; if something answers, another daemon owns it.
 */
export async function clearStaleSocket(endpoint: string): Promise<void> {
  if (!endpoint.startsWith('unix:')) return;
  const path = endpoint.replace(/^unix:(\/\/)?/, '');
  const st = await stat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw configError(`${endpoint}: ${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw configError(`${endpoint}: another process is serving on ${path}`);
  await rm(path, { force: true });
}
