import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { daemonFailsToStart, ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { GUEST_REF, labMissing, pidsNaming, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { api, consoleOf, importGuest, stateOf, vmDir, waitFor } from './vm.js';

// Each case here is a defect that once harmed guests or the daemon; each must keep failing on
// the code that had it.
const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

describe('safety: what a VM or the host does never ends the daemon or delays a delete', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the safety tests ${missing}`);
    // A long back-off, so a delete that waited for the retry timer could not pass.
    lab = await startLab(['--retry-backoff', '60s']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('deleting a VM whose QMP socket is gone stops it and the daemon lives on', async () => {
    const vms = api(lab);
    const uid = await vms.create('noqmp', [{ id: 'eth0', type: 'TAP' }]);
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const pid = created.status?.vmmPid ?? 0;
    rmSync(join(lab.stateDir, 'run', uid, 'qmp.sock'));
    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.equal(lab.daemon.proc.exitCode, null, 'matchlockd is still running');
    assert.equal(lab.daemon.proc.signalCode, null);
    assert.throws(() => process.kill(pid, 0), 'the VMM is gone');
    assert.equal(existsSync(vmDir(lab, 'noqmp', uid)), false);
    assert.deepEqual(lab.ourLinks(), []);
  });

  it('a lost or empty database never destroys a running VM: the daemon refuses to start, naming the fix', async () => {
    const vms = api(lab);
    const uid = await vms.create('kept', [{ id: 'eth0', type: 'TAP' }]);
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const pid = created.status?.vmmPid ?? 0;
    const dir = vmDir(lab, 'kept', uid);
    await lab.daemon.stop();
    const db = join(lab.stateDir, 'matchlock.db');
    const files = ['', '-wal', '-shm'].filter((x) => existsSync(db + x));
    for (const x of files) renameSync(db + x, `${db}${x}.saved`);
    const args = ['run', '--state-dir', lab.stateDir, '--grpc-endpoint', `unix:${join(lab.stateDir, 'probe.sock')}`, '--config', '/dev/null', '--bridge-name', 'br0'];
    // A store that is missing or holds no records: the VM directory on disk is unknown to it.
    // A zero-byte file is no store at all: refused as damaged, before any sweep.
    for (const damage of ['missing', 'empty', 'zero bytes'] as const) {
      for (const x of ['', '-wal', '-shm']) rmSync(db + x, { force: true });
      if (damage === 'empty') new SqliteStore(db).close();
      if (damage === 'zero bytes') writeFileSync(db, '');
      const { code, output } = await daemonFailsToStart(args, {}, lab.ns);
      assert.notEqual(code, null, `with a ${damage} database matchlockd exits rather than running on`);
      assert.notEqual(code, 0);
      if (damage === 'zero bytes') {
        assert.match(output, /matchlock\.db is damaged \(the file is empty/, output);
      } else {
        assert.match(output, new RegExp(`refusing to start.*${dir}`), output);
        assert.match(output, /restore \S*matchlock\.db from a backup, or stop those VMMs and remove their directories/);
      }
      assert.doesNotThrow(() => process.kill(pid, 0), `with a ${damage} database the guest still runs`);
      assert.ok(existsSync(join(dir, 'qemu.pid')), 'its directory is untouched');
    }
    for (const x of ['', '-wal', '-shm']) rmSync(db + x, { force: true });
    for (const x of files) renameSync(`${db}${x}.saved`, db + x);
    await lab.restartDaemon(false);
    const again = api(lab);
    const back = await waitFor('the VM adopted again', async () => { const vm = await again.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 60_000);
    assert.equal(back.status?.vmmPid, pid, 'the same guest, never restarted');
    await again.delete(uid);
    await waitFor('gone', async () => (await again.get(uid)) === undefined, 30_000);
  });

  it('deleting a VM that waits out a back-off finishes within 10 s', async () => {
    const vms = api(lab);
    const uid = await vms.create('backoff', [{ id: 'eth0', type: 'TAP', bridge: 'br-missing' }]);
    const pending = await waitFor('a recorded failure', async () => { const vm = await vms.get(uid); return (vm?.status?.retry ?? 0) >= 1 ? vm : undefined; }, 60_000, 100);
    assert.ok(pending.status?.nextAttemptAt, 'a retry is scheduled');
    const started = Date.now();
    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 10_000, 100);
    assert.ok(Date.now() - started < 10_000);
    assert.deepEqual(lab.qemuPids(), []);
  });
});

interface IpLink {
  ifindex: number;
  flags: string[];
  ifalias?: string;
}

function qemusOf(stateDir: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return cmd.includes('qemu-system') && cmd.includes(stateDir);
    } catch {
      return false;
    }
  });
}

function linkIn(ns: string, name: string): IpLink | undefined {
  try {
    return (JSON.parse(execFileSync('ip', ['-n', ns, '-json', 'link', 'show', 'dev', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as IpLink[])[0];
  } catch {
    return undefined;
  }
}

describe('safety: two daemons with their own state dirs in one network namespace', { skip }, () => {
  let lab: Lab;
  let other: DaemonHandle | undefined;
  const otherDir = tempDir('second');
  const otherFlags = ['--grpc-endpoint', `unix:${join(otherDir.path, 'grpc.sock')}`, '--bridge-name', 'br0', '--parent-iface', 'vparent', '--delete-vm-timeout', '1s', '--resync-period', '1h'];
  const otherState = join(otherDir.path, 'state');
  before(async () => {
    assert.equal(missing, undefined, `the safety tests ${missing}`);
    lab = await startLab();
    await importGuest(lab, testGuestLayout());
    await importGuest({ stateDir: otherState }, testGuestLayout(), { init: true });
  });
  after(async () => {
    await other?.stop();
    // QEMUs of the second daemon, if a failure left any (found by its state dir, killed by pid).
    for (const pid of qemusOf(otherState)) process.kill(pid, 'SIGKILL');
    await lab?.destroy();
    otherDir.remove();
  });

  it("each keeps its VM's network when the other starts, and links of unknown owners are left alone", async () => {
    const first = api(lab);
    const mac = '02:00:00:0d:0e:01';
    const a = await first.create('first', [{ id: 'eth0', type: 'TAP', mac }]);
    const createdA = await waitFor('first CREATED', async () => { const vm = await first.get(a); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const tapA = createdA.status?.networkInterfaces.eth0?.hostDeviceName ?? '';
    const before = linkIn(lab.ns, tapA);
    const ipA = await waitFor('a lease for the first VM', () => lab.readLeases().get(mac), 90_000);
    // A link in the alias form that names no daemon, for a uid neither store knows.
    execFileSync('ip', ['-n', lab.ns, 'tuntap', 'add', 'dev', 'mltlegacy00000', 'mode', 'tap']);
    execFileSync('ip', ['-n', lab.ns, 'link', 'set', 'dev', 'mltlegacy00000', 'alias', 'matchlock:01HZY3NDEKTSV4RRFFQ69G5FAA:eth0']);

    other = await startDaemon(otherState, otherFlags, {}, lab.ns);
    const second = api({ daemon: other });
    const after = linkIn(lab.ns, tapA);
    assert.equal(after?.ifindex, before?.ifindex, "the second daemon's start left the first VM's TAP in place");
    assert.ok(!after?.flags.includes('NO-CARRIER'), `carrier still up: ${after?.flags.join(',')}`);
    await waitFor(`ping ${ipA}`, () => lab.ping(ipA), 20_000, 500);
    assert.match(before?.ifalias ?? '', new RegExp(`^matchlock:[0-9a-f]{16}:${a}:eth0$`), 'the alias names the owning daemon');

    const b = await second.create('second', [{ id: 'eth0', type: 'TAP' }]);
    const createdB = await waitFor('second CREATED', async () => { const vm = await second.get(b); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const tapB = createdB.status?.networkInterfaces.eth0?.hostDeviceName ?? '';
    const beforeB = linkIn(lab.ns, tapB);
    assert.notEqual(beforeB?.ifalias?.split(':')[1], before?.ifalias?.split(':')[1], 'each daemon has its own id');
    await lab.restartDaemon(false);
    assert.equal(linkIn(lab.ns, tapB)?.ifindex, beforeB?.ifindex, "the first daemon's restart left the second VM's TAP in place");
    assert.equal(linkIn(lab.ns, tapA)?.ifindex, before?.ifindex);
    assert.ok(linkIn(lab.ns, 'mltlegacy00000'), 'a link whose owner cannot be proven is never removed');
    assert.equal(stateOf(await api(lab).get(a)), 'CREATED');
    assert.equal(stateOf(await second.get(b)), 'CREATED');

    await api(lab).delete(a);
    await second.delete(b);
    await waitFor('both gone', async () => (await api(lab).get(a)) === undefined && (await second.get(b)) === undefined, 30_000);
    execFileSync('ip', ['-n', lab.ns, 'link', 'del', 'mltlegacy00000']);
    assert.deepEqual(lab.ourLinks(), []);
  });
});

describe('safety: a guest booted with quiet', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the safety tests ${missing}`);
    lab = await startLab(['--healthy-after', '3s', '--retry-backoff', '200ms']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('has its retry count reset once its VMM stays up, though the console never shows the boot line', async () => {
    const vms = api(lab);
    const uid = await vms.create('quiet', [{ id: 'eth0', type: 'TAP' }], undefined, GUEST_REF, { kernel: { image: GUEST_REF, filename: 'boot/vmlinuz', addNetworkConfig: true, cmdline: { quiet: '' } } });
    // Killed once the create pass is over (CREATED), so the exit is a crash of a running VM, not
    // a failure of the pass that started it.
    const first = await waitFor('a VMM', async () => { const vm = await vms.get(uid); return (vm?.status?.vmmPid ?? 0) > 0 && stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const pid = first.status?.vmmPid ?? 0;
    process.kill(pid, 'SIGKILL');
    await waitFor('the crash counted', async () => ((await vms.get(uid))?.status?.retry ?? 0) >= 1, 20_000, 50);
    await waitFor('the guest up again', () => /MATCHLOCK_GUEST_UP/.test(consoleOf(lab, 'quiet', uid)) || undefined, 90_000);
    const healed = await waitFor('retry back to 0', async () => { const vm = await vms.get(uid); return vm?.status?.retry === 0 && (vm.status.vmmPid ?? 0) > 0 && vm.status.vmmPid !== pid ? vm : undefined; }, 60_000);
    assert.equal(healed.status?.lastError, '');
    assert.doesNotMatch(consoleOf(lab, 'quiet', uid), /as init process/, 'quiet hid the boot line');
    assert.equal(healed.status?.guestBooted, false, 'guest_booted still means the console showed the boot');
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
  });
});

describe('safety: a VMM that is still starting', { skip }, () => {
  const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
  let lab: Lab;
  const saved = { QEMU_STANDIN_HOLD: process.env.QEMU_STANDIN_HOLD, QEMU_STANDIN_QMP_HOLD: process.env.QEMU_STANDIN_QMP_HOLD };
  const hold = tempDir('hold');
  before(async () => {
    assert.equal(missing, undefined, `the safety tests ${missing}`);
    // The QEMU stand-in waits for a file that never appears before it writes its pid file: a
    // VMM caught between its spawn and its pid file for as long as the test needs. The daemon
    // passes its environment to the VMMs it starts.
    process.env.QEMU_STANDIN_HOLD = join(hold.path, 'never-created');
    lab = await startLab(['--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--retry-backoff', '60s']);
    await importGuest(lab, testGuestLayout());
  });
  // The stand-in's processes of one VM (other programs name the VM's directory too: mkfs, cp).
  const standins = (dir: string) => pidsNaming(dir).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(STANDIN);
    } catch {
      return false;
    }
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await lab?.destroy();
    hold.remove();
  });

  it('deleting a VM whose VMM has not written its pid file yet leaves no VMM behind', async () => {
    const vms = api(lab);
    const uid = await vms.create('starting', [{ id: 'eth0', type: 'TAP' }]);
    const pid = await waitFor('the VMM spawned', () => standins(vmDir(lab, 'starting', uid))[0], 90_000, 50);
    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000, 100);
    assert.equal(pidAlive(pid), false, 'the VMM whose start the delete called off is gone');
    assert.deepEqual(pidsNaming(join(lab.stateDir, 'vm')), []);
  });

  it('a VMM not ready within its start timeout is killed with the failure recorded, so no delete can miss it', async () => {
    const vms = api(lab);
    const uid = await vms.create('slow', [{ id: 'eth0', type: 'TAP' }]);
    const pid = await waitFor('the VMM spawned', () => standins(vmDir(lab, 'slow', uid))[0], 90_000, 50);
    const failed = await waitFor('a recorded failure', async () => { const vm = await vms.get(uid); return (vm?.status?.retry ?? 0) >= 1 ? vm : undefined; }, 60_000, 100);
    assert.match(failed.status?.lastError ?? '', /qemu was not ready within/);
    assert.equal(pidAlive(pid), false, 'the VMM that did not become ready is gone once its failure is recorded');
    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000, 100);
    assert.deepEqual(pidsNaming(join(lab.stateDir, 'vm')), []);
  });

  it('a QEMU counts as started only once its QMP socket is there, so a VM is never CREATED without one', async () => {
    // Now the stand-in writes its pid file and then waits before its console and QMP socket,
    // as a QEMU in its start-up does.
    delete process.env.QEMU_STANDIN_HOLD;
    process.env.QEMU_STANDIN_QMP_HOLD = join(hold.path, 'never-created');
    await lab.restartDaemon(false);
    const vms = api(lab);
    const uid = await vms.create('noqmpyet', [{ id: 'eth0', type: 'TAP' }]);
    const pid = await waitFor('the VMM spawned', () => standins(vmDir(lab, 'noqmpyet', uid))[0], 90_000, 50);
    const failed = await waitFor('a recorded failure', async () => { const vm = await vms.get(uid); return (vm?.status?.retry ?? 0) >= 1 ? vm : undefined; }, 60_000, 100);
    assert.notEqual(stateOf(failed), 'CREATED');
    assert.match(failed.status?.lastError ?? '', /qemu was not ready within/);
    assert.equal(pidAlive(pid), false);
    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000, 100);
    assert.deepEqual(pidsNaming(join(lab.stateDir, 'vm')), []);
  });
});
