import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger as quiet } from '../../../test/fakes/memory-store.js';
import { runPlan, type Step } from './step.js';

/** A step over one flag of a shared world, counting each call. */
function flagStep(world: Set<string>, name: string, opts: { requires?: string } = {}) {
  const calls = { needed: 0, run: 0, verify: 0 };
  const step: Step = {
    name,
    needed: async () => {
      calls.needed++;
      // A step whose prerequisite is missing has nothing to do yet.
      if (opts.requires && !world.has(opts.requires)) return false;
      return !world.has(name);
    },
    run: async () => {
      calls.run++;
      world.add(name);
    },
    verify: async () => {
      calls.verify++;
      if (!world.has(name)) throw new Error(`${name} missing`);
    },
  };
  return { step, calls };
}

describe('runPlan', () => {
  const signal = new AbortController().signal;

  it("asks each step needed() once on an empty host: a verified step's answer is not asked again", async () => {
    const world = new Set<string>();
    const steps = ['a', 'b', 'c'].map((n) => flagStep(world, n));
    await runPlan(steps.map((s) => s.step), quiet, { signal });
    for (const s of steps) assert.deepEqual(s.calls, { needed: 1, run: 1, verify: 1 }, s.step.name);
  });

  it('a step not needed yet because a later step makes its prerequisite runs in the next pass', async () => {
    const world = new Set<string>();
    const early = flagStep(world, 'early', { requires: 'late' });
    const late = flagStep(world, 'late');
    await runPlan([early.step, late.step], quiet, { signal });
    assert.ok(world.has('early') && world.has('late'));
    assert.deepEqual(early.calls, { needed: 2, run: 1, verify: 1 });
    // Pass 0 runs late, pass 1 runs early without asking late again, pass 2 confirms late.
    assert.deepEqual(late.calls, { needed: 2, run: 1, verify: 1 });
  });

  it('on a host where everything exists, only needed() runs, once per step', async () => {
    const world = new Set(['a', 'b']);
    const steps = ['a', 'b'].map((n) => flagStep(world, n));
    await runPlan(steps.map((s) => s.step), quiet, { signal });
    for (const s of steps) assert.deepEqual(s.calls, { needed: 1, run: 0, verify: 0 });
  });
});
