import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, lstatSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { chmod, lstat, mkdir, readFile, readdir, readlink, rm, stat } from 'node:fs/promises';
import { renameDurably, writeFileDurably } from '../../durable.js';
import { join, relative } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { PACKAGE_ROOT } from '../../../package-root.js';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { formatReference, parseReference, type ImageReference } from '../../../core/images/reference.js';
import type { ImageStore, Logger } from '../../../core/ports.js';
import { imageRefs, type MicroVM } from '../../../core/microvm/types.js';
import { MEDIA, MirrorError, askedMirror, type RegistryClient } from './registry.js';
import { SingleFlight } from '../../single-flight.js';
import { sweepTemporaries, withTemporary } from '../temporaries.js';
import type { UnpackJob, UnpackResult } from './unpack-process.js';

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string };
}

interface Manifest {
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  manifests?: Descriptor[];
}

const DIGEST = /^sha256:([0-9a-f]{64})$/;

export interface PullProgress {
  ref: string;
  bytes: number;
  totalBytes: number;
  blobsDone: number;
  blobs: number;
}

function hostArch(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}

/** The entry of an image index (OCI) or manifest list (Docker) for linux on this host's architecture. */
function hostEntry(index: Manifest): NonNullable<Manifest['manifests']>[number] | undefined {
  const arch = hostArch();
  return index.manifests?.find((d) => d.platform?.os === 'linux' && d.platform.architecture === arch);
}

/**
 * The one entry of an OCI layout's index.json (or of an image index it names) to import. An
 * entry is chosen by its org.opencontainers.image.ref.name: equal to `ref`, or to `name`'s tag
 * or whole reference. Entries for several platforms give this host's (the first when none is
 * for it, as before). Several images left without a choice are refused, listing their
 * ref.names, rather than one taken silently. `byRef`: whether `ref` chose the entry.
 */
function chooseEntry(entries: Descriptor[], o: { ref: string | undefined; name: ImageReference | undefined; where: string }): { entry: Descriptor; byRef: boolean; listed: string } {
  const refNameOf = (d: Descriptor) => d.annotations?.[REF_NAME];
  const listed = () => entries.map((d) => refNameOf(d) ?? `(no ref.name) ${d.digest}`).join(', ');
  const matches = (want: (r: string) => boolean) => entries.filter((d) => {
    const r = refNameOf(d);
    return r !== undefined && want(r);
  });
  let candidates = entries;
  if (o.ref !== undefined) {
    const named = matches((r) => r === o.ref);
    if (named.length) candidates = named;
  } else if (o.name && candidates.length > 1) {
    const full = formatReference(o.name);
    const sameRef = (r: string) => {
      const p = /[/:]/.test(r) ? parseReference(r) : undefined;
      return p !== undefined && typeof p !== 'string' && formatReference(p) === full;
    };
    const named = matches((r) => r === o.name?.tag || sameRef(r));
    if (named.length) candidates = named;
  }
  // The same manifest under several ref.names is one image.
  const distinct = [...new Map(candidates.map((d) => [d.digest, d])).values()];
  const chosen = (entry: Descriptor) => ({ entry, byRef: o.ref !== undefined && refNameOf(entry) === o.ref, listed: listed() });
  const only = distinct.length === 1 ? distinct[0] : undefined;
  if (only) return chosen(only);
  if (distinct.some((d) => d.platform)) {
    const pick = hostEntry({ manifests: distinct } as Manifest) ?? distinct[0];
    if (pick) return chosen(pick);
  }
  if (distinct.length === 0) throw new MatchlockError(ErrorCode.InvalidArgument, `${o.where} lists no image`);
  if (o.ref !== undefined) throw new MatchlockError(ErrorCode.InvalidArgument, `--ref ${o.ref}: no image in ${o.where} has that org.opencontainers.image.ref.name; it holds: ${listed()}`, { field: '--ref' });
  throw new MatchlockError(ErrorCode.InvalidArgument, `${o.where} holds ${distinct.length} images (org.opencontainers.image.ref.name: ${listed()}); choose one with --ref <ref.name>, or a --name whose tag is one of them`, { field: '--ref' });
}

function parsedDigest(ref: string): string | undefined {
  const p = parseReference(ref);
  return typeof p === 'string' ? undefined : p.digest;
}

/** `registry/repo@digest` for a reference whose digest was pinned earlier. */
function pinnedRef(ref: string, digest: string): string {
  const p = parseReference(ref);
  if (typeof p === 'string') return ref;
  return formatReference({ registry: p.registry, repository: p.repository, digest });
}
const REF_NAME = 'org.opencontainers.image.ref.name';

export function normalizeRef(ref: string): string {
  const parsed = parseReference(ref);
  if (typeof parsed === 'string') throw new MatchlockError(ErrorCode.InvalidArgument, `image reference ${JSON.stringify(ref)}: ${parsed}`);
  return formatReference(parsed);
}

/**
 * Where a pull of `ref` went, for an error message: the registry the reference names
 * (`docker.io` for `alpine`), or, when `err` is a failure whose last request went to a mirror
 * (registry-mirrors), `<mirror> (mirror of <registry>)`. Throws InvalidArgument for a string
 * that is not a reference, as normalizeRef does.
 */
export function pullSource(ref: string, err?: unknown): string {
  const parsed = parseReference(normalizeRef(ref)) as ImageReference;
  return err instanceof MirrorError ? `${err.mirror} (mirror of ${parsed.registry})` : parsed.registry;
}

function hexOf(digest: string): string {
  const m = DIGEST.exec(digest);
  if (!m?.[1]) throw new MatchlockError(ErrorCode.InvalidArgument, `unsupported digest ${digest}: only sha256 is accepted`);
  return m[1];
}

/**
 * The content-addressed image store under `<state-dir>/images`, shared by every VM:
 *   blobs/sha256/<hex>         manifests, configs and layers, verified on the way in
 *   refs/<reference>           the manifest digest a reference points to
 *   rootfs/<manifest hex>/     the image's filesystem, layers applied in order with whiteouts
 * Writes go to a temporary name, are flushed to disk and renamed into place (../../durable.ts),
 * so neither a kill nor a power cut leaves half an image: a blob, reference or tree that exists
 * is trusted as complete (blobs are verified on the way in, never again on read).
 */
/** Watches registry pulls (the metrics endpoint's pull, failure and byte counters). */
export interface PullObserver {
  pullStarted(): void;
  pullFailed(): void;
  /** Bytes of blob bodies received, as they arrive. */
  bytes(n: number): void;
}

export class LocalImageStore implements ImageStore {
  private readonly unpacking = new SingleFlight<string>();
  private readonly platforms = new Map<string, string | undefined>();
  private readonly pulling = new SingleFlight<string>();

  constructor(
    readonly root: string,
    private readonly registry?: RegistryClient,
    private readonly observer?: PullObserver,
  ) {}

  private blob(digest: string): string {
    return join(this.root, 'blobs', 'sha256', hexOf(digest));
  }
  private refFile(ref: string): string {
    return join(this.root, 'refs', encodeURIComponent(normalizeRef(ref)));
  }
  rootfsPath(digest: string): string {
    return join(this.root, 'rootfs', hexOf(digest));
  }

  /** The manifest digest a reference points to, or undefined when it was never imported. */
  // The reads and stats of a reference, a blob and a rootfs below are made in place: every
  // reconcile pass asks them for each image of its VM, and each is a small local file or one
  // stat, cheaper than a promise's thread-pool round trips. Not kept in memory: the CLI writes
  // this store too, and one read is cheaper than knowing for sure that nothing changed.
  async resolve(ref: string): Promise<string | undefined> {
    try {
      return readFileSync(this.refFile(ref), 'utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async ensure(ref: string, log: Logger, pinned?: string): Promise<string> {
    // Each blob is looked for once (an lstat in place): the pinned digest, else the one the
    // reference names when it is stored, else the one its ref file holds; then the manifest for
    // this host, unless that is the blob just found (a manifest, not an index).
    const stored = async (digest: string | undefined) => (digest && (await this.has(digest)) ? digest : undefined);
    const named = parsedDigest(ref);
    const found = pinned !== undefined ? await stored(pinned) : ((await stored(named)) ?? (await stored(await this.resolve(ref))));
    // A reference by an index's digest names the index; the image is its manifest for this host.
    const digest = found ? await this.platformManifest(found) : undefined;
    if (digest && (digest === found || (await this.has(digest)))) {
      await this.unpacked(digest, log);
      return digest;
    }
    if (!this.registry) {
      throw new MatchlockError(ErrorCode.NotFound, `image ${normalizeRef(ref)} not found in the image store; import it with "matchlock image import"`);
    }
    let pulled: string;
    try {
      pulled = await this.pull(pinned ? pinnedRef(ref, pinned) : ref, log);
    } catch (err) {
      // Said first, so an error from the network (a name that does not resolve) is not read
      // as the whole story of an image someone meant to import.
      const e = MatchlockError.from(err);
      throw new MatchlockError(e.code, `not in the image store, and its pull from ${pullSource(ref, err)} failed: ${e.message}`, { cause: err });
    }
    await this.unpacked(pulled, log);
    return pulled;
  }

  /**
   * The image manifest a stored manifest digest stands for on this host: itself, or for an image
   * index (OCI) or manifest list (Docker) the linux/<host arch> entry, which a pull of it
   * stored; undefined when the index has none.
   */
  private async platformManifest(digest: string): Promise<string | undefined> {
    // Blobs are named by their content, so the answer for a digest never changes.
    if (this.platforms.has(digest)) return this.platforms.get(digest);
    // A reference may name any blob by digest (a layer of gigabytes): only a small JSON document
    // can be a manifest or an index, and only that is read, in place.
    const notManifest = () => new MatchlockError(ErrorCode.FailedPrecondition, `${digest} names a blob of the image store that is not an image manifest or index`);
    if (statSync(this.blob(digest)).size > MAX_MANIFEST_BYTES) throw notManifest();
    let doc: Manifest | null;
    try {
      doc = JSON.parse(readFileSync(this.blob(digest), 'utf8')) as Manifest | null;
    } catch {
      throw notManifest();
    }
    if (doc === null || typeof doc !== 'object') throw notManifest();
    const platform = Array.isArray(doc.manifests) ? hostEntry(doc)?.digest : digest;
    this.platforms.set(digest, platform);
    return platform;
  }

  async ready(digest: string): Promise<boolean> {
    return (await this.has(digest)) && isDirectory(this.rootfsPath(digest));
  }

  async has(digest: string): Promise<boolean> {
    return Promise.resolve(exists(this.blob(digest), lstatSync));
  }

  async file(digest: string, path: string, ref: string): Promise<string> {
    const root = this.rootfsPath(digest);
    // Symlinks resolve inside the image, as in the guest; the result can never leave the image.
    const real = await resolveInImage(root, path);
    if (real && statSync(real).isFile()) return real;
    const listing = await this.listFiles(root, 40);
    throw new MatchlockError(ErrorCode.FailedPrecondition, `file ${path} ${whyNotFile(root, path, normalizeRef(ref))}; it contains: ${listing.join(', ') || '(nothing)'}`);
  }

  /**
   * Pulls an image from its registry into the store: the manifest (the host's platform out of
   * an index), then config and layers in parallel, each verified; blobs already present are
   * shared, not fetched again. Concurrent pulls of one reference share one download.
   */
  pull(ref: string, log: Logger, progress?: (p: PullProgress) => void): Promise<string> {
    const normalized = normalizeRef(ref);
    return this.pulling.run(normalized, async () => {
      this.observer?.pullStarted();
      try {
        return await this.doPull(normalized, log, progress);
      } catch (err) {
        this.observer?.pullFailed();
        throw err;
      }
    });
  }

  private async doPull(ref: string, log: Logger, progress?: (p: PullProgress) => void): Promise<string> {
    const registry = this.registry;
    if (!registry) throw new MatchlockError(ErrorCode.FailedPrecondition, 'no registry client configured');
    const parsed = parseReference(ref);
    if (typeof parsed === 'string') throw new MatchlockError(ErrorCode.InvalidArgument, `${ref}: ${parsed}`);
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(this.root, 'refs'), { recursive: true });
    let m = await registry.manifest(parsed, parsed.digest ?? parsed.tag ?? 'latest');
    if (m.mediaType === MEDIA.ociIndex || m.mediaType === MEDIA.dockerList) {
      const index = JSON.parse(m.body.toString('utf8')) as Manifest;
      const pick = hostEntry(index);
      if (!pick) {
        const have = (index.manifests ?? []).map((d) => `${d.platform?.os ?? '?'}/${d.platform?.architecture ?? '?'}`).join(', ');
        // Named after the host that served the index, which may be a mirror.
        throw askedMirror(new MatchlockError(ErrorCode.FailedPrecondition, `image ${ref} has no linux/${hostArch()} manifest (it has: ${have || 'none'})`), m.mirror);
      }
      await this.writeBlob(m.digest, m.body);
      m = await registry.manifest(parsed, pick.digest);
    }
    const manifest = JSON.parse(m.body.toString('utf8')) as Manifest;
    if (!manifest.config || !Array.isArray(manifest.layers)) throw askedMirror(new MatchlockError(ErrorCode.FailedPrecondition, `image ${ref}: unsupported manifest type ${m.mediaType}`), m.mirror);
    const blobs = [manifest.config, ...manifest.layers];
    const total = blobs.reduce((n, b) => n + b.size, 0);
    const state: PullProgress = { ref, bytes: 0, totalBytes: total, blobsDone: 0, blobs: blobs.length };
    const report = () => progress?.({ ...state });
    report();
    const queue = [...blobs];
    const worker = async () => {
      for (let d = queue.shift(); d; d = queue.shift()) {
        if (!(await this.has(d.digest))) {
          let got = 0;
          await registry.blob(parsed, d.digest, this.blob(d.digest), (n) => {
            // 0 means the attempt failed and starts over: take its bytes back out.
            if (n === 0) {
              state.bytes -= got;
              got = 0;
            } else {
              got += n;
              state.bytes += n;
              this.observer?.bytes(n);
            }
            report();
          });
        } else {
          state.bytes += d.size;
        }
        state.blobsDone++;
        report();
      }
    };
    await Promise.all([worker(), worker(), worker()]);
    await this.writeBlob(m.digest, m.body);
    // A reference by digest is kept too (`repo@sha256:…` → the manifest pulled for it), so what
    // was pulled ahead by digest is listed, kept from the image GC like a tag, and found
    // after the GC removed an index blob that nothing else names.
    await this.writeRef(ref, m.digest);
    log.info({ ref, digest: m.digest, bytes: total }, 'image pulled');
    return m.digest;
  }

  private async writeBlob(digest: string, body: Buffer): Promise<void> {
    const dest = this.blob(digest);
    await withTemporary(dest, async (tmp) => {
      await writeFileDurably(tmp, dest, body);
    });
  }

  private async writeRef(ref: string, digest: string): Promise<void> {
    const file = this.refFile(ref);
    await withTemporary(file, async (tmp) => {
      await writeFileDurably(tmp, file, digest + '\n');
    });
  }

  /**
   * Removes the temporaries (blobs, references, unpacked trees, base volumes, imports) that no
   * live operation owns: debris of a killed process or a failed write. Resolves what it removed.
   */
  async sweepTemporaries(): Promise<string[]> {
    return sweepTemporaries([this.root, join(this.root, 'blobs', 'sha256'), join(this.root, 'refs'), join(this.root, 'rootfs'), join(this.root, 'base')]);
  }

  private async listFiles(root: string, max: number): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, depth: number) => {
      for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
        if (out.length >= max) return;
        const p = join(dir, e.name);
        // Symlinks and directories count too: an image of only those is not "(nothing)".
        if (e.isFile()) out.push(relative(root, p));
        else if (e.isSymbolicLink()) out.push(`${relative(root, p)} -> ${await readlink(p).catch(() => '?')}`);
        else if (e.isDirectory()) {
          out.push(`${relative(root, p)}/`);
          if (depth < 2 && !['bin', 'sbin', 'lib', 'usr', 'proc', 'sys', 'dev'].includes(e.name)) await walk(p, depth + 1);
        }
      }
    };
    try {
      await walk(root, 0);
    } catch {
      // an unreadable image lists as empty; the caller's message still names the file
    }
    return out;
  }

  /**
   * Imports an OCI image layout directory (or a tar of one) under `name`. A layout whose
   * index.json lists several images needs one chosen (as skopeo's `oci:DIR:REF` and containerd's
   * import do): `ref` equal to an entry's org.opencontainers.image.ref.name, or `name` whose tag
   * or whole reference is one; an image index for several platforms gives this host's entry.
   * Throws InvalidArgument listing the ref.names when the choice is missing or matches nothing.
   */
  async import(source: string, name?: string, ref?: string): Promise<{ ref: string; digest: string }> {
    const info = await stat(source).catch(() => undefined);
    if (!info) throw new MatchlockError(ErrorCode.InvalidArgument, `${source}: no such file or directory`);
    if (info.isDirectory()) return this.importLayout(source, name, ref);
    await mkdir(this.root, { recursive: true });
    return withTemporary(join(this.root, '.import'), async (tmp) => {
      await mkdir(tmp);
      // strict: node-tar otherwise turns write errors (ENOSPC) into warnings and carries on.
      // node-tar is loaded here, by the one path that needs it, not by every daemon.
      const tar = await import('tar');
      await tar.x({ file: source, cwd: tmp, preserveOwner: false, strict: true });
      return await this.importLayout(tmp, name, ref);
    });
  }

  private async importLayout(dir: string, name?: string, ref?: string): Promise<{ ref: string; digest: string }> {
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(this.root, 'refs'), { recursive: true });
    const readJson = async <T>(p: string): Promise<T> => {
      try {
        return JSON.parse(await readFile(p, 'utf8')) as T;
      } catch (err) {
        throw new MatchlockError(ErrorCode.InvalidArgument, `${p}: not an OCI image layout (${(err as Error).message})`);
      }
    };
    const index = await readJson<{ manifests?: Descriptor[] }>(join(dir, 'index.json'));
    const layoutBlob = (d: string) => join(dir, 'blobs', 'sha256', hexOf(d));
    const tag = name ? parseReference(name) : undefined;
    if (typeof tag === 'string') throw new MatchlockError(ErrorCode.InvalidArgument, `--name ${name}: ${tag}`);
    const top = chooseEntry(index.manifests ?? [], { ref, name: tag, where: `${dir}/index.json` });
    let desc = top.entry;
    let byRef = top.byRef;
    const held = [top.listed];
    const topRefName = desc.annotations?.[REF_NAME];
    let manifest = await readJson<Manifest>(layoutBlob(desc.digest));
    if (manifest.manifests) {
      const pick = chooseEntry(manifest.manifests, { ref, name: tag, where: `${dir}: image index ${desc.digest}` });
      await this.copyBlob(layoutBlob(desc.digest), desc.digest);
      desc = pick.entry;
      byRef ||= pick.byRef;
      held.push(pick.listed);
      manifest = await readJson<Manifest>(layoutBlob(desc.digest));
    }
    if (ref !== undefined && !byRef) throw new MatchlockError(ErrorCode.InvalidArgument, `--ref ${ref}: no image in ${dir} has that org.opencontainers.image.ref.name; it holds: ${held.join('; ')}`, { field: '--ref' });
    for (const d of [desc, manifest.config, ...manifest.layers]) await this.copyBlob(layoutBlob(d.digest), d.digest);
    const annotated = topRefName ?? desc.annotations?.[REF_NAME];
    const refName = name ?? (annotated && /[/:]/.test(annotated) ? annotated : undefined);
    if (!refName) throw new MatchlockError(ErrorCode.InvalidArgument, 'the layout does not carry a full image reference; give one with --name');
    const stored = normalizeRef(refName);
    await this.writeRef(stored, desc.digest);
    return { ref: stored, digest: desc.digest };
  }

  /** Copies a blob into the store, refusing it when its content does not hash to its digest. */
  private async copyBlob(from: string, digest: string): Promise<void> {
    const dest = this.blob(digest);
    if (await lstat(dest).then(() => true, () => false)) return;
    await withTemporary(dest, async (tmp) => {
      const hash = createHash('sha256');
      const input = createReadStream(from);
      input.on('data', (c) => hash.update(c));
      try {
        await pipeline(input, createWriteStream(tmp, { mode: 0o644 }));
      } catch (err) {
        throw new MatchlockError(ErrorCode.InvalidArgument, `blob ${digest}: ${(err as Error).message}`);
      }
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== digest) throw new MatchlockError(ErrorCode.InvalidArgument, `blob ${digest} is corrupt: its content hashes to ${got}`);
      await renameDurably(tmp, dest);
    });
  }

  /** The unpacked filesystem of an image, built once; concurrent callers share one unpack. */
  async unpacked(digest: string, log: Logger): Promise<string> {
    const dest = this.rootfsPath(digest);
    if (exists(dest, statSync)) return dest;
    return this.unpacking.run(digest, () => this.unpack(digest, dest, log));
  }

  private async unpack(digest: string, dest: string, log: Logger): Promise<string> {
    const manifest = JSON.parse(await readFile(this.blob(digest), 'utf8')) as Manifest;
    if (!Array.isArray(manifest.layers)) throw new MatchlockError(ErrorCode.FailedPrecondition, `image ${digest} is not an image manifest: nothing to unpack`);
    const layers = manifest.layers.map((l, i) => {
      const compression = LAYER_COMPRESSION[l.mediaType ?? ''];
      if (!compression) {
        throw new MatchlockError(
          ErrorCode.FailedPrecondition,
          `image ${digest}: layer ${i} (${l.digest}) has media type ${JSON.stringify(l.mediaType ?? '')}, which cannot be unpacked; supported: ${Object.keys(LAYER_COMPRESSION).join(', ')}`,
        );
      }
      return { path: this.blob(l.digest), digest: l.digest, compression };
    });
    // Images keep their setuid files (the guest's sudo needs them); the trees they are unpacked
    // into are root-only, so no host user can reach or run them.
    await mkdir(join(this.root, 'rootfs'), { recursive: true, mode: 0o700 });
    await chmod(join(this.root, 'rootfs'), 0o700);
    return withTemporary(dest, async (tmp) => {
      await mkdir(tmp, { mode: 0o755 });
      await chmod(tmp, 0o755);
      const stats = await runUnpack({ dest: tmp, layers });
      try {
        // One syncfs for the whole tree: an fsync per file would cost a journal commit each.
        await renameDurably(tmp, dest, 'tree');
      } catch (err) {
        // Another process (the CLI's pull beside the daemon's create, two imports) finished
        // the same tree first: the same layers give the same tree, so theirs is as good.
        if (isDirectory(dest)) return dest;
        throw err;
      }
      log.info({ digest, layers: layers.length, ...stats }, 'image unpacked');
      return dest;
    });
  }

  async list(): Promise<{ ref: string; digest: string }[]> {
    const names = await readdir(join(this.root, 'refs')).catch(() => [] as string[]);
    const out: { ref: string; digest: string }[] = [];
    for (const n of names.filter((x) => !/\.tmp(?:-.*)?$/.test(x)).sort()) {
      out.push({ ref: decodeURIComponent(n), digest: (await readFile(join(this.root, 'refs', n), 'utf8')).trim() });
    }
    return out;
  }
}

/**
 * Layer media types and how their tar streams are compressed (OCI image spec, "Image Layer
 * Filesystem Changeset"; Docker image manifest v2 schema 2). Anything else is refused.
 */
export const LAYER_COMPRESSION: Record<string, UnpackJob['layers'][number]['compression']> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
};

/** Larger than any manifest or index a registry serves (distribution caps manifests at 4 MiB). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

const ROOM_CODES = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

let unpacker: Promise<string[]> | undefined;

/**
 * Node's arguments for the unpack process. From TypeScript sources, the unpacker is bundled
 * once per daemon into one plain ES module passed with `-e`: loading it through tsx costs the
 * child a loader thread and a transpile of every module (about a second of CPU on a busy host,
 * the time GNU tar needs for thousands of small files). Falls back to tsx if bundling fails.
 */
function unpackerArgs(): Promise<string[]> {
  const self = import.meta.url;
  // Compiled, tsc's output is what runs, also for a daemon running from its bundle (dist/matchlockd/).
  if (!self.endsWith('.ts')) return Promise.resolve([join(PACKAGE_ROOT, 'dist', 'adapters', 'images', 'oci', 'unpack-process.js')]);
  const script = fileURLToPath(new URL('./unpack-process.ts', self));
  unpacker ??= import('esbuild')
    .then(async (esbuild) => {
      const out = await esbuild.build({ entryPoints: [script], bundle: true, platform: 'node', format: 'esm', target: 'node20', write: false, logLevel: 'silent' });
      const code = out.outputFiles[0]?.text;
      if (!code) throw new Error('esbuild wrote no bundle');
      return ['--input-type=module', '-e', code];
    })
    .catch(() => ['--import', import.meta.resolve('tsx'), script]);
  return unpacker;
}

/**
 * Unpacks in a child process (unpack-process.ts): a layer that is broken, hostile or larger
 * than the disk fails this call, never the daemon. Resolves the child's statistics.
 */
async function runUnpack(job: UnpackJob): Promise<Extract<UnpackResult, { ok: true }>['stats']> {
  const child = spawn(process.execPath, await unpackerArgs(), { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (err = (err + c.toString('utf8')).slice(-4000)));
  child.stdin.on('error', () => undefined);
  child.stdin.end(JSON.stringify(job));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve([c, s]));
  });
  let result: UnpackResult | undefined;
  try {
    result = JSON.parse(out.trim().split('\n').pop() ?? '') as UnpackResult;
  } catch {
    result = undefined;
  }
  if (result?.ok) return result.stats;
  if (result) {
    const room = result.code && ROOM_CODES.has(result.code);
    throw new MatchlockError(room ? ErrorCode.Unavailable : ErrorCode.FailedPrecondition, `unpacking image layers${room ? ` (${result.code}: not enough room)` : ''}: ${result.message}`);
  }
  throw new MatchlockError(ErrorCode.Internal, `the unpack process ended with ${signal ?? `exit code ${code}`}: ${err.trim().split('\n').slice(-3).join(' ') || 'no output'}`);
}

/** Whether a stat (or lstat) of path succeeds: any error is "no". */
function exists(path: string, how: typeof statSync | typeof lstatSync): boolean {
  try {
    return how(path, { throwIfNoEntry: false }) !== undefined;
  } catch {
    return false;
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    return false;
  }
}

/**
 * Resolves a path inside an unpacked image the way the guest would see it: absolute symlinks
 * restart from the image root, `..` never climbs above it. Undefined when it does not exist.
 * Each component is an lstat in place (a pass resolves the kernel and initrd of every VM, and
 * an async lstat costs a thread-pool round trip per component).
 */
export async function resolveInImage(root: string, path: string): Promise<string | undefined> {
  return Promise.resolve(resolveInImageNow(root, path));
}

function resolveInImageNow(root: string, path: string): string | undefined {
  return traceInImage(root, path).real;
}

/**
 * The walk of resolveInImage, with what it met: each symlink followed (`boot/vmlinuz ->
 * /etc/passwd`), and when it ends short of a path, the image path that is missing (`etc`), or
 * that there were more than 40 links (as Linux's ELOOP limit).
 */
function traceInImage(root: string, path: string): { real?: string; links: string[]; missing?: string; loop?: boolean } {
  const todo = path.split('/').filter((p) => p !== '' && p !== '.');
  const done: string[] = [];
  const links: string[] = [];
  for (let hops = 0; todo.length > 0; ) {
    const part = todo.shift() ?? '';
    if (part === '..') {
      done.pop();
      continue;
    }
    const at = join(root, ...done, part);
    let st;
    try {
      st = lstatSync(at, { throwIfNoEntry: false });
    } catch {
      return { links, missing: [...done, part].join('/') };
    }
    if (!st) return { links, missing: [...done, part].join('/') };
    if (st.isSymbolicLink()) {
      if (++hops > 40) return { links, loop: true };
      const target = readlinkSync(at);
      links.push(`${[...done, part].join('/')} -> ${target}`);
      if (target.startsWith('/')) done.length = 0;
      todo.unshift(...target.split('/').filter((p) => p !== '' && p !== '.'));
      continue;
    }
    done.push(part);
  }
  return { real: join(root, ...done), links };
}

/**
 * Why `path` names no regular file of the image at `root`, for the refusal: not found, found
 * but not a regular file, or reached through symlinks to a path the image lacks. Symlinks
 * resolve inside the image as the guest would see them (`/etc/passwd` is the image's own), so
 * one aimed at a host path never leads out of the image; it leads to a path the image lacks.
 */
function whyNotFile(root: string, path: string, ref: string): string {
  const t = traceInImage(root, path);
  const via = t.links.join(', then ');
  const inside = 'symlinks resolve inside the image, as the guest sees them, never to host files';
  if (t.loop) return `not found in image ${ref}: more than 40 symlinks (${t.links.slice(0, 2).join(', then ')}, …)`;
  if (t.real !== undefined) return `in image ${ref} is not a regular file${via ? ` (${via})` : ''}`;
  if (!via) return `not found in image ${ref}`;
  return `not found in image ${ref}: ${via}, and the image holds no /${t.missing ?? ''} (${inside})`;
}

export interface ImageInfo {
  ref: string;
  digest: string;
  /** Config plus layers, as the manifest states them. */
  size: number;
  /** Seconds since the reference was last written (import or pull). */
  ageSeconds: number;
}

/** Blobs younger than this are never collected: a pull in flight writes them before its ref. */
export const MIN_BLOB_AGE_MS = 10 * 60_000;

export class ImageCatalog {
  constructor(private readonly store: LocalImageStore) {}

  async list(): Promise<ImageInfo[]> {
    const out: ImageInfo[] = [];
    for (const { ref, digest } of await this.store.list()) {
      let size = 0;
      try {
        const m = JSON.parse(await readFile(join(this.store.root, 'blobs', 'sha256', hexOf(digest)), 'utf8')) as Manifest;
        size = [m.config, ...m.layers].reduce((n, d) => n + (d?.size ?? 0), 0);
      } catch {
        // a ref whose manifest is gone shows size 0; prune removes it
      }
      const st = await stat(join(this.store.root, 'refs', encodeURIComponent(ref))).catch(() => undefined);
      out.push({ ref, digest, size, ageSeconds: st ? Math.round((Date.now() - st.mtimeMs) / 1000) : 0 });
    }
    return out;
  }

  /**
   * Which images VMs use: digest -> "namespace/name" of each user. A VM uses the digests it
   * pinned and, until it has pinned them, whatever its references point to now, so an image a
   * VM is still waiting to pull or unpack is never collected from under it.
   */
  async usage(vms: Iterable<MicroVM> | AsyncIterable<MicroVM>): Promise<Map<string, string[]>> {
    // A set per digest and each reference resolved once per call: thousands of VMs of one image
    // made this quadratic (an includes() over every user so far) and read the same ref file for each.
    const users = new Map<string, Set<string>>();
    const resolved = new Map<string, Promise<string | undefined>>();
    const resolve = (ref: string) => {
      let p = resolved.get(ref);
      if (!p) resolved.set(ref, (p = this.store.resolve(ref).catch(() => undefined)));
      return p;
    };
    for await (const vm of vms) {
      const who = `${vm.spec.namespace}/${vm.spec.name}`;
      const pinned = vm.status.imageDigests ?? {};
      for (const ref of imageRefs(vm.spec)) {
        const digest = pinned[ref] ?? (await resolve(ref));
        if (!digest) continue;
        let set = users.get(digest);
        if (!set) users.set(digest, (set = new Set()));
        set.add(who);
      }
    }
    return new Map([...users].map(([digest, set]) => [digest, [...set]]));
  }

  /** Removes one reference; its unpacked tree and base volume go when nothing else uses them. */
  async remove(ref: string, inUse: ReadonlySet<string>): Promise<void> {
    const digest = await this.store.resolve(ref);
    if (!digest) throw new MatchlockError(ErrorCode.NotFound, `image ${normalizeRef(ref)} not found in the image store`);
    if (inUse.has(digest)) throw new MatchlockError(ErrorCode.FailedPrecondition, `image ${normalizeRef(ref)} (${digest}) is used by a MicroVM; delete the VM first`);
    await rm(join(this.store.root, 'refs', encodeURIComponent(normalizeRef(ref))), { force: true });
    await this.collect(inUse, undefined);
  }

  /**
   * Garbage collection: with `graceMs`, references unused by any VM and at least that old are
   * dropped; then every unpacked tree, base volume and blob that nothing references any more.
   * Returns the references removed.
   */
  async collect(inUse: ReadonlySet<string>, graceMs: number | undefined): Promise<string[]> {
    const removed: string[] = [];
    const keep = new Set(inUse);
    for (const img of await this.list()) {
      if (graceMs !== undefined && !inUse.has(img.digest) && img.ageSeconds * 1000 >= graceMs) {
        await rm(join(this.store.root, 'refs', encodeURIComponent(img.ref)), { force: true });
        removed.push(img.ref);
      } else {
        keep.add(img.digest);
      }
    }
    const live = new Set<string>();
    for (const digest of keep) {
      live.add(hexOf(digest));
      try {
        const m = JSON.parse(await readFile(join(this.store.root, 'blobs', 'sha256', hexOf(digest)), 'utf8')) as Manifest;
        for (const d of [m.config, ...m.layers, ...(m.manifests ?? [])]) if (d) live.add(hexOf(d.digest));
      } catch {
        // unreadable manifest: nothing more to keep for it
      }
    }
    for (const dir of ['rootfs', 'base']) {
      for (const name of await readdir(join(this.store.root, dir)).catch(() => [] as string[])) {
        const hex = name.replace(/\.ext4$/, '');
        if (/^[0-9a-f]{64}$/.test(hex) && !live.has(hex)) await rm(join(this.store.root, dir, name), { recursive: true, force: true });
      }
    }
    await this.store.sweepTemporaries();
    const blobDir = join(this.store.root, 'blobs', 'sha256');
    for (const name of await readdir(blobDir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{64}$/.test(name) || live.has(name)) continue;
      const st = await stat(join(blobDir, name)).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs >= MIN_BLOB_AGE_MS) await rm(join(blobDir, name), { force: true });
    }
    return removed;
  }
}
