import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { qemuModule } from '../../src/adapters/vmm/qemu/index.js';
import { QemuProvider } from '../../src/adapters/vmm/qemu/provider.js';
import { tempDir } from '../helpers/daemon.js';

/** A process whose command line names the VM directory, as QEMU's does; gone when it resolves. */
function vmmLike(dir: string): { child: ChildProcess; gone: Promise<void> } {
  const child = spawn('perl', ['-e', 'sleep 300', dir], { stdio: 'ignore' });
  return { child, gone: new Promise((r) => child.once('exit', () => r())) };
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

  it('reads the pid file once per instance while that process lives, and again once it is gone', async () => {
    const a = vmmLike(dir);
    kids.push(a.child);
    writeFileSync(pidFile, `${a.child.pid}\n`);
    const instance = provider.instance(ref);
    assert.equal(await instance.running(), a.child.pid);
    // Found once, the VMM is known by its pid and start time: the steps of a pass that ask
    // again do not read the file (removed here to show it).
    rmSync(pidFile);
    assert.equal(await instance.running(), a.child.pid);
    // Its exit is seen at once, and a new VMM is found through the file again.
    a.child.kill('SIGKILL');
    await a.gone;
    assert.equal(await instance.running(), undefined);
    const b = vmmLike(dir);
    kids.push(b.child);
    writeFileSync(pidFile, `${b.child.pid}\n`);
    assert.equal(await instance.running(), b.child.pid);
    // A fresh instance (the next pass) reads the file.
    writeFileSync(pidFile, '');
    assert.equal(await provider.instance(ref).running(), undefined);
    b.child.kill('SIGKILL');
    await b.gone;
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
