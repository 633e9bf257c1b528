import { MatchlockError, ErrorCode } from '../errors.js';
import type { Logger } from '../ports.js';

/**
 * One idempotent piece of work. `needed` looks at the world (file present, link present, pid
 * alive); `run` makes it so. Steps never trust remembered state, so a crash between any two
 * steps is repaired by running the plan again.
 */
export interface Step {
  name: string;
  needed(): Promise<boolean>;
  run(): Promise<void>;
}

/**
 * Runs the steps that are still needed, pass after pass, until a pass finds nothing to do.
 * A step that is still needed after it ran `maxPasses` times is an error, not a hot loop.
 */
export async function runPlan(steps: readonly Step[], log: Logger, onChange: () => void, maxPasses = 3): Promise<void> {
  for (let pass = 0; pass < maxPasses; pass++) {
    let ran = 0;
    for (const step of steps) {
      if (!(await step.needed())) continue;
      log.debug({ step: step.name, pass }, 'step');
      try {
        await step.run();
      } catch (err) {
        const e = MatchlockError.from(err);
        throw new MatchlockError(e.code, `${step.name}: ${e.message}`, { cause: err });
      }
      ran++;
      onChange();
    }
    if (ran === 0) return;
  }
  const stuck: string[] = [];
  for (const s of steps) if (await s.needed()) stuck.push(s.name);
  if (stuck.length) throw new MatchlockError(ErrorCode.Internal, `steps did not converge: ${stuck.join(', ')}`);
}
