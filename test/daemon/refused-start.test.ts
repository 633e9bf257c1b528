import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { makeCerts } from '../helpers/certs.js';
import { DAEMON_BIN, daemonFailsToStart, ROOT, startDaemon, TEST_CGROUP_PARENT, tempDir } from '../helpers/daemon.js';

const base = (state: string) => ['run', '--state-dir', state, '--config', '/dev/null', '--log-format', 'json', '--vmm-cgroup-parent', TEST_CGROUP_PARENT];

/**
 * Runs `argv` under strace, stopped (SIGSTOP injected) as its first mkdir of `dir` returns; resolves
 * once it is stopped there, with its pid, to be continued with SIGCONT.
 */
async function stoppedAfterMkdir(dir: string, argv: string[]): Promise<{ pid: number; output: () => string; exited: Promise<number | null>; kill: () => void }> {
  return stoppedAfter(dir, 'mkdir,mkdirat', dir, argv);
}

/** As stoppedAfterMkdir, stopped as its first `calls` (strace's trace= list) on `path` returns, once `ready` exists. */
async function stoppedAfter(path: string, calls: string, ready: string, argv: string[]): Promise<{ pid: number; output: () => string; exited: Promise<number | null>; kill: () => void }> {
  const dir = ready;
  const proc = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-P', path, '-e', `trace=${calls}`, '-e', `inject=${calls}:signal=SIGSTOP:when=1`, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  proc.stdout.on('data', (c: Buffer) => (output += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  const kill = () => {
    if (proc.exitCode === null && proc.signalCode === null && proc.pid) process.kill(-proc.pid, 'SIGKILL');
  };
  const children = () => {
    try {
      return readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  };
  for (let i = 0; i < 600 && proc.exitCode === null; i++) {
    await new Promise((r) => setTimeout(r, 100));
    // /proc/<pid>/stat: "pid (comm) S ...", t or T once stopped.
    const pid = existsSync(dir) ? children().find((c) => /^\d+ \(.*\) [tT] /.test(readFileSync(`/proc/${c}/stat`, 'utf8'))) : undefined;
    if (pid !== undefined) return { pid, output: () => output, exited, kill };
  }
  kill();
  throw new Error(`not stopped at ${calls} of ${path}: ${output}`);
}

async function listening(server: Server, at: number | string): Promise<void> {
  await new Promise<void>((resolve) => (typeof at === 'number' ? server.listen(at, '127.0.0.1', () => resolve()) : server.listen(at, () => resolve())));
}

describe('a refused start leaves no new state dir behind, and an existing one as it was', () => {
  const tmp = tempDir('refused');
  const busy = createServer();
  const busySocket = createServer();
  let port = 0;
  // Live sockets a stream connect does not reach: a datagram socket (EPROTOTYPE) and a stream
  // server whose accept queue is full (EAGAIN). Neither is a stopped daemon's leftover.
  let others: ChildProcess | undefined;
  let boundIno = 0;
  before(async () => {
    await listening(busy, 0);
    port = (busy.address() as { port: number }).port;
    await listening(busySocket, join(tmp.path, 'served.sock'));
    mkdirSync(join(tmp.path, 'real'));
    symlinkSync(join(tmp.path, 'real'), join(tmp.path, 'link'));
    others = spawn('python3', ['-c', [
      'import socket, sys, time',
      'd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(sys.argv[1])',
      's = socket.socket(socket.AF_UNIX); s.bind(sys.argv[2]); s.listen(0); held = []',
      // Bound and never listened on: a connect is refused as at a stopped daemon's socket.
      'b = socket.socket(socket.AF_UNIX); b.bind(sys.argv[3])',
      // The same, bound through a symbolic link to its directory (/var/run is one to /run).
      'v = socket.socket(socket.AF_UNIX); v.bind(sys.argv[4])',
      'while True:',
      '    c = socket.socket(socket.AF_UNIX); c.setblocking(False)',
      '    try: c.connect(sys.argv[2]); held.append(c)',
      '    except BlockingIOError: break',
      'print("ready", flush=True); time.sleep(600)',
    ].join('\n'), join(tmp.path, 'dgram.sock'), join(tmp.path, 'full.sock'), join(tmp.path, 'bound.sock'), join(tmp.path, 'link', 'via.sock')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => others?.stdout?.once('data', () => resolve()));
    symlinkSync(join(tmp.path, 'nowhere.sock'), join(tmp.path, 'dangling.sock'));
    boundIno = statSync(join(tmp.path, 'bound.sock')).ino;
  });
  after(async () => {
    others?.kill();
    await new Promise((r) => busy.close(r));
    await new Promise((r) => busySocket.close(r));
    tmp.remove();
  });

  const cases = (): [string, string[], number, RegExp][] => {
    const notSocket = join(tmp.path, 'plain-file');
    writeFileSync(notSocket, '');
    const nodir = join(tmp.path, 'no-such-dir');
    const served = join(tmp.path, 'served.sock');
    return [
      ['gRPC port in use', ['--grpc-endpoint', `127.0.0.1:${port}`], 1, new RegExp(`grpc-endpoint 127\\.0\\.0\\.1:${port}: cannot listen`)],
      ['unix socket in use', ['--grpc-endpoint', `unix:${served}`], 1, new RegExp(`grpc-endpoint unix:${served}: cannot listen: another process is serving on ${served}`)],
      ['unix socket in a missing directory', ['--grpc-endpoint', `unix:${nodir}/x.sock`], 1, new RegExp(`grpc-endpoint unix:${nodir}/x\\.sock: cannot listen: directory ${nodir} does not exist`)],
      ['unix path that is no socket', ['--grpc-endpoint', `unix:${notSocket}`], 1, new RegExp(`grpc-endpoint unix:${notSocket}: cannot listen: ${notSocket} exists and is not a socket`)],
      ['a live datagram socket', ['--grpc-endpoint', `unix:${join(tmp.path, 'dgram.sock')}`], 1, /grpc-endpoint unix:\S+dgram\.sock: cannot listen: \S+ is a socket in use \(connecting to it: EPROTOTYPE\)/],
      ['a live server with a full accept queue', ['--grpc-endpoint', `unix:${join(tmp.path, 'full.sock')}`], 1, /grpc-endpoint unix:\S+full\.sock: cannot listen: \S+ is a socket in use \(connecting to it: EAGAIN\)/],
      ['a socket a live process has bound but does not listen on', ['--grpc-endpoint', `unix:${join(tmp.path, 'bound.sock')}`], 1, /grpc-endpoint unix:\S+bound\.sock: cannot listen: \S+ is a socket a live process holds \(bound, listed in \/proc\/net\/unix\)/],
      ['a socket a live process has bound through a symbolic link to its directory', ['--grpc-endpoint', `unix:${join(tmp.path, 'real', 'via.sock')}`], 1, /grpc-endpoint unix:\S+via\.sock: cannot listen: \S+ is a socket a live process holds \(bound, listed in \/proc\/net\/unix\)/],
      ['a socket path longer than sun_path takes', ['--grpc-endpoint', `unix:${join(tmp.path, 'l'.repeat(110))}.sock`], 1, /grpc-endpoint unix:\S+: cannot listen: the path is \d+ bytes; a unix socket's path takes at most 107/],
      ['a dangling symlink at the socket path', ['--grpc-endpoint', `unix:${join(tmp.path, 'dangling.sock')}`], 1, /grpc-endpoint unix:\S+dangling\.sock: cannot listen: \S+ is a symbolic link/],
      ['http endpoint in use', ['--grpc-endpoint', '127.0.0.1:0', '--enable-http', '--http-endpoint', `127.0.0.1:${port}`], 1, new RegExp(`http-endpoint 127\\.0\\.0\\.1:${port}: cannot listen: .*EADDRINUSE`)],
      ['metrics endpoint in use', ['--grpc-endpoint', '127.0.0.1:0', '--metrics-endpoint', `127.0.0.1:${port}`], 1, new RegExp(`metrics-endpoint 127\\.0\\.0\\.1:${port}: cannot listen: .*EADDRINUSE`)],
      ['debug endpoint in use', ['--grpc-endpoint', '127.0.0.1:0', '--debug-endpoint', `127.0.0.1:${port}`], 1, new RegExp(`debug-endpoint 127\\.0\\.0\\.1:${port}: cannot listen: .*EADDRINUSE`)],
      ['a uid range out of order', ['--grpc-endpoint', '127.0.0.1:0', '--vmm-uid-range', '5-1'], 2, /vmm-uid-range 5-1: must be FIRST-LAST with 1000 <= FIRST <= LAST/],
      ['a vmm-user of no valid shape', ['--grpc-endpoint', '127.0.0.1:0', '--vmm-user', '1:1:1'], 2, /vmm-user 1:1:1: must be root, uid:gid \(decimal numbers\), or a user name without ":"/],
      ['a vmm-user that is root by its uid', ['--grpc-endpoint', '127.0.0.1:0', '--vmm-user', '0'], 2, /vmm-user 0: vmm-user 0 has uid 0; name an unprivileged user, or root to run VMMs as root/],
      ['a vmm-user in root\'s group by its gid', ['--grpc-endpoint', '127.0.0.1:0', '--vmm-user', '5:0'], 2, /vmm-user 5:0: gid 0 is root's group: write root \(or 0:0\) to run VMMs as root/],
    ];
  };

  it('makes no state dir (nor its missing parent) for any refusal that could be known before', async () => {
    for (const [what, args, exit, message] of cases()) {
      const parent = join(tmp.path, 'new');
      const { code, output } = await daemonFailsToStart([...base(join(parent, 'state')), ...args]);
      assert.equal(code, exit, `${what}: ${output}`);
      assert.match(output, message, what);
      assert.equal(existsSync(parent), false, `${what}: no state dir (or parent) left behind`);
    }
  });

  it('touches nothing in an existing state dir for those refusals', async () => {
    for (const [i, [what, args, exit, message]] of cases().entries()) {
      // An existing state dir the daemon would tighten to 0750 and fill on a start.
      const state = join(tmp.path, `existing${i}`);
      mkdirSync(state, { mode: 0o755 });
      chmodSync(state, 0o755);
      writeFileSync(join(state, 'keep'), 'x');
      const { code, output } = await daemonFailsToStart([...base(state), ...args]);
      assert.equal(code, exit, `${what}: ${output}`);
      assert.match(output, message, what);
      assert.deepEqual(readdirSync(state), ['keep'], `${what}: no store, lock or identity written`);
      assert.equal(statSync(state).mode & 0o777, 0o755, `${what}: the state dir is not tightened`);
      assert.doesNotMatch(output, /orphan|created the VMM user/, `${what}: no sweep, no useradd`);
    }
    assert.equal(statSync(join(tmp.path, 'bound.sock')).ino, boundIno, 'the socket a live process holds was neither removed nor replaced');
  });

  it('a unix: socket in the state dir, or in a parent the start makes for it, is no missing directory', async () => {
    for (const [state, sock] of [[join(tmp.path, 'fresh-a', 'state'), join(tmp.path, 'fresh-a', 'grpc.sock')], [join(tmp.path, 'fresh-b'), join(tmp.path, 'fresh-b', 'grpc.sock')]] as const) {
      const d = await startDaemon(state, ['--grpc-endpoint', `unix:${sock}`, '--vmm-cgroups=false']);
      await d.stop();
    }
  });

  it('a start that fails later removes the state dir it made, and leaves an existing one as it found it', async () => {
    // matchlockd with a provider that cannot be built: it fails once the state dir is made,
    // locked, its identity written and its store opened.
    const entry = ['--import', 'tsx', join(ROOT, 'test/fakes/providers/broken/matchlockd.ts')];
    const fails = async (state: string) => {
      const r = spawnSync(process.execPath, [...entry, ...base(state), '--grpc-endpoint', '127.0.0.1:0'], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 1, r.stdout + r.stderr);
      assert.match(r.stdout + r.stderr, /the broken provider cannot be built/);
      assert.match(r.stdout + r.stderr, /"msg":"daemon identity"/, 'it failed after the state dir was taken');
    };
    const parent = join(tmp.path, 'late');
    await fails(join(parent, 'state'));
    assert.equal(existsSync(parent), false, 'no state dir (or parent) left behind');

    const state = join(tmp.path, 'late-existing');
    mkdirSync(state, { mode: 0o755 });
    chmodSync(state, 0o755);
    writeFileSync(join(state, 'keep'), 'x');
    await fails(state);
    assert.deepEqual(readdirSync(state), ['keep'], 'the store, lock and identity this start made are gone');
    assert.equal(statSync(state).mode & 0o777, 0o755, 'the mode is given back');
    assert.equal(readFileSync(join(state, 'keep'), 'utf8'), 'x');
  });

  it('a start that fails later removes an ancestor it made only when empty: another start\'s state dir made in it meanwhile stays', async (t) => {
    if (spawnSync('strace', ['-V']).status !== 0) return t.skip('strace is not installed');
    const parent = join(tmp.path, 'anc');
    const state = join(parent, 's');
    const entry = ['--import', 'tsx', join(ROOT, 'test/fakes/providers/broken/matchlockd.ts')];
    // Stopped once it has made the missing parent, before the state dir in it.
    const first = await stoppedAfterMkdir(parent, [process.execPath, ...entry, ...base(state), '--grpc-endpoint', '127.0.0.1:0']);
    try {
      const other = join(parent, 'other');
      mkdirSync(other);
      writeFileSync(join(other, 'matchlock.db'), 'theirs');
      process.kill(first.pid, 'SIGCONT');
      assert.equal(await first.exited, 1, first.output());
      assert.match(first.output(), /the broken provider cannot be built/);
      assert.deepEqual(readdirSync(parent), ['other'], 'its own state dir is gone, the other one stays');
      assert.equal(readFileSync(join(other, 'matchlock.db'), 'utf8'), 'theirs');
    } finally {
      first.kill();
      await first.exited;
    }
  });

  it('a start refused once it took a state dir a killed daemon left puts back its pid file and the directory\'s times', async () => {
    const state = join(tmp.path, 'killed');
    const d = await startDaemon(state, ['--vmm-cgroups=false']);
    await d.kill();
    // What the directory holds, as stat and the bytes of the pid file say; times to 10 µs, what
    // utimes(2) through a double keeps.
    const snap = () => [state, ...readdirSync(state).sort().map((n) => join(state, n))].map((f) => {
      const st = statSync(f, { bigint: true });
      return { f, mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, mtime: st.mtimeNs / 10_000n, ...(f.endsWith('matchlockd.pid') ? { content: readFileSync(f, 'utf8') } : {}) };
    });
    const before = snap();
    assert.equal(readFileSync(join(state, 'matchlockd.pid'), 'utf8').trim(), String(d.proc.pid), 'the killed daemon left its pid file');
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/fakes/providers/broken/matchlockd.ts'), ...base(state), '--grpc-endpoint', '127.0.0.1:0'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /"msg":"daemon identity"/, 'it failed after the state dir was taken');
    assert.deepEqual(snap(), before);
  });

  it('a daemon that opened the lock file a failing start then removed takes the lock on the file there now: never two daemons on one state dir', async (t) => {
    if (spawnSync('strace', ['-V']).status !== 0) return t.skip('strace is not installed');
    const state = join(tmp.path, 'relock');
    mkdirSync(state);
    const lockFile = join(state, 'matchlockd.lock');
    // A takes the lock and is stopped as it opens its pid file; it then fails (its provider
    // cannot be built) and removes the lock file it made while still holding the lock.
    const a = await stoppedAfter(join(state, 'matchlockd.pid'), 'openat', lockFile, [process.execPath, '--import', 'tsx', join(ROOT, 'test/fakes/providers/broken/matchlockd.ts'), ...base(state), '--grpc-endpoint', '127.0.0.1:0']);
    // B has opened that lock file when A fails: its open returns 8 s late.
    const bProc = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-P', lockFile, '-e', 'trace=openat', '-e', 'inject=openat:delay_exit=8000000:when=1', process.execPath, join(ROOT, 'bin/matchlockd.js'), ...base(state), '--grpc-endpoint', '127.0.0.1:0', '--vmm-cgroups=false'], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let bOut = '';
    bProc.stdout.on('data', (c: Buffer) => (bOut += c.toString()));
    bProc.stderr.on('data', (c: Buffer) => (bOut += c.toString()));
    const bExited = new Promise<number | null>((resolve) => bProc.once('exit', (c) => resolve(c)));
    const b = {
      output: () => bOut,
      exited: bExited,
      kill: () => {
        if (bProc.exitCode === null && bProc.signalCode === null && bProc.pid) process.kill(-bProc.pid, 'SIGKILL');
      },
    };
    const opened = () => {
      for (const pid of readFileSync(`/proc/${bProc.pid}/task/${bProc.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) {
        try {
          if (readdirSync(`/proc/${pid}/fd`).some((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`) === lockFile)) return Number(pid);
        } catch {
          // gone
        }
      }
      return undefined;
    };
    try {
      let bPid: number | undefined;
      for (let i = 0; i < 600 && (bPid = opened()) === undefined; i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(bPid, `B opened the lock file: ${bOut}`);
      process.kill(a.pid, 'SIGCONT');
      assert.equal(await a.exited, 1, a.output());
      assert.equal(existsSync(lockFile), false, 'A removed the lock file it made');
      for (let i = 0; i < 600 && !/grpc api listening/.test(b.output()); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(b.output(), /grpc api listening/);
      // B holds the lock on the file the path names, so C finds B.
      const c = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0']);
      assert.equal(c.code, 1, c.output);
      assert.match(c.output, new RegExp(`state-dir ${state} is in use by another matchlockd \\(pid ${bPid}\\)`));
    } finally {
      a.kill();
      b.kill();
      await Promise.all([a.exited, b.exited]);
    }
  });

  it('a start that takes the lock and cannot write its pid file leaves no lock file behind', async () => {
    const state = join(tmp.path, 'pid-dir');
    mkdirSync(join(state, 'matchlockd.pid'), { recursive: true });
    const { code, output } = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0']);
    assert.equal(code, 1, output);
    assert.match(output, new RegExp(`state-dir ${state}: cannot write ${join(state, 'matchlockd.pid')}: EISDIR`));
    assert.deepEqual(readdirSync(state), ['matchlockd.pid']);
  });

  it('VM directories a schema-1 store does not record are refused before anything is made, the store read as it is, not upgraded', async () => {
    const state = join(tmp.path, 'schema1');
    const dir = join(state, 'vm', 'ns', 'a', '01UNRECORDED00000000000000');
    mkdirSync(dir, { recursive: true });
    const db = join(state, 'matchlock.db');
    // The first schema: records only, no tombstones or events (user_version 1).
    const old = new Database(db);
    old.pragma('journal_mode = WAL');
    old.exec('CREATE TABLE microvms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL)');
    old.pragma('user_version = 1');
    old.close();
    const bytes = readFileSync(db);
    const entries = readdirSync(state).sort();
    const { code, output } = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0']);
    assert.equal(code, 1, output);
    assert.match(output, new RegExp(`refusing to start: 1 VM directory has no record in ${db} \\(${dir}\\).*nothing in ${state} was changed`));
    assert.deepEqual(readdirSync(state).sort(), entries, 'no lock, identity or -wal left');
    assert.deepEqual(readFileSync(db), bytes, 'the store is not upgraded');
  });

  it('a start refused once the state dir is taken leaves an older store unupgraded, for the matchlock it came from', () => {
    const state = join(tmp.path, 'older-store');
    mkdirSync(state, { mode: 0o750 });
    const db = join(state, 'matchlock.db');
    new SqliteStore(db).close();
    const older = new Database(db);
    const current = older.pragma('user_version', { simple: true }) as number;
    older.pragma(`user_version = ${current - 1}`);
    older.close();
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/fakes/providers/broken/matchlockd.ts'), ...base(state), '--grpc-endpoint', '127.0.0.1:0'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /the broken provider cannot be built/);
    // Before the check below, whose read-only connection makes -wal and -shm files of its own.
    assert.deepEqual(readdirSync(state), ['matchlock.db']);
    const after = new Database(db, { readonly: true });
    try {
      assert.equal(after.pragma('user_version', { simple: true }), current - 1, 'the schema is not upgraded');
    } finally {
      after.close();
    }
  });
});

describe('unusable TLS files are refused before anything is made, naming the setting', () => {
  const tmp = tempDir('refused-tls');
  after(() => tmp.remove());

  it('a cert or key that is no PEM, a key of another cert, a client CA without a certificate: exit 2', async () => {
    const certs = makeCerts(tmp.path);
    const garbage = join(tmp.path, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const brokenCa = join(tmp.path, 'broken-ca.pem');
    writeFileSync(brokenCa, `${readFileSync(certs.ca, 'utf8')}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`);
    const fifo = join(tmp.path, 'fifo.pem');
    execFileSync('mkfifo', [fifo]);
    const rsaKey = join(tmp.path, 'rsa.key');
    execFileSync('openssl', ['genrsa', '-out', rsaKey, '2048'], { stdio: 'pipe' });
    const tls = (cert: string, key: string) => ['--tls-cert', cert, '--tls-key', key];
    const mtls = (ca: string) => [...tls(certs.serverCert, certs.serverKey), '--tls-client-validate', '--tls-client-ca', ca];
    const cases: [string, string[], RegExp][] = [
      ['a cert that is no PEM', tls(garbage, certs.serverKey), new RegExp(`tls-cert ${garbage}: must hold a PEM certificate \\(.*no start line`)],
      ['a key in place of the cert', tls(certs.serverKey, certs.serverKey), new RegExp(`tls-cert ${certs.serverKey}: must hold a PEM certificate`)],
      ['a key that is no PEM', tls(certs.serverCert, garbage), new RegExp(`tls-key ${garbage}: must hold a PEM private key \\(`)],
      ['a directory in place of the key', tls(certs.serverCert, tmp.path), new RegExp(`tls-key ${tmp.path}: is a directory; it must be a file`)],
      // A FIFO blocked the read (and the event loop, so SIGTERM did nothing); /dev/zero never ends.
      ['a FIFO in place of the cert', tls(fifo, certs.serverKey), new RegExp(`tls-cert ${fifo}: is a FIFO; it must be a regular file`)],
      ['a character device in place of the key', tls(certs.serverCert, '/dev/zero'), /tls-key \/dev\/zero: is a character device; it must be a regular file/],
      // OpenSSL compares keys of one type only: an RSA key with an EC certificate was taken.
      ['a key of another type than the cert\'s', tls(certs.serverCert, rsaKey), new RegExp(`tls-key ${rsaKey}: must be the private key of the certificate in tls-cert ${certs.serverCert} \\(it is a key of another type or pair\\)`)],
      ['a key that is no PEM, with a metrics endpoint', [...tls(certs.serverCert, garbage), '--metrics-endpoint', '127.0.0.1:0'], new RegExp(`tls-key ${garbage}: must hold a PEM private key`)],
      ['the key of another cert', tls(certs.serverCert, certs.rogueKey), new RegExp(`tls-key ${certs.rogueKey}: must be the private key of the certificate in tls-cert ${certs.serverCert} \\(.*key values mismatch`)],
      ['a client CA holding no certificate', mtls(garbage), new RegExp(`tls-client-ca ${garbage}: must hold at least one PEM certificate`)],
      ['a client CA holding only a key', mtls(certs.serverKey), new RegExp(`tls-client-ca ${certs.serverKey}: must hold at least one PEM certificate`)],
      ['a client CA with a certificate that does not parse', mtls(brokenCa), new RegExp(`tls-client-ca ${brokenCa}: certificate 2 of 2 does not parse`)],
    ];
    for (const [what, args, message] of cases) {
      const parent = join(tmp.path, 'new');
      const { code, output } = await daemonFailsToStart([...base(join(parent, 'state')), '--grpc-endpoint', '127.0.0.1:0', ...args]);
      assert.equal(code, 2, `${what}: ${output}`);
      assert.match(output, message, what);
      assert.equal(existsSync(parent), false, `${what}: no state dir made`);
    }
    // The checks refuse only what is unusable: the same files in their places start a daemon.
    const d = await startDaemon(join(tmp.path, 'ok'), [...mtls(certs.ca), '--vmm-cgroups=false']);
    await d.stop();
  });
});

describe('a state dir this start cannot have is refused before it is changed', () => {
  const tmp = tempDir('refused-state');
  after(() => tmp.remove());

  it('a state dir another daemon holds keeps its mode, and gets no file from the refused start', async () => {
    const state = join(tmp.path, 'held');
    const first = await startDaemon(state, ['--vmm-cgroups=false']);
    try {
      // The first daemon made it 0750; an operator opened it up since.
      chmodSync(state, 0o755);
      const entries = readdirSync(state).sort();
      const { code, output } = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0', '--vmm-cgroups=false']);
      assert.equal(code, 1, output);
      assert.match(output, new RegExp(`state-dir ${state} is in use by another matchlockd \\(pid ${first.proc.pid}\\)`));
      assert.equal(statSync(state).mode & 0o777, 0o755, 'the other daemon\'s state dir is not tightened');
      assert.deepEqual(readdirSync(state).sort(), entries);
    } finally {
      await first.stop();
    }
  });

  it('a start whose new state dir another daemon locked first leaves that dir, and the daemon in it, alone', async (t) => {
    if (spawnSync('strace', ['-V']).status !== 0) return t.skip('strace is not installed');
    // Short: a longer state dir is refused first for its VM sockets' length.
    const parent = join(tmp.path, 'r');
    mkdirSync(parent);
    const state = join(parent, 's');
    // The first start makes the state dir and is stopped as its mkdir returns; a second start
    // finds the directory there and takes its lock; then the first goes on to find the lock taken.
    const first = await stoppedAfterMkdir(state, [process.execPath, DAEMON_BIN, ...base(state), '--grpc-endpoint', '127.0.0.1:0', '--vmm-cgroups=false']);
    let second: Awaited<ReturnType<typeof startDaemon>> | undefined;
    try {
      second = await startDaemon(state, ['--vmm-cgroups=false']);
      const kept = readdirSync(state).sort();
      process.kill(first.pid, 'SIGCONT');
      const code = await first.exited;
      assert.equal(code, 1, first.output());
      assert.match(first.output(), new RegExp(`state-dir ${state} is in use by another matchlockd \\(pid ${second.proc.pid}\\)`));
      assert.equal(second.proc.exitCode, null, 'the daemon that holds the state dir still runs');
      assert.deepEqual(readdirSync(state).sort(), kept, 'the state dir and its store are left to the daemon holding it');
      // Its lock file is the one it holds: a third start is refused too.
      const third = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0', '--vmm-cgroups=false']);
      assert.equal(third.code, 1, third.output);
      assert.match(third.output, /is in use by another matchlockd/);
    } finally {
      first.kill();
      await first.exited;
      await second?.stop();
    }
  });

  it('a state dir that is a file, or under a file, is refused as no directory, the file left as it was', async () => {
    // Short: a longer state dir is refused first for its VM sockets' length.
    const file = join(tmp.path, 'f');
    writeFileSync(file, 'x');
    for (const [state, message] of [
      [file, new RegExp(`state-dir ${file} is not a directory`)],
      [join(file, 's'), new RegExp(`state-dir ${join(file, 's')}: ${file} is not a directory`)],
    ] as const) {
      const { code, output } = await daemonFailsToStart([...base(state), '--grpc-endpoint', '127.0.0.1:0']);
      assert.equal(code, 1, output);
      assert.match(output, message);
      assert.doesNotMatch(output, /cannot be written|make it writable/);
      assert.equal(readFileSync(file, 'utf8'), 'x');
    }
  });
});
