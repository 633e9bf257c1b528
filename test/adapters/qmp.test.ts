import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { it } from 'node:test';
import { qmpCommand } from '../../src/adapters/vmm/qemu/qmp.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

/** Rejections that reached the process unhandled while `fn` ran (and a moment after). */
async function unhandledDuring(fn: () => Promise<unknown>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const listener = (reason: unknown) => seen.push(reason);
  process.on('unhandledRejection', listener);
  try {
    await fn().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  } finally {
    process.off('unhandledRejection', listener);
  }
  return seen;
}

it('a missing QMP socket is an Unavailable error, and no promise is left rejected unheard', async () => {
  const tmp = tempDir('qmp');
  try {
    const path = join(tmp.path, 'qmp.sock');
    await assert.rejects(qmpCommand(path, 'quit'), (err: unknown) => err instanceof MatchlockError && err.code === ErrorCode.Unavailable && /qmp\.sock/.test(err.message));
    assert.deepEqual(await unhandledDuring(() => qmpCommand(path, 'quit')), []);
  } finally {
    tmp.remove();
  }
});

it('a QMP peer that closes or never answers fails the command, never the process', async () => {
  const tmp = tempDir('qmp');
  const closing = createServer((s) => s.end('{"QMP": {"version": {}}}\n'));
  const silent = createServer(() => undefined);
  try {
    const a = join(tmp.path, 'closing.sock');
    const b = join(tmp.path, 'silent.sock');
    await new Promise<void>((r) => closing.listen(a, r));
    await new Promise<void>((r) => silent.listen(b, r));
    await assert.rejects(qmpCommand(a, 'quit'), (err: MatchlockError) => err.code === ErrorCode.Unavailable);
    await assert.rejects(qmpCommand(b, 'quit', 300), (err: MatchlockError) => err.code === ErrorCode.DeadlineExceeded);
    assert.deepEqual(await unhandledDuring(() => qmpCommand(a, 'quit')), []);
  } finally {
    closing.close();
    silent.close();
    tmp.remove();
  }
});

it("the daemon's process guard logs an unhandled rejection and an uncaught exception and carries on", () => {
  const script = `
    import { installProcessGuards } from './src/daemon/guard.ts';
    const lines = [];
    const log = { error: (o, m) => lines.push(m + ' ' + o.err), info() {}, warn() {}, debug() {}, child() { return log; } };
    installProcessGuards(log);
    Promise.reject(new Error('nobody listens'));
    setTimeout(() => { throw new Error('thrown from a timer'); }, 10);
    setTimeout(() => { process.stdout.write(JSON.stringify(lines)); process.exit(0); }, 100);
  `;
  const res = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  const lines = JSON.parse(res.stdout) as string[];
  assert.ok(lines.some((l) => /unhandled promise rejection.*nobody listens/.test(l)), res.stdout);
  assert.ok(lines.some((l) => /uncaught exception.*thrown from a timer/.test(l)), res.stdout);
});
