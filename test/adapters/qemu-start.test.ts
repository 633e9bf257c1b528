import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pidAlive } from '../../src/adapters/vmm/process.js';
import { qemuModule } from '../../src/adapters/vmm/qemu/index.js';
import { QemuProvider } from '../../src/adapters/vmm/qemu/provider.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/ports.js';
import type { Launch } from '../../src/core/vmm.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

/** QEMU's command line in, its pid file and QMP socket out: what the launcher waits for. */
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

describe('qemu start(): called off while its VMM becomes ready', () => {
  const tmp = tempDir('qemu-start');
  const spawned: number[] = [];
  after(() => {
    for (const pid of spawned) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    tmp.remove();
  });

  it('is canceled and leaves no VMM: the delete that called it off finds none to stop', async () => {
    const ref = { uid: '01HZY3NDEKTSV4RRFFQ69G5FAV', namespace: 'ns', name: 'vm', dir: join(tmp.path, 'vm'), runDir: join(tmp.path, 'run') };
    mkdirSync(ref.dir);
    mkdirSync(ref.runDir);
    const launch: Launch = { ...ref, vcpu: 1, memoryInMb: 128, kernelPath: join(tmp.path, 'vmlinuz'), cmdline: 'console=ttyS0', disks: [], nics: [], shares: [], metadata: {} };
    const provider = new QemuProvider(qemuModule.descriptor, STANDIN, { accel: 'kvm' });
    const instance = provider.instance(ref);
    // The delete arrives at the moment the launcher's readiness look (the QMP socket bound,
    // then running(): the pid file and /proc) finds the VMM: after the look, before its answer
    // reaches the launcher.
    const calledOff = new AbortController();
    let ready: number | undefined;
    const look = instance.running.bind(instance);
    instance.running = async () => {
      const pid = await look();
      if (pid !== undefined && ready === undefined) {
        spawned.push((ready = pid));
        calledOff.abort(new MatchlockError(ErrorCode.Canceled, 'create pass called off by a delete'));
      }
      return pid;
    };
    await assert.rejects(instance.start(launch, calledOff.signal, quiet), (e: MatchlockError) => e.code === ErrorCode.Canceled && /canceled while qemu was starting/.test(e.message));
    assert.ok(ready !== undefined, 'the VMM became ready');
    assert.ok(existsSync(join(ref.runDir, 'qmp.sock')), 'it had bound its QMP socket');
    assert.equal(pidAlive(ready), false, 'the VMM of the start called off is gone when the start throws');
    // The delete's teardown asks a fresh instance: it finds no VMM, so nothing is left to it.
    assert.equal(await provider.instance(ref).running(), undefined);
  });
});
