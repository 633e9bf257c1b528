import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { VERSION } from '../../src/version.js';

/**
 * The package as `npm pack` makes it, unpacked beside a node_modules that holds only the
 * production dependencies (linked from this checkout's), which is what `npm install -g` gives
 * an operator: no TypeScript, no tsx, no sources.
 */
describe('the npm package', { timeout: 300_000 }, () => {
  const tmp = tempDir('package');
  const pkg = join(tmp.path, 'package');
  const hadDist = existsSync(join(ROOT, 'dist'));
  let files: string[] = [];
  after(() => {
    tmp.remove();
    // prepack builds dist/ in the checkout; leave the checkout as it was.
    if (!hadDist) rmSync(join(ROOT, 'dist'), { recursive: true, force: true });
  });

  before(() => {
    const out = execFileSync('npm', ['pack', '--json', '--pack-destination', tmp.path], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const [packed] = JSON.parse(out.slice(out.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    assert.ok(packed);
    files = packed.files.map((f) => f.path);
    execFileSync('tar', ['-xzf', join(tmp.path, packed.filename), '-C', tmp.path]);
    const prod = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: ROOT, encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const dir of prod) {
      const rel = relative(join(ROOT, 'node_modules'), dir);
      // Only top-level packages: nested node_modules come along inside their parent.
      if (rel.startsWith('..') || rel === '' || rel.includes('node_modules') || (rel.split('/').length > (rel.startsWith('@') ? 2 : 1))) continue;
      mkdirSync(dirname(join(pkg, 'node_modules', rel)), { recursive: true });
      symlinkSync(dir, join(pkg, 'node_modules', rel));
    }
  });

  const daemons: DaemonHandle[] = [];
  after(async () => {
    for (const d of daemons) await d.stop();
  });

  const run = (bin: string, args: string[], env: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, [join(pkg, 'bin', bin), ...args], { cwd: tmp.path, encoding: 'utf8', env: { ...process.env, ...env } });

  it('holds the compiled JavaScript, the bins and the protos, and no TypeScript or tests', () => {
    for (const f of ['bin/matchlockd.js', 'bin/matchlock.js', 'dist/matchlockd/main.js', 'dist/daemon/main.js', 'dist/cli/main.js', 'dist/adapters/images/oci/unpack-process.js', 'libexec/spawner.py', 'proto/types/microvm.proto', 'README.md']) {
      assert.ok(files.includes(f), `${f} missing from the package`);
    }
    assert.deepEqual(files.filter((f) => f.endsWith('.ts') || f.startsWith('test/') || f.startsWith('src/')), []);
    const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    assert.equal(manifest.dependencies.tsx, undefined, 'tsx is only for running a checkout');
    assert.equal(existsSync(join(pkg, 'node_modules', 'tsx')), false);
  });

  it('runs matchlockd version and matchlock --help without tsx', () => {
    const v = run('matchlockd.js', ['version']);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stdout, `matchlockd ${VERSION}\n`);
    const help = run('matchlock.js', ['--help']);
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /Usage: matchlock/);
  });

  it('the compiled daemon finds its process spawner in the package and starts programs through it', () => {
    const code = `
      const m = await import(${JSON.stringify('PLACEHOLDER')});
      const log = { warn: (_, msg) => console.error(msg), info() {}, debug() {}, error() {}, child() { return log; } };
      const ok = await m.startSpawner(log);
      const r = await m.runProgram('sh', ['-c', 'echo $PPID'], { timeoutMs: 10000, maxBytes: 1000 });
      console.log(JSON.stringify({ ok, script: m.SPAWNER_SCRIPT, parent: Number(r.stdout.toString()), spawner: m.spawnerPid() }));
      m.stopSpawner();`.replace('"PLACEHOLDER"', JSON.stringify(pathToFileURL(join(pkg, 'dist', 'adapters', 'spawner.js')).href));
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: tmp.path, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { ok: boolean; script: string; parent: number; spawner: number };
    assert.deepEqual([got.ok, got.script, got.parent], [true, join(realpathSync(pkg), 'libexec', 'spawner.py'), got.spawner]);
  });

  it('host setup writes a unit that runs the installed matchlockd, resolved at setup time', () => {
    const setup = (name: string, bin: string, path: string) => {
      const dir = join(tmp.path, name);
      const r = spawnSync(process.execPath, [bin, 'host', 'setup', '--no-guard', '-o', 'json', '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'),
        '--set', `state-dir=${join(dir, 'state')}`, '--set', 'vmm-user=root'], { encoding: 'utf8', env: { ...process.env, PATH: path } });
      const execStart = readFileSync(join(dir, 'unit.service'), 'utf8').split('\n').find((l) => l.startsWith('ExecStart='));
      const checks = (JSON.parse(r.stdout) as { checks: { check: string; status: string }[] }).checks;
      return { execStart, daemonBin: checks.find((c) => c.check === 'daemon-bin')?.status };
    };
    const sysPath = '/usr/sbin:/usr/bin:/sbin:/bin';
    // Run from the installed package, nothing on PATH: the package's own matchlockd.
    const installed = realpathSync(join(pkg, 'bin', 'matchlockd.js'));
    assert.deepEqual(setup('own', join(pkg, 'bin', 'matchlock.js'), sysPath), { execStart: `ExecStart=${process.execPath} --max-semi-space-size=1 ${installed} run --config ${join(tmp.path, 'own', 'config.yaml')}`, daemonBin: 'ok' });
    // Run from the checkout with the package installed on PATH (npm's bin link): the installed one.
    const prefixBin = join(tmp.path, 'prefix', 'bin');
    mkdirSync(prefixBin, { recursive: true });
    symlinkSync(join(pkg, 'bin', 'matchlockd.js'), join(prefixBin, 'matchlockd'));
    assert.deepEqual(setup('onpath', join(ROOT, 'bin', 'matchlock.js'), `${prefixBin}:${sysPath}`), { execStart: `ExecStart=${process.execPath} --max-semi-space-size=1 ${installed} run --config ${join(tmp.path, 'onpath', 'config.yaml')}`, daemonBin: 'ok' });
    // Run from the checkout with nothing installed: the checkout's, and a warning saying so.
    const checkout = setup('checkout', join(ROOT, 'bin', 'matchlock.js'), sysPath);
    assert.equal(checkout.daemonBin, 'warn');
    assert.equal(checkout.execStart, `ExecStart=${process.execPath} --max-semi-space-size=1 ${realpathSync(join(ROOT, 'bin', 'matchlockd.js'))} run --config ${join(tmp.path, 'checkout', 'config.yaml')}`);
  });

  it('the packaged daemon runs from its bundle: it serves, answers health and reflection from the packaged protos on their first call, and metrics when configured', async () => {
    // Short: VM sockets under the state dir must fit the unix socket path limit.
    const state = join(tmp.path, 'd');
    const d = await startDaemon(state, ['--vmm-user', 'root', '--vmm-cgroups=false', '--metrics-endpoint', '127.0.0.1:0'], {}, undefined, [join(pkg, 'bin', 'matchlockd.js')]);
    daemons.push(d);
    const c = new grpc.Client(d.target, grpc.credentials.createInsecure());
    const id = (b: Buffer) => b;
    const unary = (path: string, body: Buffer) => new Promise<{ code: grpc.status; data: Buffer | undefined }>((resolve) => {
      c.makeUnaryRequest(path, id, id, body, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => resolve({ code: err ? err.code : grpc.status.OK, data: res }));
    });
    try {
      // ListMicroVMsRequest{namespace: "ns"}: none yet.
      const list = await unary('/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs', Buffer.from([0x0a, 0x02, ...Buffer.from('ns')]));
      assert.equal(list.code, grpc.status.OK);
      const health = await unary('/grpc.health.v1.Health/Check', Buffer.alloc(0));
      assert.deepEqual([health.code, [...(health.data ?? [])]], [grpc.status.OK, [0x08, 0x01]], 'SERVING');
      // list_services (field 7), empty: reflection reads the package's proto/ for the answer.
      const refl = await new Promise<{ code: grpc.status; text: string }>((resolve) => {
        const call = c.makeBidiStreamRequest('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', id, id, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
        const data: Buffer[] = [];
        call.on('data', (b: Buffer) => data.push(b));
        call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, text: '' }));
        call.on('end', () => resolve({ code: grpc.status.OK, text: Buffer.concat(data).toString('latin1') }));
        call.write(Buffer.from([0x3a, 0x00]));
        call.end();
      });
      assert.equal(refl.code, grpc.status.OK);
      for (const s of ['microvm.services.api.v1alpha1.MicroVM', 'matchlock.v1.MicroVMLifecycle']) assert.ok(refl.text.includes(s), `reflection lists ${s}`);
    } finally {
      c.close();
    }
    let port: number | undefined;
    for (let i = 0; i < 200 && !port; i++) {
      port = d.logs.map((l) => JSON.parse(l) as { msg?: string; port?: number }).find((r) => r.msg === 'metrics endpoint listening')?.port;
      if (!port) await sleep(50);
    }
    const metrics = await fetch(`http://127.0.0.1:${port ?? 0}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^matchlock_build_info\{/m);
  });

  it('the packaged daemon loads its lazily used parts (metrics, the HTTP gateway, node-tar, health, reflection) only when used', async () => {
    const state = join(tmp.path, 'idle');
    const trace = join(tmp.path, 'idle-modules.txt');
    const d = await startDaemon(state, ['--vmm-user', 'root', '--vmm-cgroups=false'], { MATCHLOCK_MODULE_TRACE: trace }, undefined, ['--import', join(ROOT, 'test/helpers/module-trace.mjs'), join(pkg, 'bin', 'matchlockd.js')]);
    daemons.push(d);
    d.proc.kill('SIGUSR2');
    for (let i = 0; i < 600 && !existsSync(`${trace}.cjs`); i++) await sleep(50);
    const loaded = [...readFileSync(trace, 'utf8').split('\n'), ...readFileSync(`${trace}.cjs`, 'utf8').split('\n')].filter(Boolean);
    const bundle = `${pathToFileURL(join(realpathSync(pkg), 'dist', 'matchlockd')).href}/`;
    assert.ok(loaded.includes(`${bundle}main.js`), 'the daemon runs from its bundle');
    assert.deepEqual(loaded.filter((m) => m.includes('/dist/daemon/') || m.includes('/dist/adapters/')), [], 'no module of tsc\'s output');
    // esbuild names a lazily imported chunk after its module: prometheus.js, metrics.js, the
    // HTTP gateway's server.js, node-tar's index.min.js. A static import would fold it into the
    // chunks loaded at start, and its file would be gone.
    for (const lazy of ['prometheus', 'metrics', 'server', 'index.min']) {
      assert.ok(files.some((f) => f.startsWith(`dist/matchlockd/${lazy}-`)), `a chunk of its own for ${lazy}.js`);
    }
    assert.deepEqual(loaded.filter((m) => /\/dist\/matchlockd\/(prometheus|metrics|server|index\.min)-/.test(m) || /\/node_modules\/(grpc-health-check|@grpc\/reflection|protobufjs|prom-client|tar)\//.test(m)), []);
  });
});
