import { open, rm, stat } from 'node:fs/promises';
import { renameDurably } from '../../durable.js';
import { failedPrecondition } from '../../../core/errors.js';
import { runProgram } from '../../spawner.js';

/** What a kernel file is, from its first bytes. */
export type KernelKind = 'elf-x86_64' | 'elf-other' | 'bzimage' | 'unknown';

export async function kernelKind(path: string): Promise<KernelKind> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(0x210);
    const { bytesRead } = await fh.read(b, 0, b.length, 0);
    if (bytesRead >= 20 && b.readUInt32BE(0) === 0x7f454c46) return b[4] === 2 && b.readUInt16LE(18) === 62 ? 'elf-x86_64' : 'elf-other';
    // Linux boot protocol: 0xAA55 at 0x1FE and "HdrS" at 0x202 (Documentation/arch/x86/boot.rst).
    if (bytesRead >= 0x206 && b.readUInt16LE(0x1fe) === 0xaa55 && b.toString('latin1', 0x202, 0x206) === 'HdrS') return 'bzimage';
    return 'unknown';
  } finally {
    await fh.close();
  }
}

/** Compressors the kernel build uses for the bzImage payload, by magic, and how to undo each. */
const COMPRESSORS: { name: string; magic: number[]; argv: string[] }[] = [
  { name: 'gzip', magic: [0x1f, 0x8b], argv: ['gzip', '-dc'] },
  { name: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], argv: ['xz', '-dc', '--single-stream'] },
  { name: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd], argv: ['zstd', '-dc'] },
  { name: 'lz4', magic: [0x02, 0x21, 0x4c, 0x18], argv: ['lz4', '-dc'] },
  { name: 'bzip2', magic: [0x42, 0x5a, 0x68], argv: ['bzip2', '-dc'] },
  { name: 'lzma', magic: [0x5d, 0x00, 0x00], argv: ['xz', '--format=lzma', '-dc'] },
];

/**
 * Where a bzImage keeps the compressed vmlinux: the setup header's payload_offset and
 * payload_length (boot protocol 2.08+), relative to the protected-mode code that starts after
 * (setup_sects + 1) sectors (setup_sects 0 means 4). The kernel build appends the uncompressed
 * size as 4 little-endian bytes to every payload.
 */
export function bzImagePayload(image: Buffer): { payload: Buffer; size: number; compressor: (typeof COMPRESSORS)[number] } {
  const version = image.readUInt16LE(0x206);
  if (version < 0x208) throw new Error(`boot protocol ${version >> 8}.${version & 0xff} has no payload fields (2.08 or later needed)`);
  const setupSects = image[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  if (offset + length > image.length || length < 8) throw new Error('payload_offset/payload_length point outside the file');
  const payload = image.subarray(offset, offset + length);
  const compressor = COMPRESSORS.find((c) => c.magic.every((m, i) => payload[i] === m));
  if (!compressor) throw new Error(`unknown payload compression (magic ${payload.subarray(0, 6).toString('hex')})`);
  return { payload, size: payload.readUInt32LE(payload.length - 4), compressor };
}

/**
 * Firecracker on x86_64 loads only an uncompressed ELF vmlinux. A bzImage (what distributions
 * ship, and the QEMU provider boots) is turned into the ELF it carries: the payload is
 * decompressed with the matching tool and written to `out` once (kept while the VM exists).
 * Returns the path Firecracker should load: `kernel` itself when it already is an x86-64 ELF.
 * Fails with FailedPrecondition naming the kernel file when neither works.
 */
export async function ensureVmlinux(kernel: string, out: string): Promise<string> {
  const kind = await kernelKind(kernel).catch((e: Error) => {
    throw failedPrecondition(`kernel ${kernel}: cannot be read: ${e.message}`);
  });
  if (kind === 'elf-x86_64') return kernel;
  if (kind !== 'bzimage') throw failedPrecondition(`kernel ${kernel}: Firecracker needs an uncompressed x86_64 ELF vmlinux; this file is ${kind === 'elf-other' ? 'an ELF for another machine' : 'neither an ELF nor a bzImage'}`);
  const done = await stat(out).then((s) => s.size > 0, () => false);
  if (done && (await kernelKind(out)) === 'elf-x86_64') return out;
  const fh = await open(kernel, 'r');
  let image: Buffer;
  try {
    image = await fh.readFile();
  } finally {
    await fh.close();
  }
  let parts: ReturnType<typeof bzImagePayload>;
  try {
    parts = bzImagePayload(image);
  } catch (e) {
    throw failedPrecondition(`kernel ${kernel} is a bzImage, which Firecracker cannot load, and its vmlinux could not be found: ${(e as Error).message}`);
  }
  const tmp = `${out}.tmp`;
  // The appended size makes some tools report trailing data; the result is checked instead.
  await decompress(parts.compressor.argv, parts.payload.subarray(0, parts.payload.length - 4), tmp).catch(async (e: Error) => {
    await rm(tmp, { force: true });
    throw failedPrecondition(`kernel ${kernel} is a bzImage, which Firecracker cannot load, and its ${parts.compressor.name} payload could not be unpacked: ${e.message}`);
  });
  const written = (await stat(tmp)).size;
  if (written !== parts.size || (await kernelKind(tmp)) !== 'elf-x86_64') {
    await rm(tmp, { force: true });
    throw failedPrecondition(`kernel ${kernel} is a bzImage whose payload is not a complete x86_64 ELF vmlinux (${written} of ${parts.size} bytes)`);
  }
  // Durable: a vmlinux that exists with an ELF header is used again, never checked for length.
  await renameDurably(tmp, out);
  return out;
}

async function decompress(argv: string[], input: Buffer, out: string): Promise<void> {
  const [cmd, ...args] = argv as [string, ...string[]];
  const r = await runProgram(cmd, args, { input, stdoutFile: out, timeoutMs: 300_000, maxBytes: 1024 * 1024 }).catch((e: Error) => {
    throw new Error(`${cmd}: ${e.message}`);
  });
  // lz4 and gzip exit non-zero on data after the stream end; the size check decides.
  if (r.code === 0 || r.code === 1 || r.code === 2) return;
  throw new Error(`${cmd} exited with ${r.code ?? r.signal}: ${r.stderr.toString().trim()}`);
}
