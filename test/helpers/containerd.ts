import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A private containerd (root, state and socket under `dir`, only the native snapshotter) used
 * as the reference unpacker: it imports an OCI layout and unpacks it the way every Kubernetes
 * node does. Resolves the unpacked tree of the image.
 */
export async function containerdUnpack(dir: string, layout: string): Promise<{ tree: string; stop(): Promise<void> }> {
  const reference = await containerdReference(dir);
  const got = reference.unpack(layout);
  if ('error' in got) {
    await reference.stop();
    throw new Error(got.error);
  }
  return { tree: got.tree, stop: reference.stop };
}

/**
 * One private containerd (as containerdUnpack starts it) for many images: `unpack` imports a
 * layout and resolves the unpacked tree of its image, or containerd's error when it refuses
 * the image. Images are unpacked one at a time, each in a namespace of its own (so a layer
 * another image had is unpacked again): the newest snapshot is the last image's.
 */
export async function containerdReference(dir: string): Promise<{ unpack(layout: string): { tree: string } | { error: string }; stop(): Promise<void> }> {
  mkdirSync(dir, { recursive: true });
  const sock = join(dir, 'containerd.sock');
  const disabled = ['cri', 'overlayfs', 'btrfs', 'devmapper', 'zfs', 'aufs'].map((p) => `"io.containerd.${p === 'cri' ? 'grpc.v1' : 'snapshotter.v1'}.${p}"`);
  writeFileSync(join(dir, 'config.toml'), [
    'version = 2', `root = "${dir}/root"`, `state = "${dir}/state"`, `disabled_plugins = [${disabled.join(', ')}]`,
    '[grpc]', `  address = "${sock}"`, '[ttrpc]', `  address = "${sock}.ttrpc"`, '[debug]', '  address = ""', '[metrics]', '  address = ""',
  ].join('\n'));
  const proc: ChildProcess = spawn('containerd', ['-c', join(dir, 'config.toml')], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stop = async () => {
    proc.kill('SIGTERM');
    await exited;
  };
  for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  let n = 0;
  const snaps = join(dir, 'root', 'io.containerd.snapshotter.v1.native', 'snapshots');
  const unpack = (layout: string) => {
    const archive = join(dir, `image-${++n}.tar`);
    execFileSync('tar', ['-C', layout, '-cf', archive, '.']);
    try {
      // A namespace of its own: containerd unpacks no layer whose snapshot a namespace has.
      execFileSync('ctr', ['--address', sock, '--namespace', `reference${n}`, 'images', 'import', '--snapshotter', 'native', '--base-name', `example.com/reference${n}`, archive], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      return { error: String((err as { stderr?: string }).stderr ?? err).trim() };
    }
    const top = readdirSync(snaps).map(Number).sort((a, b) => b - a)[0];
    if (top === undefined) throw new Error('containerd unpacked nothing');
    return { tree: join(snaps, String(top)) };
  };
  return { unpack, stop };
}
