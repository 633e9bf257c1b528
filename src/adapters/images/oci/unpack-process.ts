/**
 * The image unpacker as its own process. The daemon starts it once per image with a job on
 * stdin (`UnpackJob` as JSON) and reads one `UnpackResult` line from stdout. Whatever a layer
 * holds, the worst it can do is make this process fail: the daemon's event loop never runs
 * the synchronous file system calls, never parses a layer and never decompresses one.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplyError, ImageRoot, type ApplyStats } from './layer-apply.js';
import type { ReadInto } from './tar-reader.js';

export interface UnpackJob {
  dest: string;
  /**
   * `diffId`: the config's rootfs.diff_ids entry for the layer, `sha256:<hex>` or
   * `sha512:<hex>`, which the digest of its decompressed tar stream must equal.
   */
  layers: { path: string; digest: string; compression: 'none' | 'gzip' | 'zstd'; diffId: string }[];
}

/** `mismatch`: a layer's decompressed stream does not hash to its diff_id (the image is wrong, not the host). */
export type UnpackResult = { ok: true; stats: ApplyStats } | { ok: false; message: string; code?: string; mismatch?: true };

/** A layer whose decompressed content is not what the image config's rootfs.diff_ids says. */
class DiffIdMismatch extends Error {}

/**
 * The decompressed bytes of a layer blob, read synchronously into the tar reader's buffer.
 * Compressed layers go through gzip or zstd in their own process writing into a FIFO, the way
 * GNU tar runs gzip: the decompressor works on another core while we apply, and every read is a
 * plain blocking read(2). (Reading a child's pipe through the event loop, or zlib on the thread
 * pool, made the unpack several times slower than GNU tar on a busy machine: each chunk waited
 * for a turn.)
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
  if (layer.compression === 'none') {
    const fd = openSync(layer.path, 'r');
    const close = closer(fd);
    return { read: reader(fd), done: async () => close(), abort: close };
  }
  const tool = layer.compression === 'gzip' ? 'gzip' : 'zstd';
  const fifo = join(fifoDir, 'layer');
  rmSync(fifo, { force: true });
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  const child = spawn('sh', ['-c', `exec ${tool} -dc -- "$1" > "$2"`, 'sh', layer.path, fifo], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exit = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else if (code === 127) reject(new ApplyError(`${tool} is not installed (Debian package ${tool}): it decompresses tar+${layer.compression} layers`));
      else reject(new ApplyError(`${tool}: ${stderr.trim().replace(/^sh: \d+: /, '') || `exited with ${code ?? signal}`}`));
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

async function run(job: UnpackJob): Promise<ApplyStats> {
  const fifoDir = mkdtempSync(join(tmpdir(), 'matchlock-unpack-'));
  process.chdir(job.dest);
  const root = new ImageRoot(job.dest, true);
  // Orphaned (the daemon was killed): stop writing into a temporary nobody will commit.
  const parent = process.ppid;
  const check = () => {
    if (process.ppid !== parent) throw new ApplyError('the daemon that started this unpack is gone');
  };
  try {
    for (const [i, layer] of job.layers.entries()) {
      const src = open(layer, fifoDir);
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
          throw new DiffIdMismatch(`its uncompressed content hashes to ${algorithm}:${computed}, but the image config's rootfs.diff_ids[${i}] is ${layer.diffId}`);
        }
      } catch (err) {
        src.abort();
        if (err instanceof DiffIdMismatch) throw new DiffIdMismatch(`layer ${i} (${layer.digest}): ${err.message}`);
        const code = (err as NodeJS.ErrnoException).code ?? (err as ApplyError).code;
        throw new ApplyError(`layer ${i} (${layer.digest}): ${(err as Error).message}`, code);
      }
    }
  } finally {
    rmSync(fifoDir, { recursive: true, force: true });
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
    result = { ok: false, message: (err as Error).message, ...(code ? { code } : {}), ...(err instanceof DiffIdMismatch ? { mismatch: true as const } : {}) };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

await main();
