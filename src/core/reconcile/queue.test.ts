import assert from 'node:assert/strict';
import { it } from 'node:test';
import { silentLogger } from '../../../test/fakes/memory-store.js';
import { ReconcileQueue } from './queue.js';
import { backoffMs } from './backoff.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

it('never runs one uid on two workers, de-duplicates, and re-runs a uid changed mid-run', async () => {
  const running = new Set<string>();
  const runs: string[] = [];
  let overlap = false;
  let maxParallel = 0;
  const q = new ReconcileQueue({
    workers: 3,
    logger: silentLogger,
    handler: async (uid) => {
      if (running.has(uid)) overlap = true;
      running.add(uid);
      maxParallel = Math.max(maxParallel, running.size);
      runs.push(uid);
      await tick(20);
      running.delete(uid);
      return undefined;
    },
  });
  q.enqueue('a');
  q.enqueue('a'); // queued once
  q.enqueue('b');
  q.enqueue('c');
  q.enqueue('d');
  // Starts come a few turns of the event loop later (the answer that queued them goes first).
  while (!running.has('a')) await new Promise((r) => setImmediate(r));
  q.enqueue('a'); // a is running: run again afterwards
  await q.idle();
  await tick(5);
  await q.idle();
  assert.equal(overlap, false);
  assert.equal(maxParallel, 3);
  assert.deepEqual(runs.filter((r) => r === 'a').length, 2);
  assert.deepEqual([...runs].sort(), ['a', 'a', 'b', 'c', 'd']);
  await q.stop();
});

it('requeues after the delay a handler asks for, keeps the earliest due time, and stop cancels it', async () => {
  let count = 0;
  const q = new ReconcileQueue({ workers: 1, logger: silentLogger, handler: async () => (++count < 3 ? 10 : undefined) });
  q.enqueue('x');
  await tick(100);
  assert.equal(count, 3);
  q.enqueue('y', 10_000);
  q.enqueue('y', 10);
  await tick(60);
  assert.equal(count, 4);
  q.enqueue('z', 10_000);
  assert.equal(q.size, 1);
  await q.stop();
  assert.equal(q.size, 0);
});

it('survives a handler that throws', async () => {
  const seen: string[] = [];
  const q = new ReconcileQueue({ workers: 1, logger: silentLogger, handler: async (uid) => {
    seen.push(uid);
    if (uid === 'bad') throw new Error('boom');
    return undefined;
  } });
  q.enqueue('bad');
  q.enqueue('good');
  await q.idle();
  assert.deepEqual(seen, ['bad', 'good']);
  await q.stop();
});

it('backs off exponentially with jitter inside [half, full] of the step, capped', () => {
  assert.equal(backoffMs(1, 1000, 60_000, 0), 500);
  assert.equal(backoffMs(1, 1000, 60_000, 1), 1000);
  assert.equal(backoffMs(4, 1000, 60_000, 1), 8000);
  assert.equal(backoffMs(4, 1000, 60_000, 0), 4000);
  assert.equal(backoffMs(30, 1000, 60_000, 1), 60_000);
});
