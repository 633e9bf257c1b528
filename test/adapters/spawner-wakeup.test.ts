import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Logger } from '../../src/core/ports.js';
import { launch, runProgram, startSpawner, stopSpawner, type Launched } from '../../src/adapters/spawner.js';

// The spawner's select wait is capped (MATCHLOCK_SPAWNER_MAX_WAIT_MS) only as a backstop; here
// it is an hour, so an exit report that depended on the cap instead of the SIGCHLD wakeup would
// hang this test rather than arrive 200 ms late. Set before the spawner starts: it reads it once.
process.env.MATCHLOCK_SPAWNER_MAX_WAIT_MS = String(3_600_000);

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => quiet } as unknown as Logger;

describe('process spawner: every exit is reported when it happens, not at a select timeout', { timeout: 120_000 }, () => {
  const sleepers: Launched[] = [];
  before(async () => {
    assert.equal(await startSpawner(quiet), true);
  });
  after(() => {
    for (const s of sleepers) {
      try {
        process.kill(s.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    stopSpawner();
    delete process.env.MATCHLOCK_SPAWNER_MAX_WAIT_MS;
  });

  it('reports the exits of 400 short programs, with 200 long-running ones held, without waiting for the cap', async () => {
    // Long-running children make the spawner's loop between its waitpid and its select longer
    // (it walks them on every turn): a SIGCHLD landing in that window was once seen only at the
    // next timeout. One program at a time, so no other request wakes the spawner meanwhile.
    for (let i = 0; i < 200; i++) sleepers.push(await launch({ file: 'sleep', args: ['3600'], stdout: '/dev/null', stderr: '/dev/null' }));
    let next = 0;
    const one = async () => {
      while (next < 400) {
        const i = next++;
        // Both kinds: a captured run also ends on EOF of its pipes, a launch only on SIGCHLD.
        if (i % 2) assert.equal((await runProgram('true', [], { timeoutMs: 3_600_000, maxBytes: 1024 })).code, 0);
        else assert.deepEqual(await (await launch({ file: 'true', args: [], stdout: '/dev/null', stderr: '/dev/null' })).exit, { code: 0, signal: null });
      }
    };
    await one();
  });
});
