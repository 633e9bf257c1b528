import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run as cli } from '../../src/cli/main.js';
import { MicroVMStatus_PowerState, type MicroVM } from '../../src/gen/types/microvm_pb.js';
import type { Check } from '../../src/host/inspect.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { FAKE_FIRECRACKER, firecrackerLabMissing } from '../helpers/firecracker.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, stateOf, vmDir, waitFor } from './vm.js';

const missing = labMissing() ?? firecrackerLabMissing();
const skip = missing && !process.env.CI ? missing : false;
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
const FAKE_CH = join(ROOT, 'test/fakes/cloud-hypervisor.mjs');
const powerOf = (vm: MicroVM | undefined) => MicroVMStatus_PowerState[vm?.status?.power ?? 0];

describe('inspect expects of a VM what its VMM history leaves', { skip }, () => {
  let lab: Lab;
  const tmp = tempDir('inspect-stopped');
  const hub = join(tmp.path, 'hub');
  before(async () => {
    assert.equal(missing, undefined, `the inspect tests ${missing}`);
    lab = await startLab(['--qemu-bin', STANDIN, '--firecracker-bin', FAKE_FIRECRACKER, '--cloudhypervisor-bin', FAKE_CH, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--retry-backoff', '1s', '--maximum-retry', '50']);
    // A hub whose DHCP server has handed out no lease: an empty lease file.
    mkdirSync(hub, { recursive: true });
    writeFileSync(join(hub, 'dnsmasq.leases'), '');
  });
  after(async () => {
    await lab?.destroy();
    tmp.remove();
  });

  const matchlock = async (...args: string[]) => {
    let err = '';
    const code = await cli(['--host', lab.daemon.target, ...args], { out: () => undefined, err: (t) => void (err += t) }, {});
    assert.equal(code, 0, `matchlock ${args.join(' ')}: ${err}`);
  };
  /** inspect as an operator runs it on the host: in the lab's namespace, where the VM's TAP is. */
  const inspect = (uid: string): Map<string, Check> => {
    const r = spawnSync('ip', ['netns', 'exec', lab.ns, process.execPath, join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', '--config', '/dev/null',
      '--daemon-state-dir', lab.stateDir, '--grpc-endpoint', lab.daemon.target,
      '--hub', '--hub-interface', 'mlnohub0', '--hub-uplink', 'lo', '--hub-dhcp', 'dnsmasq', '--hub-state-dir', hub], { encoding: 'utf8' });
    const checks = JSON.parse(r.stdout || '[]') as Check[];
    assert.ok(checks.length, r.stderr);
    return new Map(checks.filter((c) => c.check.includes(`(${uid}) `)).map((c) => [c.check.slice(c.check.indexOf(') ') + 2), c]));
  };

  // What each provider leaves in the VM's directory: before any VMM (the create plan's own
  // files, the NoCloud seed), and once one has run.
  for (const [provider, beforeStart, afterRun] of [
    ['qemu', ['cidata.img'], ['console.log', 'qemu.stdout', 'qemu.stderr', 'qemu.cmdline', 'cidata.img']],
    ['cloudhypervisor', ['cloud-init.img'], ['console.log', 'cloudhypervisor.log', 'cloudhypervisor.stdout', 'cloudhypervisor.stderr', 'cloudhypervisor.cmdline', 'cloud-init.img']],
    // Firecracker's config, MMDS data and the files it writes to are made by a create step.
    ['firecracker', ['firecracker.cfg', 'metadata.json', 'firecracker.log', 'firecracker.metrics', 'firecracker.stdout', 'firecracker.stderr'], ['firecracker.cfg', 'metadata.json', 'firecracker.log', 'firecracker.metrics', 'firecracker.stdout', 'firecracker.stderr']],
  ] as const) {
    it(`${provider}: a VM created stopped has no console or VMM files; once it ran and stopped it keeps them; deleted it is gone`, async () => {
      const vms = api(lab);
      const name = `late-${provider}`;
      // Not in the store when the VM is created, so its pulls fail until the test imports it.
      const image = `localhost/matchlock/${name}:1`;
      const uid = await vms.create(name, [{ id: 'eth1', type: 'TAP' }], undefined, image, { provider });
      await waitFor('the first pull failed', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'PENDING' && vm?.status?.lastError ? vm : undefined; }, 60_000);
      // Stopped while its image cannot be pulled, before any VMM: once the image is there the VM is made without one.
      await matchlock('vm', 'stop', uid, '--no-wait');
      let err = '';
      assert.equal(await cli(['image', 'import', testGuestLayout(), '--name', image, '--state-dir', lab.stateDir], { out: () => undefined, err: (t) => (err += t) }, {}), 0, err);
      await waitFor('CREATED and stopped', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' && powerOf(vm) === 'STOPPED' ? vm : undefined; }, 90_000);
      const dir = vmDir(lab, name, uid);
      assert.deepEqual(readdirSync(dir).filter((f) => !beforeStart.includes(f as never) && /^(console|qemu|cloudhypervisor|firecracker)\./.test(f)), [], 'no VMM ever ran for it');

      let checks = inspect(uid);
      for (const c of ['state', 'files', 'vmm', 'interface eth1', 'lease eth1']) assert.equal(checks.get(c)?.status, 'ok', `${c}: ${JSON.stringify([...checks.values()], null, 1)}`);
      assert.equal(checks.get('files')?.evidence, `${dir}: ${beforeStart.join(', ')} (no ${provider} started for it yet, so no console or VMM files)`);
      assert.match(checks.get('vmm')?.evidence ?? '', /^stopped by request, never started/);
      assert.match(checks.get('lease eth1')?.evidence ?? '', /none is due: no VMM runs for it/);

      // It runs, then is stopped: what the run left stays, and is expected, from the record even
      // when every one of those files is gone.
      await matchlock('vm', 'start', uid, '--timeout', '60s');
      await matchlock('vm', 'stop', uid, '--timeout', '60s');
      checks = inspect(uid);
      assert.equal(checks.get('files')?.status, 'ok', JSON.stringify(checks.get('files')));
      assert.equal(checks.get('files')?.evidence, `${dir}: ${afterRun.join(', ')}`);
      assert.match(checks.get('vmm')?.evidence ?? '', /^stopped by request \(/);
      const left = afterRun.filter((f) => !beforeStart.includes(f as never));
      for (const f of left) rmSync(join(dir, f));
      if (left.length) {
        checks = inspect(uid);
        assert.equal(checks.get('files')?.status, 'fail', JSON.stringify(checks.get('files')));
        assert.equal(checks.get('files')?.evidence, `${dir} lacks ${left.join(', ')}`);
      }

      await vms.delete(uid);
      await waitFor('deleted', async () => (await vms.get(uid)) === undefined, 60_000);
      assert.equal(existsSync(dir), false);
      assert.deepEqual([...inspect(uid).keys()], []);
    });
  }
});
