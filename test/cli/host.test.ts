import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { run } from '../../src/cli/main.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

async function matchlock(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; err: string }> {
  let err = '';
  const code = await run(argv, { out: () => true, err: (t) => ((err += t), true) }, env);
  return { code, err };
}

describe('the global --host is held to the endpoint rule before anything is dialled', () => {
  it('refuses a bad port or host with the usage exit code, naming --host and the rule', async () => {
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [['--host', 'localhost:abc'], {}, /--host localhost:abc must be host:port with a port from 1 to 65535.*port "abc" is not a number/],
      [['--host', '127.0.0.1:99999'], {}, /--host 127\.0\.0\.1:99999 must be host:port.*port "99999" is not a number from 0 to 65535/],
      [['--host', '127.0.0.1:0'], {}, /--host 127\.0\.0\.1:0 must be host:port.*port 0 cannot be dialled/],
      [['--host', 'http://127.0.0.1:9090'], {}, /a scheme \(http:\/\/\) is not part of the endpoint/],
      [['--host', 'unix://tmp/x.sock'], {}, /"tmp" where a host goes/],
      [[], { MATCHLOCK_HOST: 'localhost:abc' }, /--host localhost:abc must be host:port.*port "abc"/],
    ];
    for (const [args, env, message] of cases) {
      const { code, err } = await matchlock([...args, 'vm', 'list'], env);
      assert.equal(code, 2, err);
      assert.match(err, message);
      assert.doesNotMatch(err, /loopback|ERR_SOCKET_BAD_PORT|RangeError/);
    }
  });

  it("keeps grpc-js's dns: target form", async () => {
    // Nothing listens on port 1 of loopback: the dial fails as unavailable (5), not as usage.
    const { code, err } = await matchlock(['--host', 'dns:127.0.0.1:1', '--insecure', '--request-timeout', '2s', 'vm', 'list']);
    assert.notEqual(code, 2, err);
  });
});

describe('host setup: bad paths are input errors, a failing host is not', () => {
  const tmp = tempDir('cli-host');
  after(() => tmp.remove());

  it('refuses a --config-out that is a directory naming the flag (exit 2), before writing anything', async () => {
    const dir = join(tmp.path, 'isdir');
    mkdirSync(join(dir, 'config.yaml'), { recursive: true });
    const { code, err } = await matchlock(['host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard', '--set', `state-dir=${join(dir, 'state')}`]);
    assert.equal(code, 2, err);
    assert.match(err, new RegExp(`--config-out ${join(dir, 'config.yaml')}: is a directory \\(EISDIR\\)`));
    assert.deepEqual(readdirSync(dir), ['config.yaml']);
  });

  it('exits 1, not 2, when the host fails it (nft cannot load the guard), and puts back what it wrote', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, () => {
    const dir = join(tmp.path, 'nft-fails');
    const bin = join(tmp.path, 'bin');
    mkdirSync(bin, { recursive: true });
    mkdirSync(dir);
    writeFileSync(join(bin, 'nft'), '#!/bin/sh\necho "nft: cannot load" >&2\nexit 1\n', { mode: 0o755 });
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), 'host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--set', `state-dir=${join(dir, 'state')}`, '--set', 'vmm-user=root'], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` } });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /cannot load/);
    assert.deepEqual(readdirSync(dir), []);
  });

  it('writes a unit that systemd reads back with paths holding a space, % and $', (t) => {
    const dir = join(tmp.path, 'un it %Z $x');
    mkdirSync(join(dir, 'b in'), { recursive: true });
    const bin = join(dir, 'b in', 'matchlockd');
    copyFileSync('/usr/bin/true', bin);
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), 'host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'matchlockd.service'), '--no-guard', '--daemon-bin', bin, '--set', `state-dir=${join(dir, 'state')}`, '--set', 'vmm-user=root'], { encoding: 'utf8' });
    assert.ok(existsSync(join(dir, 'matchlockd.service')), r.stderr);
    const exec = readFileSync(join(dir, 'matchlockd.service'), 'utf8').split('\n').find((l) => l.startsWith('ExecStart='));
    // The executable's "$" is literal for systemd; an argument's is written "$$".
    assert.equal(exec, `ExecStart="${bin.replaceAll('%', '%%')}" run --config "${join(dir, 'config.yaml').replaceAll('%', '%%').replaceAll('$', '$$$$')}"`);
    const verify = spawnSync('systemd-analyze', ['verify', join(dir, 'matchlockd.service')], { encoding: 'utf8' });
    if (verify.error) t.skip('systemd-analyze is not installed');
    else assert.doesNotMatch(verify.stderr, /specifier|not executable|bad unit file setting/);
  });

  it('refuses a --daemon-bin whose path holds a quote or a backslash (systemd refuses such an executable) naming the flag, writing nothing', async () => {
    for (const name of ['a"b', "a'b", 'a\\b']) {
      const dir = join(tmp.path, `special-${readdirSync(tmp.path).length}`);
      mkdirSync(join(dir, name), { recursive: true });
      const bin = join(dir, name, 'matchlockd');
      copyFileSync('/usr/bin/true', bin);
      const { code, err } = await matchlock(['host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'matchlockd.service'), '--no-guard', '--daemon-bin', bin, '--set', `state-dir=${join(dir, 'state')}`, '--set', 'vmm-user=root']);
      assert.equal(code, 2, err);
      assert.ok(err.includes(`--daemon-bin ${bin}: systemd refuses an executable whose path holds a quote or a backslash`), err);
      assert.deepEqual(readdirSync(dir), [name]);
    }
  });
});
