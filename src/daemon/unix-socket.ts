import { connect } from 'node:net';
import { chmod, chown, lstat, readFile, rm, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { UNIX_SOCKET_PATH_MAX } from '../core/vmm.js';
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
 * Whether a `unix:` endpoint can be bound, without changing anything: `absent` (nothing there,
 * its directory exists) or `stale` (a socket nothing answers on and no live process has bound,
 * left by a daemon that was killed). A path that cannot be bound is the same failure as a TCP port in use: an Error (exit
 * 1) naming the setting (`key`, e.g. grpc-endpoint) as `<key> <endpoint>: cannot listen: <why>`
 * (another process serves it or holds it bound, it is no socket, or its directory does not exist and is not
 * `madeLater`, nor one of the directories making `madeLater` makes: the state dir, which may
 * hold the socket).
 */
export async function checkSocket(key: string, endpoint: string, madeLater?: string): Promise<'absent' | 'stale'> {
  const path = socketPath(endpoint);
  const cannot = (why: string) => new Error(`${key} ${endpoint}: cannot listen: ${why}`);
  // sun_path holds 108 bytes with its NUL (unix(7)): a longer path is cut, and bind(2) would
  // make a socket at another name.
  if (Buffer.byteLength(path) > UNIX_SOCKET_PATH_MAX) throw cannot(`the path is ${Buffer.byteLength(path)} bytes; a unix socket's path takes at most ${UNIX_SOCKET_PATH_MAX} (sun_path, unix(7))`);
  const link = await lstat(path).catch(() => undefined);
  if (link?.isSymbolicLink()) throw cannot(`${path} is a symbolic link; give the socket's own path`);
  const st = await stat(path).catch(() => undefined);
  if (!st) {
    // bind(2) reports a missing directory as EACCES or ENOENT without naming it.
    const dir = resolve(dirname(path));
    const later = madeLater === undefined ? undefined : resolve(madeLater);
    const made = later !== undefined && (later === dir || later.startsWith(`${dir}/`));
    if (!made && !(await stat(dir).catch(() => undefined))?.isDirectory()) throw cannot(`directory ${dirname(path)} does not exist`);
    return 'absent';
  }
  if (!st.isSocket()) throw cannot(`${path} exists and is not a socket`);
  // Only ECONNREFUSED says nothing listens: a datagram socket answers EPROTOTYPE, a stream
  // server with a full accept queue EAGAIN, and both are alive and someone else's.
  const answer = await new Promise<string | undefined>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve('connect');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code));
  });
  // ECONNREFUSED is also what a socket bound but not (yet) listening answers: only one that no
  // live process has bound (a socket's path stays in /proc/net/unix while its process holds it)
  // is a stopped daemon's leftover.
  if (answer === 'ECONNREFUSED') {
    if (await boundInProc(path)) throw cannot(`${path} is a socket a live process holds (bound, listed in /proc/net/unix) without listening on it; it is not one a stopped daemon left`);
    return 'stale';
  }
  if (answer === 'ENOENT') return 'absent';
  throw cannot(answer === 'connect' ? `another process is serving on ${path}` : `${path} is a socket in use (connecting to it: ${answer ?? 'an error'}), not one a stopped daemon left`);
}

/**
 * Whether a live process has bound `path`: the kernel lists every bound unix socket of this
 * network namespace in /proc/net/unix (proc(5): `Num RefCount Protocol Flags Type St Inode
 * Path`), by the path it was bound at, until the last descriptor of it is closed. A listed path
 * matches when it names the same file (device and inode), so one bound through a symbolic link
 * (/var/run is one to /run) is found. A socket bound by a relative path, or renamed since, is
 * listed by a name that cannot be matched; one bound in another network namespace is not listed
 * (connect(2) still reaches it when it listens).
 */
async function boundInProc(path: string, table = '/proc/net/unix'): Promise<boolean> {
  const text = await readFile(table, 'utf8').catch(() => '');
  const want = await stat(path).catch(() => undefined);
  if (!want) return false;
  for (const line of text.split('\n').slice(1)) {
    const bound = line.trim().split(/\s+/).slice(7).join(' ');
    if (!bound.startsWith('/')) continue;
    if (resolve(bound) === resolve(path)) return true;
    const st = await stat(bound).catch(() => undefined);
    if (st && st.ino === want.ino && st.dev === want.dev) return true;
  }
  return false;
}

/**
 * A unix socket left behind by a daemon that was killed blocks the next bind: one nothing
 * answers on and no live process holds is removed. Refuses as checkSocket does.
 */
export async function clearStaleSocket(key: string, endpoint: string): Promise<void> {
  if (!endpoint.startsWith('unix:')) return;
  if ((await checkSocket(key, endpoint)) === 'stale') await rm(socketPath(endpoint), { force: true });
}
