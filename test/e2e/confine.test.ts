import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { lookupUser } from '../../src/adapters/system/accounts.js';
import { detectCgroups, VmCgroups } from '../../src/adapters/vmm/confine/cgroup.js';
import { PIDS_BASE, VMM_OVERHEAD_MB } from '../../src/adapters/vmm/confine/vmm.js';
import { guardRuleset } from '../../src/host/guard.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, consoleOf, importGuest, stateOf, vmDir, waitFor } from './vm.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

const statusField = (pid: number, key: string) => new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]?.trim() ?? '';
const read = (path: string) => readFileSync(path, 'utf8').trim();

describe('confinement: a real QEMU guest runs unprivileged, sandboxed, chrooted and in its cgroup', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the confinement tests ${missing}`);
    const layout = testGuestLayout();
    lab = await startLab();
    // The guest guard `host setup` installs, so the guest below boots and leases behind it.
    execFileSync('ip', ['netns', 'exec', lab.ns, 'nft', '-f', '-'], { input: guardRuleset() });
    await importGuest(lab, layout);
  });
  after(async () => {
    await lab?.destroy();
  });

  it('boots and gets a lease through a TAP QEMU opened before dropping to matchlock-vmm; delete removes the cgroup', async (t) => {
    const vms = api(lab);
    const mac = '02:00:00:0c:0f:01';
    const uid = await vms.create('jailed', [{ id: 'eth0', type: 'TAP', mac }, { id: 'eth1', type: 'MACVTAP' }]);
    const vm = await waitFor('CREATED', async () => { const v = await vms.get(uid); return stateOf(v) === 'CREATED' ? v : undefined; }, 90_000);
    const dir = vmDir(lab, 'jailed', uid);
    await waitFor('the guest marker', () => consoleOf(lab, 'jailed', uid).includes('MATCHLOCK_GUEST_READY'), 90_000);
    const leased = await waitFor('a DHCP lease through the TAP, past the guard', () => lab.readLeases().get(mac), 60_000);
    await waitFor(`ping ${leased} from the host`, () => lab.ping(leased), 20_000, 500);

    const pid = vm.status?.vmmPid ?? 0;
    assert.ok(pid > 0);
    // The default vmm-user, created by the daemon when missing.
    const user = lookupUser('matchlock-vmm');
    assert.ok(user && user.uid !== 0, 'matchlock-vmm exists and is not root');
    assert.equal(statusField(pid, 'Uid'), `${user.uid}\t${user.uid}\t${user.uid}\t${user.uid}`, 'real, effective, saved and fs uid');
    assert.equal(statusField(pid, 'Gid'), `${user.gid}\t${user.gid}\t${user.gid}\t${user.gid}`);
    assert.equal(statusField(pid, 'Groups'), String(user.gid), 'no supplementary groups of root kept');
    assert.equal(statusField(pid, 'CapEff'), '0000000000000000');
    assert.equal(statusField(pid, 'Seccomp'), '2', 'a seccomp filter is installed');
    assert.equal(readlinkSync(`/proc/${pid}/root`), dir, 'chrooted into its VM directory');
    const cmdline = JSON.parse(read(join(dir, 'qemu.cmdline'))) as string[];
    assert.ok(cmdline.includes('on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny'), cmdline.join(' '));

    // Its cgroup in every hierarchy that carries cpu, memory or pids, with the spec's limits.
    const cg = new VmCgroups(detectCgroups(), lab.cgroupParent);
    const dirs = cg.dirs(uid);
    assert.ok(dirs.length > 0);
    const host = detectCgroups();
    const own = read(`/proc/${pid}/cgroup`).split('\n');
    for (const c of ['cpu', 'memory', 'pids'] as const) {
      const m = host.mounts[c];
      if (!m) continue;
      const cgDir = dirs.find((d) => d.startsWith(m.root + '/')) ?? '';
      assert.ok(existsSync(cgDir), `${c} cgroup ${cgDir}`);
      const line = own.find((l) => (m.version === 2 ? l.startsWith('0::') : l.split(':')[1]?.split(',').includes(c)));
      assert.equal(line?.split(':')[2], cgDir.slice(m.root.length), `qemu sits in its ${c} cgroup`);
      const v2 = m.version === 2;
      if (c === 'cpu') assert.equal(v2 ? read(join(cgDir, 'cpu.max')) : read(join(cgDir, 'cpu.cfs_quota_us')), v2 ? '100000 100000' : '100000', 'one vCPU of bandwidth');
      if (c === 'memory' && !v2) t.diagnostic(`qemu peak memory ${Math.round(Number(read(join(cgDir, 'memory.max_usage_in_bytes'))) / 2 ** 20)} MiB`);
      if (c === 'memory') assert.equal(Number(read(join(cgDir, v2 ? 'memory.max' : 'memory.limit_in_bytes'))), (1024 + VMM_OVERHEAD_MB) * 1024 * 1024);
      if (c === 'pids') assert.equal(read(join(cgDir, 'pids.max')), String(PIDS_BASE + 1));
    }

    // Nothing in the state dir is for other users: the store, user-data, the API socket.
    assert.equal(statSync(lab.stateDir).mode & 0o777, 0o750, 'state dir');
    assert.equal(statSync(dir).mode & 0o777, 0o750, 'VM dir');
    assert.equal(statSync(join(lab.stateDir, 'matchlock.db')).mode & 0o007, 0, 'store not world-readable');
    assert.equal(statSync(lab.daemon.target.replace(/^unix:/, '')).mode & 0o777, 0o660, 'API socket');

    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000);
    for (const d of dirs) assert.equal(existsSync(d), false, `${d} removed with the VM`);
    assert.deepEqual(lab.qemuPids(), []);
  });
});

describe('confinement: one uid per VM from vmm-uid-range', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the confinement tests ${missing}`);
    const layout = testGuestLayout();
    lab = await startLab(['--vmm-uid-range', '300000-300009']);
    await importGuest(lab, layout);
  });
  after(async () => {
    await lab?.destroy();
  });

  it('two VMs run as two different uids from the range; a deleted VM gives its uid back', async () => {
    const vms = api(lab);
    const a = await vms.create('uid-a', [{ id: 'eth0', type: 'TAP' }]);
    const b = await vms.create('uid-b', [{ id: 'eth0', type: 'TAP' }]);
    const pidOf = async (uid: string) => (await waitFor(`${uid} CREATED`, async () => { const v = await vms.get(uid); return stateOf(v) === 'CREATED' ? v : undefined; }, 90_000)).status?.vmmPid ?? 0;
    const [pa, pb] = [await pidOf(a), await pidOf(b)];
    await waitFor('both guests up', () => consoleOf(lab, 'uid-a', a).includes('MATCHLOCK_GUEST_UP') && consoleOf(lab, 'uid-b', b).includes('MATCHLOCK_GUEST_UP'), 90_000);
    const uidOf = (pid: number) => Number(statusField(pid, 'Uid').split('\t')[0]);
    const [ua, ub] = [uidOf(pa), uidOf(pb)];
    assert.notEqual(ua, ub, 'no two VMMs share a uid');
    for (const [u, pid] of [[ua, pa], [ub, pb]] as const) {
      assert.ok(u >= 300000 && u <= 300009, `uid ${u} from the range`);
      assert.equal(statusField(pid, 'Gid').split('\t')[0], String(u), 'and the same gid');
    }
    const claims = join(lab.stateDir, 'vmm-uids');
    assert.equal(read(join(claims, String(ua))), a);
    await vms.delete(a);
    await waitFor('a gone', async () => (await vms.get(a)) === undefined, 30_000);
    assert.equal(existsSync(join(claims, String(ua))), false, 'its uid is free again');
    assert.equal(uidOf(pb), ub, 'the other VM runs on, as before');
    await vms.delete(b);
    await waitFor('b gone', async () => (await vms.get(b)) === undefined, 30_000);
    assert.equal(existsSync(join(claims, String(ub))), false);
  });
});
