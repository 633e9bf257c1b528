import assert from 'node:assert/strict';
import { it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { create } from '@bufbuild/protobuf';
import { connect } from '../../src/adapters/api/client.js';
import { ListMicroVMsRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import type { Logger } from '../../src/core/ports.js';
import { Lifecycle, type Drainable } from '../../src/daemon/lifecycle.js';
import { startDaemon, tempDir } from '../helpers/daemon.js';

function recorder() {
  const lines: string[] = [];
  const log: Logger = {
    debug: () => undefined,
    info: (o: object, m?: string) => void lines.push(`${m} ${JSON.stringify(o)}`),
    warn: (o: object, m?: string) => void lines.push(`${m} ${JSON.stringify(o)}`),
    error: (o: object, m?: string) => void lines.push(`${m} ${JSON.stringify(o)}`),
    child: () => log,
  };
  return { lines, log };
}

/** Waits until a log line matches; fails when the daemon exits first. */
async function waitForLog(d: { logs: string[]; proc: { exitCode: number | null; signalCode: NodeJS.Signals | null } }, re: RegExp): Promise<void> {
  while (!d.logs.some((l) => re.test(l))) {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) assert.fail(`matchlockd exited (${d.proc.exitCode ?? d.proc.signalCode}) before logging ${re}:\n${d.logs.join('\n')}`);
    await sleep(50);
  }
}

/** Work that finishes when told to, or when called off if `honoursAbort`. */
function work(honoursAbort = true) {
  const calls: string[] = [];
  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const d: Drainable = {
    stopServing: async (force) => void calls.push(force ? 'stopServing(force)' : 'stopServing'),
    stopWork: async () => {
      calls.push('stopWork');
      await done;
    },
    abortWork: () => {
      calls.push('abortWork');
      if (honoursAbort) finish();
    },
    close: () => void calls.push('close'),
  };
  return { d, calls, finish };
}

it('moves starting -> serving -> draining -> stopped, logging each change, and never backwards', async () => {
  const { lines, log } = recorder();
  const l = new Lifecycle(log);
  l.to('serving');
  assert.throws(() => l.to('starting'), /cannot go from serving to starting/);
  const w = work();
  w.finish();
  await l.shutdown(w.d, 10_000);
  assert.equal(l.state, 'stopped');
  assert.deepEqual(lines.filter((x) => x.startsWith('daemon state')).map((x) => (JSON.parse(x.slice('daemon state '.length)) as { state: string }).state), ['starting', 'serving', 'draining', 'stopped']);
  assert.deepEqual(w.calls, ['stopServing', 'stopWork', 'close'], 'work that finished in time is not called off');
});

it('calls off running reconciles once the grace period is over', async () => {
  const l = new Lifecycle(recorder().log);
  l.to('serving');
  const w = work();
  const started = Date.now();
  await l.shutdown(w.d, 200);
  assert.ok(Date.now() - started >= 190);
  assert.deepEqual(w.calls, ['stopServing', 'stopWork', 'abortWork', 'close']);
});

it('drops calls still open once the grace period is over: an open stream cannot keep the daemon from stopping', { timeout: 10_000 }, async () => {
  const l = new Lifecycle(recorder().log);
  l.to('serving');
  const calls: string[] = [];
  const d: Drainable = {
    // A call that never ends on its own (a client that neither reads nor cancels).
    stopServing: (force) => {
      calls.push(force ? 'stopServing(force)' : 'stopServing');
      return force ? Promise.resolve() : new Promise<void>(() => undefined);
    },
    stopWork: async () => void calls.push('stopWork'),
    abortWork: () => void calls.push('abortWork'),
    close: () => void calls.push('close'),
  };
  await l.shutdown(d, 100);
  assert.deepEqual(calls, ['stopServing', 'stopServing(force)', 'stopWork', 'close']);
  assert.equal(l.state, 'stopped');
});

it('a second signal forces at once, without waiting out the grace period', async () => {
  const l = new Lifecycle(recorder().log);
  l.to('serving');
  const w = work();
  const started = Date.now();
  const stopping = l.shutdown(w.d, 60_000);
  assert.equal(l.shutdown(w.d, 60_000), stopping, 'one shutdown, however often asked');
  setTimeout(() => l.force(), 50);
  await stopping;
  assert.ok(Date.now() - started < 5000);
  assert.deepEqual(w.calls, ['stopServing', 'stopWork', 'abortWork', 'close']);
  assert.equal(l.state, 'stopped');
});

it('matchlockd logs its states and exits 0 on SIGTERM', async () => {
  const tmp = tempDir('lifecycle');
  try {
    const d = await startDaemon(tmp.path, ['--shutdown-grace', '2s']);
    await d.stop();
    assert.equal(d.proc.exitCode, 0);
    const states = d.logs.map((l) => { try { return JSON.parse(l) as { msg?: string; state?: string }; } catch { return {}; } }).filter((r) => r.msg === 'daemon state').map((r) => r.state);
    assert.deepEqual(states, ['starting', 'serving', 'draining', 'stopped']);
  } finally {
    tmp.remove();
  }
});

it('matchlockd logs SIGHUP and keeps serving: no reload, no silent death', async () => {
  const tmp = tempDir('lifecycle');
  try {
    const d = await startDaemon(tmp.path, ['--shutdown-grace', '2s']);
    try {
      d.proc.kill('SIGHUP');
      await waitForLog(d, /"msg":"SIGHUP ignored/);
      const c = connect({ host: d.target, timeoutMs: 10_000 });
      try {
        await c.listMicroVMs(create(ListMicroVMsRequestSchema, {}));
      } finally {
        c.close();
      }
      assert.equal(d.proc.exitCode, null);
      assert.equal(d.proc.signalCode, null);
    } finally {
      await d.stop();
    }
    assert.equal(d.proc.exitCode, 0);
  } finally {
    tmp.remove();
  }
});

it('drains calls and reconciles against one deadline: a stuck call and a stuck reconcile end at the grace period, not twice it', async () => {
  // A timer under the test's control: each wait is recorded and ends when the test says.
  const waits: { ms: number; end: () => void }[] = [];
  const sleep = (ms: number) => new Promise<'timeout'>((r) => void waits.push({ ms, end: () => r('timeout') }));
  const l = new Lifecycle(recorder().log, sleep);
  l.to('serving');
  const calls: string[] = [];
  let finishWork!: () => void;
  const workDone = new Promise<void>((r) => (finishWork = r));
  const d: Drainable = {
    stopServing: (force) => {
      calls.push(force ? 'stopServing(force)' : 'stopServing');
      return force ? Promise.resolve() : new Promise<void>(() => undefined);
    },
    stopWork: async () => {
      calls.push('stopWork');
      await workDone;
    },
    abortWork: () => {
      calls.push('abortWork');
      finishWork();
    },
    close: () => void calls.push('close'),
  };
  const done = l.shutdown(d, 4000);
  await sleep0();
  assert.deepEqual(waits.map((w) => w.ms), [4000]);
  waits[0]!.end(); // the grace period is over
  await done;
  assert.deepEqual(calls, ['stopServing', 'stopServing(force)', 'stopWork', 'abortWork', 'close'], 'the reconcile is called off at the same deadline the open call is dropped at');
  assert.deepEqual(waits.map((w) => w.ms), [4000, 5000], 'no second grace period; only the fixed wait after calling off');
});

async function sleep0(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}
