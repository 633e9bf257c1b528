import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { detectCgroups, VmCgroups } from '../../src/adapters/vmm/confine/cgroup.js';
import { UidPool } from '../../src/adapters/vmm/confine/uids.js';
import { VmmConfinement } from '../../src/adapters/vmm/confine/vmm.js';
import { qemuModule } from '../../src/adapters/vmm/qemu/index.js';
import { QemuProvider } from '../../src/adapters/vmm/qemu/provider.js';
import { runPlan } from '../../src/core/plan/step.js';
import { silentLogger } from '../fakes/memory-store.js';
import { removeCgroupParent, tempDir } from '../helpers/daemon.js';

describe('qemu delete: a VM whose VMM is already gone gives back its cgroups and uid', () => {
  const tmp = tempDir('qemu-release');
  const parent = `matchlock-release-${randomBytes(4).toString('hex')}`;
  after(() => {
    removeCgroupParent(parent);
    tmp.remove();
  });

  it('the delete steps remove the cgroups and the uid claim a VMM that crashed left behind', async () => {
    const cgroups = new VmCgroups(detectCgroups(), parent);
    assert.ok(cgroups.missing().length < 3, 'no cgroup hierarchy with cpu, memory or pids is mounted');
    const claims = join(tmp.path, 'vmm-uids');
    const confine = new VmmConfinement(undefined, false, cgroups, new UidPool(claims, { first: 300100, last: 300101 }));
    const provider = new QemuProvider(qemuModule.descriptor, 'qemu-system-x86_64', { accel: 'kvm' }, confine);
    const uid = '01JBRE1EASE000000000000000';
    const dir = join(tmp.path, 'vm');
    mkdirSync(dir);
    // What a start made: the uid claimed for -runas, the cgroups, and a VMM that ran in them
    // and ended on its own (here `true`, started the way the VMM is: through the cgroup shell).
    await confine.qemuArgs({ uid, dir });
    const [bin, args] = await confine.command({ uid, vcpu: 1, memoryInMb: 128 }, 'true', []);
    execFileSync(bin, args);
    assert.equal(await confine.holds(uid), true);
    assert.deepEqual(readdirSync(claims).length, 1);

    const instance = provider.instance({ uid, namespace: 'ns', name: 'vm', dir, runDir: join(tmp.path, 'run') });
    assert.equal(await instance.running(), undefined, 'no VMM runs: a stop would not be asked');
    await runPlan(instance.deleteSteps(), silentLogger, { signal: new AbortController().signal });
    for (const d of cgroups.dirs(uid)) assert.equal(existsSync(d), false, `${d} removed`);
    assert.deepEqual(readdirSync(claims), [], 'the uid is free again');
    assert.equal(await confine.holds(uid), false);
  });
});
