// What a daemon start with many stored records costs in memory and CPU, sampled over time.
//
//   node --import tsx bench/startup-memory.ts [records=10000] [seconds=30]
//   (MATCHLOCK_COMPILED=1 runs the daemon from dist/; MATCHLOCK_BENCH_ENTRY=<path to bin/matchlockd.js>
//   measures another checkout's daemon; MATCHLOCK_BENCH_NODE_FLAGS='--trace-gc'
//   gives the daemon's node these flags, and the lines of its major collections are printed)
//
// Seeds a temp store with `records` FAILED records of CAPMVM's shape (~3 KiB each, as part 1 of
// bench/control-plane.ts does, in the schema 2 layout, so the start also writes each record's
// wire bytes once), starts matchlockd with part 1's flags, and from the moment it listens samples
// its VmRSS and CPU time (utime + stime of /proc/<pid>/stat) every 250 ms for `seconds`: the
// start-up work (a reconcile pass of every record, the log bound's first read of every record)
// runs in that window. Then the same again on the same store, now already migrated (a restart).
// Prints one line per second, the peak RSS, and the CPU used after the start-up work (the first
// 2 s window under a fifth of a core) until the end.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DAEMON_BIN, startDaemon } from '../test/helpers/daemon.js';
import { makeRecords, seed } from './control-plane.js';

const records = Number(process.argv[2] ?? 10_000);
const seconds = Number(process.argv[3] ?? 30);
const nodeFlags = (process.env.MATCHLOCK_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
const entry = [...nodeFlags, process.env.MATCHLOCK_BENCH_ENTRY || DAEMON_BIN];
const TICKS = 100; // USER_HZ: clock ticks per second of /proc/<pid>/stat

const settle = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function sample(pid: number): { rss: number; user: number; system: number } {
  const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return { rss, user: Number(f[11]) / TICKS, system: Number(f[12]) / TICKS };
}

async function run(stateDir: string, tmp: string, label: string): Promise<void> {
  const flags = ['--grpc-endpoint', `unix:${join(tmp, 'grpc.sock')}`, '--qemu-bin', '/bin/true', '--default-provider', 'qemu', '--vmm-user', 'root', '--vmm-cgroups=false', '--retry-backoff', '1h', '--resync-period', '1h', '--log-format', 'json'];
  const t0 = performance.now();
  const d = await startDaemon(stateDir, flags, {}, undefined, entry);
  const pid = d.proc.pid ?? 0;
  process.stdout.write(`\n## ${label}: listening after ${((performance.now() - t0) / 1000).toFixed(2)} s\n\n| s | RSS MB | user s | system s |\n| --- | --- | --- | --- |\n`);
  let peak = 0;
  let quietAt: { t: number; cpu: number } | undefined;
  let windowStart = { t: 0, cpu: 0 };
  let last = sample(pid);
  try {
    for (let i = 1; i <= seconds * 4; i++) {
      await settle(250);
      last = sample(pid);
      peak = Math.max(peak, last.rss);
      const cpu = last.user + last.system;
      if (i % 8 === 0) {
        // Start-up work is over at the first 2 s window using under a fifth of a core.
        if (!quietAt && cpu - windowStart.cpu < 0.4 && i > 8) quietAt = { t: i / 4, cpu };
        windowStart = { t: i / 4, cpu };
      }
      if (i % 4 === 0) process.stdout.write(`| ${i / 4} | ${last.rss.toFixed(1)} | ${last.user.toFixed(2)} | ${last.system.toFixed(2)} |\n`);
    }
  } finally {
    await d.stop();
  }
  const after = quietAt ? `${(last.user + last.system - quietAt.cpu).toFixed(2)} s of CPU from ${quietAt.t} s to ${seconds} s (${((100 * (last.user + last.system - quietAt.cpu)) / (seconds - quietAt.t)).toFixed(2)} % of a core)` : 'start-up work not over';
  process.stdout.write(`\npeak RSS ${peak.toFixed(1)} MB, at the end ${last.rss.toFixed(1)} MB; ${after}\n`);
  const gcs = d.logs.filter((l) => l.includes('Mark-Compact'));
  if (gcs.length) process.stdout.write(`\nmajor collections (--trace-gc):\n${gcs.map((l) => l.replace(/^\[[^\]]*\]\s*/, '').replace(/\(average mu.*$/, '')).join('\n')}\n`);
}

async function main(): Promise<void> {
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  process.stdout.write(`# start-up memory: ${records} records, ${seconds} s, load ${load}; daemon: ${entry.join(' ')}\n`);
  const tmp = join(tmpdir(), `matchlock-bench-sm-${randomBytes(3).toString('hex')}`);
  const stateDir = join(tmp, 'state');
  mkdirSync(join(tmp, 'base'), { recursive: true });
  try {
    seed(stateDir, join(tmp, 'base'), makeRecords(0, records));
    await run(stateDir, tmp, 'first start (the store migrated as it starts)');
    await run(stateDir, tmp, 'restart (the store already migrated)');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
