import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { unixHttp } from '../../src/adapters/vmm/unix-http.js';
import { run as cli } from '../../src/cli/main.js';
import { MicroVMStatus_PowerState, type MicroVM } from '../../src/gen/types/microvm_pb.js';
import { FAKE_FIRECRACKER, firecrackerLabMissing } from '../helpers/firecracker.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, importGuest, sleep, stateOf, vmDir, waitFor } from './vm.js';

// Power operations through matchlockd on the Firecracker and Cloud Hypervisor stand-ins, which
// accept an API call only where the real VMM would (Firecracker's swagger and state rules,
// Cloud Hypervisor's verbs and state transitions) and record what they were asked.
const FAKE_CH = fileURLToPath(new URL('../fakes/cloud-hypervisor.mjs', import.meta.url));
const missing = labMissing() ?? firecrackerLabMissing();
const skip = missing && !process.env.CI ? missing : false;
const powerOf = (vm: MicroVM | undefined) => MicroVMStatus_PowerState[vm?.status?.power ?? 0];

describe('power operations on the Firecracker and Cloud Hypervisor stand-ins', { skip }, () => {
  let lab: Lab;
  let record: string;
  const saved = { ...process.env };
  const started: number[] = [];
  before(async () => {
    assert.equal(missing, undefined, `the stand-in power tests ${missing}`);
    record = join(process.env.TMPDIR ?? '/tmp', `ch-power-record-${process.pid}`);
    // The daemon passes its environment to the VMMs it spawns: the stand-in's switches.
    Object.assign(process.env, { FAKE_CH_RECORD: record, FAKE_CH_VERSION: '41' });
    lab = await startLab(['--firecracker-bin', FAKE_FIRECRACKER, '--cloudhypervisor-bin', FAKE_CH, '--default-provider', 'qemu']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    for (const pid of started) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    await lab?.destroy();
    execFileSync('rm', ['-rf', record]);
    for (const k of ['FAKE_CH_RECORD', 'FAKE_CH_VERSION']) if (saved[k] === undefined) delete process.env[k];
  });

  const matchlock = async (...args: string[]) => {
    let err = '';
    const code = await cli(['--host', lab.daemon.target, ...args], { out: () => undefined, err: (t) => void (err += t) }, {});
    assert.equal(code, 0, `matchlock ${args.join(' ')}: ${err}`);
  };

  /**
   * Drives one VM of `provider` through every power call; `vmmState` asks the VMM itself,
   * `consoleFile` names the VM's serial console file.
   */
  async function cycle(provider: string, name: string, consoleFile: string, vmmState: (uid: string) => Promise<string>, stopped: (uid: string, pid: number) => void): Promise<number[]> {
    const vms = api(lab);
    const uid = await vms.create(name, [{ id: 'eth1', type: 'TAP' }], undefined, undefined, { provider });
    const vm = await waitFor('CREATED', async () => { const v = await vms.get(uid); return stateOf(v) === 'CREATED' && powerOf(v) === 'RUNNING' ? v : undefined; }, 90_000);
    const pids = [vm.status?.vmmPid ?? 0];
    started.push(pids[0] ?? 0);
    assert.equal(await vmmState(uid), 'Running');

    await matchlock('vm', 'pause', uid);
    assert.equal(powerOf(await vms.get(uid)), 'PAUSED');
    assert.equal(await vmmState(uid), 'Paused');
    await matchlock('vm', 'resume', uid);
    assert.equal(powerOf(await vms.get(uid)), 'RUNNING');
    assert.equal(await vmmState(uid), 'Running');

    // Stopping a paused VM: the guest is resumed to see the power-down request, well within the grace.
    await matchlock('vm', 'pause', uid);
    const t0 = Date.now();
    await matchlock('vm', 'stop', uid, '--grace', '30s');
    assert.ok(Date.now() - t0 < 20_000, `graceful stop took ${Date.now() - t0} ms`);
    assert.equal(pidAlive(pids[0] ?? 0), false);
    assert.equal(powerOf(await vms.get(uid)), 'STOPPED');
    stopped(uid, pids[0] ?? 0);
    // The console as a real guest of that run would have left it: the stand-ins print none.
    appendFileSync(join(vmDir(lab, name, uid), consoleFile), 'Run /sbin/init as init process\n');

    await lab.restartDaemon(false);
    await sleep(2000);
    const after = await vms.get(uid);
    assert.equal(powerOf(after), 'STOPPED', 'still stopped after a daemon restart');
    assert.equal(after?.status?.vmmPid, 0);

    await matchlock('vm', 'start', uid);
    const second = (await vms.get(uid))?.status?.vmmPid ?? 0;
    started.push(second);
    assert.ok(second > 0 && second !== pids[0] && pidAlive(second));
    // The new VMM printed nothing: the last run's boot line must not count for it. The
    // supervisor reads the console as soon as it watches the new VMM; 2 s gives it that time.
    await sleep(2000);
    assert.equal((await vms.get(uid))?.status?.guestBooted, false, 'not booted from the last run\'s console');
    await matchlock('vm', 'restart', uid, '--grace', '30s');
    const third = (await vms.get(uid))?.status?.vmmPid ?? 0;
    started.push(third);
    assert.ok(third > 0 && third !== second && pidAlive(third) && !pidAlive(second));
    assert.equal(powerOf(await vms.get(uid)), 'RUNNING');
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    return [...pids, second, third];
  }

  it('firecracker: PATCH /vm Paused and Resumed, Ctrl+Alt+Del after resuming, start and restart', async () => {
    const fcState = async (uid: string) => ((await unixHttp(join(lab.stateDir, 'run', uid, 'firecracker.sock'), 'GET', '/')).body as { state: string }).state;
    await cycle('firecracker', 'fc-power', 'firecracker.stdout', fcState, (uid) => {
      const log = readFileSync(join(vmDir(lab, 'fc-power', uid), 'firecracker.log'), 'utf8');
      const lines = log.split('\n').filter((l) => /was paused|was resumed|Vmm is stopping/.test(l)).map((l) => l.replace(/^.*(The microVM was \w+|Vmm is stopping).*$/, '$1'));
      assert.deepEqual(lines, ['The microVM was paused', 'The microVM was resumed', 'The microVM was paused', 'The microVM was resumed', 'Vmm is stopping']);
    });
  });

  it('cloudhypervisor: vm.pause, vm.resume, vm.power-button after resuming, start and restart', async () => {
    const chState = async (uid: string) => ((await unixHttp(join(lab.stateDir, 'run', uid, 'cloudhypervisor.sock'), 'GET', '/api/v1/vm.info')).body as { state: string }).state;
    const requests = (pid: number) => (JSON.parse(readFileSync(join(record, `${pid}.json`), 'utf8')) as { requests: { method: string; path: string }[] }).requests
      .map((r) => `${r.method} ${r.path.replace('/api/v1/', '')}`).filter((r) => /pause|resume|power-button|shutdown/.test(r));
    const pids = await cycle('cloudhypervisor', 'ch-power', 'console.log', chState, (_uid, pid) => {
      assert.deepEqual(requests(pid), ['PUT vm.pause', 'PUT vm.resume', 'PUT vm.pause', 'PUT vm.resume', 'PUT vm.power-button']);
    });
    assert.deepEqual(requests(pids[1] ?? 0), ['PUT vm.power-button'], 'the restart powered the second VMM down gracefully');
  });
});
