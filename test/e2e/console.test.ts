import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../../src/cli/main.js';
import { ROOT } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, importGuest, sleep, vmDir, waitFor } from './vm.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

/** The lab daemon's console-log-max-bytes: small, so a flooding guest passes it many times over. */
const BOUND = 64 * 1024;

/** A shell on the serial console (the test guest's init runs none), started by user-data. */
const SHELL_ON_CONSOLE = "#!/bin/sh\nsetsid sh -c 'exec sh -i <>/dev/ttyS0 >&0 2>&1' &\necho shell started\n";

/** A child process whose output is collected as text. */
function collect(cmd: string, args: string[]): { proc: ChildProcess; out: () => string; exit: Promise<number | null> } {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let text = '';
  proc.stdout?.on('data', (d: Buffer) => (text += d.toString('utf8')));
  proc.stderr?.on('data', (d: Buffer) => (text += d.toString('utf8')));
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, out: () => text, exit };
}

describe('console: a real QEMU guest over the API', { skip }, () => {
  let lab: Lab;
  const children: ChildProcess[] = [];
  before(async () => {
    assert.equal(missing, undefined, `the console tests ${missing}`);
    const layout = testGuestLayout();
    lab = await startLab(['--console-log-max-bytes', String(BOUND)]);
    await importGuest(lab, layout);
  });
  after(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await lab?.destroy();
  });

  it('vm console in a pseudo-terminal runs a command in the guest shell; vm logs -f follows; a flooding guest stays under the bound', async () => {
    const vms = api(lab);
    const uid = await vms.create('con', [{ id: 'eth0', type: 'TAP' }], SHELL_ON_CONSOLE);
    const cliArgs = ['--host', lab.daemon.target];
    const cli = async (...args: string[]) => {
      let out = '';
      let err = '';
      const code = await run([...cliArgs, ...args], { out: (t) => (out += t), err: (t) => (err += t) }, {});
      return { code, out, err };
    };
    // Addressed by namespace/name, as operators type it.
    await waitFor('the guest marker in vm logs', async () => (await cli('vm', 'logs', '--tail', '200', 'e2e/con')).out.includes('MATCHLOCK_GUEST_READY'), 120_000, 1000);
    const tail = await cli('vm', 'logs', '--tail', '1', uid);
    assert.equal(tail.code, 0, tail.err);
    assert.equal(tail.out.replace(/\n$/, '').split('\n').length, 1, `one line: ${JSON.stringify(tail.out)}`);

    const bin = join(ROOT, 'bin/matchlock.js');
    const follow = collect(process.execPath, [bin, ...cliArgs, 'vm', 'logs', '-f', '--tail', '1', uid]);
    children.push(follow.proc);
    // Its last line shows it is streaming; what the guest prints from now on must follow.
    await waitFor('vm logs -f to start', () => follow.out().length > 0, 30_000);
    const followed = follow.out().length;
    // A pseudo-terminal as an operator's: script(1) runs the CLI on a pty fed from our pipe.
    const consoleCmd = [process.execPath, bin, ...cliArgs, 'vm', 'console', 'e2e/con'].join(' ');
    const term = collect('script', ['-q', '-e', '-c', consoleCmd, '/dev/null']);
    children.push(term.proc);
    await waitFor('the attach banner', () => term.out().includes('Detach with Ctrl-]'), 30_000);
    const type = (s: string) => term.proc.stdin?.write(s);
    // Typed text comes back echoed as typed; only the shell's answer has 42 in it.
    await waitFor('the shell to answer', async () => {
      type('echo ANSWER-$((6*7))\r');
      await sleep(1500);
      return term.out().includes('ANSWER-42');
    }, 60_000, 0);
    await waitFor('vm logs -f to show the answer', () => follow.out().slice(followed).includes('ANSWER-42'), 10_000).catch((err: Error) => {
      throw new Error(`${err.message}; vm logs -f printed ${JSON.stringify(follow.out().slice(-500))}; daemon: ${lab.daemon.logs.slice(-8).join(' | ')}; console.log ends ${JSON.stringify(readFileSync(join(vmDir(lab, 'con', uid), 'console.log'), 'latin1').slice(-300))}`);
    });
    follow.proc.kill('SIGINT');
    assert.equal(await follow.exit, 0, follow.out());

    // A guest printing without end: its console log stays bounded.
    type("(sleep 1; i=0; while :; do i=$((i+1)); echo \"flood $i ................................................\"; done) >/dev/ttyS0 2>&1 &\r");
    await sleep(300);
    type('\x1d');
    assert.equal(await term.exit, 0, term.out());
    assert.match(term.out(), /Detached\./);

    const log = join(vmDir(lab, 'con', uid), 'console.log');
    const lastCount = () => {
      const text = (existsSync(log) ? readFileSync(log, 'latin1') : '') || readFileSync(`${log}.1`, 'latin1');
      const all = [...text.matchAll(/flood (\d+) /g)];
      return Number(all.at(-1)?.[1] ?? 0);
    };
    let maxSize = 0;
    let maxRotated = 0;
    const floodFrom = Date.now();
    const lineBytes = 'flood 100000 ................................................\r\n'.length;
    await waitFor('the guest to write 20 times the bound', async () => {
      maxSize = Math.max(maxSize, statSync(log).size);
      if (existsSync(`${log}.1`)) maxRotated = Math.max(maxRotated, statSync(`${log}.1`).size);
      return lastCount() * lineBytes > 20 * BOUND;
    }, 120_000, 100);
    const written = lastCount() * lineBytes;
    const bytesPerSecond = written / ((Date.now() - floodFrom) / 1000);
    process.stderr.write(`# flood: about ${written} bytes written, console.log peaked at ${maxSize}, console.log.1 at ${maxRotated} (bound ${BOUND})\n`);
    assert.ok(maxRotated > 0 && maxRotated <= BOUND, `console.log.1 holds at most the bound: ${maxRotated}`);
    // The daemon cuts once a second: the log may pass the bound by what the guest wrote since
    // (measured here: the guest's rate, over 3 s to allow for a loaded machine).
    assert.ok(maxSize <= BOUND + 3 * bytesPerSecond, `console.log peaked at ${maxSize}, bound ${BOUND}, guest writing ${Math.round(bytesPerSecond)} B/s`);

    // The attach slot is free again, and a VM that is gone has no console.
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 60_000);
    const gone = await cli('vm', 'logs', uid);
    assert.equal(gone.code, 3, gone.err);
  });
});
