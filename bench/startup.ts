// Start-up time and memory of `matchlockd run` and start-up time of the `matchlock` CLI, compiled
// (dist/, what the npm package runs) against the TypeScript sources through tsx (what a checkout
// runs), alternating in one run.
//   node --import tsx bench/startup.ts [runs=5] [other checkout]
// With another checkout (e.g. an export of the previous commit with node_modules linked and
// dist/ built), its bins are measured the same way in the same run, as "before".
// Builds dist/ first when it is missing (and removes it again). Prints, per kind, the median
// time from spawn to "grpc api listening", the daemon's RSS then (VmRSS, the process alone) and
// 3 s later (idle), and the median wall time of `matchlock --help` and of `matchlock vm list`
// against a daemon with no VM.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const runs = Number(process.argv[2] ?? 5);
const OTHER = process.argv[3] ? resolve(process.argv[3]) : undefined;

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

interface Kind {
  name: string;
  root: string;
  compiled: boolean;
}

interface Sample {
  ms: number;
  rssMiB: number;
  idleMiB: number;
  helpMs: number;
  listMs: number;
}

const envOf = (k: Kind) => ({ ...process.env, MATCHLOCK_COMPILED: k.compiled ? '1' : '0' });

async function timed(k: Kind, args: string[]): Promise<number> {
  const t0 = performance.now();
  const proc = spawn(process.execPath, [join(k.root, 'bin/matchlock.js'), ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: envOf(k) });
  let err = '';
  proc.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number | null>((r) => proc.once('exit', r));
  if (code !== 0) throw new Error(`matchlock ${args.join(' ')} exited with ${code}: ${err}`);
  return performance.now() - t0;
}

async function once(k: Kind): Promise<Sample> {
  const state = mkdtempSync(join(tmpdir(), 'matchlock-bench-startup-'));
  const socket = join(state, 'grpc.sock');
  const t0 = performance.now();
  const proc = spawn(process.execPath, [join(k.root, 'bin/matchlockd.js'), 'run', '--config', '/dev/null', '--state-dir', state, '--grpc-endpoint', `unix:${socket}`,
    '--log-format', 'json', '--vmm-user', 'root', '--vmm-cgroups', 'false'], { stdio: ['ignore', 'pipe', 'pipe'], env: envOf(k) });
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
    const rssMiB = rssKiB(proc.pid ?? 0) / 1024;
    await new Promise((r) => setTimeout(r, 3000));
    const idleMiB = rssKiB(proc.pid ?? 0) / 1024;
    const helpMs = await timed(k, ['--help']);
    const listMs = await timed(k, ['--host', `unix:${socket}`, 'vm', 'list']);
    return { ms, rssMiB, idleMiB, helpMs, listMs };
  } finally {
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await gone;
    rmSync(state, { recursive: true, force: true });
  }
}

const say = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

const roots = [ROOT, ...(OTHER ? [OTHER] : [])];
const built = roots.filter((r) => !existsSync(join(r, 'dist/daemon/main.js')));
for (const r of built) execFileSync('npm', ['run', '--silent', 'build'], { cwd: r, stdio: 'inherit' });
try {
  const kinds: Kind[] = roots.flatMap((root) => [true, false].map((compiled) => ({ name: `${root === ROOT ? 'this' : 'before'} ${compiled ? 'compiled' : 'tsx'}`, root, compiled })));
  const res = new Map<Kind, Sample[]>(kinds.map((k) => [k, []]));
  say(`load average at start ${load()}`);
  // One of each first, not counted: the file system cache and tsx's own cache warm up.
  for (const k of kinds) await once(k);
  for (let i = 0; i < runs; i++) for (const k of kinds) res.get(k)?.push(await once(k));
  say(`medians of ${runs} (load average at the end ${load()})`);
  say('| kind | daemon start to listening | RSS listening | RSS idle (3 s later) | matchlock --help | matchlock vm list |');
  say('| --- | --- | --- | --- | --- | --- |');
  for (const k of kinds) {
    const xs = res.get(k) ?? [];
    const m = (f: (s: Sample) => number) => median(xs.map(f));
    say(`| ${k.name} | ${m((s) => s.ms).toFixed(0)} ms | ${m((s) => s.rssMiB).toFixed(1)} MiB | ${m((s) => s.idleMiB).toFixed(1)} MiB | ${m((s) => s.helpMs).toFixed(0)} ms | ${m((s) => s.listMs).toFixed(0)} ms |`);
  }
} finally {
  for (const r of built) rmSync(join(r, 'dist'), { recursive: true, force: true });
}
