import { connect } from 'node:net';
import { chmod, chown, rm, stat } from 'node:fs/promises';
/** The socket path of a `unix:` endpoint (`unix:/p` or `unix:///p`). */
export const socketPath = (endpoint: string) => endpoint.replace(/^unix:(\/\/)?/, '');

/**
 * The API socket is 0660, owned by root and `group` (root's group when none is given): anyone
 * who can connect can create VMs, so that is only root and the operators' group. The daemon's
 * umask (027) already keeps others out between bind and this call.
 */
export async function restrictSocket(endpoint: string, group: number | undefined): Promise<void> {
  if (!endpoint.startsWith('unix:')) return;
  const path = socketPath(endpoint);
  if (group !== undefined) await chown(path, process.getuid?.() ?? 0, group);
  await chmod(path, 0o660);
}

/**
 * A unix socket left behind by a daemon that was killed blocks the next bind. If nothing
 * answers on it, it is stale and removed; if something answers, another daemon owns it.
 * A path that cannot be bound is the same failure as a TCP port in use: an Error (exit 1) naming
 * the setting (`key`, e.g. grpc-endpoint) as `<key> <endpoint>: cannot listen: <why>`.
 */
export async function clearStaleSocket(key: string, endpoint: string): Promise<void> {
  if (!endpoint.startsWith('unix:')) return;
  const path = socketPath(endpoint);
  const cannot = (why: string) => new Error(`${key} ${endpoint}: cannot listen: ${why}`);
  const st = await stat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw cannot(`${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw cannot(`another process is serving on ${path}`);
  await rm(path, { force: true });
}
