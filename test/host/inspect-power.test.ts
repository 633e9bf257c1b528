import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { loadConfig } from '../../src/daemon/config.js';
import { inspectHost } from '../../src/host/inspect.js';
import { runDirOf } from '../../src/core/vmm.js';
import { tempDir } from '../helpers/daemon.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

/** A CREATED VM whose VMM is stopped (none runs), asked to be `desired`. */
function stoppedVm(uid: string, desired: 'RUNNING' | 'STOPPED'): MicroVM {
  return {
    uid, version: 1,
    spec: {
      name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: { ...initialStatus(), state: 'CREATED', power: 'STOPPED' },
    createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
    power: { desired, restart: 0 },
  };
}

describe('inspect and power', () => {
  const tmp = tempDir('inspect-power');
  after(() => tmp.remove());

  it('a VM stopped by request without a VMM is fine; one that should run is a fault', async () => {
    const state = join(tmp.path, 'state');
    const store = new SqliteStore(join(state, 'matchlock.db'));
    store.insert(stoppedVm(UID, 'STOPPED'));
    store.close();
    const cfg = loadConfig({ flags: { 'state-dir': state, 'grpc-endpoint': `unix:${join(tmp.path, 'none.sock')}` }, file: { path: '/dev/null', explicit: true }, env: {} });
    const vmmCheck = async () => (await inspectHost(cfg, {})).find((c) => c.check === `vm ns/web (${UID}) vmm`);
    const stopped = await vmmCheck();
    assert.equal(stopped?.status, 'ok', JSON.stringify(stopped));
    assert.match(stopped?.evidence ?? '', /stopped by request/);

    const again = new SqliteStore(join(state, 'matchlock.db'));
    again.update(UID, (cur) => ({ ...cur, power: { desired: 'RUNNING', restart: 0 } }));
    again.close();
    assert.equal((await vmmCheck())?.status, 'fail');
  });

  it('a VM made stopped and then asked to run, before its first VMM: the VMM is missing, its files are not', async () => {
    const uid = '01HZY3NDEKTSV4RRFFQ69G5FD1';
    const state = join(tmp.path, 'never-started');
    const store = new SqliteStore(join(state, 'matchlock.db'));
    store.insert(stoppedVm(uid, 'RUNNING'));
    store.close();
    // What the create plan made before the VMM step: the VM directory and the NoCloud seed.
    const dir = join(state, 'vm', 'ns', 'web', uid);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'cidata.img'), '');
    const cfg = loadConfig({ flags: { 'state-dir': state, 'grpc-endpoint': `unix:${join(tmp.path, 'none.sock')}` }, file: { path: '/dev/null', explicit: true }, env: {} });
    const checks = await inspectHost(cfg, {});
    const files = checks.find((c) => c.check === `vm ns/web (${uid}) files`);
    assert.equal(files?.status, 'ok', JSON.stringify(files));
    const vmm = checks.find((c) => c.check === `vm ns/web (${uid}) vmm`);
    assert.equal(vmm?.status, 'fail');
    assert.equal(vmm?.evidence, 'no VMM process (none was started for it yet)');
    assert.doesNotMatch(vmm?.fix ?? '', /console\.log/);
  });

  // The files check expects what the provider makes for this VM's spec and power: no
  // guest-agent socket unless allowGuestAgent, no pid file or sockets of a VMM asked to stop.
  for (const [provider, uid, desired, dirFiles, runFiles] of [
    ['cloudhypervisor', '01HZY3NDEKTSV4RRFFQ69G5FC1', 'RUNNING', ['cloudhypervisor.pid', 'cloudhypervisor.log', 'cloudhypervisor.stdout', 'cloudhypervisor.stderr', 'cloudhypervisor.cmdline', 'console.log', 'cloud-init.img'], ['cloudhypervisor.sock']],
    ['cloudhypervisor', '01HZY3NDEKTSV4RRFFQ69G5FC2', 'STOPPED', ['cloudhypervisor.log', 'cloudhypervisor.stdout', 'cloudhypervisor.stderr', 'cloudhypervisor.cmdline', 'console.log', 'cloud-init.img'], []],
    ['qemu', '01HZY3NDEKTSV4RRFFQ69G5FC3', 'STOPPED', ['qemu.stdout', 'qemu.stderr', 'qemu.cmdline', 'console.log', 'cidata.img'], []],
    ['firecracker', '01HZY3NDEKTSV4RRFFQ69G5FC4', 'STOPPED', ['firecracker.cfg', 'metadata.json', 'firecracker.log', 'firecracker.metrics', 'firecracker.stdout', 'firecracker.stderr'], []],
  ] as const) {
    it(`the files of a healthy ${provider} VM, desired ${desired}, without a guest agent pass`, async () => {
      const state = join(tmp.path, `files-${uid}`);
      const store = new SqliteStore(join(state, 'matchlock.db'));
      const spec: MicroVM['spec'] = {
        name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
        kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
        additionalVolumes: [], interfaces: [], metadata: {}, provider, allowGuestAgent: false,
      };
      store.insert({
        uid, version: 1, spec,
        status: { ...initialStatus(), state: 'CREATED', power: desired },
        createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
        power: { desired, restart: 0 },
      });
      store.close();
      const dir = join(state, 'vm', 'ns', 'web', uid);
      const run = runDirOf(state, uid);
      mkdirSync(dir, { recursive: true });
      mkdirSync(run, { recursive: true });
      for (const f of dirFiles) writeFileSync(join(dir, f), '');
      for (const f of runFiles) writeFileSync(join(run, f), '');
      const cfg = loadConfig({ flags: { 'state-dir': state, 'grpc-endpoint': `unix:${join(tmp.path, 'none.sock')}` }, file: { path: '/dev/null', explicit: true }, env: {} });
      const files = async () => (await inspectHost(cfg, {})).find((c) => c.check === `vm ns/web (${uid}) files`);
      const check = await files();
      assert.equal(check?.status, 'ok', JSON.stringify(check));
      if (provider === 'cloudhypervisor' && desired === 'RUNNING') {
        // Asked for, the guest agent's socket is expected like the rest.
        const again = new SqliteStore(join(state, 'matchlock.db'));
        again.update(uid, (cur) => ({ ...cur, spec: { ...cur.spec, allowGuestAgent: true } }));
        again.close();
        assert.match((await files())?.evidence ?? '', /lacks guest-agent\.vsock/);
      }
      rmSync(run, { recursive: true, force: true });
    });
  }

  // matchlockd confines QEMU (vmm-user, cgroups) and Firecracker under the jailer only; a VMM
  // of the others running as root is as much a risk, and inspect says which setting changes it.
  for (const [provider, uid, pidFile, fix, flags] of [
    ['firecracker', '01HZY3NDEKTSV4RRFFQ69G5FB1', 'firecracker.pid', /runs Firecracker unconfined without the jailer.*set firecracker-jailer-bin/, {}],
    ['cloudhypervisor', '01HZY3NDEKTSV4RRFFQ69G5FB2', 'cloudhypervisor.pid', /does not confine cloudhypervisor/, {}],
    // Restarting it would not help: matchlockd was told to run QEMU as root.
    ['qemu', '01HZY3NDEKTSV4RRFFQ69G5FB3', 'qemu.pid', /vmm-user is root.*set vmm-user to an unprivileged user \(or set vmm-uid-range\).*stop and start the VM/, { 'vmm-user': 'root' }],
  ] as const) {
    it(`a ${provider} VMM running as root is a warning naming what confines it${Object.keys(flags).length ? ` (${JSON.stringify(flags)})` : ''}`, { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
      const state = join(tmp.path, `state-${provider}`);
      const store = new SqliteStore(join(state, 'matchlock.db'));
      const dir = join(state, 'vm', 'ns', 'web', uid);
      store.insert({
        uid, version: 1,
        spec: {
          name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
          kernel: { image: 'k:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
          additionalVolumes: [], interfaces: [], metadata: {}, provider, allowGuestAgent: false,
        },
        status: { ...initialStatus(), state: 'CREATED', power: 'RUNNING' },
        createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
        power: { desired: 'RUNNING', restart: 0 },
      });
      store.close();
      mkdirSync(dir, { recursive: true });
      // A process that passes for the VM's VMM: its command line names the VM as the provider looks for it.
      const vmm = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '--id', uid, '--config-file', join(dir, 'firecracker.cfg'), dir], { stdio: 'ignore' });
      try {
        writeFileSync(join(dir, pidFile), `${vmm.pid}\n`);
        const cfg = loadConfig({ flags: { 'state-dir': state, 'grpc-endpoint': `unix:${join(tmp.path, 'none.sock')}`, ...flags }, file: { path: '/dev/null', explicit: true }, env: {} });
        const check = (await inspectHost(cfg, {})).find((c) => c.check === `vm ns/web (${uid}) vmm`);
        assert.equal(check?.status, 'warn', JSON.stringify(check));
        assert.match(check?.evidence ?? '', new RegExp(`pid ${vmm.pid} running as root`));
        assert.match(JSON.stringify(check), fix);
      } finally {
        vmm.kill('SIGKILL');
      }
    });
  }
});
