// Start-up time and memory of `matchlockd run`, compiled (dist/, what the npm package runs)
// against the TypeScript sources through tsx (what a checkout runs), alternating in one run.
//   node --import tsx bench/startup.ts [runs=5]
// Builds dist/ first when it is missing (and removes it again). Prints, per kind, the median
// time from spawn to "grpc api listening" and the daemon's RSS then (VmRSS, the process alone),
// and the ratio compiled/tsx.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const runs = Number(process.argv[2] ?? 5);

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

async function once(compiled: boolean): Promise<{ ms: number; rssMiB: number }> {
  const state = mkdtempSync(join(tmpdir(), 'matchlock-bench-startup-'));
  const t0 = performance.now();
  const proc = spawn(process.execPath, [join(ROOT, 'bin/matchlockd.js'), 'run', '--config', '/dev/null', '--state-dir', state, '--grpc-endpoint', '127.0.0.1:0',
    '--log-format', 'json', '--vmm-user', 'root', '--vmm-cgroups', 'false'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MATCHLOCK_COMPILED: compiled ? '1' : '0' } });
  try {
    const ms = await new Promise<number>((resolve, reject) => {
      let out = '';
      const onData = (c: Buffer) => {
        out += c.toString();
        if (out.includes('"grpc api listening"')) resolve(performance.now() - t0);
      };
      proc.stdout.on('data', onData);
      proc.stderr.on('data', onData);
      proc.once('exit', (code) => reject(new Error(`matchlockd exited with ${code}: ${out}`)));
    });
    return { ms, rssMiB: rssKiB(proc.pid ?? 0) / 1024 };
  } finally {
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await gone;
    rmSync(state, { recursive: true, force: true });
  }
}

const say = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const built = !existsSync(join(ROOT, 'dist/daemon/main.js'));
if (built) execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' });
try {
  const res = { compiled: [] as { ms: number; rssMiB: number }[], tsx: [] as { ms: number; rssMiB: number }[] };
  // One of each first, not counted: the file system cache and tsx's own cache warm up.
  await once(true);
  await once(false);
  for (let i = 0; i < runs; i++) {
    res.compiled.push(await once(true));
    res.tsx.push(await once(false));
  }
  const row = (name: string, xs: { ms: number; rssMiB: number }[]) => {
    const ms = median(xs.map((x) => x.ms));
    const rss = median(xs.map((x) => x.rssMiB));
    say(`${name.padEnd(9)} start to listening ${ms.toFixed(0).padStart(6)} ms   RSS ${rss.toFixed(1).padStart(6)} MiB`);
    return { ms, rss };
  };
  say(`matchlockd run, median of ${runs} (load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`);
  const c = row('compiled', res.compiled);
  const t = row('tsx', res.tsx);
  say(`ratio compiled/tsx: time ${(c.ms / t.ms).toFixed(2)}, RSS ${(c.rss / t.rss).toFixed(2)}`);
} finally {
  if (built) rmSync(join(ROOT, 'dist'), { recursive: true, force: true });
}
