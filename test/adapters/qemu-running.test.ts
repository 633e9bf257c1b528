import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs, { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { trackChild } from '../../src/adapters/vmm/children.js';
import { qemuModule } from '../../src/adapters/vmm/qemu/index.js';
import { QemuProvider } from '../../src/adapters/vmm/qemu/provider.js';
import type { ChildExit } from '../../src/adapters/spawner.js';
import type { VmmInstance } from '../../src/core/vmm.js';
import { tempDir } from '../helpers/daemon.js';

/** A process whose command line names the VM directory, as QEMU's does; gone when it resolves. */
function vmmLike(dir: string): { child: ChildProcess; gone: Promise<void> } {
  const child = spawn('perl', ['-e', 'sleep 300', dir], { stdio: 'ignore' });
  return { child, gone: new Promise((r) => child.once('exit', () => r())) };
}

/**
 * The paths `fn` reads with readFileSync, counted where process.ts makes them (node:fs, whose
 * ESM exports follow the CommonJS object after syncBuiltinESMExports).
 */
async function readsDuring(fn: () => Promise<void>): Promise<string[]> {
  const read: string[] = [];
  const realRead = fs.readFileSync;
  fs.readFileSync = ((path: fs.PathOrFileDescriptor, ...rest: []) => {
    read.push(String(path));
    return realRead(path, ...rest);
  }) as typeof fs.readFileSync;
  syncBuiltinESMExports();
  try {
    await fn();
  } finally {
    fs.readFileSync = realRead;
    syncBuiltinESMExports();
  }
  return read;
}

describe('qemu running(): the VMM of a VM directory, by its pid file', () => {
  const tmp = tempDir('qemu-running');
  const kids: ChildProcess[] = [];
  after(() => {
    for (const k of kids) k.kill('SIGKILL');
    tmp.remove();
  });
  const dir = join(tmp.path, 'vm');
  mkdirSync(dir);
  const ref = { uid: 'u1', namespace: 'ns', name: 'vm', dir, runDir: join(tmp.path, 'run') };
  const provider = new QemuProvider(qemuModule.descriptor, 'qemu-system-x86_64', { accel: 'kvm' });
  const pidFile = join(dir, 'qemu.pid');

  /**
   * A VMM-like process of this VM, its pid in the pid file, and a fresh instance (a pass) to
   * find it. `exit` is its end as the spawner reports a child's, for trackChild; `kill` ends
   * it and resolves once it has exited.
   */
  function vmm(): { pid: number; instance: VmmInstance; exit: Promise<ChildExit>; kill(): Promise<void> } {
    const a = vmmLike(dir);
    kids.push(a.child);
    const pid = a.child.pid!;
    const exit = new Promise<ChildExit>((r) => a.child.once('exit', (code, signal) => r({ code, signal })));
    writeFileSync(pidFile, `${pid}\n`);
    return {
      pid,
      instance: provider.instance(ref),
      exit,
      kill: async () => {
        a.child.kill('SIGKILL');
        await a.gone;
      },
    };
  }

  it('reads the pid file once per instance while that process lives, and again once it is gone', async () => {
    const a = vmm();
    const instance = a.instance;
    assert.equal(await instance.running(), a.pid);
    // Found once, the VMM is known by its pid and start time: the steps of a pass that ask
    // again do not read the file (removed here to show it).
    rmSync(pidFile);
    assert.equal(await instance.running(), a.pid);
    // Its exit is seen at once, and a new VMM is found through the file again.
    await a.kill();
    assert.equal(await instance.running(), undefined);
    const b = vmm();
    assert.equal(await instance.running(), b.pid);
    // A fresh instance (the next pass) reads the file.
    writeFileSync(pidFile, '');
    assert.equal(await provider.instance(ref).running(), undefined);
    await b.kill();
  });

  it('a VMM this daemon started is known alive until its exit is reported: the steps after the start read no /proc', async () => {
    const { pid, instance, exit, kill } = vmm();
    trackChild(pid, exit);
    assert.equal(await instance.running(), pid, 'found through the pid file and /proc');
    const read = await readsDuring(async () => {
      for (let i = 0; i < 3; i++) assert.equal(await instance.running(), pid);
    });
    assert.deepEqual(read, [], 'no /proc or pid file read while the child\'s exit is not reported');
    await kill();
    // The exit reaches children.ts a turn of the event loop later.
    await new Promise((r) => setImmediate(r));
    assert.equal(await instance.running(), undefined, 'once its exit is reported, /proc is asked again');
  });

  it('a VMM found from an older daemon is asked in /proc each time, also once its pid is tracked as a child (reused for another VM)', async () => {
    const { pid, instance, exit, kill } = vmm();
    assert.equal(await instance.running(), pid, 'found through the pid file and /proc, not a child');
    // The same pid now tracked as this daemon's child stands for a reused pid: only /proc can
    // tell whether it is still the VMM that was found.
    trackChild(pid, exit);
    const read = await readsDuring(async () => assert.equal(await instance.running(), pid));
    assert.ok(read.some((p) => p === `/proc/${pid}/stat`), `its start time was read again: ${JSON.stringify(read)}`);
    await kill();
  });

  it('a VMM this daemon started is not taken for alive once its pid went to a later child', async () => {
    const { pid, instance, kill } = vmm();
    // Its exit is never reported here (the promise never settles), as for a child whose
    // pid was reused by a later child before this instance asked again.
    trackChild(pid, new Promise(() => undefined));
    assert.equal(await instance.running(), pid);
    await kill();
    // A later child given the same pid.
    trackChild(pid, new Promise(() => undefined));
    assert.equal(await instance.running(), undefined, 'the VMM found is gone: /proc says so');
  });

  it('a live process of another VM, or a pid file naming no process, is not this VM\'s VMM', async () => {
    const other = vmmLike(join(tmp.path, 'elsewhere'));
    kids.push(other.child);
    writeFileSync(pidFile, `${other.child.pid}\n`);
    assert.equal(await provider.instance(ref).running(), undefined);
    writeFileSync(pidFile, 'not a pid\n');
    assert.equal(await provider.instance(ref).running(), undefined);
    other.child.kill('SIGKILL');
    await other.gone;
  });
});
