import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './daemon.js';
import { swaggerAvailable, swaggerPath } from '../fakes/firecracker-spec.mjs';

/** The Firecracker stand-in, spawned as the `firecracker-bin` executable. */
export const FAKE_FIRECRACKER = join(ROOT, 'test', 'fakes', 'firecracker.mjs');

/** The jailer stand-in, spawned as the `firecracker-jailer-bin` executable. */
export const FAKE_JAILER = join(ROOT, 'test', 'fakes', 'jailer.mjs');

/** Why the stand-in tests cannot run here, or undefined when they can. */
export function firecrackerLabMissing(): string | undefined {
  if (!swaggerAvailable()) return `the Firecracker swagger is not at ${swaggerPath()} (set MATCHLOCK_SPECS)`;
  if (process.getuid?.() !== 0) return 'needs root (network namespaces and TAP devices)';
  if (spawnSync('sh', ['-c', 'command -v ip']).status !== 0) return 'ip is not installed (scripts/install-deps.sh)';
  return undefined;
}

/**
 * The smallest file Firecracker's x86_64 loader takes for a vmlinux: an ELF64 header for
 * EM_X86_64. The stand-in runs no guest, so the rest of the kernel does not matter.
 */
export function writeElfKernel(path: string): void {
  const h = Buffer.alloc(64);
  h.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  h.writeUInt16LE(2, 16); // ET_EXEC
  h.writeUInt16LE(62, 18); // EM_X86_64
  writeFileSync(path, h);
}

/** The start of a bzImage: boot sector with 0xAA55 and the "HdrS" setup header, no ELF magic. */
export function writeBzImage(path: string): void {
  const b = Buffer.alloc(1024);
  b.writeUInt16LE(0xaa55, 0x1fe);
  b.write('HdrS', 0x202, 'latin1');
  writeFileSync(path, b);
}
