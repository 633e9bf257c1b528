// The process spawner's cost per program start, outside any burst, measured in one run.
//
//   node --import tsx bench/spawner.ts [starts=300] [rounds=3]
//   (MATCHLOCK_BENCH_OLD_SPAWNER=<path to an older libexec/spawner.pl> also measures that one,
//   run with perl, e.g. from `git show <commit>:libexec/spawner.pl > /tmp/spawner.pl`)
//
// Each side starts `starts` programs `/bin/true` one after the other, each waited for, then
// exits; the CPU is user + system of the starter and of the children it reaped (from
// /proc/<pid>/stat just before it exits, so each fork's cost before its exec is in it):
//   - spawner.py: this checkout's spawner (python3 -I -S libexec/spawner.py), spoken to with its
//     protocol as the daemon does, each start a `spawn` request with stdout and stderr to
//     /dev/null, as for a VMM;
//   - spawner.pl: the older one, the same requests (only with MATCHLOCK_BENCH_OLD_SPAWNER);
//   - dash (the baseline): `sh -c 'i=0; while [ $i -lt N ]; do /bin/true; i=$((i+1)); done'`,
//     each start a fork of dash and an exec, as the burst baseline starts its programs.
// Sides alternate within each round. Also printed: the spawner's start (its spawn to its
// `ready` event) and its RSS and anonymous memory when ready and after the starts.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { SPAWNER_SCRIPT, spawnerInterpreter } from '../src/adapters/spawner.js';

const starts = Number(process.argv[2] ?? 300);
const rounds = Number(process.argv[3] ?? 3);
const old = process.env.MATCHLOCK_BENCH_OLD_SPAWNER;
const say = (line: string) => process.stdout.write(`${line}\n`);

/** User + system CPU seconds of a process and of the children it reaped. */
function cpuOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
}

/** VmRSS and RssAnon of a process, in MB. */
function memOf(pid: number): { rss: number; anon: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, anon: kb('RssAnon') / 1024 };
}

function frame(fields: string[]): Buffer {
  const parts = fields.flatMap((v) => {
    const b = Buffer.from(v);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return [len, b];
  });
  const body = Buffer.concat(parts);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

/** The events of a spawner, one frame's fields at a time. */
function events(child: ChildProcess, on: (fields: string[]) => void): void {
  let buf = Buffer.alloc(0);
  child.stdout?.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const body = buf.subarray(4, 4 + buf.readUInt32BE(0));
      buf = buf.subarray(4 + body.length);
      const fields: string[] = [];
      for (let o = 0; o + 4 <= body.length; o += 4 + body.readUInt32BE(o)) fields.push(body.subarray(o + 4, o + 4 + body.readUInt32BE(o)).toString());
      on(fields);
    }
  });
}

interface Side {
  cpu: number;
  startMs?: number;
  ready?: { rss: number; anon: number };
  after?: { rss: number; anon: number };
}

async function throughSpawner(command: string, args: string[]): Promise<Side> {
  const t0 = process.hrtime.bigint();
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const pid = child.pid ?? 0;
  // Events in order: several may come in one read.
  const queue: string[][] = [];
  let next: (() => void) | undefined;
  events(child, (f) => {
    queue.push(f);
    next?.();
  });
  const wait = async (): Promise<string[]> => {
    while (queue.length === 0) await new Promise<void>((r) => (next = r));
    return queue.shift() ?? [];
  };
  const ready = await wait();
  if (ready[0] !== 'ready') throw new Error(`${command} ${args.join(' ')}: ${ready.join(' ')}`);
  const startMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const side: Side = { cpu: 0, startMs, ready: memOf(pid) };
  const cpu0 = cpuOf(pid);
  for (let i = 1; i <= starts; i++) {
    const spawned = wait();
    child.stdin?.write(frame(['spawn', String(i), 'arg', '/bin/true', 'stdout', 'a/dev/null', 'stderr', 'a/dev/null']));
    const s = await spawned;
    if (s[0] !== 'spawned') throw new Error(`start ${i}: ${s.join(' ')}`);
    const e = await wait();
    if (e[0] !== 'exit' || e[2] !== '0') throw new Error(`start ${i}: ${e.join(' ')}`);
  }
  side.cpu = cpuOf(pid) - cpu0;
  side.after = memOf(pid);
  child.stdin?.end();
  await new Promise((r) => child.once('exit', r));
  return side;
}

async function throughDash(): Promise<Side> {
  // The shell is stopped (SIGSTOP by itself) before exiting, so its counters can be read.
  const child = spawn('sh', ['-c', `i=0; while [ $i -lt ${starts} ]; do /bin/true; i=$((i+1)); done; kill -STOP $$`], { stdio: 'ignore' });
  const pid = child.pid ?? 0;
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    if (/^State:\s+T/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) break;
  }
  const cpu = cpuOf(pid);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return { cpu };
}

const sides: [string, () => Promise<Side>][] = [
  ['spawner.py', () => throughSpawner(spawnerInterpreter(), ['-I', '-S', SPAWNER_SCRIPT])],
  ...(old ? [['spawner.pl', () => throughSpawner('perl', [old])] as [string, () => Promise<Side>]] : []),
  ['dash', throughDash],
];

say(`# ${starts} starts of /bin/true, ${rounds} rounds; load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
say('| round | side | CPU s (ratio to dash) | start ms | RSS / anon MB ready | RSS / anon MB after |');
say('| --- | --- | --- | --- | --- | --- |');
for (let r = 1; r <= rounds; r++) {
  const order = r % 2 ? sides : [...sides].reverse();
  const got = new Map<string, Side>();
  for (const [name, run] of order) got.set(name, await run());
  const dash = got.get('dash')?.cpu ?? NaN;
  for (const [name] of sides) {
    const s = got.get(name);
    if (!s) continue;
    const mem = (m?: { rss: number; anon: number }) => (m ? `${m.rss.toFixed(1)} / ${m.anon.toFixed(1)}` : '-');
    say(`| ${r} | ${name} | ${s.cpu.toFixed(2)} (${(s.cpu / dash).toFixed(2)}) | ${s.startMs?.toFixed(0) ?? '-'} | ${mem(s.ready)} | ${mem(s.after)} |`);
  }
}
say(`load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
