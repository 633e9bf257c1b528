import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chDefaultCmdline } from '../../src/adapters/vmm/cloudhypervisor/args.js';
import { chIoCounters, CloudHypervisorInstance } from '../../src/adapters/vmm/cloudhypervisor/provider.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import type { Step } from '../../src/core/plan/step.js';
import type { Launch } from '../../src/core/vmm.js';
import { DEFAULT_VIRTIOFSD, recordedVirtiofsds, Virtiofsd } from '../../src/adapters/vmm/cloudhypervisor/virtiofsd.js';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { mergeCmdline } from '../../src/core/microvm/cloudinit.js';
import type { Logger } from '../../src/core/ports.js';

// The provider's process logic against the Cloud Hypervisor stand-in: start with the files CH
// opens, running, pause/resume, counters, each rung of the stop ladder, both versions' errors.
const FAKE = fileURLToPath(new URL('../fakes/cloud-hypervisor.mjs', import.meta.url));
const quiet: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => quiet };
const never = new AbortController().signal;

let tmp: string;
let n = 0;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ch-provider-'));
  writeFileSync(join(tmp, 'vmlinux'), 'kernel');
  writeFileSync(join(tmp, 'root.img'), '');
  truncateSync(join(tmp, 'root.img'), 1 << 20);
  writeFileSync(join(tmp, 'seed.img'), 'seed');
});
const started: CloudHypervisorInstance[] = [];
after(async () => {
  for (const i of started) {
    const pid = await i.running();
    if (pid) process.kill(pid, 'SIGKILL');
  }
  rmSync(tmp, { recursive: true, force: true });
});

function vm(extra: Partial<Launch> = {}) {
  const uid = `01HZY3NDEKTSV4RRFFQ69G5F${String(n++).padStart(2, '0')}`;
  const dir = join(tmp, 'vm', uid);
  const runDir = join(tmp, 'run', uid);
  mkdirSync(dir, { recursive: true });
  const instance = new CloudHypervisorInstance({ uid, namespace: 'ns', name: 'vm', dir, runDir }, { bin: FAKE, detach: true, virtiofsd: DEFAULT_VIRTIOFSD, startTimeoutMs: 30_000 }, quiet);
  started.push(instance);
  const launch: Launch = {
    uid, namespace: 'ns', name: 'vm', dir, runDir, vcpu: 2, memoryInMb: 1024, kernelPath: join(tmp, 'vmlinux'),
    cmdline: mergeCmdline(chDefaultCmdline(true), {}),
    disks: [{ id: 'root', path: join(tmp, 'root.img'), readOnly: false }, { id: 'cidata', path: join(tmp, 'seed.img'), readOnly: true }],
    nics: [], shares: [], metadata: {}, guestAgent: { cid: 3 }, ...extra,
  };
  return { instance, launch };
}

/** The API requests the stand-in received, from its record. */
function requests(pid: number, record: string): string[] {
  return (JSON.parse(readFileSync(join(record, `${pid}.json`), 'utf8')) as { requests: { method: string; path: string }[] }).requests.map((r) => `${r.method} ${r.path.replace('/api/v1/', '')}`);
}

async function withEnv<T>(env: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await f();
  } finally {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('chIoCounters', () => {
  it("sums vm.counters by device kind, told apart by their keys, and counts frames as packets", () => {
    const io = chIoCounters({
      _disk0: { read_bytes: 4096, read_ops: 1, write_bytes: 512, write_ops: 2 },
      mydisk: { read_bytes: 1000, read_ops: 3, write_bytes: 0, write_ops: 0 },
      _net2: { rx_bytes: 60, rx_frames: 1, tx_bytes: 90, tx_frames: 2 },
      _net3: { rx_bytes: 40, rx_frames: 1, tx_bytes: 10, tx_frames: 1 },
      _vsock4: { something: 7 },
    });
    assert.deepEqual(io, { block: { readBytes: 5096, writeBytes: 512, readOps: 4, writeOps: 2 }, net: { rxBytes: 100, txBytes: 100, rxPackets: 2, txPackets: 3 } });
  });
});

describe('cloud-hypervisor provider process logic (stand-in)', () => {
  it('starts, is found running, pauses, reads counters and powers off gracefully', async () => {
    const record = join(tmp, 'rec-graceful');
    const { instance, launch } = vm();
    const pid = await withEnv({ FAKE_CH_RECORD: record }, () => instance.start(launch, never, quiet));
    assert.equal(Number(readFileSync(instance.files.pid, 'utf8')), pid, 'the pid file names the live VMM');
    assert.ok(pidAlive(pid));
    assert.equal(await instance.running(), pid);
    assert.equal(await instance.powerState(), 'running');
    assert.ok(existsSync(instance.files.vsock), 'vsock socket in the run dir');
    await instance.setPaused(true);
    assert.equal(await instance.powerState(), 'paused');
    await assert.rejects(instance.setPaused(true), /cloud-hypervisor vm.pause: Error pausing the VM: Invalid VM state transition: Paused to Paused/);
    const counters = await instance.counters();
    assert.deepEqual(Object.keys(counters), ['_disk0', '_disk1']);
    const io = await instance.ioCounters();
    assert.ok((io.block?.readOps ?? 0) >= (counters._disk0?.read_ops ?? 0) + (counters._disk1?.read_ops ?? 0), 'both disks, summed');
    assert.equal(io.block?.readBytes, 4096 * (io.block?.readOps ?? 0));
    assert.deepEqual(io.net, { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 }, 'no net device, nothing counted');
    // stop resumes the paused guest so it sees the power button, then it powers off
    await instance.stop({ timeoutMs: 10_000, signal: never }, quiet);
    assert.equal(await instance.running(), undefined);
    assert.deepEqual(requests(pid, record).filter((r) => !r.endsWith('vmm.ping')), ['GET vm.info', 'PUT vm.pause', 'GET vm.info', 'PUT vm.pause', 'GET vm.counters', 'GET vm.counters', 'GET vm.info', 'PUT vm.resume', 'PUT vm.power-button']);
    assert.ok(!existsSync(instance.files.api) && !existsSync(instance.files.vsock), 'sockets removed');
  });

  it('climbs the ladder: a guest ignoring ACPI gets vm.shutdown + vmm.shutdown', async () => {
    const record = join(tmp, 'rec-deaf');
    const { instance, launch } = vm();
    const pid = await withEnv({ FAKE_CH_RECORD: record, FAKE_CH_FAULTS: 'ignore-power-button' }, () => instance.start(launch, never, quiet));
    await instance.stop({ timeoutMs: 300, signal: never }, quiet);
    assert.equal(await instance.running(), undefined);
    assert.deepEqual(requests(pid, record).filter((r) => r.startsWith('PUT')), ['PUT vm.power-button', 'PUT vm.shutdown', 'PUT vmm.shutdown']);
  });

  it('climbs to SIGKILL when the API hangs and SIGTERM is ignored', async () => {
    const { instance, launch } = vm();
    await withEnv({ FAKE_CH_FAULTS: 'ignore-power-button,hang=vmm.shutdown,ignore-sigterm' }, () => instance.start(launch, never, quiet));
    const t = Date.now();
    await instance.stop({ timeoutMs: 200, signal: never }, quiet);
    assert.equal(await instance.running(), undefined);
    assert.ok(Date.now() - t >= 2000, 'waited after SIGTERM before SIGKILL');
  });

  it('a restart starts with an empty console and log; the last run\'s are kept as .1', async () => {
    const { instance, launch } = vm();
    await instance.start(launch, never, quiet);
    await instance.stop({ timeoutMs: 5000, signal: never }, quiet);
    // What a guest of the last run printed: its boot line and how it crashed.
    writeFileSync(instance.files.console, 'Run /sbin/init as init process\nKernel panic - not syncing\n', { flag: 'a' });
    const lastLog = readFileSync(instance.files.log, 'utf8');
    assert.ok(lastLog.length > 0);
    await instance.start(launch, never, quiet);
    assert.doesNotMatch(readFileSync(instance.files.console, 'utf8'), /Run \/sbin\/init/, 'no boot line of the last run in this run\'s console');
    assert.match(readFileSync(`${instance.files.console}.1`, 'utf8'), /Kernel panic - not syncing/, 'the last run\'s crash is kept');
    assert.equal(readFileSync(`${instance.files.log}.1`, 'utf8'), lastLog);
    await instance.stop({ timeoutMs: 5000, signal: never }, quiet);
  });

  it('removes a stale API socket before starting (v41 refuses one), after a killed VMM', async () => {
    const { instance, launch } = vm();
    await withEnv({ FAKE_CH_VERSION: '41' }, async () => {
      const first = await instance.start(launch, never, quiet);
      process.kill(first, 'SIGKILL');
      for (let i = 0; i < 1500 && (await instance.running()) !== undefined; i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(existsSync(instance.files.api), 'a killed VMM leaves its socket');
      const second = await instance.start(launch, never, quiet);
      assert.notEqual(second, first);
      // v41's plain-text 500 shows as the message
      await assert.rejects(instance.setPaused(false), /cloud-hypervisor vm.resume: Error resuming the VM: Invalid VM state transition: Running to Running/);
      await instance.stop({ timeoutMs: 5000, signal: never }, quiet);
    });
  });

  it('fails a start with the VMM\'s own error chain and leaves no process', async () => {
    const { instance, launch } = vm();
    await assert.rejects(instance.start({ ...launch, kernelPath: join(tmp, 'no-such-kernel') }, never, quiet), /cloud-hypervisor exited with 1: .*Cannot load kernel.*no-such-kernel/);
    assert.equal(await instance.running(), undefined);
  });

  it('a start called off as the API first answers is canceled, and no VMM is left for the delete', async () => {
    const { instance, launch } = vm();
    // The delete arrives at the moment the launcher's readiness look (the pid file, then
    // vmm.ping) finds the VMM up: after the ping's answer, before the look returns it.
    const calledOff = new AbortController();
    let up: number | undefined;
    const ping = instance.api.ping.bind(instance.api);
    instance.api.ping = async () => {
      const answer = await ping();
      up ??= await instance.running();
      calledOff.abort();
      return answer;
    };
    await assert.rejects(instance.start(launch, calledOff.signal, quiet), (e: MatchlockError) => e.code === ErrorCode.Canceled && e.message === 'canceled while cloud-hypervisor was starting');
    assert.ok(up !== undefined, 'the VMM answered vmm.ping');
    assert.equal(pidAlive(up), false, 'the VMM of the start called off is gone when the start throws');
    assert.equal(await instance.running(), undefined);
  });

  it('a virtiofsd start called off as its socket appears is canceled, and the process is killed', async () => {
    const share = join(tmp, 'share-called-off');
    mkdirSync(share, { recursive: true });
    const { launch } = vm();
    mkdirSync(launch.runDir, { recursive: true });
    // A virtiofsd that never listens: the test makes its socket path itself, so the look finds
    // it exactly when the start is called off. Perl keeps the arguments on its command line,
    // as virtiofsd's names its socket (what running() checks).
    const bin = join(tmp, 'virtiofsd-silent');
    writeFileSync(bin, '#!/usr/bin/perl\nsleep 1000;\n', { mode: 0o755 });
    const d = new Virtiofsd(bin, launch.dir, launch.runDir, 0);
    const calledOff = new AbortController();
    const starting = d.start(share, calledOff.signal, quiet);
    // The pid file is written right after the spawn, before the wait for the socket.
    let pid = 0;
    for (let i = 0; i < 1500 && !pid; i++) {
      pid = Number(readFileSync(d.pidFile, { encoding: 'utf8', flag: 'a+' }).trim());
      if (!pid) await new Promise((r) => setTimeout(r, 5));
    }
    assert.ok(pid > 0, 'virtiofsd started');
    writeFileSync(d.socket, '');
    calledOff.abort();
    const outcome = await starting.catch((e: unknown) => e);
    if (outcome instanceof MatchlockError) for (let i = 0; i < 1500 && pidAlive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    const alive = pidAlive(pid);
    if (alive) process.kill(pid, 'SIGKILL');
    assert.ok(outcome instanceof MatchlockError && outcome.code === ErrorCode.Canceled, `canceled, not ${String(outcome)}`);
    assert.equal(alive, false, 'the virtiofsd of the start called off is killed');
    assert.equal(await d.running(), undefined);
    assert.deepEqual(await recordedVirtiofsds(launch.dir, launch.runDir), [{ pidFile: d.pidFile, socket: d.socket }], 'its pid file stays for the delete steps');
  });

  const virtiofsdMissing = process.getuid?.() !== 0 ? 'needs root (virtiofsd sandboxes itself in namespaces)' : !existsSync(DEFAULT_VIRTIOFSD) ? `${DEFAULT_VIRTIOFSD} missing (qemu-system-common)` : undefined;
  it('starts a virtiofsd per share before the VMM, and delete stops it', { skip: !process.env.CI && virtiofsdMissing }, async () => {
    if (virtiofsdMissing) assert.fail(virtiofsdMissing);
    const share = join(tmp, 'share');
    mkdirSync(share, { recursive: true });
    const { instance, launch } = vm({ shares: [{ id: 'data', hostPath: share, readOnly: false }] });
    const run = async (steps: Step[]) => {
      for (const s of steps) {
        if (await s.needed()) {
          await s.run(never);
          await s.verify();
        }
      }
    };
    const steps = instance.createSteps(() => launch);
    assert.deepEqual(steps.map((s) => s.name), ['virtiofsd data']);
    await run(steps);
    const vfsPid = Number(readFileSync(join(launch.dir, 'virtiofsd-0.pid'), 'utf8'));
    assert.ok(pidAlive(vfsPid));
    assert.equal(await steps[0]!.needed(), false, 'a running virtiofsd is not started twice');
    const pid = await instance.start(launch, never, quiet);
    assert.ok(pidAlive(pid));
    // virtiofsd serves one VMM: when the VMM goes, so does it, and the next start needs a new one
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 1500 && pidAlive(vfsPid); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!pidAlive(vfsPid), 'virtiofsd exits with its VMM');
    assert.equal(await steps[0]!.needed(), true);
    await run(steps);
    const second = Number(readFileSync(join(launch.dir, 'virtiofsd-0.pid'), 'utf8'));
    assert.ok(pidAlive(second));
    // A virtiofsd whose VMM never started is stopped by stop() too (what a sweep calls)…
    await instance.stop({ timeoutMs: 1000, signal: never }, quiet);
    assert.ok(!pidAlive(second), 'stop stopped a virtiofsd without its VMM');
    // …and by the delete steps.
    await run(steps);
    const third = Number(readFileSync(join(launch.dir, 'virtiofsd-0.pid'), 'utf8'));
    assert.ok(pidAlive(third));
    await run(instance.deleteSteps());
    assert.ok(!pidAlive(third), 'delete stopped virtiofsd');
    assert.ok(!existsSync(join(launch.runDir, 'virtiofsd-0.sock')) && !existsSync(join(launch.dir, 'virtiofsd-0.pid')));
    assert.equal(await instance.deleteSteps()[0]!.needed(), false);
  });
});
