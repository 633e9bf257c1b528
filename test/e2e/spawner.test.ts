import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, importGuest, sleep, stateOf, waitFor } from './vm.js';

// A daemon that creates and deletes VMs starts every program (ip, mkfs, the VMM) through its
// process spawner: its own address space is never forked after start-up. strace on the daemon's
// main thread (where Node spawns) sees every fork it makes; threads (CLONE_THREAD) are not forks.
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
const missing = labMissing() ?? (spawnSync('sh', ['-c', 'command -v strace']).status === 0 ? undefined : 'strace is not installed');
const skip = missing && !process.env.CI ? missing : false;

const ppid = (pid: number) => Number(/^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
const childrenOf = (pid: number) =>
  readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean).map(Number));

describe('the daemon does not fork itself to start programs', { skip }, () => {
  let lab: Lab;
  let strace: ChildProcess | undefined;
  const tmp = tempDir('no-fork');
  const trace = join(tmp.path, 'strace.out');
  before(async () => {
    assert.equal(missing, undefined, `the no-fork test ${missing}`);
    lab = await startLab(['--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--healthy-after', '1s']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    strace?.kill('SIGINT');
    await lab?.destroy();
    tmp.remove();
  });

  it('creates and deletes VMs with TAP and MACVTAP interfaces without one fork of its own', async () => {
    const daemon = lab.daemon.proc.pid ?? 0;
    const vms = api(lab);
    // The image's first use unpacks it in a Node child of the daemon (a process of its own by
    // design, bundled by esbuild from sources): done before tracing.
    const warm = await vms.create('warm', [{ id: 'eth0', type: 'TAP' }]);
    await waitFor('warm VM CREATED', async () => stateOf(await vms.get(warm)) === 'CREATED' || undefined, 90_000);
    strace = spawn('strace', ['-qq', '-e', 'trace=fork,vfork,clone,clone3', '-e', 'signal=none', '-o', trace, '-p', String(daemon)], { stdio: 'ignore' });
    // strace attaches within a moment; a fork before that would go unseen, not falsely seen.
    await sleep(1500);
    const uids = [await vms.create('tap', [{ id: 'eth0', type: 'TAP' }]), await vms.create('macvtap', [{ id: 'eth0', type: 'MACVTAP' }])];
    const pids: number[] = [];
    for (const uid of uids) {
      const vm = await waitFor(`VM ${uid} CREATED`, async () => { const v = await vms.get(uid); return stateOf(v) === 'CREATED' ? v : undefined; }, 90_000);
      pids.push(vm.status?.vmmPid ?? 0);
    }
    const spawners = childrenOf(daemon).filter((c) => readFileSync(`/proc/${c}/cmdline`, 'utf8').includes('spawner.py'));
    const parents = pids.map(ppid);
    for (const uid of [...uids, warm]) await vms.delete(uid);
    await waitFor('VMMs gone', async () => pids.every((p) => !pidAlive(p)) || undefined, 60_000);
    strace.kill('SIGINT');
    await new Promise((r) => strace?.once('exit', r));
    strace = undefined;
    const calls = readFileSync(trace, 'utf8').split('\n').filter((l) => /^(fork|vfork|clone3?)\(/.test(l));
    const forks = calls.filter((l) => !l.includes('CLONE_THREAD'));
    assert.deepEqual(forks, [], `the daemon forked ${forks.length} times`);
    assert.equal(spawners.length, 1, 'one spawner, a child of the daemon');
    assert.deepEqual(parents, pids.map(() => spawners[0]), 'the VMMs were started by the spawner');
  });
});
