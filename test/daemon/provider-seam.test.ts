import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PROVIDERS } from '../../src/adapters/vmm/registry.js';
import { loadConfig } from '../../src/daemon/config.js';
import { inspectHost } from '../../src/host/inspect.js';
import { api, importGuest, stateOf, vmDir, waitFor } from '../e2e/vm.js';
import { daemonFailsToStart, ROOT, tempDir } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { scratchModule } from '../fakes/providers/scratch/index.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;
const registry = new Map([...PROVIDERS, ['scratch', scratchModule]]);

describe('the provider seam: a provider added in the test tree with one registry line', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the seam tests ${missing}`);
    const layout = testGuestLayout();
    // matchlockd with the registry plus one line for the scratch provider, which lives in test/fakes.
    lab = await startLab(['--default-provider', 'scratch'], { entry: ['--import', 'tsx', join(ROOT, 'test/fakes/providers/scratch/matchlockd.ts')] });
    await importGuest(lab, layout);
  });
  after(async () => {
    await lab?.destroy();
  });

  it('is the default provider when configured, runs its VMM, delivers metadata its own way, and is inspected and deleted', async () => {
    const vms = api(lab);
    const uid = await vms.create('scratchy', [{ id: 'eth0', type: 'TAP' }], '#cloud-config\n');
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 60_000);
    assert.equal(created.spec?.provider, 'scratch', 'the configured default provider, a name from the registry');
    const dir = vmDir(lab, 'scratchy', uid);
    const pid = created.status?.vmmPid ?? 0;
    assert.equal(Number(readFileSync(join(dir, 'scratch.pid'), 'utf8')), pid);
    process.kill(pid, 0);
    const metadata = JSON.parse(readFileSync(join(dir, 'scratch-metadata.json'), 'utf8')) as Record<string, string>;
    assert.match(metadata['meta-data'] ?? '', new RegExp(`instance_id: ${uid}`));
    assert.equal(metadata['user-data'], '#cloud-config\n');
    assert.equal(existsSync(join(dir, 'cidata.img')), false, 'no NoCloud disk: the provider chose its own delivery');
    await waitFor('guest_booted from the console the provider names', async () => (await vms.get(uid))?.status?.guestBooted);

    const cfg = loadConfig({ flags: { 'state-dir': lab.stateDir, 'grpc-endpoint': lab.daemon.target, 'bridge-name': 'br0' }, file: { path: '/dev/null', explicit: true }, env: {} }, registry);
    const checks = await inspectHost(cfg, { registry });
    const vmm = checks.find((c) => c.check === `vm e2e/scratchy (${uid}) vmm`);
    // The test's VMM runs as root, and matchlock confines only the providers it knows how to.
    assert.equal(vmm?.status, 'warn', JSON.stringify(vmm));
    assert.match(vmm?.evidence ?? '', new RegExp(`scratch pid ${pid} running as root`));
    assert.match(vmm?.fix ?? '', /does not confine scratch/);
    assert.ok(checks.some((c) => c.check === 'vmm scratch'), 'inspect reports the provider');

    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
    assert.throws(() => process.kill(pid, 0), 'the VMM is stopped');
    assert.equal(existsSync(dir), false);
    assert.equal(existsSync(join(lab.stateDir, 'run', uid)), false);
    assert.deepEqual(lab.ourLinks(), []);
  });

  it('reports a VMM that died while matchlockd was down as an unexpected exit at start (logged, a retry), once', async () => {
    const vms = api(lab);
    const uid = await vms.create('diedwhiledown', [{ id: 'eth0', type: 'TAP' }]);
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' && vm?.status?.vmmPid ? vm : undefined; }, 60_000);
    const pid = created.status?.vmmPid ?? 0;
    // The daemon is stopped (SIGSTOP) so it cannot see the exit, then killed and started again.
    const daemonPid = lab.daemon.proc.pid ?? 0;
    process.kill(daemonPid, 'SIGSTOP');
    process.kill(pid, 'SIGKILL');
    await waitFor('the VMM gone', async () => { try { process.kill(pid, 0); return false; } catch { return true; } }, 10_000);
    await lab.restartDaemon(true);
    const exited = (logs: string[]) => logs.filter((l) => /"msg":"vmm exited"/.test(l) && l.includes(uid) && l.includes(`"pid":${pid}`));
    await waitFor('the exit logged', async () => exited(lab.daemon.logs).length > 0, 30_000);
    assert.match(exited(lab.daemon.logs)[0] ?? '', /"seen":"at start"/);
    // Counted towards maximum-retry as a failed attempt (the boot of the next VMM resets it).
    assert.ok(lab.daemon.logs.some((l) => l.includes(uid) && l.includes(`vmm pid ${pid} exited unexpectedly`) && /"retry":1/.test(l) && /will retry/.test(l)), lab.daemon.logs.join('\n'));
    await waitFor('CREATED again', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' && vm?.status?.vmmPid && vm.status.vmmPid !== pid ? vm : undefined; }, 60_000);
    await lab.restartDaemon(false);
    await waitFor('serving', async () => lab.daemon.logs.some((l) => /"state":"serving"/.test(l)), 30_000);
    assert.deepEqual(exited(lab.daemon.logs), [], 'reported once, not again at the next start');
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000);
  });

  it("refuses at create what the provider's descriptor says it cannot do", async () => {
    await assert.rejects(api(lab).create('novtap', [{ id: 'eth0', type: 'MACVTAP' }]), (err: { code?: number; details?: string }) => {
      assert.equal(err.code, 9, 'FAILED_PRECONDITION');
      assert.match(err.details ?? '', /provider scratch does not support MACVTAP/);
      return true;
    });
  });
});

describe('socket paths', () => {
  it('refuses a state dir whose VM sockets would not fit the unix socket limit, naming the limit', async () => {
    const tmp = tempDir('long');
    try {
      const long = join(tmp.path, 'x'.repeat(60));
      const { code, output } = await daemonFailsToStart(['run', '--state-dir', long, '--grpc-endpoint', '127.0.0.1:0', '--config', '/dev/null'], {});
      assert.equal(code, 2);
      assert.match(output, /state-dir .* is too long: VM sockets such as .*\/run\/U{26}\/\S+ would be \d+ bytes, over the 107-byte unix socket limit; use a state dir of at most \d+ bytes/);
    } finally {
      tmp.remove();
    }
  });
});
