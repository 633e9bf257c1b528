import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bindGrpc, createGrpcServer } from '../../src/adapters/api/grpc/server.js';
import type { MicroVMService } from '../../src/core/microvm/service.js';
import { silentLogger } from '../../src/adapters/silent-logger.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

/** The CLI in its own process with `input` piped to its stdin; the bound is one on a hang. */
function consoleWith(args: string[], input: string): Promise<{ code: number | null; out: string; err: string }> {
  const { child, exited } = follower(args);
  child.stdin.end(input);
  return exited;
}

/**
 * `vm console` with piped input, against the Console service on a real grpc-js server whose
 * serial ports are unix sockets standing in for QEMU's chardevs (the real guest is in
 * test/e2e/console.test.ts).
 */
describe('vm console with piped input', () => {
  const tmp = tempDir('cli-console');
  const vmms: Server[] = [];
  const sides: Socket[] = [];
  let server: grpc.Server;
  let host: string[];
  /** A serial port that echoes; with `closeAfterEcho`, its VMM then goes away. */
  const serial = async (name: string, closeAfterEcho: boolean) => {
    const path = join(tmp.path, `${name}.sock`);
    const vmm = createServer({ allowHalfOpen: true }, (s) => {
      sides.push(s);
      // The console may let go of the port while the echo is on its way (EPIPE), as it may of
      // QEMU's, which carries on.
      s.on('error', () => undefined);
      s.on('data', (d: Buffer) => {
        s.write(`echo:${d.toString()}`);
        if (closeAfterEcho) s.end();
      });
    });
    vmms.push(vmm);
    await new Promise<void>((r) => vmm.listen(path, r));
    return path;
  };
  before(async () => {
    const log = join(tmp.path, 'console.log');
    writeFileSync(log, '');
    const paths = { 'vm-open': await serial('open', false), 'vm-ends': await serial('ends', true) };
    server = createGrpcServer({
      service: {} as MicroVMService,
      logger: silentLogger,
      token: 'tok',
      console: (uid) => ({ log, provider: 'qemu', input: { kind: 'unix-socket', path: paths[uid as keyof typeof paths] } }),
    });
    host = ['--host', `127.0.0.1:${await bindGrpc(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure())}`, '--token', 'tok'];
  });
  after(async () => {
    server?.forceShutdown();
    for (const s of sides) s.destroy();
    await Promise.all(vmms.map((v) => new Promise((r) => v.close(r))));
    tmp.remove();
  });

  it('detaches once stdin ends and exits 0, freeing the console for the next client', async () => {
    const first = await consoleWith([...host, 'vm', 'console', 'vm-open'], 'echo hi\n');
    assert.equal(first.code, 0, first.err);
    assert.match(first.err, /Connected to the console of vm-open[\s\S]*Detached: end of input\./);
    const second = await consoleWith([...host, 'vm', 'console', '--eof-timeout', '0s', 'vm-open'], 'echo again\n');
    assert.equal(second.code, 0, `the attach slot is free again: ${second.err}`);
  });

  it('dials `--host :port` on loopback, as every other command does (Go\'s all-interfaces form)', async () => {
    const port = (host[1] ?? '').split(':')[1] ?? '';
    const r = await consoleWith(['--host', `:${port}`, ...host.slice(2), 'vm', 'console', 'vm-open'], 'echo hi\n');
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /Connected to the console of vm-open/);
  });

  it("keeps printing the console's output after stdin ends", async () => {
    // A long --eof-timeout: the stream ends when the VMM goes away right after its answer, so
    // the answer printed is one that came after the end of input.
    const r = await consoleWith([...host, 'vm', 'console', '--eof-timeout', '60s', 'vm-ends'], 'echo hi\n');
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'echo:echo hi\n');
  });
});

/** The CLI in its own process, stdin left open; `until` resolves once its output matches. */
function follower(args: string[]) {
  const child = spawn(process.execPath, [join(ROOT, 'bin/matchlock.js'), ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const hang = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const exited = new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(hang);
      resolve({ code, out, err });
    }),
  );
  const until = async (re: RegExp) => {
    while (!re.test(out + err)) {
      if (child.exitCode !== null) assert.fail(`exited ${child.exitCode} before ${re}: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return { child, exited, until };
}

/**
 * A daemon that drains ends the console streams with UNAVAILABLE, and one that drops them (its
 * shutdown-grace over) resets them: `vm logs -f` and `vm console` exit 5 (daemon unavailable)
 * either way, not 1 with grpc-js's "Call cancelled".
 */
describe('console streams when the daemon stops', () => {
  const tmp = tempDir('cli-console-stop');
  const log = join(tmp.path, 'console.log');
  const sides: Socket[] = [];
  let vmm: Server;
  let sockPath: string;
  before(async () => {
    writeFileSync(log, 'BOOT-LINE\n');
    sockPath = join(tmp.path, 'serial.sock');
    vmm = createServer((s) => {
      sides.push(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => vmm.listen(sockPath, r));
  });
  after(async () => {
    for (const s of sides) s.destroy();
    await new Promise((r) => vmm.close(r));
    tmp.remove();
  });
  const serve = async () => {
    const shutdown = new AbortController();
    const server = createGrpcServer({ service: {} as MicroVMService, logger: silentLogger, shutdown: shutdown.signal, console: () => ({ log, provider: 'qemu', input: { kind: 'unix-socket', path: sockPath } }) });
    const host = ['--host', `127.0.0.1:${await bindGrpc(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure())}`];
    return { server, shutdown, host };
  };

  it('a drain ends `vm logs -f` and `vm console` with UNAVAILABLE saying matchlockd is stopping: both exit 5', async () => {
    const { server, shutdown, host } = await serve();
    try {
      const logs = follower([...host, 'vm', 'logs', 'vm-a', '-f']);
      const attached = follower([...host, 'vm', 'console', 'vm-a']);
      await logs.until(/BOOT-LINE/);
      await attached.until(/Connected to the console/);
      shutdown.abort();
      for (const r of [await logs.exited, await attached.exited]) {
        assert.match(r.err, /matchlockd is stopping/);
        assert.equal(r.code, 5, r.err);
      }
    } finally {
      server.forceShutdown();
    }
  });

  it('a daemon that drops the stream (forceShutdown) makes `vm logs -f` exit 5, not 1 with "Call cancelled"', async () => {
    const { server, host } = await serve();
    const logs = follower([...host, 'vm', 'logs', 'vm-a', '-f']);
    await logs.until(/BOOT-LINE/);
    server.forceShutdown();
    const r = await logs.exited;
    assert.equal(r.code, 5, r.err);
    assert.match(r.err, /dropped the stream/);
  });
});
