import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/ports.js';
import { run } from '../../src/adapters/exec.js';
import { launch, runProgram, SPAWNER_SCRIPT, spawnerInterpreter, spawnerPid, startSpawner, stopSpawner, streamProgram, type ChildExit, type RunOptions } from '../../src/adapters/spawner.js';
import { isChild } from '../../src/adapters/vmm/children.js';
import { launchDetached } from '../../src/adapters/vmm/launcher.js';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { EventSupervisor } from '../../src/adapters/vmm/supervisor.js';
import { tempDir } from '../helpers/daemon.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const opts: RunOptions = { timeoutMs: 10_000, maxBytes: 64 * 1024 * 1024 };

/** A logger that keeps its warnings. */
function warnings(): Logger & { seen: string[] } {
  const seen: string[] = [];
  const log = { seen, debug: () => undefined, info: () => undefined, warn: (_: unknown, m?: string) => void seen.push(m ?? String(_)), error: () => undefined, child: () => log };
  return log as unknown as Logger & { seen: string[] };
}

const status = (pid: number, key: string) => new RegExp(`^${key}:\\s*(\\S+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];

async function until(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

/** A program started with streamProgram: what it wrote so far, and its end. */
function streamed(file: string, args: string[], maxInputBytes?: number) {
  let out = '';
  let ended!: (e: { exit: ChildExit | undefined; error?: Error }) => void;
  const exit = new Promise<{ exit: ChildExit | undefined; error?: Error }>((r) => (ended = r));
  const p = streamProgram(file, args, { onOutput: (d) => (out += d.toString()), onExit: (e, error) => ended({ exit: e, ...(error ? { error } : {}) }), ...(maxInputBytes === undefined ? {} : { maxInputBytes }) });
  return { p, exit, out: () => out };
}

/**
 * Runs called off through `signal`: a program that takes SIGTERM ends at once; one that
 * ignores it is killed CANCEL_KILL_MS later; one called off before it ran never runs. Each is
 * gone when the run resolves. `started` collects pids for the suite's cleanup.
 */
async function calledOff(dir: string, started: number[]): Promise<void> {
  const pidFile = join(dir, `called-off-${Date.now()}`);
  const pidOf = async () => {
    await until('program started', () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'));
    const pid = Number(readFileSync(pidFile, 'utf8'));
    started.push(pid);
    return pid;
  };
  const polite = new AbortController();
  const running = runProgram('sh', ['-c', `echo $$ > '${pidFile}'; exec sleep 1000`], { ...opts, timeoutMs: 60_000, signal: polite.signal });
  const pid = await pidOf();
  polite.abort(new MatchlockError(ErrorCode.Canceled, 'a delete came'));
  const r = await running;
  assert.deepEqual([r.code, r.signal, r.killed], [null, 'SIGTERM', 'canceled']);
  assert.ok(!pidAlive(pid) || status(pid, 'State') === 'Z', 'the program still runs');
  rmSync(pidFile);
  const stubborn = new AbortController();
  const ignoring = runProgram('sh', ['-c', `trap '' TERM; echo $$ > '${pidFile}'; exec sleep 1000`], { ...opts, timeoutMs: 60_000, signal: stubborn.signal });
  const pid2 = await pidOf();
  stubborn.abort();
  const r2 = await ignoring;
  assert.deepEqual([r2.signal, r2.killed], ['SIGKILL', 'canceled']);
  assert.ok(!pidAlive(pid2) || status(pid2, 'State') === 'Z', 'the program still runs');
  rmSync(pidFile);
  await assert.rejects(
    run('sh', ['-c', `echo $$ > '${pidFile}'; exec sleep 1000`], { signal: AbortSignal.abort() }),
    (e: MatchlockError) => e.code === ErrorCode.Canceled && /^sh -c .*: called off/.test(e.message),
  );
  const viaRun = new AbortController();
  const c = run('sh', ['-c', `echo $$ > '${pidFile}'; exec sleep 1000`], { signal: viaRun.signal });
  await pidOf();
  viaRun.abort(new MatchlockError(ErrorCode.Canceled, 'a delete came'));
  await assert.rejects(c, (e: MatchlockError) => e.code === ErrorCode.Canceled && /called off: a delete came$/.test(e.message));
  rmSync(pidFile);
}

describe('process spawner: the daemon hands program starts to a small python3 process', () => {
  const tmp = tempDir('spawner');
  const started: number[] = [];
  const log = warnings();
  before(async () => {
    assert.equal(await startSpawner(log), true, `spawner did not start: ${log.seen.join('; ')}`);
  });
  after(() => {
    stopSpawner();
    for (const pid of started) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    tmp.remove();
  });

  it('programs are the spawner\'s children, not this process\'s', async () => {
    const r = await runProgram('sh', ['-c', 'echo $PPID'], opts);
    assert.equal(Number(r.stdout.toString().trim()), spawnerPid());
    assert.notEqual(spawnerPid(), process.pid);
  });

  it('passes every argument byte for byte: blanks, newlines, quotes, backslashes, empty, non-ASCII', async () => {
    const args = ['a b', 'line1\nline2', '', ' ', '"\'$(x)`\\', 'é ü 日本 \u{1F600}', '\xff\xfe', '--', '-x', '%s'];
    const r = await runProgram('printf', ['%s\\0', ...args], opts);
    assert.equal(r.code, 0);
    assert.deepEqual(r.stdout.toString('utf8').split('\0').slice(0, -1), args);
  });

  it('programs get the environment as it is at their start, as with a direct spawn', async () => {
    const echo = async () => (await runProgram('sh', ['-c', 'echo "${MATCHLOCK_SPAWNER_TEST-unset}"'], opts)).stdout.toString();
    process.env.MATCHLOCK_SPAWNER_TEST = 'a b\nc';
    try {
      assert.equal(await echo(), 'a b\nc\n');
    } finally {
      delete process.env.MATCHLOCK_SPAWNER_TEST;
    }
    assert.equal(await echo(), 'unset\n');
  });

  it('looks programs up in the PATH of the environment as it is at their start', async () => {
    const dir = join(tmp.path, 'path-dir');
    mkdirSync(dir);
    writeFileSync(join(dir, 'matchlock-path-probe'), '#!/bin/sh\necho found\n', { mode: 0o755 });
    const path = process.env.PATH;
    process.env.PATH = `${dir}:${path ?? ''}`;
    try {
      assert.equal((await runProgram('matchlock-path-probe', [], opts)).stdout.toString(), 'found\n');
    } finally {
      process.env.PATH = path;
    }
    await assert.rejects(runProgram('matchlock-path-probe', [], opts), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
  });

  it('outlives SIGINT, SIGHUP and SIGTERM, and its programs start with every signal at its default', async () => {
    const pid = spawnerPid() ?? 0;
    for (const sig of ['SIGINT', 'SIGHUP', 'SIGTERM'] as const) process.kill(pid, sig);
    const r = await runProgram('sh', ['-c', 'grep -E "^Sig(Ign|Blk)" /proc/self/status'], opts);
    assert.equal(spawnerPid(), pid);
    const mask = (key: string) => BigInt(`0x${new RegExp(`^${key}:\\s*([0-9a-f]+)$`, 'm').exec(r.stdout.toString())?.[1] ?? 'bad'}`);
    assert.equal(mask('SigBlk'), 0n, 'no signal blocked');
    // Python ignores SIGPIPE and SIGXFSZ in the spawner itself. glibc's posix_spawn leaves only
    // its own signals 32 and 33 (SIGCANCEL, SIGSETXID) ignored in the child; a glibc program
    // cannot see or set them (sigaction refuses them) and glibc sets its handlers when it uses them.
    const glibcOwn = (1n << 31n) | (1n << 32n);
    assert.equal((mask('SigIgn') & ~glibcOwn).toString(16), '0', 'no signal ignored');
  });

  it('refuses a NUL in an argument rather than cutting it short', async () => {
    await assert.rejects(runProgram('echo', ['a\0b'], opts), /NUL/);
  });

  it('reads back large output whole, and stops a program past the output bound', async () => {
    const big = await runProgram('head', ['-c', String(20 * 1024 * 1024), '/dev/urandom'], opts);
    assert.equal(big.code, 0);
    assert.equal(big.stdout.length, 20 * 1024 * 1024);
    const both = await runProgram('sh', ['-c', 'head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2'], opts);
    assert.deepEqual([both.stdout.length, both.stderr.length], [3_000_000, 2_000_000]);
    const over = await runProgram('cat', ['/dev/zero'], { ...opts, maxBytes: 1024 * 1024 });
    assert.equal(over.killed, 'maxbuffer');
    assert.equal(over.stdout.length, 1024 * 1024);
  });

  it('writes input to the program\'s stdin, large or not read at all; without input stdin is empty', async () => {
    const input = Buffer.alloc(5 * 1024 * 1024 + 7, 'x\n\0\xff');
    const echoed = await runProgram('cat', [], { ...opts, input });
    assert.ok(echoed.stdout.equals(input));
    const unread = await runProgram('true', [], { ...opts, input });
    assert.equal(unread.code, 0);
    const none = await runProgram('cat', [], opts);
    assert.deepEqual([none.code, none.stdout.length], [0, 0]);
  });

  it('writes stdout to a file (emptied first) while stderr is read back', async () => {
    const file = join(tmp.path, 'vmlinux');
    writeFileSync(file, 'old and longer content\n');
    const r = await runProgram('sh', ['-c', 'cat; echo warning >&2'], { ...opts, input: 'payload\n', stdoutFile: file });
    assert.deepEqual([r.code, r.stdout.length, r.stderr.toString()], [0, 0, 'warning\n']);
    assert.equal(readFileSync(file, 'utf8'), 'payload\n');
  });

  it('reports exit codes and signals, and SIGTERMs a program past its timeout', async () => {
    assert.deepEqual({ ...(await runProgram('sh', ['-c', 'exit 7'], opts)), stdout: undefined, stderr: undefined }, { code: 7, signal: null, stdout: undefined, stderr: undefined });
    const killed = await runProgram('sh', ['-c', 'kill -KILL $$'], opts);
    assert.deepEqual([killed.code, killed.signal], [null, 'SIGKILL']);
    const slow = await runProgram('sleep', ['30'], { ...opts, timeoutMs: 300 });
    assert.deepEqual([slow.code, slow.signal, slow.killed], [null, 'SIGTERM', 'timeout']);
  });

  it('runs an executable without #! through /bin/sh, as execvp does', async () => {
    // glibc's posix_spawnp answers ENOEXEC for it; a shell, Perl or Node would run it.
    const script = join(tmp.path, 'no-shebang');
    writeFileSync(script, 'echo "plain script: $1"\n', { mode: 0o755 });
    assert.equal((await runProgram(script, ['x y'], opts)).stdout.toString(), 'plain script: x y\n');
  });

  it('a program without #! that PATH finds after one that cannot exec is the one run, as execvp runs it', async () => {
    // The first prog fails with ENOENT (its interpreter is missing), so execvp goes on to the
    // second, which has no #! and runs with /bin/sh; the first must not be run as a script.
    const d1 = join(tmp.path, 'path-1');
    const d2 = join(tmp.path, 'path-2');
    mkdirSync(d1);
    mkdirSync(d2);
    writeFileSync(join(d1, 'matchlock-order-probe'), '#!/nonexistent/interpreter\necho wrong file\n', { mode: 0o755 });
    writeFileSync(join(d2, 'matchlock-order-probe'), 'echo "right file: $0"\n', { mode: 0o755 });
    const path = process.env.PATH;
    process.env.PATH = `${d1}:${d2}:${path ?? ''}`;
    try {
      assert.equal((await runProgram('matchlock-order-probe', [], opts)).stdout.toString(), `right file: ${join(d2, 'matchlock-order-probe')}\n`);
    } finally {
      process.env.PATH = path;
    }
  });

  it('a request it cannot carry out fails alone: the spawner goes on with the next', async () => {
    const pid = spawnerPid();
    for (const timeoutMs of [Infinity, NaN, 2 ** 40]) {
      await assert.rejects(runProgram('true', [], { ...opts, timeoutMs }), /timeout/, `timeout ${timeoutMs}`);
    }
    assert.equal(spawnerPid(), pid, 'the same spawner');
    assert.equal((await runProgram('echo', ['still here'], opts)).stdout.toString(), 'still here\n');
  });

  it('a run called off stops its program (SIGTERM, then SIGKILL) and run() rejects with Canceled', { timeout: 30_000 }, async () => {
    await calledOff(tmp.path, started);
  });

  it('a missing program is ENOENT; run() makes it FailedPrecondition "<cmd> is not installed"', async () => {
    await assert.rejects(runProgram('matchlock-no-such-program', [], opts), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    await assert.rejects(run('matchlock-no-such-program', ['x']), (e: MatchlockError) => e.code === ErrorCode.FailedPrecondition && /matchlock-no-such-program x: matchlock-no-such-program is not installed/.test(e.message));
    await assert.rejects(run('sh', ['-c', 'echo bad thing >&2; exit 2']), (e: MatchlockError) => e.code === ErrorCode.Internal && /bad thing/.test(e.message));
    assert.equal((await run('echo', ['ok'])).stdout, 'ok\n');
  });

  it('streams a program\'s stdin and stdout while it runs: each line is echoed before the next is written, then its exit', async () => {
    const s = streamed('sh', ['-c', 'echo $PPID; while read l; do echo "got $l"; done; exit 3']);
    await until('its first line', () => s.out().includes('\n'));
    assert.equal(Number(s.out().trim()), spawnerPid(), 'a child of the spawner');
    s.p.write('one\n');
    await until('one echoed', () => s.out().endsWith('got one\n'));
    s.p.write(Buffer.from('two\n'));
    await until('two echoed', () => s.out().endsWith('got two\n'));
    s.p.end();
    assert.deepEqual(await s.exit, { exit: { code: 3, signal: null } });
    assert.equal(s.out(), `${spawnerPid()}\ngot one\ngot two\n`);
    s.p.write('dropped\n');
  });

  it('a streamed program that does not read its stdin blocks nothing: 1 MB waits while other programs run; kill ends it', { timeout: 30_000 }, async () => {
    const s = streamed('sh', ['-c', 'echo $$; exec sleep 1000']);
    await until('its pid', () => s.out().endsWith('\n'));
    started.push(Number(s.out()));
    s.p.write(Buffer.alloc(1024 * 1024, 'x'));
    const r = await runProgram('echo', ['still answered'], opts);
    assert.equal(r.stdout.toString(), 'still answered\n');
    s.p.kill('SIGKILL');
    assert.deepEqual(await s.exit, { exit: { code: null, signal: 'SIGKILL' } });
    // Input for a program that exited without reading it is dropped (EPIPE, or its stdin
    // already closed); the exit still comes and the spawner goes on.
    const gone = streamed('sh', ['-c', 'exit 5']);
    for (let i = 0; i < 20; i++) gone.p.write('x\n'.repeat(50_000));
    gone.p.end();
    assert.deepEqual(await gone.exit, { exit: { code: 5, signal: null } });
    assert.equal((await runProgram('echo', ['ok'], opts)).stdout.toString(), 'ok\n');
    const missing = streamed('matchlock-no-such-program', []);
    const failed = await missing.exit;
    assert.equal((failed.error as NodeJS.ErrnoException | undefined)?.code, 'ENOENT');
  });

  it('a streamed program with more input waiting than its bound is killed, and its exit names it and the bound', { timeout: 30_000 }, async () => {
    await inputPastBound(started);
  });

  it('launches with stdout appended, stderr emptied, a cwd, its own session and files from fd 3 on', async () => {
    const out = join(tmp.path, 'l.out');
    const err = join(tmp.path, 'l.err');
    writeFileSync(out, 'before\n');
    writeFileSync(err, 'old stderr\n');
    const a = join(tmp.path, 'fd a');
    writeFileSync(a, '');
    const l = await launch({
      file: 'sh',
      // Field 6 of stat is the session id: the program's own pid when it leads its session.
      args: ['-c', 'echo "$(pwd) $(readlink /proc/self/fd/3) $(readlink /proc/self/fd/4) $(cut -d" " -f6 /proc/self/stat)"; echo e >&2; exit 4'],
      cwd: tmp.path,
      setsid: true,
      stdout: out,
      stderr: err,
      truncateStderr: true,
      fdPaths: [a, '/dev/null'],
    });
    started.push(l.pid);
    assert.deepEqual(await l.exit, { code: 4, signal: null });
    assert.equal(readFileSync(out, 'utf8'), `before\n${tmp.path} ${a} /dev/null ${l.pid}\n`);
    assert.equal(readFileSync(err, 'utf8'), 'e\n');
  });

  it('a launch that cannot exec, or cannot open its files, fails with the errno and starts nothing', async () => {
    const base = { args: [] as string[], stdout: join(tmp.path, 'x.out'), stderr: join(tmp.path, 'x.err') };
    await assert.rejects(launch({ ...base, file: '/nonexistent/vmm' }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && /^exec /.test(e.message));
    await assert.rejects(launch({ ...base, file: 'true', fdPaths: ['/dev/tap999999'] }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && /open \/dev\/tap999999/.test(e.message));
    await assert.rejects(launch({ ...base, file: 'true', cwd: '/nonexistent' }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && /chdir/.test(e.message));
    const qemu = await launchDetached({ what: 'qemu', bin: '/nonexistent/qemu', ...base, detached: true, ready: async () => undefined, timeoutMs: 5000, signal: new AbortController().signal }).catch((e: Error) => e.message);
    assert.match(String(qemu), /^qemu binary \/nonexistent\/qemu not found/);
  });

  it('a VMM\'s exit is an event for the supervisor, without its poll', async () => {
    const seen: string[] = [];
    const sup = new EventSupervisor({ exited: (uid) => seen.push(uid), booted: () => undefined, healthy: () => undefined }, log, { pollMs: 60_000, healthyAfterMs: 3_600_000 });
    try {
      const pidFile = join(tmp.path, 'vmm.pid');
      const pid = await launchDetached({ what: 'vmm', bin: '/bin/sh', args: ['-c', `echo $$ > '${pidFile}'; exec sleep 1000`], stdout: join(tmp.path, 'v.out'), stderr: join(tmp.path, 'v.err'), detached: true, ready: async () => Number(readFileSync(pidFile, { encoding: 'utf8', flag: 'a+' }).trim()) || undefined, timeoutMs: 10_000, signal: new AbortController().signal });
      started.push(pid);
      assert.equal(status(pid, 'PPid'), String(spawnerPid()));
      sup.watch('vm', pid, join(tmp.path, 'none.console'));
      process.kill(pid, 'SIGKILL');
      await until('exit event', () => seen.includes('vm'));
    } finally {
      sup.stop();
    }
  });

  it('a VMM start called off, or not ready in time, kills what it spawned: a VMM without its pid file yet is found by no delete', async () => {
    // A VMM that never writes its pid file: the start can end only by the signal or the timeout.
    const never = { what: 'vmm', bin: '/bin/sh', args: ['-c', 'exec sleep 1000'], stdout: join(tmp.path, 'n.out'), stderr: join(tmp.path, 'n.err'), detached: true, ready: async () => undefined };
    let spawned = 0;
    const calledOff = new AbortController();
    const canceled = launchDetached({ ...never, onSpawn: async (pid) => void started.push((spawned = pid)), ready: async () => void (spawned && calledOff.abort()), timeoutMs: 60_000, signal: calledOff.signal });
    await assert.rejects(canceled, (e: MatchlockError) => e.code === ErrorCode.Canceled && /canceled while vmm was starting/.test(e.message));
    assert.ok(spawned > 0);
    assert.equal(pidAlive(spawned), false, 'the VMM of a start called off is gone when the start throws');
    assert.equal(isChild(spawned), false);

    spawned = 0;
    const late = launchDetached({ ...never, onSpawn: async (pid) => void started.push((spawned = pid)), timeoutMs: 200, signal: new AbortController().signal });
    await assert.rejects(late, /vmm was not ready within 200 ms/);
    assert.ok(spawned > 0);
    assert.equal(pidAlive(spawned), false, 'the VMM of a start that timed out is gone when the start throws');
  });

  it('a VMM start with watched directories asks ready when an entry there changes, not every 5 ms', async () => {
    const dir = join(tmp.path, 'watched');
    mkdirSync(dir);
    const pidFile = join(dir, 'vmm.pid');
    let asked = 0;
    const ready = async () => {
      asked++;
      return existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) || undefined : undefined;
    };
    // The pid file comes 0.6 s after the spawn: polled every 5 ms that is over 100 looks. With
    // the fallback look only after 30 s, the wait ends well before it only if the directory's
    // events (the file's creation and write) wake it.
    const t0 = Date.now();
    const pid = await launchDetached({ what: 'vmm', bin: '/bin/sh', args: ['-c', `sleep 0.6; echo $$ > '${pidFile}'; exec sleep 1000`], stdout: join(tmp.path, 'w.out'), stderr: join(tmp.path, 'w.err'), detached: true, ready, watch: [dir], recheckMs: 30_000, timeoutMs: 60_000, signal: new AbortController().signal });
    started.push(pid);
    assert.ok(Date.now() - t0 < 15_000, `woken by the directory's events, not the 30 s fallback (${Date.now() - t0} ms)`);
    assert.equal(pid, Number(readFileSync(pidFile, 'utf8').trim()));
    assert.ok(asked <= 10, `ready was asked ${asked} times`);
  });

  it('a spawner that dies is replaced; what it started keeps running, no longer counts as a child, and its exit is found by the poll', async () => {
    const seen: string[] = [];
    const sup = new EventSupervisor({ exited: (uid) => seen.push(uid), booted: () => undefined, healthy: () => undefined }, log, { pollMs: 200, healthyAfterMs: 3_600_000 });
    try {
      const l = await launch({ file: 'sleep', args: ['1000'], setsid: true, stdout: '/dev/null', stderr: '/dev/null' });
      started.push(l.pid);
      const { trackChild } = await import('../../src/adapters/vmm/children.js');
      trackChild(l.pid, l.exit);
      sup.watch('orphan', l.pid, join(tmp.path, 'none.console'));
      const runningPid = join(tmp.path, 'running.pid');
      const running = runProgram('sh', ['-c', `echo $$ > '${runningPid}'; exec sleep 1000`], opts);
      await until('the run started', () => readFileSync(runningPid, { encoding: 'utf8', flag: 'a+' }).endsWith('\n'));
      started.push(Number(readFileSync(runningPid, 'utf8')));
      const old = spawnerPid() ?? 0;
      process.kill(old, 'SIGKILL');
      assert.equal(await l.exit, undefined, 'the launch\'s end is unknown, not an exit');
      await assert.rejects(running, /process spawner exited/);
      assert.equal(isChild(l.pid), false);
      assert.ok(pidAlive(l.pid), 'the VMM outlives its spawner');
      await sleep(500);
      assert.equal(seen.length, 0, 'not reported as exited');
      assert.equal(log.seen.filter((m) => /spawner exited/.test(m)).length, 1);
      await until('a new spawner', () => spawnerPid() !== undefined && spawnerPid() !== old);
      const r = await runProgram('sh', ['-c', 'echo $PPID'], opts);
      assert.equal(Number(r.stdout.toString().trim()), spawnerPid());
      process.kill(l.pid, 'SIGKILL');
      await until('exit by poll', () => seen.includes('orphan'));
    } finally {
      sup.stop();
    }
  });

  it('the spawner exits when its pipe closes and leaves what it started running', async () => {
    const l = await launch({ file: 'sleep', args: ['1000'], setsid: true, stdout: '/dev/null', stderr: '/dev/null' });
    started.push(l.pid);
    const pid = spawnerPid() ?? 0;
    assert.match(readlinkSync(`/proc/${pid}/exe`), /python3/);
    stopSpawner();
    await until('spawner gone', () => !pidAlive(pid) || status(pid, 'State') === 'Z');
    assert.ok(pidAlive(l.pid));
    assert.equal(await l.exit, undefined);
  });

  it('without python3, programs are spawned directly after one warning', async () => {
    const before = log.seen.length;
    assert.equal(await startSpawner(log, undefined, join(tmp.path, 'no-python3')), false);
    assert.deepEqual(log.seen.slice(before).filter((m) => /could not be started/.test(m)).length, 1);
    assert.equal(spawnerPid(), undefined);
    const r = await runProgram('sh', ['-c', 'echo $PPID'], opts);
    assert.equal(Number(r.stdout.toString().trim()), process.pid);
    await assert.rejects(run('matchlock-no-such-program', []), /is not installed/);
    const slow = await runProgram('sleep', ['30'], { ...opts, timeoutMs: 300 });
    assert.deepEqual([slow.signal, slow.killed], ['SIGTERM', 'timeout']);
    const over = await runProgram('cat', ['/dev/zero'], { ...opts, maxBytes: 1024 * 1024 });
    assert.deepEqual([over.killed, over.stdout.length], ['maxbuffer', 1024 * 1024]);
    const file = join(tmp.path, 'direct.out');
    const toFile = await runProgram('sh', ['-c', 'cat; echo warning >&2; exit 3'], { ...opts, input: 'x y\n', stdoutFile: file });
    assert.deepEqual([toFile.code, toFile.stderr.toString(), readFileSync(file, 'utf8')], [3, 'warning\n', 'x y\n']);
    const s = streamed('sh', ['-c', 'echo $PPID; cat']);
    s.p.write('streamed\n');
    s.p.end();
    assert.deepEqual(await s.exit, { exit: { code: 0, signal: null } });
    assert.equal(s.out(), `${process.pid}\nstreamed\n`);
    await inputPastBound(started);
    await calledOff(tmp.path, started);
  });
});

/**
 * A streamed program that reads nothing, bound to 1 MiB of waiting input: 512 KiB waits, then
 * 1 MiB more passes the bound; what waits is dropped and the program killed.
 */
async function inputPastBound(started: number[]): Promise<void> {
  const s = streamed('sh', ['-c', 'echo $$; exec sleep 1000'], 1024 * 1024);
  await until('its pid', () => s.out().endsWith('\n'));
  started.push(Number(s.out()));
  s.p.write(Buffer.alloc(512 * 1024, 'x'));
  await sleep(100);
  assert.ok(pidAlive(Number(s.out())), 'under the bound it runs on');
  s.p.write(Buffer.alloc(1024 * 1024, 'x'));
  s.p.write('dropped\n');
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([s.exit, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('still running 10 s after its input passed the bound')), 10_000)))]).finally(() => clearTimeout(timer));
  assert.deepEqual(r.exit, { code: null, signal: 'SIGKILL' });
  assert.ok(r.error instanceof MatchlockError, String(r.error));
  assert.equal(r.error.code, ErrorCode.ResourceExhausted);
  assert.match(r.error.message, /^sh: more than 1048576 bytes waited to be written to its stdin .*; killed$/);
}

/** The spawner spoken to frame by frame, as a daemon with another idea of its requests would. */
function rawSpawner() {
  const child = spawn(spawnerInterpreter(), ['-I', '-S', SPAWNER_SCRIPT], { stdio: ['pipe', 'pipe', 'ignore'] });
  let buf = Buffer.alloc(0);
  const events: Buffer[][] = [];
  let wake: (() => void) | undefined;
  child.stdout.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const body = buf.subarray(4, 4 + buf.readUInt32BE(0));
      buf = buf.subarray(4 + body.length);
      const fields: Buffer[] = [];
      for (let o = 0; o < body.length; o += 4 + body.readUInt32BE(o)) fields.push(body.subarray(o + 4, o + 4 + body.readUInt32BE(o)));
      events.push(fields);
      wake?.();
    }
  });
  return {
    child,
    send(...fields: string[]) {
      const body = Buffer.concat(fields.flatMap((f) => { const b = Buffer.from(f); const n = Buffer.alloc(4); n.writeUInt32BE(b.length); return [n, b]; }));
      const n = Buffer.alloc(4);
      n.writeUInt32BE(body.length);
      child.stdin.write(Buffer.concat([n, body]));
    },
    /** The next event; an error after 10 s without one (a request left unanswered). */
    async next(): Promise<string[]> {
      while (events.length === 0) {
        let timer: NodeJS.Timeout | undefined;
        const answered = await new Promise<boolean>((r) => {
          wake = () => r(true);
          timer = setTimeout(() => r(false), 10_000);
        });
        clearTimeout(timer);
        if (!answered) throw new Error('no answer from the spawner within 10 s');
      }
      return (events.shift() ?? []).map((b) => b.toString());
    },
  };
}

describe('process spawner: requests it cannot carry out', () => {
  it('answers each with failed and leaves nothing running; the next request is carried out', async () => {
    const sp = rawSpawner();
    try {
      assert.deepEqual(await sp.next(), ['ready', '0']);
      const marker = `matchlock-untracked-${process.pid}`;
      // capture and stream together: refused before anything starts (it started a program and
      // answered failed for it, leaving it untracked).
      sp.send('spawn', '1', 'arg', 'sleep', 'arg', '30', 'arg', marker, 'capture', '1000', 'stream', '1');
      const refused = await sp.next();
      assert.deepEqual(refused.slice(0, 3), ['failed', '1', 'EINVAL'], refused.join(' '));
      // An environment holding a NUL byte: failed for that request (it went unanswered).
      sp.send('spawn', '2', 'env', 'PATH=/bin\0x', 'arg', 'true');
      const env = await sp.next();
      assert.deepEqual(env.slice(0, 3), ['failed', '2', 'EINVAL'], env.join(' '));
      sp.send('spawn', '3', 'arg', 'true', 'capture', '100');
      assert.deepEqual((await sp.next()).slice(0, 2), ['spawned', '3']);
      assert.deepEqual((await sp.next()).slice(0, 4), ['exit', '3', '0', '']);
      assert.deepEqual(running(marker), [], 'no program left running for a refused request');
    } finally {
      sp.child.kill('SIGKILL');
    }
  });
});

/** The pids of the processes whose command line holds `marker`. */
function running(marker: string): number[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
    } catch {
      return false;
    }
  });
}
