import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Logger } from '../../src/core/ports.js';
import { launch, runProgram, startSpawner, stopSpawner, type Launched } from '../../src/adapters/spawner.js';

// Exits wake the spawner's poll through the wakeup fd Python's C-level signal handler writes to
// when SIGCHLD arrives; the spawner has no periodic wake, so an exit it missed would never be
// reported. What this asserts is that every exit is reported while many long-running children
// are held, whose walk lengthens the loop between waitpid and poll.

const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => quiet } as unknown as Logger;

describe('process spawner: every exit is reported while many children live', { timeout: 300_000 }, () => {
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
  });

  it('reports the exits of 400 short programs, with 200 long-running ones held', async () => {
    // One program at a time, so no other request wakes the spawner meanwhile: each exit report
    // comes from the spawner's own wakeup.
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
