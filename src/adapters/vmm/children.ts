import type { ChildExit } from '../spawner.js';

/**
 * VMM processes this daemon started (itself or through its process spawner) and has not yet
 * seen exit. The exit of one of them is reported at once (Node reaps its own children, the
 * spawner reaps its and says so), so it is known without looking at /proc; VMMs a previous
 * daemon started are not here, nor those of a spawner that died (see the supervisor's
 * fallback poll).
 */
const live = new Map<number, Set<() => void>>();

/**
 * Records a VMM child so its exit can be waited for by pid (call right after the start).
 * `exit` resolves with how it ended, or with undefined when its end can no longer be seen
 * here: then the pid stops counting as a child and nobody waiting is called.
 */
export function trackChild(pid: number, exit: Promise<ChildExit | undefined>): void {
  const waiting = new Set<() => void>();
  live.set(pid, waiting);
  void exit.then((e) => {
    if (live.get(pid) !== waiting) return;
    live.delete(pid);
    if (e) for (const fn of waiting) fn();
  });
}

/**
 * Calls `fn` once when the child with this pid exits and resolves a function that cancels the
 * wait; undefined when the pid is not a live child of this daemon (never started here, or
 * already gone), so the caller must look by other means.
 */
export function onChildExit(pid: number, fn: () => void): (() => void) | undefined {
  const waiting = live.get(pid);
  if (!waiting) return undefined;
  waiting.add(fn);
  return () => waiting.delete(fn);
}

/** Whether the exit of this pid will still be reported as a child's (false once it was lost). */
export function isChild(pid: number): boolean {
  return live.has(pid);
}

/**
 * What stands for the child that has this pid now: the same value for as long as that child
 * lives, another once the pid belongs to a later child; undefined when it is no live child.
 * Compared with an earlier answer, it tells a child from a later one given the same pid.
 */
export function childIdentity(pid: number): object | undefined {
  return live.get(pid);
}
