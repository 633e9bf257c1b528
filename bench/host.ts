// What the host side of matchlockd costs per VM, against baselines measured in the same run.
//   node --import tsx bench/host.ts [vms=500] [idleSeconds=30] [creates=5]      (root)
// 1. Processes per create: the daemon runs under `strace -f -e trace=execve` while `creates`
//    VMs (test guest, root volume, one TAP, user-data) are created one after the other until
//    CREATED; every program it starts is counted (a /bin/sh that execs the VMM counts twice).
//    strace sees every fork whatever the code does (it also follows the daemon's process
//    spawner), so the same script measures any version.
// 2. Idle CPU with `vms` supervised VMMs: that many VMs (kernel and initrd, one TAP, no volume)
//    run on test/fakes/qemu-standin.pl (QEMU's command line, pid file, QMP socket, then
//    asleep), and the daemon's CPU is read from /proc over `idleSeconds` beside a baseline
//    process in the same window: an idle Node process holding as many connected unix sockets.
// The daemon runs in its own network namespace through `ip netns exec` (which gives it the
// namespace's sysfs, as on a host), with the stand-in as qemu-bin, no VMM user, sandbox or cgroups.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { ListMicroVMsRequestSchema, type ListMicroVMsResponse } from '../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient } from '../test/helpers/client.js';
import { DAEMON_BIN, ROOT } from '../test/helpers/daemon.js';
import { GUEST_REF, testGuestLayout } from '../test/helpers/lab.js';
import { api, importGuest, stateOf, waitFor } from '../test/e2e/vm.js';

const vmCount = Number(process.argv[2] ?? 500);
const idleSeconds = Number(process.argv[3] ?? 30);
const creates = Number(process.argv[4] ?? 5);
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
const TICKS = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

if (process.getuid?.() !== 0) throw new Error('bench/host needs root (network namespace, TAP devices)');
for (const tool of ['strace', 'ip', 'perl']) if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`bench/host needs ${tool}`);

const id = randomBytes(3).toString('hex');
const ns = `mlb-${id}`;
const tmp = mkdtempSync(join(tmpdir(), 'matchlock-bench-host-'));
const stateDir = join(tmp, 'state');
const sock = join(tmp, 'grpc.sock');
const ip = (...args: string[]) => {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
};

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Math.round(Number(m?.[1] ?? 0) / 1024);
}

async function startDaemon(): Promise<ChildProcess> {
  const args = [DAEMON_BIN, 'run', '--state-dir', stateDir, '--grpc-endpoint', `unix:${sock}`, '--log-format', 'json', '--config', '/dev/null', '--bridge-name', 'br0',
    '--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--resync-period', '1h', '--healthy-after', '1s'];
  const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes('"grpc api listening"')) resolve();
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`matchlockd exited with ${code}:\n${out}`)));
  });
  proc.stdout?.removeAllListeners('data');
  proc.stderr?.removeAllListeners('data');
  const keep = (b: Buffer) => {
    if (process.env.BENCH_LOG) process.stderr.write(b);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return proc;
}

/** An idle Node process holding `n` connected unix socket pairs: the floor for a daemon with n VMM connections. */
function baseline(n: number): ChildProcess {
  const code = `const net=require('net');const p=process.argv[1];const s=net.createServer(()=>{}).listen(p,()=>{let k=0;for(let i=0;i<${n};i++)net.connect(p,()=>{if(++k===${n})process.stdout.write('ready\\n')})});setInterval(()=>{},1<<30);`;
  return spawn(process.execPath, ['-e', code, join(tmp, 'baseline.sock')], { stdio: ['ignore', 'pipe', 'inherit'] });
}

const vms = api({ daemon: { target: `unix:${sock}` } });
async function listStates(): Promise<string[]> {
  const c = rawClient(`unix:${sock}`);
  try {
    const r = await c.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'e2e' }));
    return r.microvm.map((m) => stateOf(m) ?? '');
  } finally {
    c.close();
  }
}

let daemon: ChildProcess | undefined;
try {
  ip('netns', 'add', ns);
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', ns, 'link', 'set', 'br0', 'up');
  await importGuest({ stateDir }, testGuestLayout(), { init: true });
  daemon = await startDaemon();
  const pid = daemon.pid ?? 0;
  const created = async (uid: string) => waitFor(`VM ${uid} CREATED`, async () => stateOf(await vms.get(uid)) === 'CREATED', 120_000, 20);

  // 1. processes per create
  await created(await vms.create('warm', [{ id: 'eth0', type: 'TAP' }], '#!/bin/sh\necho hi\n'));
  const trace = join(tmp, 'strace.out');
  // The daemon's children too (its process spawner, which starts its programs): -f follows only
  // the processes made after strace attached.
  const children = readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
  const strace = spawn('strace', ['-f', '-qq', '-e', 'trace=execve', '-e', 'signal=none', '-o', trace, ...[String(pid), ...children].flatMap((p) => ['-p', p])], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1500));
  for (let i = 0; i < creates; i++) await created(await vms.create(`c${i}`, [{ id: 'eth0', type: 'TAP' }], '#!/bin/sh\necho hi\n'));
  strace.kill('SIGINT');
  await new Promise((r) => strace.once('exit', r));
  const programs = new Map<string, number>();
  // execvp tries each PATH directory, so only an execve that returned 0 is a program run; with
  // -f a call may be split into "<unfinished ...>" and "<... execve resumed>" lines.
  const pending = new Map<string, string>();
  for (const line of readFileSync(trace, 'utf8').split('\n')) {
    const pid = line.split(' ')[0] ?? '';
    const m = /execve\("([^"]+)"/.exec(line);
    if (m?.[1]) pending.set(pid, m[1].split('/').pop() ?? '');
    if (/\) = 0$/.test(line) && (m || line.includes('execve resumed'))) {
      const prog = pending.get(pid) ?? '?';
      programs.set(prog, (programs.get(prog) ?? 0) + 1);
    }
  }
  const total = [...programs.values()].reduce((a, b) => a + b, 0);
  process.stdout.write(`processes per create (root volume, TAP, user-data; ${creates} creates): ${(total / creates).toFixed(1)}\n`);
  for (const [p, n] of [...programs].sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${p}: ${(n / creates).toFixed(1)}\n`);

  // 2. idle CPU with vmCount supervised VMMs
  const image = GUEST_REF;
  const over = { rootVolume: undefined };
  const t0 = performance.now();
  for (let i = 0; i < vmCount; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, vmCount - i) }, (_, k) => vms.create(`s${i + k}`, [{ id: 'eth0', type: 'TAP' }], '#!/bin/sh\necho hi\n', image, over)));
  }
  await waitFor(`${vmCount} VMs CREATED`, async () => (await listStates()).filter((s) => s === 'CREATED').length >= vmCount + creates + 1, 30 * 60_000, 2000);
  process.stdout.write(`${vmCount} VMs created and CREATED in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  const base = baseline(vmCount);
  await new Promise<void>((r) => base.stdout?.once('data', () => r()));
  await new Promise((r) => setTimeout(r, 5000)); // let health timers and the last saves settle
  const d0 = cpuTicks(pid);
  const b0 = cpuTicks(base.pid ?? 0);
  const w0 = performance.now();
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  const wall = (performance.now() - w0) / 1000;
  const dCpu = ((cpuTicks(pid) - d0) / TICKS / wall) * 100;
  const bCpu = ((cpuTicks(base.pid ?? 0) - b0) / TICKS / wall) * 100;
  // CPU time is counted in 10 ms ticks: a baseline that used none is given as under one tick.
  const floor = (1 / TICKS / wall) * 100;
  const ratio = bCpu > 0 ? `ratio ${(dCpu / bCpu).toFixed(1)}` : dCpu > 0 ? `baseline under one tick (${floor.toFixed(3)} %), ratio > ${(dCpu / floor).toFixed(1)}` : `both under one tick (${floor.toFixed(3)} %): no ratio`;
  process.stdout.write(`idle CPU over ${wall.toFixed(0)} s with ${vmCount} supervised VMMs: daemon ${dCpu.toFixed(2)} % of a core (RSS ${rssMb(pid)} MB); baseline (idle node, ${vmCount} unix socket pairs) ${bCpu.toFixed(2)} % (RSS ${rssMb(base.pid ?? 0)} MB); ${ratio}\n`);
  base.kill('SIGKILL');
} finally {
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon?.once('exit', r));
  }
  // The stand-ins this run started, found by their pid files in its state dir.
  const vmRoot = join(stateDir, 'vm', 'e2e');
  for (const name of (() => { try { return readdirSync(vmRoot); } catch { return []; } })()) {
    for (const uid of readdirSync(join(vmRoot, name))) {
      try {
        const pid = Number(readFileSync(join(vmRoot, name, uid, 'qemu.pid'), 'utf8'));
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(stateDir)) process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  spawnSync('ip', ['netns', 'del', ns]);
  rmSync(tmp, { recursive: true, force: true });
}
