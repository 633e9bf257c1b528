import type { ChildProcess } from 'node:child_process';

/**
 * VMM processes this daemon started and has not yet seen exit. Node reaps its children and
 * emits 'exit' at once, so an exit of one of them is known without looking at /proc; VMMs a
 * previous daemon started are not here (see the supervisor's fallback poll).
 */
const live = new Map<number, Set<() => void>>();

/** Records a VMM child so its exit can be waited for by pid (call right after the spawn). */
export function trackChild(child: ChildProcess): void {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  live.set(pid, new Set());
  child.once('exit', () => {
    const waiting = live.get(pid);
    live.delete(pid);
    for (const fn of waiting ?? []) fn();
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
