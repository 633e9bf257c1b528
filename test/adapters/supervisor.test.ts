import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { launchDetached } from '../../src/adapters/vmm/launcher.js';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { EventSupervisor } from '../../src/adapters/vmm/supervisor.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';

/** Events as they arrive, with a way to wait for one. */
function recorder() {
  const seen: string[] = [];
  const waiters: (() => void)[] = [];
  const push = (e: string) => {
    seen.push(e);
    for (const w of waiters.splice(0)) w();
  };
  return {
    seen,
    events: { exited: (uid: string) => push(`exited ${uid}`), booted: (uid: string) => push(`booted ${uid}`), healthy: (uid: string) => push(`healthy ${uid}`) },
    async until(e: string, ms: number): Promise<number> {
      const t0 = Date.now();
      while (!seen.includes(e)) {
        const left = ms - (Date.now() - t0);
        if (left <= 0) throw new Error(`no "${e}" within ${ms} ms; saw ${JSON.stringify(seen)}`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, left);
          waiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      return Date.now() - t0;
    },
  };
}

describe('VMM supervisor: exits and boot are events, not poll results', () => {
  const tmp = tempDir('supervisor');
  const started: number[] = [];
  after(() => {
    for (const pid of started) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    tmp.remove();
  });

  /** A VMM stand-in started as the daemon starts VMMs: it writes its pid file and sleeps. */
  async function launch(name: string): Promise<{ pid: number; console: string }> {
    const pidFile = join(tmp.path, `${name}.pid`);
    const consolePath = join(tmp.path, `${name}.console`);
    writeFileSync(consolePath, '');
    const pid = await launchDetached({
      what: name,
      bin: '/bin/sh',
      args: ['-c', `echo $$ > ${pidFile}; exec sleep 1000`],
      stdout: join(tmp.path, `${name}.out`),
      stderr: join(tmp.path, `${name}.err`),
      detached: true,
      ready: async () => Number((existsSync(pidFile) ? readFileSync(pidFile, 'utf8') : '').trim()) || undefined,
      timeoutMs: 10_000,
      signal: new AbortController().signal,
    });
    started.push(pid);
    return { pid, console: consolePath };
  }

  it('reports the exit of a VMM it started at once, though its fallback poll runs every 60 s', async () => {
    const r = recorder();
    const sup = new EventSupervisor(r.events, silentLogger, { pollMs: 60_000, healthyAfterMs: 3_600_000 });
    try {
      const vmm = await launch('child');
      sup.watch('vm-child', vmm.pid, vmm.console);
      assert.ok(sup.watching('vm-child', vmm.pid));
      assert.deepEqual(sup.uids(), ['vm-child'], 'the VMs whose files the log bound looks at');
      process.kill(vmm.pid, 'SIGKILL');
      const ms = await r.until('exited vm-child', 10_000);
      assert.equal(sup.watching('vm-child', vmm.pid), false, 'no longer watched once it exited');
      assert.deepEqual(sup.uids(), []);
      process.stdout.write(`# exit of a child noticed after ${ms} ms\n`);
    } finally {
      sup.stop();
    }
  });

  it('reports the boot line when the console grows, without a poll, also when it arrives in two writes', async () => {
    const r = recorder();
    const sup = new EventSupervisor(r.events, silentLogger, { pollMs: 60_000, healthyAfterMs: 3_600_000 });
    try {
      const vmm = await launch('console');
      appendFileSync(vmm.console, 'Linux version 6.1\n'.repeat(1000));
      sup.watch('vm-console', vmm.pid, vmm.console);
      await new Promise((res) => setTimeout(res, 300));
      assert.deepEqual(r.seen, [], 'kernel lines are no boot');
      appendFileSync(vmm.console, 'Run /sbin/in');
      await new Promise((res) => setTimeout(res, 300));
      assert.deepEqual(r.seen, [], 'half a line is no boot');
      appendFileSync(vmm.console, 'it as init process\n');
      await r.until('booted vm-console', 10_000);
      assert.ok(sup.watching('vm-console', vmm.pid), 'still watched after boot');
      process.kill(vmm.pid, 'SIGKILL');
      await r.until('exited vm-console', 10_000);
      assert.deepEqual(r.seen, ['booted vm-console', 'exited vm-console']);
    } finally {
      sup.stop();
    }
  });

  it('a console that appears after watching began is watched from the next poll on', async () => {
    const r = recorder();
    const sup = new EventSupervisor(r.events, silentLogger, { pollMs: 200, healthyAfterMs: 3_600_000 });
    try {
      const vmm = await launch('late-console');
      const late = join(tmp.path, 'late.console');
      sup.watch('vm-late', vmm.pid, late);
      await new Promise((res) => setTimeout(res, 400));
      writeFileSync(late, 'booting\n');
      await new Promise((res) => setTimeout(res, 600));
      appendFileSync(late, 'Run /init as init process\n');
      await r.until('booted vm-late', 10_000);
    } finally {
      sup.stop();
    }
  });

  it('a VMM it did not start (adopted after a restart) is found gone by the fallback poll', async () => {
    const r = recorder();
    const sup = new EventSupervisor(r.events, silentLogger, { pollMs: 200, healthyAfterMs: 3_600_000 });
    // Spawned here, not through the launcher: to the supervisor it is any process on the host.
    const other = spawn('sleep', ['1000'], { stdio: 'ignore', detached: true });
    const pid = other.pid ?? 0;
    started.push(pid);
    try {
      sup.watch('vm-adopted', pid, join(tmp.path, 'none.console'));
      await new Promise((res) => setTimeout(res, 500));
      assert.deepEqual(r.seen, [], 'alive: nothing reported');
      process.kill(pid, 'SIGKILL');
      await r.until('exited vm-adopted', 10_000);
    } finally {
      sup.stop();
    }
  });

  it('reports healthy once after healthyAfterMs and a pid that is already gone at once', async () => {
    const r = recorder();
    const sup = new EventSupervisor(r.events, silentLogger, { pollMs: 60_000, healthyAfterMs: 200 });
    try {
      const vmm = await launch('healthy');
      sup.watch('vm-healthy', vmm.pid, vmm.console);
      await r.until('healthy vm-healthy', 10_000);
      const gone = spawn('true');
      await new Promise((res) => gone.once('exit', res));
      sup.watch('vm-gone', gone.pid ?? 0, vmm.console);
      await r.until('exited vm-gone', 10_000);
      assert.equal(r.seen.filter((e) => e === 'healthy vm-healthy').length, 1);
    } finally {
      sup.stop();
    }
  });
});
