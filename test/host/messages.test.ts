import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { run } from '../../src/cli/main.js';
import type { Check } from '../../src/host/inspect.js';
import { hostSetup } from '../../src/host/setup.js';
import { tempDir } from '../helpers/daemon.js';

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await run(args, { out: (t) => (out += t), err: (t) => (err += t) }, {});
  return { code, out, err };
}

describe('host setup and inspect name the flag a value came from', () => {
  const tmp = tempDir('host-messages');
  after(() => tmp.remove());

  it('host setup: a bad --set value is named as --set, not as the config file, and nothing is written', async () => {
    const config = join(tmp.path, 'a', 'config.yaml');
    const r = await cli(['host', 'setup', '--config-out', config, '--unit-out', join(tmp.path, 'a', 'unit.service'), '--no-guard', '--set', 'verbosity=x']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--set verbosity=x: verbosity must be a whole number/);
    assert.doesNotMatch(r.err, /config\.yaml/);
    assert.equal(existsSync(join(tmp.path, 'a')), false, 'not even the config directory is made');
  });

  it('host setup refuses a relative state-dir (the unit runs from /), naming --set state-dir, and writes nothing', async () => {
    const dir = join(tmp.path, 'rel');
    const r = await cli(['host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard', '--set', 'state-dir=rel/state']);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /--set state-dir=rel\/state: state-dir must be an absolute path/);
    assert.equal(existsSync(dir), false);
  });

  it('host setup names the flag of a path it cannot write (--unit-out under a regular file)', async () => {
    const dir = join(tmp.path, 'unwritable');
    mkdirSync(dir);
    writeFileSync(join(dir, 'file'), '');
    const r = await cli(['host', 'setup', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'file', 'sub', 'unit.service'), '--no-guard', '--set', `state-dir=${join(dir, 'state')}`]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, new RegExp(`--unit-out ${join(dir, 'file', 'sub', 'unit.service')}: ${join(dir, 'file')} is not a directory \\(ENOTDIR\\)`));
    assert.deepEqual(readdirSync(dir), ['file']);
  });

  it('host setup and host dev refuse a relative --config-out or --unit-out (the unit names them for systemd) before writing anything', async () => {
    // Should a relative path be taken after all, it lands in the test's own directory.
    const cwd = process.cwd();
    mkdirSync(join(tmp.path, 'cwd'));
    process.chdir(join(tmp.path, 'cwd'));
    try {
      for (const args of [['--config-out', 'rel.yaml'], ['--unit-out', 'rel.service']]) {
        const defaults = ['--config-out', join(tmp.path, 'r', 'config.yaml'), '--unit-out', join(tmp.path, 'r', 'unit.service')];
        const flags = [...defaults.filter((_, i) => defaults[i - (i % 2)] !== args[0]), ...args];
        const r = await cli(['host', 'setup', '--no-guard', '--set', `state-dir=${join(tmp.path, 'r', 'state')}`, '--set', 'vmm-user=root', ...flags]);
        assert.equal(r.code, 2, r.err);
        assert.match(r.err, new RegExp(`${args[0]} ${args[1]?.replace('.', '\\.')}: must be an absolute path`));
      }
    } finally {
      process.chdir(cwd);
    }
    assert.equal(existsSync(join(tmp.path, 'r')), false);
    assert.deepEqual(readdirSync(join(tmp.path, 'cwd')), []);
  });

  it("host setup: a missing VMM's fix is given as --set <key>=…, the form this command takes", async () => {
    const p = join(tmp.path, 'b');
    const { checks } = await hostSetup({ settings: { 'firecracker-bin': '/nonexistent/firecracker', 'state-dir': join(p, 'state'), 'vmm-user': 'root' }, configPath: join(p, 'config.yaml'), unitPath: join(p, 'unit.service'), execStart: '/bin/true' });
    const fc = checks.find((c) => c.check === 'vmm firecracker');
    assert.match(fc?.fix ?? '', /--set firecracker-bin=…/);
    assert.doesNotMatch(fc?.fix ?? '', /set --firecracker-bin/);
  });

  it('host setup that fails part way (the unit cannot be written) puts the config back and removes the state dir it made', async () => {
    const p = join(tmp.path, 'c');
    mkdirSync(p);
    writeFileSync(join(p, 'config.yaml'), 'verbosity: 3\n');
    writeFileSync(join(p, 'file'), '');
    await assert.rejects(hostSetup({ settings: { verbosity: '1', 'state-dir': join(p, 'state', 'deep') }, configPath: join(p, 'config.yaml'), unitPath: join(p, 'file', 'unit.service'), execStart: '/bin/true' }), /EEXIST|ENOTDIR/);
    assert.equal(readFileSync(join(p, 'config.yaml'), 'utf8'), 'verbosity: 3\n');
    assert.equal(existsSync(join(p, 'state')), false);
  });

  it('inspect: a bad --hub-<flag> is named with its prefix', async () => {
    const r = await cli(['inspect', '--config', '/dev/null', '--hub-only', '--hub-mode', 'bogus']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--hub-mode: must be vlan or bridge/);
  });

  it("inspect: a stopped daemon's fix names the --config given", async () => {
    const config = join(tmp.path, 'inspect.yaml');
    writeFileSync(config, `grpc-endpoint: unix:${join(tmp.path, 'none.sock')}\nstate-dir: ${join(tmp.path, 'nostate')}\n`);
    const r = await cli(['-o', 'json', 'inspect', '--config', config]);
    const daemon = (JSON.parse(r.out) as Check[]).find((c) => c.check === 'daemon');
    assert.match(daemon?.fix ?? '', new RegExp(`matchlockd run --config ${config.replace(/[.]/g, '\\.')}\\)$`));
  });
});
