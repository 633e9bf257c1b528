import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { DAEMON_BIN, ROOT, daemonFailsToStart, startDaemon, tempDir } from '../helpers/daemon.js';

const base = (state: string) => ['run', '--state-dir', state, '--grpc-endpoint', '127.0.0.1:0', '--config', '/dev/null', '--log-format', 'json'];

function record(uid: string): MicroVM {
  return {
    uid, version: 1,
    spec: {
      name: 'kept', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: { ...initialStatus(), state: 'CREATED', vmmPid: 0 },
    createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z',
  } as MicroVM;
}

/** A stand-in VMM: a live process whose pid file and command line point at its VM directory, as QEMU's do. */
function fakeVmm(dir: string) {
  mkdirSync(dir, { recursive: true });
  const proc = spawn('sh', ['-c', 'sleep 600', dir], { stdio: 'ignore', detached: true });
  writeFileSync(join(dir, 'qemu.pid'), `${proc.pid}\n`);
  return proc;
}

const damage: Record<string, (db: string) => void> = {
  'truncated to half': (db) => truncateSync(db, Math.floor(statSync(db).size / 2)),
  'truncated to nothing': (db) => truncateSync(db, 0),
  zeroed: (db) => writeFileSync(db, Buffer.alloc(statSync(db).size)),
  'garbled header': (db) => {
    const fd = openSync(db, 'r+');
    writeSync(fd, Buffer.from('not sqlite at all'), 0, 16, 0);
    closeSync(fd);
  },
  'garbled page': (db) => {
    const fd = openSync(db, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 4096);
    closeSync(fd);
  },
};

describe('matchlockd refuses to start on a damaged store, and touches nothing', () => {
  const tmp = tempDir('startup');
  after(() => tmp.remove());

  for (const [n, [kind, hurt]] of Object.entries(damage).entries()) {
    it(`${kind}: refused with the fix in the message; the running VMM and its directory stay`, async () => {
      // Short: VM sockets under the state dir must fit the unix socket path limit.
      const state = join(tmp.path, `d${n}`);
      const db = join(state, 'matchlock.db');
      const uid = '01JDAMAGED0000000000000000';
      const dir = join(state, 'vm', 'ns', 'kept', uid);
      const store = new SqliteStore(db);
      for (let i = 0; i < 200; i++) store.insert(record(i === 0 ? uid : `01JFILL${String(i).padStart(19, '0')}`));
      store.close();
      const vmm = fakeVmm(dir);
      try {
        hurt(db);
        const before = readFileSync(db);
        const { code, output } = await daemonFailsToStart(base(state));
        assert.notEqual(code, 0);
        assert.match(output, new RegExp(`the store ${db} is damaged \\(`));
        assert.match(output, /restore matchlock\.db from a backup, or move it aside \(mv /);
        assert.doesNotMatch(output, /grpc api listening|orphan/);
        assert.ok(vmm.pid && spawnSync('kill', ['-0', String(vmm.pid)]).status === 0, 'the VMM still runs');
        assert.ok(existsSync(join(dir, 'qemu.pid')), 'its directory is still there');
        // inspect reports it as a failed check with the fix, instead of failing itself.
        const insp = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent.sock'], { encoding: 'utf8' });
        const store = (JSON.parse(insp.stdout) as { check: string; status: string; evidence: string; fix?: string }[]).find((c) => c.check === 'store');
        assert.equal(store?.status, 'fail', insp.stdout + insp.stderr);
        assert.match(store?.evidence ?? '', /is damaged/);
        assert.match(store?.fix ?? '', /restore .* from a backup, or move it aside/);
        assert.deepEqual(readFileSync(db), before, 'the damaged file is left as it was, for recovery');
      } finally {
        // Its own process group (detached): the shell and its sleep go together.
        if (vmm.pid) process.kill(-vmm.pid, 'SIGKILL');
      }
    });
  }

  it('a damaged store is refused before the VMM user is created, and the state dir is left as it was', async () => {
    const state = join(tmp.path, 'dvu');
    const db = join(state, 'matchlock.db');
    new SqliteStore(db).close();
    const fd = openSync(db, 'r+');
    writeSync(fd, Buffer.from('garbagegarbagegarbage'), 0, 21, 0);
    closeSync(fd);
    const user = `mlt-vmm-${process.pid}`;
    const entries = readdirSync(state).sort();
    try {
      const { code, output } = await daemonFailsToStart([...base(state), '--vmm-user', user, '--vmm-cgroups=false']);
      assert.equal(code, 1, output);
      assert.match(output, new RegExp(`the store ${db} is damaged \\(`));
      assert.doesNotMatch(output, /created the VMM user/);
      assert.notEqual(spawnSync('getent', ['passwd', user]).status, 0, `no user ${user} was created`);
      assert.deepEqual(readdirSync(state).sort(), entries);
    } finally {
      if (spawnSync('getent', ['passwd', user]).status === 0) spawnSync('userdel', [user]);
      if (spawnSync('getent', ['group', user]).status === 0) spawnSync('groupdel', [user]);
    }
  });

  it('a store SQLite cannot open (a directory, a link to nothing, a directory as its -wal) is refused before the VMM user is created', async () => {
    const user = `mlt-vmm2-${process.pid}`;
    const cases: [string, (db: string) => void, RegExp][] = [
      ['a directory as the store', (db) => mkdirSync(db), /matchlock\.db is a directory, not a regular file/],
      ['a link to nothing', (db) => symlinkSync(join(dirname(db), 'nothing'), db), /matchlock\.db is a symbolic link to nothing/],
      ['a directory as its -wal', (db) => {
        new SqliteStore(db).close();
        mkdirSync(`${db}-wal`);
      }, /matchlock\.db-wal is a directory, not a regular file/],
    ];
    try {
      for (const [what, make, message] of cases) {
        const state = join(tmp.path, `cantopen-${cases.findIndex((c) => c[0] === what)}`);
        mkdirSync(state, { recursive: true });
        const db = join(state, 'matchlock.db');
        make(db);
        const entries = readdirSync(state).sort();
        const { code, output } = await daemonFailsToStart([...base(state), '--vmm-user', user, '--vmm-cgroups=false']);
        assert.equal(code, 1, `${what}: ${output}`);
        assert.match(output, new RegExp(`the store ${db} is damaged \\(`), what);
        assert.match(output, message, what);
        assert.doesNotMatch(output, /created the VMM user/, what);
        assert.notEqual(spawnSync('getent', ['passwd', user]).status, 0, `${what}: no user ${user} was created`);
        assert.deepEqual(readdirSync(state).sort(), entries, what);
      }
    } finally {
      if (spawnSync('getent', ['passwd', user]).status === 0) spawnSync('userdel', [user]);
      if (spawnSync('getent', ['group', user]).status === 0) spawnSync('groupdel', [user]);
    }
  });

  it('a healthy store of the same shape starts (the refusals above are about damage)', async () => {
    const state = join(tmp.path, 'healthy');
    const store = new SqliteStore(join(state, 'matchlock.db'));
    store.insert(record('01JHEALTHY0000000000000000'));
    store.close();
    const d = await startDaemon(state, ['--config', '/dev/null']);
    await d.stop();
  });
});

describe('matchlockd and its state dir', () => {
  const tmp = tempDir('statedir');
  after(() => tmp.remove());

  it('warns at start when the configured default provider cannot run VMs, and still starts', async () => {
    const d = await startDaemon(join(tmp.path, 'nofc'), ['--default-provider', 'firecracker', '--firecracker-bin', join(tmp.path, 'no-such-firecracker')]);
    try {
      const line = d.logs.find((l) => l.includes('the default provider cannot run VMs'));
      assert.ok(line, d.logs.join('\n'));
      assert.match(line, /firecracker/);
      assert.match(line, /no-such-firecracker/);
    } finally {
      await d.stop();
    }
  });

  it('says nothing of a missing VMM when the default provider can run VMs', async () => {
    const d = await startDaemon(join(tmp.path, 'usable'), ['--default-provider', 'qemu', '--qemu-bin', '/bin/true']);
    try {
      assert.ok(d.logs.some((l) => l.includes('default provider chosen')), d.logs.join('\n'));
      const wrong = d.logs.filter((l) => /no VMM binary found|cannot run VMs/.test(l));
      assert.deepEqual(wrong, []);
    } finally {
      await d.stop();
    }
  });

  it('a second daemon on one state dir refuses, naming the first one\'s pid; a killed first leaves no stale lock', async () => {
    const state = join(tmp.path, 'shared');
    const first = await startDaemon(state);
    try {
      const { code, output } = await daemonFailsToStart(base(state));
      assert.notEqual(code, 0);
      assert.match(output, new RegExp(`state-dir ${state} is in use by another matchlockd \\(pid ${first.proc.pid}\\)`));
    } finally {
      await first.kill();
    }
    const second = await startDaemon(state);
    assert.equal(readFileSync(join(state, 'matchlockd.pid'), 'utf8').trim(), String(second.proc.pid));
    await second.stop();
    assert.equal(existsSync(join(state, 'matchlockd.pid')), false, 'a clean stop removes its pid file');
  });

  /**
   * The daemon started on `state` in a private mount namespace (the tmpfs at `mnt` exists only
   * for it), after `mount` has run there; its exit status and output.
   */
  function startInMountNamespace(t: TestContext, mnt: string, mount: string, state: string): { status: number | null; output: string } | undefined {
    if (process.getuid?.() !== 0 || spawnSync('sh', ['-c', 'command -v unshare']).status !== 0) {
      if (process.env.CI) assert.fail('needs root and unshare');
      t.skip('needs root and unshare');
      return undefined;
    }
    mkdirSync(mnt);
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `${mount} && exec "$@"`, 'sh', process.execPath, DAEMON_BIN, ...base(state)], { encoding: 'utf8', timeout: 30_000 });
    return { status: r.status, output: r.stdout + r.stderr };
  }

  it('a read-only state dir is refused naming the path, without a crash', async (t) => {
    const mnt = join(tmp.path, 'ro');
    const state = join(mnt, 'state');
    const r = startInMountNamespace(t, mnt, `mount -t tmpfs -o size=4m matchlock-test "${mnt}" && mkdir -m 0750 "${state}" && mount -o remount,ro "${mnt}"`, state);
    if (!r) return;
    assert.equal(r.status, 1, r.output);
    assert.match(r.output, new RegExp(`state-dir ${state} is on a read-only file system \\(EROFS\\)`));
    assert.doesNotMatch(r.output, /\n\s+at |Uncaught|grpc api listening/);
  });

  it('a missing state dir on a read-only file system is refused naming EROFS, not ENOENT', async (t) => {
    const mnt = join(tmp.path, 'rm');
    // Two levels to make: mkdir -p reports ENOENT for the inner one when the outer is refused.
    const state = join(mnt, 'a', 's');
    const r = startInMountNamespace(t, mnt, `mount -t tmpfs -o size=4m,ro matchlock-test "${mnt}"`, state);
    if (!r) return;
    assert.equal(r.status, 1, r.output);
    assert.match(r.output, new RegExp(`state-dir ${state} is on a read-only file system \\(EROFS\\)`));
  });

  it('makes the state dir 0750 and tightens a world-readable one; the API socket is 0660 with grpc-socket-group', async () => {
    const fresh = join(tmp.path, 'fresh');
    const a = await startDaemon(fresh);
    await a.stop();
    assert.equal(statSync(fresh).mode & 0o777, 0o750);
    const old = join(tmp.path, 'old');
    mkdirSync(old, { mode: 0o755 });
    chmodSync(old, 0o755);
    const sock = join(tmp.path, 'api.sock');
    const b = await startDaemon(old, ['--grpc-endpoint', `unix:${sock}`, '--grpc-socket-group', 'nogroup']);
    try {
      assert.equal(statSync(old).mode & 0o777, 0o750);
      const st = statSync(sock);
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.gid, 65534, 'owned by the nogroup group');
      assert.equal(statSync(join(old, 'matchlock.db')).mode & 0o007, 0, 'the store is not for other users');
    } finally {
      await b.stop();
    }
    const { code, output } = await daemonFailsToStart([...base(join(tmp.path, 'c')), '--grpc-socket-group', 'no-such-group-here']);
    assert.equal(code, 2);
    assert.match(output, /grpc-socket-group no-such-group-here: no such group/);
  });

  it('a refused registry setting or auth file exits 2 naming it, and leaves the state dir as it was', async () => {
    const brokenAuth = join(tmp.path, 'broken-auth.json');
    writeFileSync(brokenAuth, '{ not json');
    // The log is JSON: the quotes around an entry are escaped.
    const cases: [string[], RegExp][] = [
      [['--registry-mirrors', 'https://docker.io=mirror.lan'], /registry-mirrors \\"https:\/\/docker\.io=mirror\.lan\\": must be registry=mirror/],
      [['--insecure-registries', 'reg.lan/path'], /insecure-registries \\"reg\.lan\/path\\": must be a registry, host\[:port\]/],
      [['--registry-auth-file', brokenAuth], /registry credentials .*broken-auth\.json: not JSON/],
    ];
    for (const [i, [args, message]] of cases.entries()) {
      // An empty state dir the daemon would tighten to 0750 and fill on a start.
      const state = join(tmp.path, `reg${i}`);
      mkdirSync(state, { mode: 0o755 });
      chmodSync(state, 0o755);
      const { code, output } = await daemonFailsToStart([...base(state), ...args]);
      assert.equal(code, 2, output);
      assert.match(output, message);
      assert.deepEqual(readdirSync(state), [], 'no store, lock or identity written');
      assert.equal(statSync(state).mode & 0o777, 0o755, 'the state dir is not touched');
    }
  });

  it('exits 2 on a usage error (an unknown flag, a flag without its value), as on any refused setting', async () => {
    for (const args of [['run', '--no-such-flag', '1'], ['run', '--state-dir'], ['no-such-command']]) {
      const { code, output } = await daemonFailsToStart(args);
      assert.equal(code, 2, `${args.join(' ')}: ${output}`);
      assert.match(output, /error: /);
    }
  });

  it('the bins name the missing build instead of a module stack when the compiled JavaScript is absent', () => {
    // A package without dist/ (and no src/ beside it): what MATCHLOCK_COMPILED=1 meets before `npm run build`.
    const pkg = join(tmp.path, 'no-dist');
    mkdirSync(join(pkg, 'bin'), { recursive: true });
    writeFileSync(join(pkg, 'package.json'), '{"type": "module"}\n');
    for (const bin of ['matchlockd', 'matchlock']) {
      writeFileSync(join(pkg, 'bin', `${bin}.js`), readFileSync(join(ROOT, 'bin', `${bin}.js`)));
      const r = spawnSync(process.execPath, [join(pkg, 'bin', `${bin}.js`), 'version'], { encoding: 'utf8', cwd: ROOT });
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.stderr, `${bin}: the compiled JavaScript (dist/) is missing: run \`npm run build\` first, or unset MATCHLOCK_COMPILED to run the sources\n`);
    }
  });
});

/** What a directory holds, recursively, with each entry's mode: compared before and after a refusal. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      out.push(`${p} ${(st.mode & 0o7777).toString(8)} ${st.isDirectory() ? 'dir' : st.size}`);
      if (st.isDirectory()) walk(p);
    }
  };
  out.push(`${dir} ${(statSync(dir).mode & 0o7777).toString(8)}`);
  walk(dir);
  return out;
}

describe('a state dir in flintlockd\'s layout (vm/<ns>/<name>/<uid> with firecracker.cfg, metadata.json and the pid of a live VMM)', () => {
  const tmp = tempDir('flintlock-layout');
  const vmm = spawn('sleep', ['600'], { stdio: 'ignore' });
  after(() => {
    vmm.kill('SIGKILL');
    tmp.remove();
  });
  const state = join(tmp.path, 'fl');
  const dir = join(state, 'vm', 'ns1', 'mvm1', '01HZZZZZZZZZZZZZZZZZZZZZZZ');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(state, 0o755);
  writeFileSync(join(dir, 'firecracker.cfg'), '{"boot-source":{}}\n');
  writeFileSync(join(dir, 'metadata.json'), '{"latest":{}}\n');
  writeFileSync(join(dir, 'firecracker.pid'), String(vmm.pid));
  writeFileSync(join(dir, 'firecracker.log'), '');

  it('matchlockd refuses with exit 1, names flintlock and the migration guide and the running VMM, and leaves the directory exactly as it was', async () => {
    const before = snapshot(state);
    const { code, output } = await daemonFailsToStart(base(state));
    assert.equal(code, 1, output);
    assert.match(output, new RegExp(`refusing to start: 1 VM directory has no record in ${state}/matchlock\\.db`));
    assert.match(output, /flintlockd's layout \(firecracker\.cfg, metadata\.json, firecracker\.pid\)/);
    assert.match(output, /docs\/migrating-from-flintlock\.md/);
    assert.match(output, new RegExp(`VMMs still running in ${dir} \\(pid ${vmm.pid}\\)`));
    assert.doesNotMatch(output, /from a backup/);
    assert.deepEqual(snapshot(state), before, 'no daemon-id, matchlock.db or lock made, no mode changed');
  });

  it('matchlock inspect FAILs on the unrecorded VM directories with the fix, while the daemon is down', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent.sock'], { encoding: 'utf8' });
    const checks = JSON.parse(r.stdout) as { check: string; status: string; evidence: string; fix?: string }[];
    const c = checks.find((x) => x.check === 'vm directories');
    assert.equal(c?.status, 'fail', r.stdout);
    assert.match(c?.evidence ?? '', new RegExp(`${dir}.*pid ${vmm.pid}.*flintlockd's layout`));
    assert.match(c?.fix ?? '', /docs\/migrating-from-flintlock\.md/);
  });

  it('matchlock image ... --init refuses to make a store there the way matchlockd refuses the state dir, and makes nothing', () => {
    const before = snapshot(state);
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), 'image', '--config', '/dev/null', '--state-dir', state, '--init', 'ls'], { encoding: 'utf8' });
    assert.equal(r.status, 6, r.stderr);
    assert.match(r.stderr, /--init: 1 VM directory has no record/);
    assert.match(r.stderr, /flintlockd's layout.*docs\/migrating-from-flintlock\.md/s);
    assert.deepEqual(snapshot(state), before);
  });

  it('once a matchlock.db exists there, matchlockd still names flintlock, advises no stopping of its VMMs, and changes nothing before refusing', async () => {
    new SqliteStore(join(state, 'matchlock.db')).close();
    try {
      const before = snapshot(state);
      const { code, output } = await daemonFailsToStart(base(state));
      assert.equal(code, 1, output);
      assert.match(output, /they hold flintlockd's files \(firecracker\.cfg, metadata\.json, firecracker\.pid\)/);
      assert.match(output, /docs\/migrating-from-flintlock\.md/);
      assert.doesNotMatch(output, /stop those VMMs/);
      assert.match(output, new RegExp(`nothing in ${state} was changed`));
      assert.deepEqual(snapshot(state), before, 'no daemon-id or lock made, no mode changed');
    } finally {
      for (const f of ['matchlock.db', 'matchlock.db-wal', 'matchlock.db-shm']) rmSync(join(state, f), { force: true });
    }
  });
});
