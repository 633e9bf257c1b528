// What a read of a small state-dir file costs the daemon's process through fs/promises (libuv's
// thread pool) against the same read made in place (openSync with O_NOATIME, readSync,
// closeSync), per call: the figures behind "Thread-pool round trips per created VM, fourth
// round" in bench/README.md.
//   node --import tsx bench/in-place.ts [calls=2000] [rounds=5]
// CPU is the whole process's (process.cpuUsage: the main thread and the pool threads), so the
// pool's wakeups count; each form runs `calls` times, one call at a time (as a pass makes them),
// alternating form by round; the median of the rounds is printed, with the ratio in place /
// pool.
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Up to `maxBytes` of `path`, read on the main thread without updating its access time. */
async function readSmallFile(path: string, maxBytes: number): Promise<Buffer> {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOATIME | constants.O_NONBLOCK);
  try {
    const buf = Buffer.allocUnsafe(maxBytes);
    return buf.subarray(0, readSync(fd, buf, 0, maxBytes, 0));
  } finally {
    closeSync(fd);
  }
}

const calls = Number(process.argv[2] ?? 2000);
const rounds = Number(process.argv[3] ?? 5);
const dir = mkdtempSync(join(tmpdir(), 'matchlock-bench-in-place-'));
const pidFile = join(dir, 'qemu.pid');
const consoleFile = join(dir, 'console.log');
writeFileSync(pidFile, '12345\n');
writeFileSync(consoleFile, 'Linux version 6.1\n'.repeat(200) + 'Run /sbin/init as init process\n');

/** CPU µs and wall µs per call of `f`, `calls` calls one after the other. */
async function measure(f: () => Promise<unknown>): Promise<[number, number]> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < calls; i++) await f();
  const c = process.cpuUsage(c0);
  return [(c.user + c.system) / calls, ((performance.now() - t0) * 1000) / calls];
}

const say = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const cases: [string, () => Promise<unknown>, () => Promise<unknown>][] = [
  ['pid file (6 bytes): readFile / in place', () => readFile(pidFile, 'utf8'), () => readSmallFile(pidFile, 64)],
  [
    'console (3.6 KB) at an offset: FileHandle open, read, close / in place',
    async () => {
      const fh = await open(consoleFile, 'r');
      try {
        await fh.read(Buffer.alloc(4096), 0, 4096, 0);
      } finally {
        await fh.close();
      }
    },
    () => readSmallFile(consoleFile, 4096),
  ],
];

try {
  say(`# in-place reads: ${calls} calls a round, ${rounds} rounds, node ${process.version}`);
  say('| read | pool CPU µs/call | in place CPU µs/call | ratio | pool wall µs/call | in place wall µs/call |');
  say('| --- | --- | --- | --- | --- | --- |');
  for (const [name, pool, inPlace] of cases) {
    await measure(pool);
    await measure(inPlace);
    const p: [number, number][] = [];
    const q: [number, number][] = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        p.push(await measure(pool));
        q.push(await measure(inPlace));
      } else {
        q.push(await measure(inPlace));
        p.push(await measure(pool));
      }
    }
    const pc = median(p.map((x) => x[0]));
    const qc = median(q.map((x) => x[0]));
    say(`| ${name} | ${pc.toFixed(1)} | ${qc.toFixed(1)} | ${(qc / pc).toFixed(2)} | ${median(p.map((x) => x[1])).toFixed(1)} | ${median(q.map((x) => x[1])).toFixed(1)} |`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
