import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it, mock } from 'node:test';
import { defaultCmdline, type FirecrackerLaunch } from '../../src/adapters/vmm/firecracker/config.js';
import { FirecrackerVm, firecrackerVersion, parseMetrics } from '../../src/adapters/vmm/firecracker/vm.js';
import { ensureVmlinux } from '../../src/adapters/vmm/firecracker/kernel.js';
import { mergeCmdline } from '../../src/core/microvm/cloudinit.js';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/ports.js';
import { tempDir } from '../helpers/daemon.js';
import { FAKE_FIRECRACKER, FAKE_JAILER, firecrackerLabMissing, writeElfKernel } from '../helpers/firecracker.js';
import { DEFAULT_JAILER } from '../../src/adapters/vmm/firecracker/jailer.js';
import { configShapeError } from '../fakes/firecracker-spec.mjs';

const missing = firecrackerLabMissing();
const skip = missing && !process.env.CI ? missing : false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

describe('FirecrackerVm against the stand-in', { skip }, () => {
  let ns: string;
  let tmp: { path: string; remove(): void };
  let n = 0;
  const started: number[] = [];

  before(() => {
    assert.equal(missing, undefined, `the Firecracker process tests ${missing}`);
    ns = `mlf-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'mltmeta', 'mode', 'tap']);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'mltuser', 'mode', 'tap']);
    tmp = tempDir('fc-vm');
    writeElfKernel(join(tmp.path, 'vmlinux'));
    writeFileSync(join(tmp.path, 'root.img'), '');
    truncateSync(join(tmp.path, 'root.img'), 1 << 20);
  });
  after(() => {
    for (const pid of started) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    if (ns) spawnSync('ip', ['netns', 'del', ns]);
    tmp?.remove();
  });

  /** A `firecracker-bin` that runs the stand-in inside the test namespace with fault switches. */
  function binary(env: Record<string, string> = {}): string {
    const path = join(tmp.path, `fc-${n++}.sh`);
    const exports = Object.entries(env).map(([k, v]) => `export ${k}='${v}'\n`).join('');
    writeFileSync(path, `#!/bin/sh\n${exports}exec ip netns exec ${ns} ${FAKE_FIRECRACKER} "$@"\n`);
    chmodSync(path, 0o755);
    return path;
  }

  function vmFor(env: Record<string, string> = {}, over: Partial<FirecrackerLaunch> = {}) {
    const uid = `01HZY3NDEKTSV4RRFFQ69G${String(n++).padStart(4, '0')}`;
    const dir = join(tmp.path, 'vm', 'ns', 'name', uid);
    const runDir = join(tmp.path, 'run', uid);
    const metadata = { 'meta-data': Buffer.from(`instance_id: ${uid}\n`), 'user-data': Buffer.from('#cloud-config\n') };
    const launch: FirecrackerLaunch = {
      uid,
      namespace: 'ns',
      name: 'name',
      dir,
      runDir,
      vcpu: 2,
      memoryInMb: 1024,
      kernelPath: join(tmp.path, 'vmlinux'),
      cmdline: mergeCmdline(defaultCmdline({ mmds: true }), {}),
      hasRoot: true,
      shares: [],
      disks: [{ id: 'root', path: join(tmp.path, 'root.img'), readOnly: false }],
      nics: [
        { deviceId: 'eth0', type: 'TAP', hostDevice: 'mltmeta', ifindex: 0, mac: 'AA:FF:00:00:00:01' },
        { deviceId: 'eth1', type: 'TAP', hostDevice: 'mltuser', ifindex: 0, mac: '02:00:00:00:00:02' },
      ],
      metadata,
      guestAgent: { cid: 3 },
      ...over,
    };
    const vm = new FirecrackerVm(uid, { dir, runDir }, { bin: binary(env), detach: true, readyTimeoutMs: 20_000, termTimeoutMs: 1000 });
    return { vm, launch };
  }

  async function start(vm: FirecrackerVm, launch: FirecrackerLaunch): Promise<number> {
    const pid = await vm.start(launch, quiet);
    started.push(pid);
    return pid;
  }

  it('starts: flintlock files in the VM dir, sockets in the run dir, a valid config, the live pid', async () => {
    const { vm, launch } = vmFor({ FAKE_FC_GUEST_BOOT_MS: '20' });
    const pid = await start(vm, launch);
    for (const f of ['firecracker.cfg', 'firecracker.log', 'firecracker.metrics', 'firecracker.pid', 'firecracker.stderr', 'firecracker.stdout', 'metadata.json']) {
      assert.ok(existsSync(join(launch.dir, f)), f);
    }
    assert.ok(existsSync(join(launch.runDir, 'firecracker.sock')));
    assert.ok(existsSync(join(launch.runDir, 'guest-agent.vsock')));
    assert.equal(Number(readFileSync(join(launch.dir, 'firecracker.pid'), 'utf8')), pid);
    assert.equal(await vm.running(), pid);
    assert.equal(configShapeError(JSON.parse(readFileSync(join(launch.dir, 'firecracker.cfg'), 'utf8'))), undefined);
    assert.deepEqual(JSON.parse(readFileSync(join(launch.dir, 'metadata.json'), 'utf8')), { latest: { 'meta-data': `instance_id: ${launch.uid}\n`, 'user-data': '#cloud-config\n' } });
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.deepEqual(argv.slice(argv.indexOf('--id')), ['--id', launch.uid, '--config-file', join(launch.dir, 'firecracker.cfg'), '--metadata', join(launch.dir, 'metadata.json'), '--api-sock', join(launch.runDir, 'firecracker.sock'), '--boot-timer', '']);

    await vm.pause();
    assert.equal(await vm.state(), 'Paused');
    await vm.resume();
    assert.equal(await vm.state(), 'Running');
    await vm.flushMetrics();
    const m = await vm.metrics();
    assert.equal(m?.counters['patch_api_requests.vm_count'], 2);
    assert.ok((m?.utcTimestampMs ?? 0) > 0);
    for (let i = 0; i < 300 && (await vm.bootTimeMs()) === undefined; i++) await sleep(100);
    assert.equal(await vm.bootTimeMs(), 20);

    // Counters are the sums of every flush's deltas, not the last line's figure.
    const lineCount = () => readFileSync(join(launch.dir, 'firecracker.metrics'), 'utf8').trim().split('\n').length;
    const before = lineCount();
    const first = await vm.ioCounters();
    assert.equal(lineCount(), before + 1, 'the first read flushes');
    await vm.ioCounters();
    assert.equal(lineCount(), before + 1, 'no second flush within a minute, however often it is read');
    await sleep(350);
    await vm.flushMetrics();
    const second = await vm.ioCounters();
    const lines = readFileSync(join(launch.dir, 'firecracker.metrics'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { block?: { read_count?: number }; net?: { rx_packets_count?: number } });
    const summed = lines.reduce((n, l) => n + (l.block?.read_count ?? 0), 0);
    assert.ok(lines.length >= 3, 'several flushes');
    assert.equal(second.block?.readOps, summed);
    assert.ok(summed > (lines.at(-1)?.block?.read_count ?? 0), 'more than the last line alone');
    assert.ok((second.block?.readOps ?? 0) > (first.block?.readOps ?? 0), 'counters move');
    assert.equal(second.block?.readBytes, 4096 * (second.block?.readOps ?? 0));
    assert.equal(second.block?.writeBytes, 512 * (second.block?.writeOps ?? 0));
    assert.equal(second.net?.rxPackets, lines.reduce((n, l) => n + (l.net?.rx_packets_count ?? 0), 0));
    assert.equal(second.net?.txBytes, 90 * (second.net?.txPackets ?? 0));

    await vm.stop({ timeoutMs: 3000 }, quiet);
    assert.equal(pidAlive(pid), false);
    assert.equal(await vm.running(), undefined);
    assert.equal(existsSync(join(launch.runDir, 'firecracker.sock')), false, 'API socket removed');
    assert.equal(existsSync(join(launch.runDir, 'guest-agent.vsock')), false, 'vsock socket removed');
  });

  it('a restart starts with empty console, log and metrics files; the last run\'s are kept as .1 and its counters are not counted again', async () => {
    const { vm, launch } = vmFor();
    const file = (f: string) => join(launch.dir, f);
    await start(vm, launch);
    await sleep(300);
    await vm.flushMetrics();
    const firstRun = await vm.ioCounters();
    assert.ok((firstRun.block?.readOps ?? 0) > 0);
    await vm.stop({ timeoutMs: 3000 }, quiet);
    // As a real guest of the last run would have left it; the stand-in prints no console.
    writeFileSync(file('firecracker.stdout'), 'Run /sbin/init as init process\n', { flag: 'a' });
    const lastLog = readFileSync(file('firecracker.log'), 'utf8');
    const lastMetrics = readFileSync(file('firecracker.metrics'), 'utf8');

    await start(vm, launch);
    assert.doesNotMatch(readFileSync(file('firecracker.stdout'), 'utf8'), /Run \/sbin\/init/, 'the new run\'s console holds only what it printed');
    assert.match(readFileSync(file('firecracker.stdout.1'), 'utf8'), /Run \/sbin\/init as init process\n$/, 'the last run\'s console is kept');
    assert.equal(readFileSync(file('firecracker.log.1'), 'utf8'), lastLog);
    assert.equal(readFileSync(file('firecracker.metrics.1'), 'utf8'), lastMetrics);
    assert.doesNotMatch(readFileSync(file('firecracker.log'), 'utf8'), /Vmm is stopping/, 'nothing of the last run in the log');
    const lines = readFileSync(file('firecracker.metrics'), 'utf8').trim().split('\n');
    assert.equal(lines.length, 1, 'only the new run\'s first flush');
    // The totals are the sums of this run's lines alone.
    const now = await vm.ioCounters();
    const summed = readFileSync(file('firecracker.metrics'), 'utf8').trim().split('\n').reduce((n, l) => n + ((JSON.parse(l) as { block?: { read_count?: number } }).block?.read_count ?? 0), 0);
    assert.equal(now.block?.readOps, summed);
    await vm.stop({ timeoutMs: 3000 }, quiet);
  });

  it('stop ladder: Ctrl+Alt+Del ignored -> SIGTERM; SIGTERM ignored too -> SIGKILL', async () => {
    const a = vmFor({ FAKE_FC_IGNORE_CTRL_ALT_DEL: '1' });
    const pidA = await start(a.vm, a.launch);
    const t0 = Date.now();
    await a.vm.stop({ timeoutMs: 300 }, quiet);
    assert.equal(pidAlive(pidA), false);
    assert.ok(Date.now() - t0 >= 300, 'waited for the guest first');

    const b = vmFor({ FAKE_FC_IGNORE_CTRL_ALT_DEL: '1', FAKE_FC_IGNORE_SIGTERM: '1' });
    const pidB = await start(b.vm, b.launch);
    await b.vm.stop({ timeoutMs: 200 }, quiet);
    assert.equal(pidAlive(pidB), false);
    assert.equal(existsSync(join(b.launch.runDir, 'firecracker.sock')), false);
  });

  it('stops a paused guest gracefully: resumed first, so it sees Ctrl+Alt+Del', async () => {
    const { vm, launch } = vmFor({ FAKE_FC_IGNORE_SIGTERM: '1' });
    const pid = await start(vm, launch);
    await vm.pause();
    const infos: string[] = [];
    const log: Logger = { ...quiet, info: (_o, msg) => void infos.push(msg ?? ''), warn: (_o, msg) => void infos.push(msg ?? '') };
    // A guest that could not see the key press would wait out the grace, then need SIGKILL
    // (the stand-in ignores SIGTERM here).
    const t0 = Date.now();
    await vm.stop({ timeoutMs: 20_000 }, log);
    assert.ok(Date.now() - t0 < 10_000, `stopped after ${Date.now() - t0} ms`);
    assert.equal(pidAlive(pid), false);
    assert.deepEqual(infos.filter((m) => /SIGTERM|SIGKILL|resume/.test(m)), []);
    assert.match(readFileSync(join(launch.dir, 'firecracker.log'), 'utf8'), /The microVM was paused\.[\s\S]*The microVM was resumed\.[\s\S]*Vmm is stopping\./);
  });

  it('removes stale sockets before start, and adopts a live VMM whose pid file is gone', async () => {
    const { vm, launch } = vmFor();
    await vm.prepare(launch);
    writeFileSync(join(launch.runDir, 'firecracker.sock'), '');
    writeFileSync(join(launch.runDir, 'guest-agent.vsock'), '');
    const pid = await start(vm, launch);
    rmSync(join(launch.dir, 'firecracker.pid'));
    assert.equal(await vm.running(), pid);
    assert.equal(Number(readFileSync(join(launch.dir, 'firecracker.pid'), 'utf8')), pid);
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 600 && pidAlive(pid); i++) await sleep(50);
    assert.equal(await vm.running(), undefined);
    await vm.stop({ timeoutMs: 100 }, quiet);
  });

  it('a start called off while GET / answers the VM running is canceled, and no VMM is left', async () => {
    const record = join(tmp.path, `record-${n}.jsonl`);
    const { vm, launch } = vmFor({ FAKE_FC_RECORD: record });
    const calledOff = new AbortController();
    // The delete arrives while the answer of the readiness look comes in: GET / on the API
    // socket says Running. Watched through node:http, which unix-http.ts sends it with.
    const realRequest = http.request;
    http.request = ((opts: http.RequestOptions, answered: (res: http.IncomingMessage) => void) =>
      realRequest(opts, (res) => {
        if (opts.method === 'GET' && opts.path === '/' && opts.socketPath === vm.socket('api')) {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => /"state":\s*"Running"/.test(body) && calledOff.abort());
        }
        answered(res);
      })) as typeof http.request;
    syncBuiltinESMExports();
    let outcome: unknown;
    try {
      outcome = await vm.start(launch, quiet, calledOff.signal).catch((e: unknown) => e);
    } finally {
      http.request = realRequest;
      syncBuiltinESMExports();
    }
    const { pid } = JSON.parse(readFileSync(record, 'utf8').trim()) as { pid: number };
    started.push(pid);
    assert.ok(calledOff.signal.aborted, 'the VM was answered running');
    assert.ok(outcome instanceof MatchlockError && outcome.code === ErrorCode.Canceled && /canceled while firecracker was starting/.test(outcome.message), `canceled, not ${String(outcome)}`);
    assert.equal(pidAlive(pid), false, 'the VMM of the start called off is gone when the start throws');
    assert.equal(await vm.running(), undefined, 'the delete finds no VMM to stop');
  });

  // Each way Firecracker refuses a start: the error names the field, and nothing is left running.
  const REFUSALS: [string, Record<string, string>, (l: FirecrackerLaunch) => Partial<FirecrackerLaunch>, RegExp][] = [
    ['a TAP that does not exist', {}, (l) => ({ nics: [l.nics[0]!, { ...l.nics[1]!, hostDevice: 'mltgone' }] }), /network-interfaces\[1\]\.host_dev_name: .*no such device/],
    ['a drive file that does not exist', {}, () => ({ disks: [{ id: 'root', path: '/nonexistent/root.img', readOnly: false }] }), /drives\[0\]\.path_on_host: Unable to create the virtio block device root.* \(in firecracker\.cfg\)$/],
    ['an initrd that does not exist', {}, () => ({ initrdPath: '/nonexistent/initrd' }), /boot-source\.initrd_path: The initrd file cannot be opened/],
    ['a VMM that crashes at once', { FAKE_FC_CRASH_AFTER_MS: '0' }, () => ({}), /firecracker exited with code 150/],
    ['a VMM that never binds its socket', { FAKE_FC_NO_SOCKET: '1' }, () => ({}), /did not answer GET \/ with a running VM within/],
    ['a VMM whose API hangs', { FAKE_FC_HANG: 'GET /' }, () => ({}), /did not answer GET \/ with a running VM within/],
  ];
  for (const [name, env, change, expected] of REFUSALS) {
    it(`start refused: ${name}`, async () => {
      const base = vmFor(env);
      const launch = { ...base.launch, ...change(base.launch) };
      const vm = new FirecrackerVm(launch.uid, launch, { bin: binary(env), detach: true, readyTimeoutMs: 10_000 });
      await assert.rejects(vm.start(launch, quiet), expected);
      assert.equal(await vm.running(), undefined, 'no VMM left');
      assert.equal(existsSync(join(launch.runDir, 'firecracker.sock')), false, 'no socket left');
    });
  }

  it('starts with metadata over the default MMDS limit of 51200 bytes (passing --mmds-size-limit sized to it)', async () => {
    const { vm, launch } = vmFor({}, { metadata: { 'meta-data': Buffer.from('instance_id: i-1\n'), 'user-data': Buffer.from(`#cloud-config\n# ${'u'.repeat(1024 * 1024 - 64)}\n`) } });
    const pid = await start(vm, launch);
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const limit = Number(argv[argv.indexOf('--mmds-size-limit') + 1]);
    assert.equal(limit, Buffer.byteLength(readFileSync(join(launch.dir, 'metadata.json'), 'utf8').trim()));
    await vm.stop({ timeoutMs: 3000 }, quiet);
  });

  it('names metadata.json, not firecracker.cfg, for an MMDS error Firecracker reports as failing to build the VM', async () => {
    const { vm, launch } = vmFor();
    mkdirSync(launch.dir, { recursive: true });
    writeFileSync(join(launch.dir, 'firecracker.log'), '[anonymous-instance:main:ERROR] RunWithApiError error: Failed to build MicroVM from Json: MMDS error: The MMDS data store size limit was exceeded.\n');
    assert.equal(await vm.failureReason(), 'MMDS error: The MMDS data store size limit was exceeded. (in metadata.json)');
    writeFileSync(join(launch.dir, 'firecracker.log'), '[anonymous-instance:main:ERROR] RunWithApiError error: Failed to build MicroVM from Json: boot-source.boot_args: The kernel command line is invalid: Invalid cmdline capacity provided.\n');
    assert.equal(await vm.failureReason(), 'boot-source.boot_args: The kernel command line is invalid: Invalid cmdline capacity provided. (in firecracker.cfg)');
  });

  it('reports the version from --version', async () => {
    assert.equal(await firecrackerVersion(FAKE_FIRECRACKER), '1.16.1');
  });
});

describe('FirecrackerVm under the jailer stand-in', { skip }, () => {
  let ns: string;
  let tmp: { path: string; remove(): void };
  const started: number[] = [];

  before(() => {
    ns = `mlj-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'mltmeta', 'mode', 'tap']);
    tmp = tempDir('fc-jail');
    // The jailed VMM runs unprivileged; the stand-in cannot pivot_root, so it needs a path in.
    chmodSync(tmp.path, 0o755);
    writeElfKernel(join(tmp.path, 'vmlinux'));
    chmodSync(join(tmp.path, 'vmlinux'), 0o644);
    mkdirSync(join(tmp.path, 'cgroup'));
    writeFileSync(join(tmp.path, 'cgroup', 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
  });
  after(() => {
    for (const pid of started) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    if (ns) spawnSync('ip', ['netns', 'del', ns]);
    tmp?.remove();
  });

  it('jails the VMM: own uid/gid, cgroup v2 limits, files hard-linked, pid from the jail; delete removes jail and cgroup', async () => {
    const uid = '01HZY3NDEKTSV4RRFFQ69GJA1L';
    const { vm, launch, dir } = jailedVm(uid, { readyTimeoutMs: 20_000 });
    const pid = await vm.start(launch, quiet);
    started.push(pid);
    const root = vm.jail ?? '';
    assert.equal(root, join(tmp.path, 'jailer', 'firecracker.mjs', uid, 'root'));
    assert.equal(Number(readFileSync(join(root, 'firecracker.mjs.pid'), 'utf8')), pid, 'pid read from the jail');
    assert.equal(Number(readFileSync(join(dir, 'firecracker.pid'), 'utf8')), pid);
    assert.equal(await vm.running(), pid);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const id = await vm.jailUid();
    assert.ok(id !== undefined);
    assert.match(status, new RegExp(`^Uid:\\s+${id}\\s`, 'm'), 'runs as the VM\'s own uid');
    assert.match(status, new RegExp(`^Gid:\\s+${id}\\s`, 'm'));
    const cg = join(tmp.path, 'cgroup', 'matchlock', uid);
    assert.equal(readFileSync(join(cg, 'cpu.max'), 'utf8'), '200000 100000\n');
    assert.equal(readFileSync(join(cg, 'memory.max'), 'utf8'), `${(1024 + 64) * 1024 * 1024}\n`);
    assert.match(readFileSync(join(cg, 'cgroup.procs'), 'utf8'), new RegExp(`^${pid}$`, 'm'));
    for (const [inJail, inDir] of [['firecracker.log', 'firecracker.log'], ['firecracker.cfg', 'firecracker.cfg'], ['drive-root', 'volume-root.img']]) {
      assert.equal(statSync(join(root, inJail!)).ino, statSync(join(dir, inDir!)).ino, `${inJail} is a hard link of ${inDir}`);
    }
    const cfg = JSON.parse(readFileSync(join(dir, 'firecracker.cfg'), 'utf8'));
    assert.equal(cfg['boot-source'].kernel_image_path, '/vmlinux');
    assert.match(readFileSync(join(dir, 'firecracker.log'), 'utf8'), /Successfully started microvm/);
    assert.ok(existsSync(join(root, 'run', 'firecracker.sock')));
    await vm.pause();
    assert.equal(await vm.state(), 'Paused');
    await vm.stop({ timeoutMs: 3000 }, quiet);
    assert.equal(pidAlive(pid), false);
    await vm.cleanup();
    assert.equal(existsSync(join(tmp.path, 'jailer', 'firecracker.mjs', uid)), false, 'jail removed');
    assert.equal(existsSync(cg), false, 'cgroup removed');
    assert.equal(await vm.jailUid(), undefined, 'its uid/gid is given back');
  });

  it('gives live VMs distinct uids/gids, each kept across restarts of the VM and the daemon, and free again after delete', async () => {
    // sha256 of these two VM uids agrees mod 65536: a hashed id would give both the same.
    const a = jailedVm('01HZY3NDEKTSV4RRFFQ6900097', { readyTimeoutMs: 20_000 });
    const b = jailedVm('01HZY3NDEKTSV4RRFFQ6900102', { readyTimeoutMs: 20_000 });
    const idA = (await a.vm.prepare(a.launch))?.id;
    const idB = (await b.vm.prepare(b.launch))?.id;
    assert.ok(idA !== undefined && idB !== undefined);
    assert.notEqual(idA, idB, 'no two live VMs share a uid/gid');
    assert.equal(statSync(join(a.dir, 'firecracker.log')).uid, idA, 'the jail\'s writable files are the VM\'s own');
    assert.equal((await a.vm.prepare(a.launch))?.id, idA, 'the same id on the next start');
    const again = jailedVm('01HZY3NDEKTSV4RRFFQ6900097', { readyTimeoutMs: 20_000 });
    assert.equal((await again.vm.prepare(again.launch))?.id, idA, 'the same id for a new daemon');
    await a.vm.cleanup();
    assert.equal(await a.vm.jailUid(), undefined);
    const c = jailedVm('01HZY3NDEKTSV4RRFFQ69GJA9C', { readyTimeoutMs: 20_000 });
    assert.equal((await c.vm.prepare(c.launch))?.id, idA, 'a deleted VM\'s id is free for the next');
    await b.vm.cleanup();
    await c.vm.cleanup();
  });

  /**
   * A jailed VM under the jailer stand-in, which lingers `holdMs` after it started Firecracker
   * before it writes its pid and exits, or with `failCode` exits so without writing it.
   */
  function jailedVm(uid: string, o: { readyTimeoutMs: number; holdMs?: number; failCode?: number }) {
    const dir = join(tmp.path, 'vm', 'ns', 'name', uid);
    const runDir = join(tmp.path, 'run', uid);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'volume-root.img'), '');
    truncateSync(join(dir, 'volume-root.img'), 1 << 20);
    const jailerBin = join(tmp.path, `jailer-${uid}.sh`);
    writeFileSync(jailerBin, `#!/bin/sh\nexport FAKE_JAILER_CGROUP_ROOT='${join(tmp.path, 'cgroup')}'\nexport FAKE_JAILER_HOLD_MS=${o.holdMs ?? 0}\n${o.failCode === undefined ? '' : `export FAKE_JAILER_FAIL_CODE=${o.failCode}\n`}exec ip netns exec ${ns} ${FAKE_JAILER} "$@"\n`);
    chmodSync(jailerBin, 0o755);
    const jailer = { ...DEFAULT_JAILER, bin: jailerBin, chrootBase: join(tmp.path, 'jailer'), cgroupRoot: join(tmp.path, 'cgroup'), claimsDir: join(tmp.path, 'vmm-uids') };
    const vm = new FirecrackerVm(uid, { dir, runDir }, { bin: FAKE_FIRECRACKER, detach: true, readyTimeoutMs: o.readyTimeoutMs, termTimeoutMs: 1000, jailer });
    const launch: FirecrackerLaunch = {
      uid, namespace: 'ns', name: 'name', dir, runDir, vcpu: 2, memoryInMb: 1024,
      kernelPath: join(tmp.path, 'vmlinux'),
      cmdline: mergeCmdline(defaultCmdline({ mmds: true }), {}),
      hasRoot: true,
      shares: [],
      disks: [{ id: 'root', path: join(dir, 'volume-root.img'), readOnly: false }],
      nics: [{ deviceId: 'eth0', type: 'TAP', hostDevice: 'mltmeta', ifindex: 0, mac: 'AA:FF:00:00:00:01' }],
      metadata: { 'meta-data': Buffer.from(`instance_id: ${uid}\n`) },
      guestAgent: { cid: 3 },
    };
    /** The pids in the VM's cgroup: the Firecracker the jailer started, once it did. */
    const inCgroup = () => (existsSync(join(tmp.path, 'cgroup', 'matchlock', uid, 'cgroup.procs')) ? readFileSync(join(tmp.path, 'cgroup', 'matchlock', uid, 'cgroup.procs'), 'utf8').split('\n').filter((l) => l !== '').map(Number) : []);
    return { vm, launch, inCgroup, dir };
  }

  it('a start called off while the jailer has not exited ends at once, and the Firecracker it forked is killed', async () => {
    // The jailer lingers past the ready timeout: only the call-off can end the wait early.
    const { vm, launch, inCgroup } = jailedVm('01HZY3NDEKTSV4RRFFQ69GJA2L', { holdMs: 120_000, readyTimeoutMs: 60_000 });
    const calledOff = new AbortController();
    const outcome = vm.start(launch, quiet, calledOff.signal).catch((e: unknown) => e);
    let fc: number | undefined;
    for (let i = 0; i < 400 && fc === undefined; i++) {
      fc = inCgroup()[0];
      if (fc === undefined) await sleep(25);
    }
    assert.ok(fc !== undefined, 'the jailer started Firecracker');
    started.push(fc);
    calledOff.abort();
    const e = await outcome;
    assert.ok(e instanceof MatchlockError && e.code === ErrorCode.Canceled, `canceled, not ${String(e)}`);
    assert.equal(pidAlive(fc), false, 'the Firecracker the jailer forked is gone when the start throws');
    assert.equal(await vm.running(), undefined);
    await vm.cleanup();
  });

  it('a jailer that does not exit within the ready timeout: the start fails and the Firecracker it forked is killed', async () => {
    const { vm, launch, inCgroup } = jailedVm('01HZY3NDEKTSV4RRFFQ69GJA3L', { holdMs: 120_000, readyTimeoutMs: 1500 });
    await assert.rejects(vm.start(launch, quiet), /jailer did not exit/);
    const [fc] = inCgroup();
    assert.ok(fc !== undefined, 'the jailer started Firecracker');
    started.push(fc);
    assert.equal(pidAlive(fc), false, 'not left running untracked');
    assert.equal(await vm.running(), undefined);
    await vm.cleanup();
  });

  it('a jailer that failed after its fork: what it started is killed, and the jailer, already reaped, is not signalled', async () => {
    const { vm, launch, inCgroup } = jailedVm('01HZY3NDEKTSV4RRFFQ69GJA4L', { holdMs: 300, readyTimeoutMs: 20_000, failCode: 3 });
    const signalled: number[] = [];
    const realKill = process.kill.bind(process);
    const kill = mock.method(process, 'kill', (pid: number, sig?: string | number) => {
      if (sig !== 0 && sig !== undefined) signalled.push(pid);
      return realKill(pid, sig);
    });
    try {
      await assert.rejects(vm.start(launch, quiet), /jailer exited with code 3/);
    } finally {
      kill.mock.restore();
    }
    const [fc] = inCgroup();
    assert.ok(fc !== undefined, 'the jailer started Firecracker');
    started.push(fc);
    assert.equal(pidAlive(fc), false, 'not left running untracked');
    // The jailer's pid was reaped when its exit was reported and may be another process's.
    assert.deepEqual(signalled, [fc], 'only the Firecracker it started was signalled');
    await vm.cleanup();
  });
});

describe('firecracker kernels', () => {
  it('unpacks the ELF from a bzImage (gzip payload with the appended size) and refuses other files', async () => {
    const t = tempDir('fc-kernel');
    try {
      writeElfKernel(join(t.path, 'elf'));
      const elf = readFileSync(join(t.path, 'elf'));
      const payload = Buffer.concat([gzipSync(elf), Buffer.alloc(4)]);
      payload.writeUInt32LE(elf.length, payload.length - 4);
      const setupSects = 1;
      const image = Buffer.alloc((setupSects + 1) * 512 + payload.length);
      image[0x1f1] = setupSects;
      image.writeUInt16LE(0xaa55, 0x1fe);
      image.write('HdrS', 0x202, 'latin1');
      image.writeUInt16LE(0x20f, 0x206);
      image.writeUInt32LE(0, 0x248);
      image.writeUInt32LE(payload.length, 0x24c);
      payload.copy(image, (setupSects + 1) * 512);
      writeFileSync(join(t.path, 'bzImage'), image);
      assert.equal(await ensureVmlinux(join(t.path, 'elf'), join(t.path, 'out1')), join(t.path, 'elf'));
      assert.equal(await ensureVmlinux(join(t.path, 'bzImage'), join(t.path, 'out2')), join(t.path, 'out2'));
      assert.deepEqual(readFileSync(join(t.path, 'out2')), elf);
      writeFileSync(join(t.path, 'junk'), 'not a kernel at all, just some text that is long enough');
      await assert.rejects(ensureVmlinux(join(t.path, 'junk'), join(t.path, 'out3')), /junk: Firecracker needs an uncompressed x86_64 ELF vmlinux; this file is neither an ELF nor a bzImage/);
      image.writeUInt32LE(payload.length + 100_000, 0x24c);
      writeFileSync(join(t.path, 'broken'), image);
      await assert.rejects(ensureVmlinux(join(t.path, 'broken'), join(t.path, 'out4')), /broken is a bzImage, which Firecracker cannot load, and its vmlinux could not be found/);
    } finally {
      t.remove();
    }
  });

  it('reads the last complete metrics line, flattened', () => {
    const text = '{"utc_timestamp_ms":1,"vcpu":{"exit_io_in":5}}\n{"utc_timestamp_ms":2,"block":{"read_count":3,"x":"s"},"net_eth0":{"tx":{"n":1}}}\n{"utc_times';
    assert.deepEqual(parseMetrics(text), { utcTimestampMs: 2, counters: { 'block.read_count': 3, 'net_eth0.tx.n': 1 } });
    assert.equal(parseMetrics(''), undefined);
  });
});
