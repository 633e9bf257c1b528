import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { unixHttp } from '../../src/adapters/vmm/unix-http.js';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { api, importGuest, stateOf, vmDir, waitFor } from './vm.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { tempDir } from '../helpers/daemon.js';
import { FAKE_FIRECRACKER, FAKE_JAILER, firecrackerLabMissing } from '../helpers/firecracker.js';
import { configShapeError } from '../fakes/firecracker-spec.mjs';
import { loadConfig } from '../../src/daemon/config.js';
import { inspectHost } from '../../src/host/inspect.js';

const missing = labMissing() ?? firecrackerLabMissing();
const skip = missing && !process.env.CI ? missing : false;
const FC_FILES = ['firecracker.cfg', 'firecracker.log', 'firecracker.metrics', 'firecracker.pid', 'firecracker.stderr', 'firecracker.stdout', 'metadata.json'];

/** Live Firecracker stand-ins started for this lab's state dir. */
function fcPids(lab: Lab): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return cmd.includes('firecracker.mjs') && cmd.includes('--config-file') && cmd.includes(lab.stateDir) && pidAlive(pid);
    } catch {
      return false;
    }
  });
}

/**
 * A `firecracker-bin` that runs the stand-in, with a fault chosen by the VM's name (the config
 * path names it): `crash` dies at once, `nosock` never binds its socket, `badcache` sees a
 * config whose first drive says cache_type WriteBack (as a Firecracker that refuses it would).
 */
function faultyFirecracker(dir: string): string {
  const path = join(dir, 'firecracker-faulty.sh');
  writeFileSync(path, `#!/bin/sh
case "$*" in
  */crash/*) export FAKE_FC_CRASH_AFTER_MS=0 ;;
  */nosock/*) export FAKE_FC_NO_SOCKET=1 ;;
  */badcache/*) cfg=$(echo "$*" | sed 's/.*--config-file \\([^ ]*\\).*/\\1/'); sed -i 's/"Unsafe"/"WriteBack"/' "$cfg" ;;
esac
exec ${FAKE_FIRECRACKER} "$@"
`);
  chmodSync(path, 0o755);
  return path;
}

// A CAPMVM-shaped spec: metadata without instance_id, add_network_config, eth1 on the VLAN
// bridge; the control plane prepends flintlock's MMDS interface eth0.
const CAPMVM_META = Buffer.from('local_hostname: worker-1\nplatform: liquid_metal\n').toString('base64');

describe('firecracker provider through matchlockd, against the stand-in', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the firecracker e2e tests ${missing}`);
    const layout = testGuestLayout();
    lab = await startLab(['--default-provider', 'firecracker', '--firecracker-bin', FAKE_FIRECRACKER, '--retry-backoff', '200ms']);
    await importGuest(lab, layout);
  });
  after(async () => {
    if (lab) for (const pid of fcPids(lab)) process.kill(pid, 'SIGKILL');
    await lab?.destroy();
  });

  it('a CAPMVM-shaped create reaches CREATED with flintlock files, a valid config and MMDS metadata', async () => {
    const vms = api(lab);
    const uid = await vms.create('worker-1', [{ id: 'eth1', type: 'TAP' }], '#cloud-config\nruncmd: [echo hi]\n', undefined, { provider: 'firecracker', metadata: { 'meta-data': CAPMVM_META, 'user-data': Buffer.from('#cloud-config\n').toString('base64') } });
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const dir = vmDir(lab, 'worker-1', uid);
    for (const f of FC_FILES) assert.ok(existsSync(join(dir, f)), `${f} in ${dir}`);
    assert.equal(existsSync(join(dir, 'cidata.img')), false, 'metadata goes through MMDS, not a disk');
    const cfg = JSON.parse(readFileSync(join(dir, 'firecracker.cfg'), 'utf8'));
    assert.equal(configShapeError(cfg), undefined);
    assert.deepEqual(cfg['mmds-config'], { version: 'V1', network_interfaces: ['eth0'] });
    assert.deepEqual(cfg['network-interfaces'].map((n: { iface_id: string }) => n.iface_id), ['eth0', 'eth1']);
    assert.equal(cfg['network-interfaces'][0].guest_mac.toUpperCase(), 'AA:FF:00:00:00:01');
    assert.equal(cfg.drives[0].is_root_device, true);
    assert.equal(cfg['machine-config'].smt, false);
    assert.match(cfg['boot-source'].boot_args, /^console=ttyS0 reboot=k panic=1 pci=off i8042\.noaux i8042\.nomux i8042\.nopnp i8042\.dumbkbd ds=nocloud-net;s=http:\/\/169\.254\.169\.254\/latest\/ network-config=\S+/);
    // The test guest's kernel is a bzImage: the provider hands Firecracker the ELF inside it.
    assert.equal(cfg['boot-source'].kernel_image_path, join(dir, 'vmlinux'));
    const metadata = JSON.parse(readFileSync(join(dir, 'metadata.json'), 'utf8'));
    assert.match(metadata.latest['meta-data'], new RegExp(`instance_id: ${uid}`));
    assert.match(metadata.latest['meta-data'], /local_hostname: worker-1/);
    assert.equal(metadata.latest['user-data'], '#cloud-config\n');
    assert.match(metadata.latest['network-config'], /macaddress/);
    const pid = Number(readFileSync(join(dir, 'firecracker.pid'), 'utf8'));
    assert.equal(created.status?.vmmPid, pid);
    assert.ok(pidAlive(pid));
    const info = await unixHttp(join(lab.stateDir, 'run', uid, 'firecracker.sock'), 'GET', '/');
    assert.deepEqual(info.body, { id: uid, state: 'Running', vmm_version: '1.16.1', app_name: 'Firecracker' });

    // matchlock inspect: the Firecracker binary and version, the VM's files and process.
    const inspected = loadConfig({ flags: { 'state-dir': lab.stateDir, 'grpc-endpoint': lab.daemon.target, 'bridge-name': 'br0', 'firecracker-bin': FAKE_FIRECRACKER }, file: { path: '/dev/null', explicit: true }, env: {} });
    const checks = await inspectHost(inspected, {});
    const byName = (n: string) => checks.find((c) => c.check === n);
    assert.equal(byName('vmm firecracker')?.status, 'ok');
    assert.match(byName('vmm firecracker')?.evidence ?? '', /firecracker\.mjs: Firecracker v1\.16\.1/);
    assert.equal(byName(`vm e2e/worker-1 (${uid}) files`)?.status, 'ok');
    for (const f of FC_FILES) assert.match(byName(`vm e2e/worker-1 (${uid}) files`)?.evidence ?? '', new RegExp(f.replace('.', '\\.')));
    assert.match(byName(`vm e2e/worker-1 (${uid}) vmm`)?.evidence ?? '', new RegExp(`firecracker pid ${pid} running`));

    await vms.delete(uid);
    await waitFor('the record to go', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.equal(pidAlive(pid), false, 'no process');
    assert.equal(existsSync(join(lab.stateDir, 'run', uid)), false, 'no socket');
    assert.equal(existsSync(dir), false, 'no directory (and so no volume file)');
    assert.deepEqual(lab.ourLinks(), [], 'no TAP');
    assert.deepEqual(fcPids(lab), []);
  });

  it('notices a killed VMM within 2 s and starts it again; a daemon restart adopts the running VM', async () => {
    let vms = api(lab);
    const uid = await vms.create('phoenix', [{ id: 'eth1', type: 'TAP' }], undefined, undefined, { provider: 'firecracker' });
    const first = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const pid = first.status?.vmmPid ?? 0;
    process.kill(pid, 'SIGKILL');
    const killedAt = Date.now();
    await waitFor('the exit in status', async () => {
      const s = (await vms.get(uid))?.status;
      return s && (s.vmmPid !== pid || /exited/.test(s.lastError)) ? true : undefined;
    }, 5000, 50);
    const elapsed = Date.now() - killedAt;
    assert.ok(elapsed < 2000, `noticed after ${elapsed} ms`);
    const back = await waitFor('running again', async () => {
      const vm = await vms.get(uid);
      return stateOf(vm) === 'CREATED' && (vm?.status?.vmmPid ?? pid) !== pid && vm?.status?.vmmPid ? vm : undefined;
    }, 60_000);
    const pid2 = back.status?.vmmPid ?? 0;
    assert.ok(pidAlive(pid2));
    assert.deepEqual(fcPids(lab), [pid2]);

    await lab.restartDaemon(true);
    vms = api(lab);
    await waitFor('CREATED after the restart', async () => stateOf(await vms.get(uid)) === 'CREATED', 60_000);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await vms.get(uid))?.status?.vmmPid, pid2, 'the same VMM, adopted');
    assert.deepEqual(fcPids(lab), [pid2], 'no second VMM');
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.deepEqual(fcPids(lab), []);
  });

  it('refuses at create what Firecracker would refuse: more than 32 vCPUs', async () => {
    await assert.rejects(api(lab).create('big', [{ id: 'eth1', type: 'TAP' }], undefined, undefined, { provider: 'firecracker', vcpu: 33 }), (err: { code?: number; details?: string }) => {
      assert.equal(err.code, 9, 'FAILED_PRECONDITION');
      assert.match(err.details ?? '', /microvm\.vcpu: provider firecracker supports at most 32 vCPUs/);
      return true;
    });
  });
});

describe('firecracker refusals through matchlockd', { skip }, () => {
  let lab: Lab;
  let tmp: { path: string; remove(): void };
  before(async () => {
    tmp = tempDir('fc-faulty');
    chmodSync(tmp.path, 0o755);
    lab = await startLab(['--default-provider', 'firecracker', '--firecracker-bin', faultyFirecracker(tmp.path), '--maximum-retry', '2', '--retry-backoff', '200ms']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    if (lab) for (const pid of fcPids(lab)) process.kill(pid, 'SIGKILL');
    await lab?.destroy();
    tmp?.remove();
  });

  const CASES: [string, RegExp][] = [
    ['badcache', /drives\[0\]\.cache_type: unknown variant, expected one of `Unsafe`, `Writeback` \(in firecracker\.cfg\)/],
    ['crash', /firecracker exited with code 150/],
    ['nosock', /firecracker API on \S+firecracker\.sock did not answer GET \/ with a running VM within/],
  ];
  for (const [name, expected] of CASES) {
    it(`${name}: a clear last_error, FAILED after the retries, nothing left after delete`, async () => {
      const vms = api(lab);
      const uid = await vms.create(name, [{ id: 'eth1', type: 'TAP' }], undefined, undefined, { provider: 'firecracker' });
      const failed = await waitFor('FAILED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'FAILED' ? vm : undefined; }, 120_000);
      assert.match(failed.status?.lastError ?? '', expected);
      assert.equal(failed.status?.retry, 3, 'maximum-retry 2: three attempts, then FAILED (no hot loop)');
      assert.deepEqual(fcPids(lab).filter((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(uid)), [], 'no VMM left running');
      await vms.delete(uid);
      await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
      assert.equal(existsSync(vmDir(lab, name, uid)), false);
      assert.equal(existsSync(join(lab.stateDir, 'run', uid)), false);
    });
  }
});

describe('firecracker under the jailer through matchlockd', { skip }, () => {
  let lab: Lab;
  let tmp: { path: string; remove(): void };
  before(async () => {
    tmp = tempDir('fc-jailer');
    chmodSync(tmp.path, 0o755);
    mkdirSync(join(tmp.path, 'cgroup'));
    writeFileSync(join(tmp.path, 'cgroup', 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    const jailer = join(tmp.path, 'jailer.sh');
    writeFileSync(jailer, `#!/bin/sh\nexport FAKE_JAILER_CGROUP_ROOT='${join(tmp.path, 'cgroup')}'\nexec ${FAKE_JAILER} "$@"\n`);
    chmodSync(jailer, 0o755);
    lab = await startLab(['--default-provider', 'firecracker', '--firecracker-bin', FAKE_FIRECRACKER, '--firecracker-jailer-bin', jailer,
      '--firecracker-jailer-cgroup-root', join(tmp.path, 'cgroup'), '--retry-backoff', '200ms']);
    // The stand-in cannot pivot_root: the unprivileged VMM reaches its jail through these paths.
    chmodSync(dirname(lab.stateDir), 0o755);
    chmodSync(lab.stateDir, 0o755);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    if (lab) for (const pid of fcPids(lab)) process.kill(pid, 'SIGKILL');
    await lab?.destroy();
    tmp?.remove();
  });

  it('runs each VM jailed with its cgroup, and delete removes jail, cgroup and VM', async () => {
    const vms = api(lab);
    const uid = await vms.create('jailed', [{ id: 'eth1', type: 'TAP' }], undefined, undefined, { provider: 'firecracker', vcpu: 2 });
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);
    const pid = created.status?.vmmPid ?? 0;
    const root = join(lab.stateDir, 'jailer', 'firecracker.mjs', uid, 'root');
    assert.equal(Number(readFileSync(join(root, 'firecracker.mjs.pid'), 'utf8')), pid, 'the pid read from the jail');
    assert.doesNotMatch(readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+0\s/m, 'not root');
    const cg = join(tmp.path, 'cgroup', 'matchlock', uid);
    assert.equal(readFileSync(join(cg, 'cpu.max'), 'utf8'), '200000 100000\n');
    assert.equal(readFileSync(join(cg, 'memory.max'), 'utf8'), `${(1024 + 64) * 1024 * 1024}\n`);
    assert.equal(JSON.parse(readFileSync(join(vmDir(lab, 'jailed', uid), 'firecracker.cfg'), 'utf8'))['boot-source'].kernel_image_path, '/vmlinux');
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.equal(pidAlive(pid), false);
    assert.equal(existsSync(join(lab.stateDir, 'jailer', 'firecracker.mjs', uid)), false, 'jail removed');
    assert.equal(existsSync(cg), false, 'cgroup removed');
    assert.equal(existsSync(vmDir(lab, 'jailed', uid)), false);
  });
});
