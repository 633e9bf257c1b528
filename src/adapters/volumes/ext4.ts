import { constants } from 'node:fs';
import { copyFile, mkdir, readdir, rm, stat, truncate } from 'node:fs/promises';
import { renameDurably } from '../durable.js';
import { basename, dirname, join } from 'node:path';
import type { Logger, VolumeKey, Volumes } from '../../core/ports.js';
import type { LocalImageStore } from '../images/oci/store.js';
import { run } from '../exec.js';
import { SingleFlight } from '../single-flight.js';
import { unlessCanceled } from '../../core/plan/step.js';
import { isOrphanTemporary, sweepTemporaries, withTemporary } from '../images/temporaries.js';

const MIB = 1024 * 1024;

/**
 * A reflink of `from` at `to` in process (FICLONE: xfs, btrfs, bcachefs); where the filesystem
 * cannot share extents, a sparse copy by `cp`, since Node's copy would write every hole out.
 */
async function cloneOrCopy(from: string, to: string, signal: AbortSignal | undefined): Promise<void> {
  try {
    await copyFile(from, to, constants.COPYFILE_FICLONE_FORCE);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EXDEV' && code !== 'EINVAL' && code !== 'ENOSYS' && code !== 'ENOTTY') throw err;
  }
  await rm(to, { force: true });
  await run('cp', ['--sparse=always', from, to], { timeoutMs: 10 * 60_000, ...(signal ? { signal } : {}) });
}

/**
 * Volumes as ext4 disk images: the image's filesystem is turned into one base image per
 * manifest digest (`mkfs.ext4 -d`), and each VM gets a clone of it (a reflink where the
 * filesystem can, a sparse copy otherwise), grown to size_in_mb. Each is written under a
 * temporary name and renamed into place only when every tool succeeded, so a full disk or a
 * kill leaves no half-made volume (and `sweepTemporaries` removes the rest); each is fsync'd
 * before the rename (../durable.ts), since a volume that exists is used as it is, also after a
 * power cut.
 *
 * `mkfs.ext4 -d` (e2fsprogs >= 1.43) copies owners, all mode bits, hard links and xattrs
 * (security.capability included) from the tree into the filesystem.
 */
export class Ext4Volumes implements Volumes {
  private readonly building = new SingleFlight<string>();

  constructor(
    private readonly images: LocalImageStore,
    private readonly baseDir: string,
  ) {}

  async base(digest: string, log: Logger): Promise<string> {
    const path = join(this.baseDir, `${digest.replace(/^sha256:/, '')}.ext4`);
    if (await stat(path).then(() => true, () => false)) return path;
    return this.building.run(digest, () => this.build(digest, path, log));
  }

  private async build(digest: string, path: string, log: Logger): Promise<string> {
    const rootfs = await this.images.unpacked(digest, log);
    await mkdir(this.baseDir, { recursive: true });
    const { stdout } = await run('du', ['-sb', '--apparent-size', rootfs]);
    const bytes = Number(stdout.split(/\s/)[0] ?? 0);
    // Room for metadata and small writes; a VM that needs more asks for size_in_mb.
    const mb = Math.ceil((bytes * 1.3) / MIB) + 64;
    await withTemporary(path, async (tmp) => {
      await run('mkfs.ext4', ['-q', '-F', '-L', 'root', '-d', rootfs, tmp, `${mb}M`], { timeoutMs: 10 * 60_000 });
      await renameDurably(tmp, path);
    });
    log.info({ digest, sizeMb: mb }, 'base volume built');
    return path;
  }

  path(key: VolumeKey): string {
    return join(key.dir, `volume-${key.volumeId}.img`);
  }

  async find(key: VolumeKey): Promise<string | undefined> {
    const path = this.path(key);
    return (await stat(path).then(() => true, () => false)) ? path : undefined;
  }

  async remove(key: VolumeKey): Promise<void> {
    await rm(this.path(key), { force: true });
  }

  async create(key: VolumeKey, digest: string, sizeInMb: number | undefined, log: Logger, signal?: AbortSignal): Promise<string> {
    const path = this.path(key);
    // The base is shared: a VM called off stops waiting for it, the build goes on for the others.
    const base = signal ? await unlessCanceled(this.base(digest, log), signal) : await this.base(digest, log);
    // A temporary of an earlier attempt whose process died is in the way of nothing but room.
    const dir = dirname(path);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith(`${basename(path)}.`) && isOrphanTemporary(dir, name)) await rm(join(dir, name), { force: true });
    }
    await withTemporary(path, async (tmp) => {
      // Both work on the temporary, so stopping either leaves nothing under the volume's name.
      await cloneOrCopy(base, tmp, signal);
      const current = (await stat(tmp)).size;
      if (sizeInMb !== undefined && sizeInMb * MIB > current) {
        await truncate(tmp, sizeInMb * MIB);
        await run('resize2fs', ['-f', tmp], signal ? { signal } : {});
      }
      await renameDurably(tmp, path);
    });
    return path;
  }

  /** Removes base-volume temporaries no live operation owns; resolves the paths removed. */
  async sweepTemporaries(): Promise<string[]> {
    return sweepTemporaries([this.baseDir]);
  }
}
