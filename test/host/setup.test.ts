import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../src/daemon/config.js';
import { hostSetup, mergeConfigText } from '../../src/host/setup.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

describe('matchlock host setup', () => {
  const tmp = tempDir('hostsetup');
  after(() => tmp.remove());
  const paths = (n: string) => ({ configPath: join(tmp.path, n, 'config.yaml'), unitPath: join(tmp.path, n, 'matchlockd.service'), execStart: `${process.execPath} /opt/matchlock/bin/matchlockd.js` });

  it('writes a config matchlockd loads and a unit like flintlock\'s, prepares the state dir, and checks the bridge', async (t) => {
    const p = paths('a');
    const { checks } = await hostSetup({ ...p, settings: { 'bridge-name': 'br-not-here', 'state-dir': join(tmp.path, 'a', 'state'), 'default-provider': 'qemu', 'maximum-retry': '5' } });
    const cfg = loadConfig({ flags: {}, file: { path: p.configPath, explicit: true }, env: {} });
    assert.deepEqual([cfg.bridgeName, cfg.defaultProvider, cfg.maximumRetry], ['br-not-here', 'qemu', 5]);
    assert.equal(statSync(join(tmp.path, 'a', 'state')).mode & 0o777, 0o750);
    const unit = readFileSync(p.unitPath, 'utf8');
    for (const line of ['Restart=always', 'RestartSec=5', 'KillMode=process', `ExecStart=${p.execStart} run --config ${p.configPath}`]) assert.ok(unit.split('\n').includes(line), line);
    const bridge = checks.find((c) => c.check === 'bridge-name');
    assert.equal(bridge?.status, 'fail');
    assert.match(bridge?.fix ?? '', /ip link add br-not-here type bridge/);
    assert.equal(checks.find((c) => c.check === 'vmm qemu')?.status, spawnSync('sh', ['-c', 'command -v qemu-system-x86_64']).status === 0 ? 'ok' : 'fail');
    const verify = spawnSync('systemd-analyze', ['verify', p.unitPath], { encoding: 'utf8' });
    if (verify.error) {
      t.skip('systemd-analyze is not installed');
      return;
    }
    // The ExecStart script does not exist here; everything else must verify cleanly.
    assert.deepEqual(verify.stderr.split('\n').filter((l) => l.trim() && !l.includes('/opt/matchlock')), []);
  });

  it("gives systemd's stop timeout room for the configured shutdown-grace: a 120s grace is not cut short by the 90s default", async () => {
    const p = paths('grace');
    await hostSetup({ ...p, settings: { 'bridge-name': 'br-not-here', 'state-dir': join(tmp.path, 'grace', 'state'), 'shutdown-grace': '120s' } });
    const line = readFileSync(p.unitPath, 'utf8').split('\n').find((l) => l.startsWith('TimeoutStopSec='));
    // 120 s grace + 5 s for called-off reconciles + 30 s margin.
    assert.equal(line, 'TimeoutStopSec=155');
  });

  it('refuses unknown keys and bad values before writing anything', async () => {
    const p = paths('b');
    await assert.rejects(hostSetup({ ...p, settings: { 'state_dir': '/x' } }), /--set state_dir: unknown key/);
    await assert.rejects(hostSetup({ ...p, settings: { 'resync-period': 'often' } }), /resync-period must be a duration/);
    await assert.rejects(hostSetup({ ...p, settings: { 'state-dir': 'rel/state' } }), /^Error: --set state-dir=rel\/state: state-dir must be an absolute path/);
    // The daemon reads the same rule: a relative state-dir from a flag, the file or the environment is refused.
    assert.throws(() => loadConfig({ flags: { 'state-dir': 'rel/state' }, file: { path: '/dev/null', explicit: true }, env: {} }), /^MatchlockError: flag: state-dir must be an absolute path \(got "rel\/state"\)$/);
    assert.throws(() => loadConfig({ flags: {}, file: { path: '/dev/null', explicit: true }, env: { MATCHLOCK_STATE_DIR: './s' } }), /environment MATCHLOCK_STATE_DIR: state-dir must be an absolute path/);
    assert.equal(existsSync(p.configPath), false);
    assert.equal(existsSync(p.unitPath), false);
  });

  it("writes a boolean --set in any of strconv.ParseBool's spellings as a YAML boolean", () => {
    const text = mergeConfigText('', { insecure: 'T', 'enable-http': 'False', 'qemu-sandbox': '1' });
    for (const line of ['insecure: true', 'enable-http: false', 'qemu-sandbox: true']) assert.ok(text.split('\n').includes(line), `${line} missing from:\n${text}`);
  });

  it('merges --set into an existing config: other keys, comments and flintlockd keys stay, the diff shows the change', async () => {
    const p = paths('c');
    mkdirSync(join(tmp.path, 'c'), { recursive: true });
    const before = [
      '# flintlock provisioning wrote this',
      'containerd-socket: "/run/containerd-dev/containerd.sock"',
      'grpc-endpoint: "192.168.10.3:9090"',
      'verbosity: 9 # trace',
      'insecure: true',
      'parent-iface: "bond0.1000"',
      'basic-auth-token: "s3cret-token"',
      `state-dir: ${join(tmp.path, 'c', 'state')}`,
      '',
    ].join('\n');
    writeFileSync(p.configPath, before);
    const { diff, checks } = await hostSetup({ ...p, settings: { 'bridge-name': 'br0', verbosity: '1', 'vmm-user': 'root' } });
    assert.match(checks.find((c) => c.check === 'config')?.evidence ?? '', new RegExp(`^${p.configPath.replace(/[/.]/g, '\\$&')}: flintlockd key "containerd-socket" ignored`));
    const after = readFileSync(p.configPath, 'utf8');
    for (const line of ['# flintlock provisioning wrote this', 'containerd-socket: "/run/containerd-dev/containerd.sock"', 'grpc-endpoint: "192.168.10.3:9090"', 'insecure: true', 'parent-iface: "bond0.1000"', 'basic-auth-token: "s3cret-token"', 'bridge-name: br0']) {
      assert.ok(after.split('\n').includes(line), `${line} missing from:\n${after}`);
    }
    assert.match(after, /^verbosity: 1 # trace$/m);
    const cfg = loadConfig({ flags: {}, file: { path: p.configPath, explicit: true }, env: {} });
    assert.deepEqual([cfg.grpcEndpoint, cfg.basicAuthToken, cfg.parentIface, cfg.bridgeName, cfg.verbosity, cfg.insecure], ['192.168.10.3:9090', 's3cret-token', 'bond0.1000', 'br0', 1, true]);
    assert.match(diff, /^-verbosity: 9 # trace$/m);
    assert.match(diff, /^\+verbosity: 1 # trace$/m);
    assert.match(diff, /^\+bridge-name: br0$/m);
    assert.doesNotMatch(diff, /^-(grpc-endpoint|basic-auth-token|containerd-socket)/m);
    // Setting what is already there changes nothing.
    const again = await hostSetup({ ...p, settings: { 'bridge-name': 'br0' } });
    assert.equal(again.diff, '');
    assert.equal(readFileSync(p.configPath, 'utf8'), after);
    // A value the merged file cannot hold is refused, and the file stays as it was.
    await assert.rejects(hostSetup({ ...p, settings: { 'resync-period': 'often' } }), /^Error: --set resync-period=often: resync-period must be a duration/);
    // A bad value already in the file is named by the file.
    writeFileSync(p.configPath, `${after}resync-period: often\n`);
    await assert.rejects(hostSetup({ ...p, settings: { 'bridge-name': 'br1' } }), new RegExp(`^Error: ${p.configPath.replace(/[/.]/g, '\\$&')}: resync-period must be a duration`));
    writeFileSync(p.configPath, after);
    assert.equal(readFileSync(p.configPath, 'utf8'), after);
    assert.equal(existsSync(`${p.configPath}.tmp`), false);
  });
});

describe('host setup on a state dir holding flintlock\'s VM directories', () => {
  const tmp = tempDir('setup-flintlock');
  after(() => tmp.remove());

  it('FAILs the vm directories check and does not advise enabling matchlockd, which would refuse to start in a loop', () => {
    const state = join(tmp.path, 'fl');
    const dir = join(state, 'vm', 'ns1', 'mvm1', '01HZZZZZZZZZZZZZZZZZZZZZZZ');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'firecracker.cfg'), '{}\n');
    writeFileSync(join(dir, 'metadata.json'), '{"latest":{}}\n');
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), 'host', 'setup', '--no-guard', '--config-out', join(tmp.path, 'config.yaml'), '--unit-out', join(tmp.path, 'matchlockd.service'), '--daemon-bin', join(ROOT, 'bin/matchlockd.js'), '--set', `state-dir=${state}`, '--set', 'vmm-user=root', '--set', 'bridge-name=lo'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, new RegExp(`FAIL +vm directories +1 VM directory has no record.*${dir}.*flintlockd's layout.*docs/migrating-from-flintlock\\.md`));
    assert.doesNotMatch(r.stdout, /enable --now/);
    assert.match(r.stdout, /do not enable matchlockd yet/);
  });
});
