/**
 * The image unpacker as its own process. The daemon starts it once per image with a job on
 * stdin (`UnpackJob` as JSON) and reads one `UnpackResult` line from stdout. Whatever a layer
 * holds, the worst it can do is make this process fail: the daemon's event loop never runs
 * the synchronous file system calls, never parses a layer and never decompresses one.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { ApplyError, ImageRoot, type ApplyStats } from './layer-apply.js';

export interface UnpackJob {
  dest: string;
  layers: { path: string; digest: string; compression: 'none' | 'gzip' | 'zstd' }[];
}

export type UnpackResult = { ok: true; stats: ApplyStats } | { ok: false; message: string; code?: string };

const CHUNK = 1 << 20;

/**
 * The decompressed stream of a layer blob, and a check that the decompressor ended well.
 * Compressed layers go through gzip or zstd in their own process, as GNU tar does it: the
 * decompressor runs on another core, ahead of us by a pipe's buffer, and our synchronous file
 * system calls never wait for a thread-pool turn.
 */
function open(layer: UnpackJob['layers'][number]): { stream: Readable; done: () => Promise<void> } {
  if (layer.compression === 'none') return { stream: createReadStream(layer.path, { highWaterMark: CHUNK }), done: async () => undefined };
  const tool = layer.compression === 'gzip' ? 'gzip' : 'zstd';
  const child = spawn(tool, ['-dc', '--', layer.path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exit = new Promise<void>((resolve, reject) => {
    child.once('error', (err) => reject((err as NodeJS.ErrnoException).code === 'ENOENT' ? new ApplyError(`${tool} is not installed (Debian package ${tool}): it decompresses tar+${layer.compression} layers`) : err));
    child.once('close', (code, signal) => (code === 0 ? resolve() : reject(new ApplyError(`${tool}: ${stderr.trim() || `exited with ${code ?? signal}`}`))));
  });
  exit.catch(() => undefined);
  return {
    stream: child.stdout,
    done: () => exit,
  };
}

async function run(job: UnpackJob): Promise<ApplyStats> {
  process.chdir(job.dest);
  const root = new ImageRoot(job.dest, true);
  for (const [i, layer] of job.layers.entries()) {
    const { stream, done } = open(layer);
    try {
      const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      await root.applyLayer(it);
      // Read to the end so the decompressor checks its trailer (gzip CRC, zstd checksum).
      for (let r = await it.next(); !r.done; r = await it.next());
      await done();
    } catch (err) {
      stream.destroy();
      const code = (err as NodeJS.ErrnoException).code ?? (err as ApplyError).code;
      throw new ApplyError(`layer ${i} (${layer.digest}): ${(err as Error).message}`, code);
    }
  }
  return root.stats;
}

async function main(): Promise<void> {
  // Orphaned (the daemon was killed): stop writing into a temporary nobody will commit.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(1);
  }, 500).unref();
  let input = '';
  for await (const c of process.stdin) input += (c as Buffer).toString('utf8');
  let result: UnpackResult;
  try {
    result = { ok: true, stats: await run(JSON.parse(input) as UnpackJob) };
  } catch (err) {
    const code = (err as ApplyError).code;
    result = { ok: false, message: (err as Error).message, ...(code ? { code } : {}) };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(result.ok ? 0 : 1));
}

await main();
