import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, consoleOf, importGuest, sleep, stateOf, vmDir, waitFor } from './vm.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

describe('runtime: real QEMU guests through the API', { skip }, () => {
  let lab: Lab;
  let layout: string;
  before(async () => {
    assert.equal(missing, undefined, `the runtime tests ${missing}`);
    layout = testGuestLayout();
    lab = await startLab();
    await importGuest(lab, layout);
  });
  after(async () => {
    await lab?.destroy();
  });

  it('create -> CREATED with the marker and user-data output on the console -> delete -> nothing left', async () => {
    const vms = api(lab);
    const uid = await vms.create('first', [{ id: 'eth0', type: 'TAP' }], '#!/bin/sh\necho "written by user-data $((6 * 7))"\n');
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; });
    const dir = vmDir(lab, 'first', uid);
    for (const f of ['qemu.pid', 'qemu.cmdline', 'qemu.stdout', 'qemu.stderr', 'console.log', 'cidata.img', 'volume-root.img']) {
      assert.ok(existsSync(join(dir, f)), `${f} in the VM directory`);
    }
    assert.equal(created.status?.volumes.root?.mount?.source, join(dir, 'volume-root.img'));
    const nic = created.status?.networkInterfaces.eth0;
    assert.match(nic?.hostDeviceName ?? '', /^mlt[0-9a-z]{11}$/);
    assert.ok((nic?.index ?? 0) > 0);
    await waitFor('the guest marker', () => consoleOf(lab, 'first', uid).includes('MATCHLOCK_GUEST_READY'), 60_000);
    const console = consoleOf(lab, 'first', uid);
    assert.match(console, /MATCHLOCK_USERDATA written by user-data 42/);
    assert.match(console, new RegExp(`MATCHLOCK_CIDATA instance_id: ${uid}`));
    await waitFor('guest_booted in status', async () => (await vms.get(uid))?.status?.guestBooted);
    const pid = created.status?.vmmPid ?? 0;
    assert.ok(pid > 0);

    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.throws(() => process.kill(pid, 0), 'the VMM process is gone');
    assert.deepEqual(lab.ourLinks(), []);
    assert.equal(existsSync(dir), false);
    assert.deepEqual(readdirSync(join(lab.stateDir, 'vm')), [], 'no namespace or name directory left');
    assert.deepEqual(lab.qemuPids(), []);
  });

  it('boots a VM with the longest namespace and name the API accepts: its sockets live in a short run directory', async () => {
    const vms = api(lab);
    const namespace = `ns${'n'.repeat(251)}`;
    const name = `vm${'m'.repeat(251)}`;
    const uid = await vms.create(name, [{ id: 'eth0', type: 'TAP' }], undefined, undefined, { namespace });
    await waitFor('booted', async () => (await vms.get(uid))?.status?.guestBooted, 90_000);
    assert.ok(existsSync(join(lab.stateDir, 'vm', namespace, name, uid, 'console.log')));
    assert.ok(existsSync(join(lab.stateDir, 'run', uid, 'qmp.sock')));
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.equal(existsSync(join(lab.stateDir, 'run', uid)), false);
    assert.deepEqual(readdirSync(join(lab.stateDir, 'vm')), []);
  });

  it('a TAP VM and a MACVTAP VM each get a DHCP lease and answer ping', async () => {
    const vms = api(lab);
    const tapMac = '02:00:00:0a:0b:01';
    const tap = await vms.create('tapvm', [{ id: 'eth0', type: 'TAP', mac: tapMac }]);
    const mvt = await vms.create('mvtvm', [{ id: 'eth0', type: 'MACVTAP' }]);
    const mvtVm = await waitFor('macvtap VM CREATED', async () => { const vm = await vms.get(mvt); return stateOf(vm) === 'CREATED' ? vm : undefined; });
    const mvtMac = mvtVm.status?.networkInterfaces.eth0?.macAddress ?? '';
    assert.match(mvtMac, /^02(:[0-9a-f]{2}){5}$/, 'the macvtap carries the generated guest MAC');
    assert.match(mvtVm.status?.networkInterfaces.eth0?.hostDeviceName ?? '', /^mlv/);
    const tapIp = await waitFor('a lease for the TAP VM', () => lab.readLeases().get(tapMac), 90_000);
    const mvtIp = await waitFor('a lease for the MACVTAP VM', () => lab.readLeases().get(mvtMac), 90_000);
    assert.ok(tapIp.startsWith(lab.subnet) && mvtIp.startsWith(lab.subnet));
    await waitFor(`ping ${tapIp}`, () => lab.ping(tapIp), 20_000, 500);
    await waitFor(`ping ${mvtIp}`, () => lab.ping(mvtIp), 20_000, 500);
    await vms.delete(tap);
    await vms.delete(mvt);
    await waitFor('both gone', async () => (await vms.get(tap)) === undefined && (await vms.get(mvt)) === undefined, 30_000);
    assert.deepEqual(lab.ourLinks(), []);
  });

  it('notices a killed VMM within 2 seconds and brings the VM back', async () => {
    const vms = api(lab);
    const uid = await vms.create('phoenix', [{ id: 'eth0', type: 'TAP' }]);
    const first = await waitFor('booted', async () => { const vm = await vms.get(uid); return vm?.status?.guestBooted ? vm : undefined; }, 90_000);
    const pid = first.status?.vmmPid ?? 0;
    process.kill(pid, 'SIGKILL');
    const killedAt = Date.now();
    const noticed = await waitFor('the exit in status', async () => {
      const vm = await vms.get(uid);
      const s = vm?.status;
      return s && (s.vmmPid !== pid || /exited/.test(s.lastError)) ? vm : undefined;
    }, 5000, 50);
    const elapsed = Date.now() - killedAt;
    assert.ok(elapsed < 2000, `noticed after ${elapsed} ms`);
    assert.ok(noticed.status?.vmmPid !== pid);
    const back = await waitFor('back and booted', async () => {
      const vm = await vms.get(uid);
      return stateOf(vm) === 'CREATED' && vm?.status?.guestBooted && vm.status.vmmPid !== pid ? vm : undefined;
    }, 90_000);
    assert.equal(back.status?.retry, 0);
    assert.equal(lab.qemuPids().length, 1);
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
  });

  it('converges after kill -9 of the daemon in the middle of creates and deletes', async () => {
    let vms = api(lab);
    const keep = await vms.create('keep-a', [{ id: 'eth0', type: 'TAP' }]);
    const doomed = await vms.create('doomed', [{ id: 'eth0', type: 'TAP' }]);
    await waitFor('doomed started', async () => ((await vms.get(doomed))?.status?.vmmPid ?? 0) > 0, 60_000);
    const keep2 = await vms.create('keep-b', [{ id: 'eth0', type: 'MACVTAP' }]);
    await vms.delete(doomed);
    await sleep(150);
    await lab.restartDaemon(true);
    vms = api(lab);
    for (const uid of [keep, keep2]) {
      await waitFor(`${uid} CREATED after restart`, async () => stateOf(await vms.get(uid)) === 'CREATED', 90_000);
    }
    await waitFor('doomed gone', async () => (await vms.get(doomed)) === undefined, 30_000);
    assert.equal(existsSync(vmDir(lab, 'doomed', doomed)), false);
    await waitFor('exactly one VMM per surviving VM', () => lab.qemuPids().length === 2, 10_000);
    assert.equal(lab.ourLinks().length, 2);
    for (const uid of [keep, keep2]) await vms.delete(uid);
    await waitFor('all gone', async () => (await vms.get(keep)) === undefined && (await vms.get(keep2)) === undefined, 30_000);
    assert.deepEqual(lab.ourLinks(), []);
    assert.deepEqual(lab.qemuPids(), []);
  });
});

describe('runtime: a step that keeps failing', { skip }, () => {
  let lab: Lab;
  before(async () => {
    lab = await startLab(['--maximum-retry', '2', '--retry-backoff', '200ms']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('backs off, reports the missing bridge, ends FAILED after the retry limit, and can be deleted', async () => {
    const vms = api(lab);
    const uid = await vms.create('nobridge', [{ id: 'eth0', type: 'TAP', bridge: 'br-missing' }]);
    const pending = await waitFor('a recorded failure', async () => { const vm = await vms.get(uid); return (vm?.status?.retry ?? 0) >= 1 ? vm : undefined; }, 20_000, 50);
    assert.equal(stateOf(pending), 'PENDING');
    assert.match(pending.status?.lastError ?? '', /bridge br-missing for interface eth0 not found/);
    assert.ok(pending.status?.nextAttemptAt, 'the next attempt time is stored');
    const failed = await waitFor('FAILED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'FAILED' ? vm : undefined; }, 30_000);
    assert.equal(failed.status?.retry, 3);
    assert.match(failed.status?.lastError ?? '', /br-missing/);
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.deepEqual(lab.ourLinks(), []);
    assert.deepEqual(lab.qemuPids(), []);
  });
});
