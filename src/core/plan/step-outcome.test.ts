import assert from 'node:assert/strict';
import { it } from 'node:test';
import { silentLogger } from '../../../test/fakes/memory-store.js';
import { runPlan, type Step, type StepOutcome } from './step.js';

class CreateThing implements Step {
  readonly name = 'thing 1234';
  done = false;
  async needed() {
    return !this.done;
  }
  async run() {
    this.done = true;
  }
  async verify() {}
}

const literal = (name: string, over: Partial<Step> = {}): Step => {
  let done = false;
  return { name, needed: async () => !done, run: async () => void (done = true), verify: async () => undefined, ...over };
};

it('tells onStep of each step that ran: its kind (own, class, else name), seconds, and failure', async () => {
  const seen: StepOutcome[] = [];
  let t = 0;
  const now = () => (t += 500);
  await runPlan([new CreateThing(), literal('virtiofsd share-a', { kind: 'virtiofsd' }), literal('jail')], silentLogger, { signal: new AbortController().signal, onStep: (o) => seen.push(o), now });
  assert.deepEqual(seen, [
    { kind: 'CreateThing', seconds: 0.5, failed: false },
    { kind: 'virtiofsd', seconds: 0.5, failed: false },
    { kind: 'jail', seconds: 0.5, failed: false },
  ]);

  seen.length = 0;
  await assert.rejects(runPlan([literal('broken', { verify: async () => { throw new Error('not there'); } })], silentLogger, { signal: new AbortController().signal, onStep: (o) => seen.push(o), now }), /broken: not there/);
  assert.deepEqual(seen, [{ kind: 'broken', seconds: 0.5, failed: true }]);

  seen.length = 0;
  const ac = new AbortController();
  await assert.rejects(runPlan([literal('long', { run: async () => { ac.abort(); throw new Error('aborted'); } })], silentLogger, { signal: ac.signal, onStep: (o) => seen.push(o), now }));
  assert.deepEqual(seen, [{ kind: 'long', seconds: 0.5, failed: false }], 'a pass called off is not the step failing');
});
