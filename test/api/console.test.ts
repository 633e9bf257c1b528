import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { appendFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bindGrpc, createGrpcServer } from '../../src/adapters/api/grpc/server.js';
import { connectConsole } from '../../src/adapters/api/console-client.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import type { MicroVMService } from '../../src/core/microvm/service.js';
import { silentLogger } from '../../src/adapters/silent-logger.js';
import { tempDir } from '../helpers/daemon.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits for `fn` to hold; the bound is one on a hang, not a timing under test. */
async function until(fn: () => boolean, ms = 30_000): Promise<void> {
  for (const end = Date.now() + ms; !fn() && Date.now() < end; ) await sleep(50);
}

/**
 * The Console service on a real grpc-js server and client, with a file for the console log and
 * a unix socket standing in for the VMM's serial chardev (the real guest is in
 * test/e2e/console.test.ts). Only the VM lookup is faked.
 */
describe('matchlock.v1.Console', () => {
  const tmp = tempDir('console');
  const log = join(tmp.path, 'console.log');
  const sockPath = join(tmp.path, 'console.sock');
  const known = new Set(['vm-q', 'vm-fc']);
  let server: grpc.Server;
  let vmm: Server;
  let vmmSide: Socket | undefined;
  let received = '';
  let port: number;
  before(async () => {
    writeFileSync(`${log}.1`, 'old-1\nold-2\n');
    writeFileSync(log, 'line-1\nline-2\nline-3\n');
    vmm = createServer((s) => {
      vmmSide = s;
      s.on('data', (d: Buffer) => {
        received += d.toString();
        s.write(`echo:${d.toString()}`);
      });
    });
    await new Promise<void>((r) => vmm.listen(sockPath, r));
    server = createGrpcServer({
      service: {} as MicroVMService,
      logger: silentLogger,
      token: 'tok',
      console: (uid) => {
        if (!known.has(uid)) throw new MatchlockError(ErrorCode.NotFound, `microvm ${uid} not found`);
        return uid === 'vm-q' ? { log, provider: 'qemu', input: { kind: 'unix-socket', path: sockPath } } : { log, provider: 'firecracker' };
      },
    });
    port = await bindGrpc(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure());
  });
  after(async () => {
    server.forceShutdown();
    vmmSide?.destroy();
    await new Promise((r) => vmm.close(r));
    tmp.remove();
  });
  const client = (token = 'tok') => connectConsole({ host: `127.0.0.1:${port}`, token });

  it('sends the whole log (older generation first), or its last N lines', async () => {
    const c = client();
    try {
      let all = '';
      await c.stream('vm-q', { follow: false }, (d) => (all += Buffer.from(d).toString()));
      assert.equal(all, 'old-1\nold-2\nline-1\nline-2\nline-3\n');
      let two = '';
      await c.stream('vm-q', { tail: 2, follow: false }, (d) => (two += Buffer.from(d).toString()));
      assert.equal(two, 'line-2\nline-3\n');
      let four = '';
      await c.stream('vm-q', { tail: 4, follow: false }, (d) => (four += Buffer.from(d).toString()));
      assert.equal(four, 'old-2\nline-1\nline-2\nline-3\n');
      let none = '';
      await c.stream('vm-q', { tail: 0, follow: false }, (d) => (none += Buffer.from(d).toString()));
      assert.equal(none, '');
    } finally {
      c.close();
    }
  });

  it('follows new output, also after the log was cut at its bound', async () => {
    const c = client();
    const ac = new AbortController();
    let seen = '';
    // The last line comes first: then the server has read the log and follows it from its end,
    // so what is appended next is new output (a fixed wait could end before that on a loaded host).
    const done = c.stream('vm-q', { tail: 1, follow: true }, (d) => (seen += Buffer.from(d).toString()), ac.signal);
    try {
      await until(() => seen.length > 0);
      assert.equal(seen, 'line-3\n');
      appendFileSync(log, 'new-1\n');
      await until(() => seen.includes('new-1'));
      assert.equal(seen, 'line-3\nnew-1\n');
      writeFileSync(log, 'after-cut\n'); // as boundFile leaves it: truncated, then appended to
      await until(() => seen.includes('after-cut'));
      assert.equal(seen, 'line-3\nnew-1\nafter-cut\n');
    } finally {
      ac.abort();
      await done;
      c.close();
    }
  });

  it('attaches: client bytes reach the VMM console, its output comes back; one client at a time', async () => {
    const c = client();
    let out = '';
    let connected = 0;
    const a = c.attach('vm-q', (d) => (out += Buffer.from(d).toString()), () => connected++);
    try {
      a.write(Buffer.from('ls\r'));
      await until(() => out.includes('echo:ls'));
      assert.equal(received, 'ls\r');
      assert.equal(out, 'echo:ls\r');
      assert.equal(connected, 1, 'told once that the console is connected');
      const second = c.attach('vm-q', () => undefined);
      await assert.rejects(second.done, (e: MatchlockError) => e.code === ErrorCode.FailedPrecondition && /attached by another client/.test(e.message));
    } finally {
      a.close();
      await a.done;
    }
    // Detached: the slot is free again once the server has seen the first client go, which
    // may come after a.done on a loaded host; a refusal until then is asked again.
    let b: ReturnType<typeof c.attach> | undefined;
    for (const end = Date.now() + 30_000; !b && Date.now() < end; ) {
      let attached!: () => void;
      const connected = new Promise<void>((r) => (attached = r));
      const next = c.attach('vm-q', () => undefined, () => attached());
      const refused = await Promise.race([connected.then(() => undefined), next.done.then(() => new Error('attach ended'), (e: Error) => e)]);
      if (refused === undefined) b = next;
      else if (/attached by another client/.test(refused.message)) await sleep(50);
      else throw refused;
    }
    assert.ok(b, 'the console slot was free again after the first client detached');
    b.write(Buffer.from('x'));
    await until(() => received.endsWith('x'));
    assert.equal(received, 'ls\rx');
    b.close();
    await b.done;
    c.close();
  });

  it('refuses clearly: unknown VM, a provider without console input, no token', async () => {
    const c = client();
    await assert.rejects(c.stream('nope', { follow: false }, () => undefined), (e: MatchlockError) => e.code === ErrorCode.NotFound);
    let fcConnected = false;
    const fc = c.attach('vm-fc', () => undefined, () => (fcConnected = true));
    await assert.rejects(fc.done, (e: MatchlockError) => e.code === ErrorCode.FailedPrecondition && /provider firecracker takes no console input/.test(e.message));
    assert.equal(fcConnected, false, 'never said to be connected');
    c.close();
    const anon = client('');
    await assert.rejects(anon.stream('vm-q', { follow: false }, () => undefined), (e: MatchlockError) => e.code === ErrorCode.Unauthenticated);
    const anonAttach = anon.attach('vm-q', () => undefined);
    await assert.rejects(anonAttach.done, (e: MatchlockError) => e.code === ErrorCode.Unauthenticated);
    anon.close();
  });
});
