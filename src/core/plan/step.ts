import { ErrorCode, MatchlockError } from '../errors.js';
import type { Logger } from '../ports.js';

/**
 * One idempotent piece of a plan, in flintlock's reactive-planner form. `needed` looks at the
 * world (a file, a link, a live pid); `run` makes it so; `verify` looks again and throws when run
 * did not achieve what it promised. Steps never trust remembered state, so a daemon that died
 * between any two steps converges by running the plan again.
 */
export interface Step {
  readonly name: string;
  /**
   * What kind of step this is, the same for every VM (`PullImage`, `StartVmm`), for the
   * per-step metrics; names carry ids and refs. Default: the class name, else `name`.
   */
  readonly kind?: string;
  needed(): Promise<boolean>;
  run(signal: AbortSignal): Promise<void>;
  verify(): Promise<void>;
}

/** What runPlan throws when its signal is aborted: the signal's reason when it is a MatchlockError. */
export function canceled(reason: unknown): MatchlockError {
  if (reason instanceof MatchlockError) return reason;
  const why = reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : 'canceled';
  return new MatchlockError(ErrorCode.Canceled, `canceled: ${why}`);
}

/**
 * `work`'s result, or canceled(signal.reason) as soon as `signal` aborts, whichever comes first.
 * For a wait on work this pass does not own: an image pull serves every VM of that image and
 * goes on for them (and into the store) when one VM's pass is called off, but the pass must
 * not wait for it (Runtime.ensure: stop at any long wait).
 */
export function unlessCanceled<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(canceled(signal.reason));
  }
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(canceled(signal.reason));
    signal.addEventListener('abort', abort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', abort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(err);
      },
    );
  });
}

/** What one step that ran took, and whether it failed (run or verify threw). */
export interface StepOutcome {
  kind: string;
  seconds: number;
  failed: boolean;
}

/** A step's kind: its own, else its class's name, else its name (an object literal). */
export function stepKind(step: Step): string {
  if (step.kind) return step.kind;
  const cls = (step as object).constructor?.name;
  return cls && cls !== 'Object' ? cls : step.name;
}

/**
 * Runs the steps that are still needed, pass after pass, until a pass finds nothing to do. A
 * step that fails, or whose verify fails, stops the plan with an error naming the step. A step
 * still needed after `maxPasses` passes is an error, not a hot loop. `onChange` runs after every
 * step that changed the host, so its result can be saved at once.
 */
export async function runPlan(
  steps: readonly Step[],
  log: Logger,
  opts: { signal: AbortSignal; onChange?: () => void; maxPasses?: number; onStep?: (o: StepOutcome) => void; now?: () => number },
): Promise<void> {
  const maxPasses = opts.maxPasses ?? 3;
  const check = () => {
    if (opts.signal.aborted) throw canceled(opts.signal.reason);
  };
  // A step that ran and passed verify in one pass is not asked needed() again in the next:
  // verify looked at the host after the change, and its answer is what needed() would give
  // (each step proves it in plans.test.ts). The next pass re-checks only the steps that were
  // not needed, in case one of them depends on what a later step made.
  let verified = new Set<Step>();
  for (let pass = 0; pass < maxPasses; pass++) {
    let ran = 0;
    const verifiedNow = new Set<Step>();
    for (const step of steps) {
      check();
      if (verified.has(step) || !(await step.needed())) continue;
      log.debug({ step: step.name, pass }, 'step');
      const now = opts.now ?? Date.now;
      const started = now();
      const done = (failed: boolean) => opts.onStep?.({ kind: stepKind(step), seconds: (now() - started) / 1000, failed });
      try {
        await step.run(opts.signal);
        check();
        await step.verify();
        done(false);
      } catch (err) {
        // A pass called off is not the step's failure.
        done(!opts.signal.aborted);
        const e = MatchlockError.from(err);
        throw new MatchlockError(e.code, `${step.name}: ${e.message}`, { cause: err });
      }
      ran++;
      verifiedNow.add(step);
      opts.onChange?.();
    }
    if (ran === 0) return;
    verified = verifiedNow;
  }
  const stuck: string[] = [];
  for (const s of steps) if (await s.needed()) stuck.push(s.name);
  if (stuck.length) throw new MatchlockError(ErrorCode.Internal, `steps did not converge: ${stuck.join(', ')}`);
}
