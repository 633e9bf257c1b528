/**
 * The image unpacker as its own process. The daemon starts it once per image with a job on
 * stdin (`UnpackJob` as JSON) and reads one `UnpackResult` line from stdout. Whatever a layer
 * holds, the worst it can do is make this process fail: the daemon's event loop never runs
 * the synchronous file system calls, never parses a layer and never decompresses one.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, realpathSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { TEMPORARY_SUFFIX_MAX } from '../temporaries.js';
import { ApplyError, ImageRoot, LayerRefusal, type ApplyStats } from './layer-apply.js';
import { TarFormatError, type ReadInto } from './tar-reader.js';

export interface UnpackJob {
  dest: string;
  /**
   * The tree's final path (`dest` is its temporary): every path of the image must fit PATH_MAX
   * under it, and under any temporary of it (see ImageRoot's rootLength).
   */
  final?: string;
  /**
   * An empty directory of the store's for the decompressor's FIFO, named as a store temporary
   * (../temporaries.ts): a process killed mid-unpack (Ctrl-C) leaves it where the store's sweep
   * removes it, never in the host's /tmp.
   */
  fifoDir: string;
  /**
   * `diffId`: the config's rootfs.diff_ids entry for the layer, `sha256:<hex>`, which the
   * sha256 of its decompressed tar stream must equal.
   */
  /**
   * `compression` `detect`: the blob's own first bytes decide (Docker's uncompressed layer types,
   * which containerd reads through its decompressor whatever they hold).
   */
  layers: { path: string; digest: string; compression: 'none' | 'gzip' | 'zstd' | 'detect'; diffId: string }[];
}

/**
 * `image`: the failure is the image's own (a layer that is not a valid archive in its media
 * type's compression, a decompression error, a diff_id mismatch), not the host's (an errno such
 * as ENOSPC or EIO, a missing decompressor, the daemon gone). `message` is one line.
 */
export type UnpackResult = { ok: true; stats: ApplyStats } | { ok: false; message: string; code?: string; image?: true };

/** A failure caused by the layer's content: the same bytes fail the same way on any host. */
class LayerContentError extends Error {}

/** Host-side failures among those without an errno code. */
class HostError extends ApplyError {}

/**
 * The compression of a blob whose media type says it is compressed (or leaves it open: Docker's
 * uncompressed types, `detect`), from its first bytes, as
 * containerd decides it (archive/compression, DetectCompression, which DecompressStream runs
 * whatever the `+gzip` or `+zstd` suffix said): gzip's magic 1f 8b 08, a zstd frame (28 b5 2f
 * fd) or skippable frame (a little-endian magic 0x184d2a50 to 0x184d2a5f, 8 bytes at least),
 * else none. A blob of an uncompressed media type is read as it is (containerd's
 * compressedHandler detects nothing there).
 */
function detectCompression(path: string): 'none' | 'gzip' | 'zstd' {
  const head = Buffer.alloc(10);
  const fd = openSync(path, 'r');
  let n = 0;
  try {
    for (let got = 1; got > 0 && n < head.length; n += got) got = readSync(fd, head, n, head.length - n, null);
  } finally {
    closeSync(fd);
  }
  if (n >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return 'gzip';
  if (n >= 4 && head.readUInt32BE(0) === 0x28b52ffd) return 'zstd';
  if (n >= 8 && (head.readUInt32LE(0) & 0xfffffff0) >>> 0 === 0x184d2a50) return 'zstd';
  return 'none';
}

/**
 * Refuses a zstd blob with a frame that is neither a zstd frame (magic 28 b5 2f fd) nor a
 * skippable one: the zstd CLI also decodes gzip, xz, lzma and lz4 frames (whatever --format
 * says), which klauspost's decoder, containerd's, refuses ("magic number mismatch"). Walks the
 * frames by their headers and block headers (RFC 8878, 3.1), reading no block's content: a blob
 * cut short or otherwise broken is left for the CLI to report.
 */
function checkZstdFrames(path: string): void {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(14);
    const read = (at: number, n: number) => readSync(fd, b, 0, n, at) === n;
    for (let at = 0; ;) {
      const got = readSync(fd, b, 0, 4, at);
      if (got === 0) return;
      if (got < 4) return; // a short tail: the CLI refuses it
      const magic = b.readUInt32LE(0);
      if ((magic & 0xfffffff0) >>> 0 === 0x184d2a50) {
        if (!read(at + 4, 4)) return;
        at += 8 + b.readUInt32LE(0);
        continue;
      }
      if (magic !== 0xfd2fb528) {
        throw new LayerContentError(`zstd: the frame at byte ${at} is not a zstd frame (its first bytes are ${b.subarray(0, 4).toString('hex')}): klauspost's zstd decoder, which containerd uses, reads only zstd and skippable frames ("magic number mismatch")`);
      }
      if (!read(at + 4, 1)) return;
      const fhd = b[0] ?? 0;
      const single = (fhd & 0x20) !== 0;
      const fcs = [single ? 1 : 0, 2, 4, 8][fhd >> 6] ?? 0;
      const dict = [0, 1, 2, 4][fhd & 3] ?? 0;
      at += 5 + (single ? 0 : 1) + dict + fcs;
      for (let last = false; !last;) {
        if (!read(at, 3)) return;
        const h = b.readUIntLE(0, 3);
        last = (h & 1) === 1;
        const type = (h >> 1) & 3;
        if (type === 3) return; // reserved: the CLI refuses it
        at += 3 + (type === 1 ? 1 : h >>> 3);
      }
      if (fhd & 0x04) at += 4;
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * klauspost's zstd decoder, as containerd 1.6 creates it (archive/compression, zstd.NewReader
 * with no options), decodes frames whose window is up to its MaxWindowSize, 1 << 29 bytes on
 * 64-bit hosts, and refuses larger ones (ErrWindowSizeExceeded); the zstd CLI's own default
 * limit is 1 << 27 (its "Window size larger than maximum").
 */
const ZSTD_MAX_WINDOW = '--memory=512MB';

/**
 * The decompressed bytes of a layer blob, read synchronously into the tar reader's buffer.
 * Compressed layers go through gzip or zstd in their own process writing into a FIFO, the way
 * GNU tar runs gzip: the decompressor works on another core while we apply, and every read is a
 * plain blocking read(2). (Reading a child's pipe through the event loop, or zlib on the thread
 * pool, made the unpack several times slower than GNU tar on a busy machine: each chunk waited
 * for a turn.) The compression is the blob's own (see detectCompression), not its media type's.
 */
function open(layer: UnpackJob['layers'][number], fifoDir: string): { read: ReadInto; done: () => Promise<void>; abort: () => void } {
  const reader = (fd: number): ReadInto => (into, offset, length) => readSync(fd, into, offset, length, null);
  const closer = (fd: number) => {
    let open = true;
    return () => {
      if (open) closeSync(fd);
      open = false;
    };
  };
  const compression = layer.compression === 'none' ? 'none' : detectCompression(layer.path);
  if (compression === 'none') {
    const fd = openSync(layer.path, 'r');
    const close = closer(fd);
    return { read: reader(fd), done: async () => close(), abort: close };
  }
  const tool = compression;
  if (tool === 'zstd') checkZstdFrames(layer.path);
  const fifo = join(fifoDir, 'layer');
  rmSync(fifo, { force: true });
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  // The blob is the tool's stdin, so its messages name no host path ("gzip: stdin: …"). Any
  // byte after the last gzip member fails the layer in containerd (Go's gzip reader reads it as
  // the next member's header); gzip ignores zero bytes there silently unless verbose, when it
  // warns and exits 2. zstd refuses them already.
  const child = spawn('sh', ['-c', `exec ${tool} ${tool === 'gzip' ? '-dcv' : `-dc ${ZSTD_MAX_WINDOW}`} < "$1" > "$2"`, 'sh', layer.path, fifo], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString('utf8')).slice(-4000)));
  const exit = new Promise<void>((resolve, reject) => {
    child.once('error', (err) => reject(new HostError(`${tool}: ${err.message}`, (err as NodeJS.ErrnoException).code)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else if (code === 127) reject(new HostError(`${tool} is not installed (Debian package ${tool}): it decompresses tar+${compression} layers`));
      // Killed by a signal (aborted, or the host's OOM killer): not the layer's fault.
      else if (code === null) reject(new HostError(`${tool} was killed by ${signal ?? 'a signal'}`));
      else if (tool === 'gzip' && /trailing (zero bytes|garbage) ignored/.test(stderr)) {
        reject(new LayerContentError('gzip: bytes follow the last gzip member: containerd (Go\'s compress/gzip) reads them as a member header and refuses the layer'));
      } else reject(new LayerContentError(`${tool}: ${toolMessage(tool, stderr) || `exited with ${code}`}`));
    });
  });
  exit.catch(() => undefined);
  // Blocks until the shell has opened the FIFO for writing (it does so before starting the tool).
  const fd = openSync(fifo, 'r');
  const close = closer(fd);
  return {
    read: reader(fd),
    done: async () => {
      close();
      await exit;
    },
    abort: () => {
      child.kill('SIGKILL');
      close();
    },
  };
}

/**
 * A decompressor's stderr as one line: its program and `stdin:` prefixes dropped, lines joined
 * with `; ` (gzip says a CRC error in two lines, each starting `gzip: stdin:`).
 */
function toolMessage(tool: string, stderr: string): string {
  const prefix = new RegExp(`^(?:sh: \\d+: )?(?:${tool}: )?(?:\\S*stdin\\S*\\s*: )?`);
  return [...new Set(stderr.split('\n').map((l) => l.trim().replace(prefix, '').trim()).filter(Boolean))].join('; ');
}

/** A message on one line (errors print as one line on stderr). */
function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ').trim();
}

/** Whether `err` was caused by the layer's bytes rather than by the host. */
function causedByContent(err: unknown): boolean {
  // The applier marks its refusals of a layer's content where it raises them; some mirror an
  // errno (a missing hard link target, a parent that is a file) but are the image's fault.
  if (err instanceof LayerContentError || err instanceof LayerRefusal || err instanceof TarFormatError) return true;
  if (err instanceof HostError) return false;
  // The applier turns the errno codes an entry's own name, target or values cause into
  // LayerRefusals (layer-apply.ts, CONTENT_CODES); a code left is the host's (ENOSPC, EIO,
  // EACCES on the store…), as is any error of this process's own calls.
  return !(err as NodeJS.ErrnoException).code && !(err as ApplyError).code;
}

async function run(job: UnpackJob): Promise<ApplyStats> {
  const fifoDir = job.fifoDir;
  process.chdir(job.dest);
  // The longest the root's path can be: its final name as a temporary of any pid, so whether a
  // deep path fits does not depend on the pid that unpacks it.
  const rootLength = job.final === undefined ? undefined : Buffer.byteLength(join(realpathSync(dirname(job.final)), basename(job.final))) + TEMPORARY_SUFFIX_MAX;
  const root = new ImageRoot(job.dest, true, rootLength);
  // Orphaned (the daemon was killed): stop writing into a temporary nobody will commit.
  const parent = process.ppid;
  const check = () => {
    if (process.ppid !== parent) throw new HostError('the daemon that started this unpack is gone');
  };
  try {
    for (const [i, layer] of job.layers.entries()) {
      let src: ReturnType<typeof open>;
      try {
        src = open(layer, fifoDir);
      } catch (err) {
        if (err instanceof LayerContentError) throw new LayerContentError(`layer ${i} (${layer.digest}): ${oneLine(err.message)}`);
        throw err;
      }
      // The diff_id is checked on the bytes as the tar reader takes them, not in a second pass
      // over the layer: every byte of the decompressed stream goes through `read` once.
      const [algorithm = '', expected = ''] = layer.diffId.split(':');
      const hash = createHash(algorithm);
      const read: ReadInto = (into, offset, length) => {
        const n = src.read(into, offset, length);
        if (n > 0) hash.update(into.subarray(offset, offset + n));
        return n;
      };
      try {
        root.applyLayer(read, check);
        // Read to the end so the decompressor checks its trailer (gzip CRC, zstd checksum),
        // and the diff_id covers what follows the tar's end-of-archive blocks too.
        const rest = Buffer.allocUnsafe(1 << 16);
        while (read(rest, 0, rest.length) > 0);
        await src.done();
        const computed = hash.digest('hex');
        if (computed !== expected) {
          // containerd refuses the layer the same way ("wrong diff id calculated on extraction").
          throw new LayerContentError(`its uncompressed content hashes to ${algorithm}:${computed}, but the image config's rootfs.diff_ids[${i}] is ${layer.diffId}`);
        }
      } catch (err) {
        src.abort();
        const message = `layer ${i} (${layer.digest}): ${oneLine((err as Error).message)}`;
        if (causedByContent(err)) throw new LayerContentError(message);
        const code = (err as NodeJS.ErrnoException).code ?? (err as ApplyError).code;
        throw new HostError(message, code);
      }
    }
  } finally {
    rmSync(join(fifoDir, 'layer'), { force: true });
  }
  return root.stats;
}

async function main(): Promise<void> {
  let input = '';
  for await (const c of process.stdin) input += (c as Buffer).toString('utf8');
  let result: UnpackResult;
  try {
    result = { ok: true, stats: await run(JSON.parse(input) as UnpackJob) };
  } catch (err) {
    const code = (err as ApplyError).code;
    result = { ok: false, message: oneLine((err as Error).message), ...(code ? { code } : {}), ...(err instanceof LayerContentError ? { image: true as const } : {}) };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

await main();
