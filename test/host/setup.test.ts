import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../src/daemon/config.js';
import { hostSetup } from '../../src/host/setup.js';
import { tempDir } from '../helpers/daemon.js';

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

  it('refuses unknown keys and bad values before writing anything', async () => {
    const p = paths('b');
    await assert.rejects(hostSetup({ ...p, settings: { 'state_dir': '/x' } }), /--set state_dir: unknown key/);
    await assert.rejects(hostSetup({ ...p, settings: { 'resync-period': 'often' } }), /resync-period must be a duration/);
    assert.equal(existsSync(p.configPath), false);
    assert.equal(existsSync(p.unitPath), false);
  });
});
