import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { qmpCommand } from '../../src/adapters/vmm/qemu/qmp.js';
import { run as cli } from '../../src/cli/main.js';
import { MicroVMStatus_PowerState, type MicroVM } from '../../src/gen/types/microvm_pb.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, importGuest, sleep, stateOf, waitFor } from './vm.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

const powerOf = (vm: MicroVM | undefined) => MicroVMStatus_PowerState[vm?.status?.power ?? 0];

describe('power operations on a real QEMU guest', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the power tests ${missing}`);
    lab = await startLab();
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  /** The CLI against the lab's daemon (its target changes when the daemon restarts). */
  const matchlock = async (...args: string[]) => {
    let out = '';
    let err = '';
    const code = await cli(['--host', lab.daemon.target, ...args], { out: (t) => void (out += t), err: (t) => void (err += t) }, {});
    assert.equal(code, 0, `matchlock ${args.join(' ')}: ${err}`);
    return out;
  };
  /** What QEMU itself says, over QMP: the check that does not go through matchlock. */
  const qmpStatus = async (uid: string) => ((await qmpCommand(join(lab.stateDir, 'run', uid, 'qmp.sock'), 'query-status')) as { status: string }).status;

  it('stop -> start -> pause -> resume -> restart, right after each daemon restart too; a stopped VM stays stopped', async () => {
    const vms = api(lab);
    const uid = await vms.create('power', [{ id: 'eth0', type: 'TAP' }]);
    const booted = await waitFor('booted', async () => { const vm = await vms.get(uid); return vm?.status?.guestBooted ? vm : undefined; }, 120_000);
    assert.equal(powerOf(booted), 'RUNNING');
    const firstPid = booted.status?.vmmPid ?? 0;
    assert.deepEqual(lab.qemuPids(), [firstPid]);

    // stop: the VMM goes, everything else stays.
    assert.equal(await matchlock('vm', 'stop', uid, '--grace', '5s'), `${uid} stopped\n`);
    let vm = await vms.get(uid);
    assert.equal(stateOf(vm), 'CREATED');
    assert.equal(powerOf(vm), 'STOPPED');
    assert.equal(MicroVMStatus_PowerState[vm?.status?.desiredPower ?? 0], 'STOPPED');
    assert.equal(vm?.status?.vmmPid, 0);
    assert.deepEqual(lab.qemuPids(), []);
    assert.throws(() => process.kill(firstPid, 0), 'the QEMU process is gone');

    // A daemon restart reconciles every VM at once; the stopped one is left off.
    await lab.restartDaemon(false);
    await sleep(3000);
    vm = await vms.get(uid);
    assert.equal(stateOf(vm), 'CREATED');
    assert.equal(powerOf(vm), 'STOPPED');
    assert.deepEqual(lab.qemuPids(), [], 'not relaunched by the resync after the restart');
    assert.equal(vm?.status?.lastError, '');

    // start: a new VMM that boots the guest again.
    await matchlock('vm', 'start', uid);
    vm = await waitFor('booted again', async () => { const v = await vms.get(uid); return v?.status?.guestBooted ? v : undefined; }, 120_000);
    const secondPid = vm.status?.vmmPid ?? 0;
    assert.ok(secondPid > 0 && secondPid !== firstPid);
    assert.equal(powerOf(vm), 'RUNNING');
    assert.deepEqual(lab.qemuPids(), [secondPid]);

    // pause, as QEMU sees it, kept across a kill -9 of the daemon.
    await matchlock('vm', 'pause', uid);
    assert.equal(await qmpStatus(uid), 'paused');
    assert.equal(powerOf(await vms.get(uid)), 'PAUSED');
    await lab.restartDaemon(true);
    await sleep(3000);
    vm = await vms.get(uid);
    assert.equal(powerOf(vm), 'PAUSED');
    assert.equal(vm?.status?.vmmPid, secondPid, 'the same VMM, adopted');
    assert.equal(await qmpStatus(uid), 'paused', 'the restart did not resume it');

    await matchlock('vm', 'resume', uid);
    assert.equal(await qmpStatus(uid), 'running');
    assert.equal(powerOf(await vms.get(uid)), 'RUNNING');

    // restart: a new VMM, running, and its guest boots.
    assert.equal(await matchlock('vm', 'restart', uid, '--grace', '3s'), `${uid} restarted\n`);
    vm = await vms.get(uid);
    const thirdPid = vm?.status?.vmmPid ?? 0;
    assert.ok(thirdPid > 0 && thirdPid !== secondPid);
    assert.equal(powerOf(vm), 'RUNNING');
    assert.deepEqual(lab.qemuPids(), [thirdPid]);
    await waitFor('booted after the restart', async () => (await vms.get(uid))?.status?.guestBooted, 120_000);
    assert.equal(await qmpStatus(uid), 'running');

    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.deepEqual(lab.qemuPids(), []);
  });
});
