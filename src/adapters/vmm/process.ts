import { readdirSync, readFileSync } from 'node:fs';

/** True for a live process; a zombie counts as dead (it is only waiting to be reaped). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * A live process's start time (field 22 of /proc/<pid>/stat, clock ticks since boot), or
 * undefined when the pid is gone or a zombie: the pid and this together name one process, as
 * pids are reused.
 */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' ? undefined : f[19];
  } catch {
    return undefined;
  }
}

/** Whether the process's command line mentions `text` (its VM directory), guarding against pid reuse. */
export function processMentions(pid: number, text: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text);
  } catch {
    return false;
  }
}

/** A process's arguments (/proc/<pid>/cmdline split at its NULs), or undefined when it is gone. */
export function argvOf(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
}

/**
 * Live processes other than this one whose arguments `match`, in /proc's order: how a process
 * whose pid file was never written (or names another process) is found by what it was started
 * with.
 */
export function livePidsWhere(match: (argv: string[]) => boolean): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const argv = argvOf(pid);
    if (argv && match(argv) && pidAlive(pid)) out.push(pid);
  }
  return out;
}
