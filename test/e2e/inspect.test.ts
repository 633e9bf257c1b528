import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Check } from '../../src/host/inspect.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { labMissing, testGuestLayout } from '../helpers/lab.js';
import { api, importGuest, stateOf, waitFor } from './vm.js';

const missing = labMissing() ?? (['dhcpd', 'nft'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) ? 'dhcpd or nft missing' : undefined);
const skip = missing && !process.env.CI ? missing : false;

describe('inspect: a healthy host and hub, then one piece broken at a time', { skip }, () => {
  const id = randomBytes(3).toString('hex');
  const ns = `mli-${id}`;
  const tmp = tempDir('inspect');
  const state = join(tmp.path, 'state');
  const sock = join(tmp.path, 'grpc.sock');
  const hubFlags = ['--interface', 'mlbr0', '--mode', 'bridge', '--address', '192.168.77.2/25', '--range-start', '192.168.77.26', '--range-end', '192.168.77.126', '--uplink', 'up0', '--dhcp', 'isc', '--state-dir', join(tmp.path, 'hub')];
  // hub setup records its hub; the record goes to the test's own directory, not the host's.
  const ml = (...a: string[]) => spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a], { encoding: 'utf8', env: { ...process.env, MATCHLOCK_HUB_RECORD: join(tmp.path, 'hub-record.yaml') } });
  const inspect = () => {
    const r = ml('-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', `unix:${sock}`, '--bridge-name', 'mlbr0', '--hub', ...hubFlags.map((f) => (f.startsWith('--') ? `--hub-${f.slice(2)}` : f)));
    return { code: r.status, checks: JSON.parse(r.stdout || '[]') as Check[], stderr: r.stderr };
  };
  const failed = (checks: Check[]) => checks.filter((c) => c.status === 'fail').map((c) => c.check);
  let daemon: DaemonHandle | undefined;
  let uid = '';
  const lab = { stateDir: state, daemon: { target: `unix:${sock}` } };
  before(async () => {
    assert.equal(missing, undefined);
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    execFileSync('ip', ['-n', ns, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1']);
    execFileSync('ip', ['-n', ns, 'link', 'set', 'up0', 'up']);
    const setup = ml('hub', 'setup', ...hubFlags);
    assert.equal(setup.status, 0, setup.stderr);
    daemon = await startDaemon(state, ['--grpc-endpoint', `unix:${sock}`, '--bridge-name', 'mlbr0', '--delete-vm-timeout', '1s', '--resync-period', '1h'], {}, ns);
    await importGuest(lab, testGuestLayout());
    uid = await api(lab).create('inspected', [{ id: 'eth0', type: 'TAP', mac: '02:00:00:77:00:01' }]);
    await waitFor('CREATED and booted', async () => { const vm = await api(lab).get(uid); return stateOf(vm) === 'CREATED' && vm?.status?.guestBooted; }, 90_000);
    await waitFor('a lease', () => readFileSync(join(tmp.path, 'hub', 'dhcpd.leases'), 'utf8').includes('02:00:00:77:00:01'), 60_000, 500);
  });
  after(async () => {
    await daemon?.stop();
    for (const pid of spawnSync('pgrep', ['-f', state]).stdout?.toString().split('\n').filter(Boolean).map(Number) ?? []) process.kill(pid, 'SIGKILL');
    ml('hub', 'teardown', ...hubFlags);
    spawnSync('ip', ['netns', 'del', ns]);
    tmp.remove();
  });

  it('reports a healthy setup without failures, and each broken piece as fail with its fix', async () => {
    const healthy = inspect();
    assert.deepEqual(failed(healthy.checks), [], JSON.stringify(healthy.checks, null, 1));
    assert.equal(healthy.code, 0);
    for (const name of ['daemon', 'vmm qemu', 'hub dhcp', 'hub nat', 'hub ip-forward', 'hub pool']) assert.equal(healthy.checks.find((c) => c.check === name)?.status, 'ok', name);
    assert.match(healthy.checks.find((c) => c.check === 'hub pool')?.evidence ?? '', /^1 of 101 addresses leased/);
    // hub leases names the MicroVM behind each MAC when the daemon answers.
    const leases = ml('--host', `unix:${sock}`, '-o', 'json', 'hub', 'leases', ...hubFlags);
    assert.deepEqual((JSON.parse(leases.stdout) as { mac: string; microvm: string }[]).map((l) => [l.mac, l.microvm]), [['02:00:00:77:00:01', 'e2e/inspected']]);
    const vmChecks = healthy.checks.filter((c) => c.check.includes(uid));
    assert.deepEqual(vmChecks.map((c) => [c.check.split(') ')[1], c.status]), [['state', 'ok'], ['files', 'ok'], ['vmm', 'ok'], ['api', 'ok'], ['interface eth0', 'ok'], ['lease eth0', 'ok']]);

    // The DHCP server stops.
    const hubState = JSON.parse(readFileSync(join(tmp.path, 'hub', 'hub-state.json'), 'utf8')) as { dhcp: { pid: number } };
    process.kill(hubState.dhcp.pid, 'SIGKILL');
    await waitFor('dhcpd gone', () => spawnSync('kill', ['-0', String(hubState.dhcp.pid)]).status !== 0);
    let r = inspect();
    assert.deepEqual(failed(r.checks), ['hub dhcp']);
    assert.match(r.checks.find((c) => c.check === 'hub dhcp')?.fix ?? '', /matchlock hub setup/);
    assert.notEqual(r.code, 0);
    assert.equal(ml('hub', 'setup', ...hubFlags).status, 0);

    // The NAT table is flushed.
    spawnSync('ip', ['netns', 'exec', ns, 'nft', 'flush', 'table', 'ip', 'matchlock_hub']);
    r = inspect();
    assert.deepEqual(failed(r.checks), ['hub nat']);
    assert.equal(ml('hub', 'setup', ...hubFlags).status, 0);
    assert.deepEqual(failed(inspect().checks), []);

    // The daemon stops, the VMM is killed and the VM's TAP removed (after the daemon stopped:
    // a running daemon makes a deleted TAP again at once).
    const vm = await api(lab).get(uid);
    const tap = vm?.status?.networkInterfaces.eth0?.hostDeviceName ?? '';
    const pid = vm?.status?.vmmPid ?? 0;
    await daemon?.stop();
    daemon = undefined;
    process.kill(pid, 'SIGKILL');
    execFileSync('ip', ['-n', ns, 'link', 'del', tap]);
    r = inspect();
    assert.deepEqual(failed(r.checks).sort(), ['daemon', `vm e2e/inspected (${uid}) interface eth0`, `vm e2e/inspected (${uid}) vmm`].sort());
    assert.match(r.checks.find((c) => c.check.endsWith('interface eth0'))?.evidence ?? '', new RegExp(`${tap} missing`));
    assert.match(r.checks.find((c) => c.check.endsWith(' vmm'))?.evidence ?? '', new RegExp(`pid ${pid} is gone`));
    assert.match(r.checks.find((c) => c.check === 'daemon')?.fix ?? '', /systemctl start matchlockd/);
  });
});
