import { mkdir, readFile, stat } from 'node:fs/promises';
import { writeFileDurably } from '../durable.js';
import { dirname, join } from 'node:path';
import { ErrorCode, MatchlockError } from '../../core/errors.js';
import type { Logger, VolumeKey, Volumes } from '../../core/ports.js';
import { unlessCanceled } from '../../core/plan/step.js';
import { run } from '../exec.js';
import { SingleFlight } from '../single-flight.js';
import type { Ext4Volumes } from './ext4.js';

export interface ThinPoolOptions {
  /** The pool's device-mapper name, e.g. flintlock's `flintlock-thinpool`. */
  pool: string;
  dmsetup: string;
  /** Where device-mapper devices appear (/dev/mapper). */
  devDir: string;
  /** JSON file mapping matchlock's device names to thin ids. */
  idsFile: string;
  /** Builds the ext4 base image that is copied into each image's base thin volume. */
  ext4: Ext4Volumes;
}

const SECTOR = 512;
/** matchlock-<uid, lowercase>-<volume id>: a VM's volume. */
const VOLUME_NAME = /^matchlock-([0-9a-hjkmnp-tv-z]{26})-(.+)$/;
/** matchlock-base-<first 24 hex digits of the image digest>: an image's base volume. */
const BASE_NAME = /^matchlock-base-([0-9a-f]{24})$/;
const baseName = (digest: string) => `matchlock-base-${digest.replace(/^sha256:/, '').slice(0, 24)}`;

/**
 * Volumes as device-mapper thin volumes, for hosts with a thin pool (flintlock's layout): one
 * base thin volume per image digest holding its ext4 filesystem, and a thin snapshot of it per
 * VM volume, grown to size_in_mb. Thin ids are kept in a file beside the image store.
 */
export class ThinPoolVolumes implements Volumes {
  private readonly bases = new SingleFlight<{ name: string; id: number; sectors: number }>();
  private lock: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: ThinPoolOptions) {}

  private name(key: VolumeKey): string {
    return `matchlock-${key.uid.toLowerCase()}-${key.volumeId}`;
  }
  private dev(name: string): string {
    return join(this.o.devDir, name);
  }
  private dm(...args: string[]) {
    return run(this.o.dmsetup, args);
  }

  /** Serialises pool changes: thin ids and snapshots of one origin must not interleave. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.lock.then(fn, fn);
    this.lock = next.catch(() => undefined);
    return next;
  }

  private async ids(): Promise<Record<string, number>> {
    try {
      return JSON.parse(await readFile(this.o.idsFile, 'utf8')) as Record<string, number>;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw err;
    }
  }
  private async saveIds(ids: Record<string, number>): Promise<void> {
    await mkdir(dirname(this.o.idsFile), { recursive: true });
    // Durable: a torn file would lose ids the pool still holds (and a new device would be given
    // one of them) or fail to parse at every later create.
    await writeFileDurably(`${this.o.idsFile}.tmp`, this.o.idsFile, JSON.stringify(ids, null, 1));
  }
  /**
   * The thin id of `name`, creating it with `make(id)` when it has none. The id is recorded only
   * once the pool accepted it, so a failed message never leaves an id that does not exist.
   */
  private async thinId(name: string, make: (id: number) => Promise<void>): Promise<number> {
    const ids = await this.ids();
    const known = ids[name];
    if (known !== undefined) return known;
    const id = Math.max(0, ...Object.values(ids)) + 1;
    await make(id);
    ids[name] = id;
    await this.saveIds(ids);
    return id;
  }

  private async active(name: string): Promise<boolean> {
    return this.dm('info', name).then(() => true, () => false);
  }

  async find(key: VolumeKey): Promise<string | undefined> {
    const name = this.name(key);
    return (await this.active(name)) ? this.dev(name) : undefined;
  }

  private base(digest: string, log: Logger) {
    const name = baseName(digest);
    return this.bases.run(name, async () => {
      const file = await this.o.ext4.base(digest, log);
      const sectors = Math.ceil((await stat(file)).size / SECTOR);
      return this.exclusive(async () => {
        const known = (await this.ids())[name];
        if (known !== undefined && (await this.active(name))) return { name, id: known, sectors };
        if (!(await this.active(this.o.pool))) throw new MatchlockError(ErrorCode.FailedPrecondition, `thin pool ${this.o.pool} not found (dmsetup info ${this.o.pool} failed)`);
        const id = await this.thinId(name, async (n) => {
          await this.dm('message', this.o.pool, '0', `create_thin ${n}`);
        });
        await this.dm('create', name, '--table', `0 ${sectors} thin /dev/mapper/${this.o.pool} ${id}`);
        await run('dd', [`if=${file}`, `of=${this.dev(name)}`, 'bs=1M', 'conv=sparse,notrunc,fsync', 'status=none'], { timeoutMs: 10 * 60_000 });
        log.info({ digest, thinId: id, pool: this.o.pool }, 'base thin volume built');
        return { name, id, sectors };
      });
    });
  }

  async create(key: VolumeKey, digest: string, sizeInMb: number | undefined, log: Logger, signal?: AbortSignal): Promise<string> {
    // The base is shared: a VM called off stops waiting for it, the build goes on for the others.
    // Once the VM's device exists under its name its resize2fs is not stopped: a filesystem
    // left half-grown there would be used as it is by the next pass.
    const base = signal ? await unlessCanceled(this.base(digest, log), signal) : await this.base(digest, log);
    const name = this.name(key);
    const sectors = Math.max(base.sectors, (sizeInMb ?? 0) * 2048);
    await this.exclusive(async () => {
      if (await this.active(name)) return;
      const id = await this.thinId(name, async (n) => {
        // A snapshot of an active origin needs the origin suspended while it is taken.
        await this.dm('suspend', base.name);
        try {
          await this.dm('message', this.o.pool, '0', `create_snap ${n} ${base.id}`);
        } finally {
          await this.dm('resume', base.name);
        }
      });
      await this.dm('create', name, '--table', `0 ${sectors} thin /dev/mapper/${this.o.pool} ${id}`);
    });
    if (sectors > base.sectors) await run('resize2fs', ['-f', this.dev(name)]);
    return this.dev(name);
  }

  async remove(key: VolumeKey, log: Logger): Promise<void> {
    const name = this.name(key);
    log.debug({ name }, 'removing thin volume');
    await this.exclusive(() => this.destroy(name));
  }

  /** Deactivates a thin volume and deletes its thin id; call inside exclusive(). */
  private async destroy(name: string): Promise<void> {
    if (await this.active(name)) await this.dm('remove', name);
    const ids = await this.ids();
    const id = ids[name];
    if (id === undefined) return;
    await this.dm('message', this.o.pool, '0', `delete ${id}`);
    delete ids[name];
    await this.saveIds(ids);
  }

  /** VM volumes matchlock holds in the pool, by owner, so the orphan sweep can find leftovers. */
  async owned(): Promise<{ uid: string; volumeId: string }[]> {
    return Object.keys(await this.ids()).flatMap((name) => {
      const m = VOLUME_NAME.exec(name);
      return m?.[1] && m[2] ? [{ uid: m[1].toUpperCase(), volumeId: m[2] }] : [];
    });
  }

  /**
   * Garbage collection of base thin volumes: removes each one whose image digest is not in
   * `keep` (the digests still in the image store or used by a VM). VM volumes are thin
   * snapshots, independent of their origin once taken, so they are never affected.
   * Returns the names removed.
   */
  async collectBases(keep: ReadonlySet<string>, log: Logger): Promise<string[]> {
    const live = new Set([...keep].map(baseName));
    return this.exclusive(async () => {
      const removed: string[] = [];
      for (const name of Object.keys(await this.ids())) {
        if (!BASE_NAME.test(name) || live.has(name)) continue;
        await this.destroy(name);
        log.info({ name, pool: this.o.pool }, 'unused base thin volume removed');
        removed.push(name);
      }
      return removed;
    });
  }
}
