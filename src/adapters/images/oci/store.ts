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
import { removeTree, sweepTemporaries, withTemporary } from '../temporaries.js';
import type { UnpackJob, UnpackResult } from './unpack-process.js';
import { choosePlatform, formatPlatform, hostPlatforms, hostPlatformsText, platformRank, type Platform } from './platform.js';

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  /** Where a foreign (non-distributable) layer may be fetched from besides the registry. */
  urls?: string[];
}

interface Manifest {
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  manifests?: Descriptor[];
}

const DIGEST = /^sha256:([0-9a-f]{64})$/;
/**
 * A diff_id: sha256 only. The image spec lets a digest use any registered algorithm, but
 * containerd's applier hashes every layer's uncompressed stream with the canonical algorithm
 * (sha256, digest.Canonical; containerd 1.7 diff/apply) and refuses any other diff_id as a
 * wrong diff id, so an image with another one unpacks nowhere that flintlock runs.
 */
const DIFF_ID = /^sha256:[0-9a-f]{64}$/;

/**
 * How deep image indexes may nest (an index whose entry is an index…). containerd's
 * images.Manifest walks any depth; a bound keeps a hostile chain from costing a fetch per level.
 */
const MAX_INDEX_DEPTH = 8;

/**
 * An image matchlock refuses for its content, not for the host's state: a malformed manifest,
 * index or config, an index loop, a config for another platform, a layer media type it cannot
 * unpack, a layer that is not a valid archive in its compression (truncated tar, corrupt gzip
 * or zstd stream, compressed bytes labelled plain tar), or one that does not match the
 * config's rootfs.diff_ids. Such an image is never recorded under a reference (pull and
 * import with `unpack`, and so a VM's create), as containerd 1.7's pull returns the unpack's
 * error before it creates the image record (client/pull.go). The message is one line.
 */
export class ImageRefusedError extends MatchlockError {
  constructor(message: string) {
    super(ErrorCode.FailedPrecondition, message);
    this.name = 'ImageRefusedError';
  }
}

/** How pull and import leave the image they stored. */
export interface RecordOptions {
  /**
   * Unpack the image before its reference is written, as containerd's pull creates its image
   * record only once the unpack succeeded (client/pull.go): an image refused for its content
   * (ImageRefusedError) is then never recorded. A failure of the host (no room, EIO, a missing
   * decompressor) still records the image, whose blobs are whole, so that the next create or
   * pull retries only the unpack once the host is fixed, and throws UnpackFailedError.
   * `starting` is called when an unpack begins,
   * with the reference (normalized) and manifest digest.
   */
  unpack?: { log: Logger; starting?: (ref: string, digest: string) => void };
}

/**
 * Thrown by pull and import with `unpack` when the image was stored and recorded under its
 * reference but its unpack failed for a reason other than the image itself; code and message
 * are the unpack's, `cause` its error.
 */
export class UnpackFailedError extends MatchlockError {
  constructor(readonly ref: string, readonly digest: string, err: MatchlockError) {
    super(err.code, err.message, { cause: err });
    this.name = 'UnpackFailedError';
  }
}

export interface PullProgress {
  ref: string;
  bytes: number;
  totalBytes: number;
  blobsDone: number;
  blobs: number;
}

/** The entry of an image index (OCI) or manifest list (Docker) this host runs (./platform.ts). */
function hostEntry(index: { manifests?: Descriptor[] }): Descriptor | undefined {
  return choosePlatform(index.manifests ?? []);
}

const INDEX_TYPES = new Set<string>([MEDIA.ociIndex, MEDIA.dockerList]);

/**
 * Whether a manifest document is an image index (OCI) or manifest list (Docker): by its media
 * type (the document's own, else the one it was served or described with), else by its shape
 * (a `manifests` array and no `layers`), as an index need not carry a mediaType.
 */
function isIndex(doc: unknown, mediaType?: string): boolean {
  if (doc === null || typeof doc !== 'object') return false;
  const d = doc as { mediaType?: unknown; manifests?: unknown; layers?: unknown };
  const type = typeof d.mediaType === 'string' ? d.mediaType : mediaType;
  if (type !== undefined && INDEX_TYPES.has(type)) return true;
  return Array.isArray(d.manifests) && d.layers === undefined;
}

/**
 * `d` checked as a descriptor (OCI image spec descriptor.md): `digest` a sha256 digest (the only
 * algorithm this store keeps), `size` a non-negative integer, `mediaType` a string (required
 * unless `mediaTypeOptional`: old layouts' index.json entries may lack it). Throws
 * ImageRefusedError naming `field`.
 */
function checkDescriptor(d: unknown, field: string, where: string, mediaTypeOptional = false): Descriptor {
  const refuse = (why: string) => new ImageRefusedError(`${where}: ${field}${why} (OCI image spec, descriptor.md)`);
  if (d === null || typeof d !== 'object' || Array.isArray(d)) throw refuse(' is not a descriptor object');
  const x = d as Record<string, unknown>;
  if (typeof x.digest !== 'string' || !DIGEST.test(x.digest)) throw refuse(`.digest ${JSON.stringify(x.digest)} is not a sha256:<64 hex> digest`);
  if (typeof x.size !== 'number' || !Number.isSafeInteger(x.size) || x.size < 0) throw refuse(`.size ${JSON.stringify(x.size)} is not a non-negative integer`);
  if (x.mediaType !== undefined || !mediaTypeOptional) {
    if (typeof x.mediaType !== 'string' || x.mediaType === '') throw refuse(`.mediaType ${JSON.stringify(x.mediaType)} is not a media type`);
  }
  return d as Descriptor;
}

/**
 * `doc` checked as an image manifest (OCI image spec manifest.md; Docker's schema 2 is the same
 * shape): schemaVersion 2, `config` a descriptor, `layers` an array of descriptors. Throws
 * ImageRefusedError naming the field.
 */
function checkManifest(doc: unknown, where: string): Manifest {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new ImageRefusedError(`${where}: not a JSON object`);
  const m = doc as Record<string, unknown>;
  if (m.schemaVersion !== 2) throw new ImageRefusedError(`${where}: schemaVersion ${JSON.stringify(m.schemaVersion)} is not 2 (OCI image spec manifest.md; Docker schema 1 manifests are not supported)`);
  if (m.config === undefined) throw new ImageRefusedError(`${where}: config is missing: an image manifest names its config (OCI image spec manifest.md)`);
  checkDescriptor(m.config, 'config', where);
  if (!Array.isArray(m.layers)) throw new ImageRefusedError(`${where}: layers ${m.layers === undefined ? 'is missing' : 'is not an array'}: an image manifest lists its layers (OCI image spec manifest.md)`);
  m.layers.forEach((l, i) => checkDescriptor(l, `layers[${i}]`, where));
  return doc as Manifest;
}

/** `doc` checked as an image index or manifest list: a `manifests` array of descriptors (OCI image spec image-index.md). */
function checkIndex(doc: unknown, where: string): { manifests: Descriptor[] } {
  const x = doc as { manifests?: unknown };
  if (!Array.isArray(x.manifests)) throw new ImageRefusedError(`${where}: manifests ${x.manifests === undefined ? 'is missing' : 'is not an array'}: an image index lists its manifests (OCI image spec image-index.md)`);
  x.manifests.forEach((d, i) => checkDescriptor(d, `manifests[${i}]`, where, true));
  return doc as { manifests: Descriptor[] };
}

/** `body` as JSON, or ImageRefusedError naming `where`. */
function parseDocument(body: Buffer | string, where: string): unknown {
  try {
    return JSON.parse(body.toString()) as unknown;
  } catch (err) {
    throw new ImageRefusedError(`${where}: not JSON (${(err as Error).message})`);
  }
}

/** The refusal of an index chain that loops or nests deeper than MAX_INDEX_DEPTH. */
function checkIndexWalk(seen: Set<string>, next: string, where: string): void {
  if (seen.has(next)) throw new ImageRefusedError(`${where}: image index entry ${next} names an index already walked (a cycle)`);
  if (seen.size > MAX_INDEX_DEPTH) throw new ImageRefusedError(`${where}: image indexes nest more than ${MAX_INDEX_DEPTH} deep`);
  seen.add(next);
}

/** Why no entry of an index is for this host, naming the platforms it lists, variants included. */
function noHostEntry(what: string, entries: Descriptor[]): string {
  const have = entries.map((d) => formatPlatform(d.platform)).join(', ');
  return `${what} has no image for this host (${hostPlatformsText()}, as containerd's default platform matcher chooses); it has: ${have || 'none'}`;
}

/**
 * The one entry of an OCI layout's index.json (or of an image index it names) to import. The
 * image is chosen first, by org.opencontainers.image.ref.name (the OCI image spec's
 * image-layout.md names images by it, as skopeo's `oci:DIR:REF` and containerd's import do):
 * equal to `ref`, or to `name`'s tag or whole reference; then the entry for this host among that
 * image's entries by the rule a pull follows (./platform.ts), as containerd walks an index
 * filtering by platform. Entries sharing a ref.name (or all lacking one) are one image for
 * several platforms. Several images for this host left without a choice, or two different
 * entries for one image and the same platform, are refused listing their ref.names rather than
 * one taken silently; entries for platforms this host does not run are never taken, even alone.
 * `byRef`: whether `ref` chose the entry.
 */
function chooseEntry(entries: Descriptor[], o: { ref: string | undefined; name: ImageReference | undefined; where: string }): { entry: Descriptor; byRef: boolean; listed: string } {
  const refNameOf = (d: Descriptor) => d.annotations?.[REF_NAME];
  const nameOf = (d: Descriptor) => refNameOf(d) ?? `(no ref.name) ${d.digest}`;
  const listed = () => [...new Set(entries.map(nameOf))].join(', ');
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
  if (candidates.length === 0) throw new MatchlockError(ErrorCode.InvalidArgument, `${o.where} lists no image`);
  const chosen = (entry: Descriptor) => ({ entry, byRef: o.ref !== undefined && refNameOf(entry) === o.ref, listed: listed() });
  // Images by ref.name; the same manifest listed twice in one image is one entry.
  const images = new Map<string, Descriptor[]>();
  for (const d of candidates) {
    const key = refNameOf(d) ?? '';
    const list = images.get(key) ?? [];
    if (!list.some((x) => x.digest === d.digest)) list.push(d);
    images.set(key, list);
  }
  // Per image, its entries of the best rank this host gives (an entry without a platform ranks
  // after every platform this host runs: its config decides at unpack).
  const host = hostPlatforms();
  const rank = (d: Descriptor) => (d.platform ? platformRank(d.platform, host) : host.length);
  const runnable: { name: string; best: Descriptor[] }[] = [];
  for (const [name, list] of images) {
    const ranks = list.map(rank).filter((r) => r >= 0);
    if (!ranks.length) continue;
    const top = Math.min(...ranks);
    runnable.push({ name, best: list.filter((d) => rank(d) === top) });
  }
  if (runnable.length === 0) throw new MatchlockError(ErrorCode.FailedPrecondition, noHostEntry(o.where, candidates));
  const [only] = runnable;
  if (runnable.length === 1 && only?.best.length === 1 && only.best[0]) return chosen(only.best[0]);
  if (o.ref !== undefined && candidates === entries) throw new MatchlockError(ErrorCode.InvalidArgument, `--ref ${o.ref}: no image in ${o.where} has that org.opencontainers.image.ref.name; it holds: ${listed()}`, { field: '--ref' });
  const names = runnable.flatMap((r) => (r.best.length === 1 || r.name !== '' ? [r.name || nameOf(r.best[0] as Descriptor)] : r.best.map(nameOf)));
  const ties = runnable.filter((r) => r.best.length > 1).map((r) => `${r.name || '(no ref.name)'}: ${r.best.map((d) => d.digest).join(', ')}`);
  if (runnable.length === 1 && ties.length) {
    throw new MatchlockError(ErrorCode.InvalidArgument, `${o.where} holds ${only?.best.length ?? 0} different images for one platform this host runs (${ties.join('; ')}); give each its own org.opencontainers.image.ref.name and choose one with --ref`, { field: '--ref' });
  }
  throw new MatchlockError(ErrorCode.InvalidArgument, `${o.where} holds ${names.length} images (org.opencontainers.image.ref.name: ${names.join(', ')}); choose one with --ref <ref.name>, or a --name whose tag is one of them`, { field: '--ref' });
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
    try {
      return await this.pull(pinned ? pinnedRef(ref, pinned) : ref, log, undefined, { unpack: { log } });
    } catch (err) {
      // Pulled, but not unpacked (no room): the unpack's own error, as for a stored image.
      if (err instanceof UnpackFailedError) throw err.cause;
      // Said first, so an error from the network (a name that does not resolve) is not read
      // as the whole story of an image someone meant to import.
      const e = MatchlockError.from(err);
      throw new MatchlockError(e.code, `not in the image store, and its pull from ${pullSource(ref, err)} failed: ${e.message}`, { cause: err });
    }
  }

  /**
   * The image manifest a stored manifest digest stands for on this host: itself, or for an image
   * index (OCI) or manifest list (Docker) the entry for this host (./platform.ts), which a pull of it
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
    // Nested indexes are walked as a pull walks them; a level not stored yet is the answer
    // (its pull fetches the rest).
    let platform: string | undefined = digest;
    const seen = new Set<string>([digest]);
    for (let cur: unknown = doc; platform !== undefined && isIndex(cur); ) {
      const next: string | undefined = hostEntry(checkIndex(cur, `image index ${platform}`))?.digest;
      if (next === undefined) {
        platform = undefined;
        break;
      }
      checkIndexWalk(seen, next, `image index ${digest}`);
      platform = next;
      if (!(await this.has(next)) || statSync(this.blob(next)).size > MAX_MANIFEST_BYTES) break;
      cur = parseDocument(readFileSync(this.blob(next)), `manifest ${next}`);
    }
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
   * shared, not fetched again. Concurrent pulls of one reference share one download (and the
   * first one's `o`). The reference is written last (see RecordOptions).
   */
  pull(ref: string, log: Logger, progress?: (p: PullProgress) => void, o: RecordOptions = {}): Promise<string> {
    const normalized = normalizeRef(ref);
    return this.pulling.run(normalized, async () => {
      this.observer?.pullStarted();
      try {
        return await this.doPull(normalized, log, progress, o);
      } catch (err) {
        this.observer?.pullFailed();
        throw err;
      }
    });
  }

  private async doPull(ref: string, log: Logger, progress: ((p: PullProgress) => void) | undefined, o: RecordOptions): Promise<string> {
    const registry = this.registry;
    if (!registry) throw new MatchlockError(ErrorCode.FailedPrecondition, 'no registry client configured');
    const parsed = parseReference(ref);
    if (typeof parsed === 'string') throw new MatchlockError(ErrorCode.InvalidArgument, `${ref}: ${parsed}`);
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(this.root, 'refs'), { recursive: true });
    let m = await registry.manifest(parsed, parsed.digest ?? parsed.tag ?? 'latest');
    // Refusals are named after the host that served the document, which may be a mirror.
    const where = () => `image ${ref}: ${isIndex(doc, m.mediaType) ? 'image index' : 'manifest'} ${m.digest}`;
    let doc = parseDocument(m.body, `image ${ref}: manifest ${m.digest}`);
    // Indexes nested in indexes are walked, the host's entry chosen at each level, as
    // containerd's images.Manifest walks them (containerd 1.7 images/image.go).
    const seen = new Set<string>([m.digest]);
    while (isIndex(doc, m.mediaType)) {
      let pick: Descriptor | undefined;
      try {
        const index = checkIndex(doc, where());
        pick = hostEntry(index);
        if (!pick) throw new MatchlockError(ErrorCode.FailedPrecondition, noHostEntry(`image ${ref}`, index.manifests));
        checkIndexWalk(seen, pick.digest, `image ${ref}`);
      } catch (err) {
        throw askedMirror(err, m.mirror);
      }
      await this.writeBlob(m.digest, m.body);
      m = await registry.manifest(parsed, pick.digest);
      doc = parseDocument(m.body, `image ${ref}: manifest ${m.digest}`);
    }
    let manifest: Manifest;
    try {
      manifest = checkManifest(doc, where());
    } catch (err) {
      throw askedMirror(err, m.mirror);
    }
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
          }).catch((err: unknown) => {
            throw foreignLayerMissing(err, d);
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
    log.info({ ref, digest: m.digest, bytes: total }, 'image pulled');
    // A reference by digest is kept too (`repo@sha256:…` → the manifest pulled for it), so what
    // was pulled ahead by digest is listed, kept from the image GC like a tag, and found
    // after the GC removed an index blob that nothing else names.
    await this.record(ref, m.digest, o);
    return m.digest;
  }

  /** Writes `ref` → `digest`, unpacking first when `o.unpack` says so (see RecordOptions). */
  private async record(ref: string, digest: string, o: RecordOptions): Promise<void> {
    let failed: MatchlockError | undefined;
    if (o.unpack) {
      if (!(await this.ready(digest))) o.unpack.starting?.(ref, digest);
      try {
        await this.unpacked(digest, o.unpack.log);
      } catch (err) {
        if (err instanceof ImageRefusedError) throw err;
        failed = MatchlockError.from(err);
      }
    }
    await this.writeRef(ref, digest);
    if (failed) throw new UnpackFailedError(ref, digest, failed);
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
   * The reference is written last (see RecordOptions).
   */
  async import(source: string, name?: string, ref?: string, o: RecordOptions = {}): Promise<{ ref: string; digest: string }> {
    const info = await stat(source).catch(() => undefined);
    if (!info) throw new MatchlockError(ErrorCode.InvalidArgument, `${source}: no such file or directory`);
    // Recorded (and unpacked) once the blobs are in the store and a tar's extraction is gone.
    const recorded = async (image: { ref: string; digest: string }) => {
      await this.record(image.ref, image.digest, o);
      return image;
    };
    if (info.isDirectory()) return recorded(await this.importLayout(source, name, ref));
    await mkdir(this.root, { recursive: true });
    return recorded(await withTemporary(join(this.root, '.import'), async (tmp) => {
      await mkdir(tmp);
      // strict: node-tar otherwise turns write errors (ENOSPC) into warnings and carries on.
      // node-tar is loaded here, by the one path that needs it, not by every daemon.
      const tar = await import('tar');
      await tar.x({ file: source, cwd: tmp, preserveOwner: false, strict: true });
      return await this.importLayout(tmp, name, ref);
    }));
  }

  /** Copies the chosen image's blobs into the store; the reference is the caller's to write. */
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
    const index = checkIndex(await readJson<unknown>(join(dir, 'index.json')), `${dir}/index.json`);
    const layoutBlob = (d: string) => join(dir, 'blobs', 'sha256', hexOf(d));
    const tag = name ? parseReference(name) : undefined;
    if (typeof tag === 'string') throw new MatchlockError(ErrorCode.InvalidArgument, `--name ${name}: ${tag}`);
    const top = chooseEntry(index.manifests, { ref, name: tag, where: `${dir}/index.json` });
    let desc = top.entry;
    let byRef = top.byRef;
    const held = [top.listed];
    const topRefName = desc.annotations?.[REF_NAME];
    let doc = await readJson<unknown>(layoutBlob(desc.digest));
    // Indexes nested in indexes are walked by the rule a pull follows, choosing at each level.
    const seen = new Set<string>([desc.digest]);
    while (isIndex(doc, desc.mediaType)) {
      const index = checkIndex(doc, `${dir}: image index ${desc.digest}`);
      const pick = chooseEntry(index.manifests, { ref, name: tag, where: `${dir}: image index ${desc.digest}` });
      checkIndexWalk(seen, pick.entry.digest, dir);
      await this.copyBlob(layoutBlob(desc.digest), desc.digest);
      desc = pick.entry;
      byRef ||= pick.byRef;
      held.push(pick.listed);
      doc = await readJson<unknown>(layoutBlob(desc.digest));
    }
    const manifest = checkManifest(doc, `${dir}: manifest ${desc.digest}`);
    if (ref !== undefined && !byRef) throw new MatchlockError(ErrorCode.InvalidArgument, `--ref ${ref}: no image in ${dir} has that org.opencontainers.image.ref.name; it holds: ${held.join('; ')}`, { field: '--ref' });
    for (const d of [desc, manifest.config, ...manifest.layers]) await this.copyBlob(layoutBlob(d.digest), d.digest);
    const annotated = topRefName ?? desc.annotations?.[REF_NAME];
    const refName = name ?? (annotated && /[/:]/.test(annotated) ? annotated : undefined);
    if (!refName) throw new MatchlockError(ErrorCode.InvalidArgument, 'the layout does not carry a full image reference; give one with --name');
    return { ref: normalizeRef(refName), digest: desc.digest };
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
    const doc = parseDocument(await readFile(this.blob(digest)), `image ${digest}`);
    // A reference by the digest of a config (or any JSON blob): no manifest at all.
    const shape = (doc ?? {}) as { config?: unknown; layers?: unknown };
    if (shape.config === undefined && shape.layers === undefined) throw new ImageRefusedError(`image ${digest} is not an image manifest: nothing to unpack`);
    const manifest = checkManifest(doc, `image ${digest}`);
    const diffIds = await this.diffIds(digest, manifest);
    const layers = manifest.layers.map((l, i) => {
      const compression = LAYER_COMPRESSION[l.mediaType ?? ''];
      if (!compression) {
        throw new ImageRefusedError(
          `image ${digest}: layer ${i} (${l.digest}) has media type ${JSON.stringify(l.mediaType ?? '')}, which cannot be unpacked; supported: ${Object.keys(LAYER_COMPRESSION).join(', ')}`,
        );
      }
      return { path: this.blob(l.digest), digest: l.digest, compression, diffId: diffIds[i] ?? '' };
    });
    // Images keep their setuid files (the guest's sudo needs them); the trees they are unpacked
    // into are root-only, so no host user can reach or run them.
    await mkdir(join(this.root, 'rootfs'), { recursive: true, mode: 0o700 });
    await chmod(join(this.root, 'rootfs'), 0o700);
    return withTemporary(dest, async (tmp) => {
      await mkdir(tmp, { mode: 0o755 });
      await chmod(tmp, 0o755);
      // The decompressor's FIFO lives beside the tree, a store temporary too: a process killed
      // mid-unpack (Ctrl-C on the CLI) leaves both to the store's sweep, never in /tmp.
      const stats = await withTemporary(`${dest}.fifo`, async (fifoDir) => {
        await mkdir(fifoDir, { mode: 0o700 });
        return runUnpack({ dest: tmp, final: dest, fifoDir, layers }, digest);
      });
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

  /**
   * The config's rootfs.diff_ids of the image `digest`, one per layer of `manifest`, after the
   * checks containerd 1.7's unpacker makes before it applies a layer (pkg/unpack/unpacker.go):
   * the config's os and architecture, its variant ignored, are a platform this host runs (by
   * ./platform.ts's rule; an image manifest pulled or imported directly, without an index, is
   * checked here too, where containerd's unpacker refuses one "does not support platform"), and
   * there is one diff_id per layer ("number of layers and diffIDs don't match"). Each is
   * `sha256:<64 hex>`, the only algorithm containerd's applier computes. Throws
   * ImageRefusedError naming the field and the rule.
   */
  private async diffIds(digest: string, manifest: Manifest): Promise<string[]> {
    const refuse = (why: string) => new ImageRefusedError(`image ${digest}: config ${manifest.config.digest}: ${why}`);
    let config: { os?: unknown; architecture?: unknown; variant?: unknown; rootfs?: { diff_ids?: unknown } } | null;
    try {
      config = JSON.parse(await readFile(this.blob(manifest.config.digest), 'utf8')) as typeof config;
    } catch (err) {
      throw refuse(`not a JSON image config (${(err as Error).message})`);
    }
    const text = (v: unknown) => (typeof v === 'string' ? v : undefined);
    // Only os and architecture: containerd 1.7's unpacker (pkg/unpack/unpacker.go) matches the
    // config by platforms.Normalize of those two alone, so a config's variant (amd64/v3) never
    // refuses an image; the variant decides only among an index's entries.
    const platform = { os: text(config?.os), architecture: text(config?.architecture) };
    if (platformRank(platform) < 0) throw refuse(`the image is for ${formatPlatform(platform)}, which this host does not run (${hostPlatformsText()}, as containerd's default platform matcher allows)`);
    const ids = config?.rootfs?.diff_ids;
    if (!Array.isArray(ids)) throw refuse('rootfs.diff_ids is missing: the image spec requires one digest of the uncompressed tar per layer');
    if (ids.length !== manifest.layers.length) throw refuse(`rootfs.diff_ids has ${ids.length} entries for the manifest's ${manifest.layers.length} layers: the image spec requires one per layer, in order`);
    for (const [i, id] of ids.entries()) {
      if (typeof id !== 'string' || !DIFF_ID.test(id)) throw refuse(`rootfs.diff_ids[${i}] ${JSON.stringify(id)} is not a sha256:<64 hex> digest: containerd's applier computes every diff_id with sha256 and refuses any other`);
    }
    return ids as string[];
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
 * Every layer media type the OCI image spec (media-types.md and layer.md: tar, tar+gzip,
 * tar+zstd, and the deprecated non-distributable three) and Docker's schema 2 define for Linux
 * layers, the latter as containerd 1.7 knows them (images/mediatypes.go: rootfs.diff.tar, its
 * .gzip and .zstd, and the foreign rootfs.foreign.diff.tar and its .gzip), with how each tar
 * stream is compressed. Docker's two uncompressed types are `detect`: containerd's
 * images.DiffCompression calls their compression unknown and decompresses them by their first
 * bytes, so a gzip blob under rootfs.diff.tar unpacks there; an OCI `tar` blob is read as it is. Anything else (encrypted layers among them) is refused naming its
 * media type, as an image that cannot be unpacked (ImageRefusedError).
 */
export const LAYER_COMPRESSION: Record<string, UnpackJob['layers'][number]['compression']> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar': 'detect',
  'application/vnd.docker.image.rootfs.diff.tar.zstd': 'zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar': 'detect',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
};

/**
 * A registry's 404 for a layer whose descriptor lists `urls` (a foreign or non-distributable
 * layer, which registries may decline to store): said as such. Layers are fetched from the
 * registry and its mirrors only, never from the URLs an image names (containerd would try them
 * first): a host that reaches only its registries stays so. Anything else is returned as it is.
 */
function foreignLayerMissing(err: unknown, d: Descriptor): unknown {
  if (!(err instanceof MatchlockError) || err.code !== ErrorCode.NotFound || !d.urls?.length) return err;
  const said = new MatchlockError(
    ErrorCode.NotFound,
    `layer ${d.digest} (${d.mediaType ?? 'no media type'}) is a foreign layer the registry does not hold; its descriptor names ${d.urls.map((u) => JSON.stringify(u)).join(', ')}, which matchlock does not fetch from (layers come from the registry and its mirrors only): push the image with its foreign layers included, or import a layout that holds them (${err.message})`,
    { cause: err },
  );
  // Still named after the host asked last, which may be a mirror.
  return err instanceof MirrorError ? new MirrorError(err.mirror, said) : said;
}

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
async function runUnpack(job: UnpackJob, digest: string): Promise<Extract<UnpackResult, { ok: true }>['stats']> {
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
  if (result?.image) throw new ImageRefusedError(`image ${digest}: ${result.message}`);
  if (result) {
    const room = result.code && ROOM_CODES.has(result.code);
    throw new MatchlockError(room ? ErrorCode.Unavailable : ErrorCode.FailedPrecondition, `unpacking image layers${room ? ` (${result.code}: not enough room)` : ''}: ${result.message}`);
  }
  throw new MatchlockError(ErrorCode.Internal, `the unpack process ended with ${signal ?? `exit code ${code}`}: ${err.trim().split('\n').slice(-3).join('; ') || 'no output'}`);
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
  /**
   * `log` hears of what collect could not remove (it goes on past it); without one, that is
   * said as a process warning (stderr).
   */
  constructor(
    private readonly store: LocalImageStore,
    private readonly log?: Pick<Logger, 'warn'>,
  ) {}

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
        if (!/^[0-9a-f]{64}$/.test(hex) || live.has(hex)) continue;
        // One tree that cannot go (a mount inside it, an I/O error) must not keep the others.
        const path = join(this.store.root, dir, name);
        await removeTree(path).catch((err: unknown) => this.cannotRemove(path, err));
      }
    }
    await this.store.sweepTemporaries();
    const blobDir = join(this.store.root, 'blobs', 'sha256');
    for (const name of await readdir(blobDir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{64}$/.test(name) || live.has(name)) continue;
      const st = await stat(join(blobDir, name)).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs >= MIN_BLOB_AGE_MS) await rm(join(blobDir, name), { force: true }).catch((err: unknown) => this.cannotRemove(join(blobDir, name), err));
    }
    return removed;
  }

  private cannotRemove(path: string, err: unknown): void {
    const message = `image store: cannot remove ${path}, left for the next collection: ${(err as Error).message}`;
    if (this.log) this.log.warn({ path, err: (err as Error).message }, message);
    else process.emitWarning(message);
  }
}
