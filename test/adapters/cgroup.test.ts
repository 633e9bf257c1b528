import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { detectCgroups, limitsFor, VmCgroups } from '../../src/adapters/vmm/confine/cgroup.js';
import { tempDir } from '../helpers/daemon.js';

// /proc/self/mountinfo lines as the kernel writes them (fields 5 = mount point; after " - ":
// fstype, source, super options).
const HYBRID = [
  '30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755',
  '31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw',
  '33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct',
  '34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory',
  '35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids',
  '36 30 0:32 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset',
].join('\n');
const HYBRID_SELF = '12:pids:/system.slice/matchlockd.service\n4:memory:/system.slice/matchlockd.service\n3:cpu,cpuacct:/\n0::/system.slice/matchlockd.service\n';

describe('cgroup hierarchies', () => {
  const tmp = tempDir('cgroup');
  after(() => tmp.remove());

  it('finds each controller in a hybrid layout (v1 controllers, an empty unified tree) and its own place', () => {
    const host = detectCgroups(HYBRID, HYBRID_SELF, () => '');
    assert.deepEqual(host.mounts, {
      cpu: { root: '/sys/fs/cgroup/cpu,cpuacct', version: 1 },
      memory: { root: '/sys/fs/cgroup/memory', version: 1 },
      pids: { root: '/sys/fs/cgroup/pids', version: 1 },
    });
    const abs = new VmCgroups(host, '/matchlock');
    assert.deepEqual(abs.dirs('01ABC'), ['/sys/fs/cgroup/cpu,cpuacct/matchlock/01ABC', '/sys/fs/cgroup/memory/matchlock/01ABC', '/sys/fs/cgroup/pids/matchlock/01ABC']);
    const rel = new VmCgroups(host, 'vms');
    assert.deepEqual(rel.dirs('01ABC'), ['/sys/fs/cgroup/cpu,cpuacct/vms/01ABC', '/sys/fs/cgroup/memory/system.slice/matchlockd.service/vms/01ABC', '/sys/fs/cgroup/pids/system.slice/matchlockd.service/vms/01ABC']);
  });

  it('finds controllers on a v2-only host from cgroup.controllers, and a v1 mount wins for the controller it holds', () => {
    const v2 = '28 22 0:25 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate';
    const host = detectCgroups(v2, '0::/init.scope\n', () => 'cpuset cpu io memory hugetlb pids rdma misc\n');
    assert.deepEqual(Object.values(host.mounts), [{ root: '/sys/fs/cgroup', version: 2 }, { root: '/sys/fs/cgroup', version: 2 }, { root: '/sys/fs/cgroup', version: 2 }]);
    assert.deepEqual(new VmCgroups(host, '/matchlock').dirs('U'), ['/sys/fs/cgroup/matchlock/U'], 'one directory for all three');
    const mixed = detectCgroups(`${v2}\n34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory`, '', () => 'cpu pids memory');
    assert.equal(mixed.mounts.memory?.version, 1);
    assert.equal(mixed.mounts.cpu?.version, 2);
  });

  it('limits from the spec: vCPUs as CPU bandwidth, memory plus overhead, a pids bound', () => {
    assert.deepEqual(limitsFor(2, 1024, 256, 130), { cpuQuotaUs: 200_000, cpuPeriodUs: 100_000, memoryBytes: 1280 * 2 ** 20, pidsMax: 130 });
  });

  // v2 cannot be mounted with these controllers on a host whose v1 hierarchies hold them (ours),
  // so the v2 file protocol is checked on a directory laid out like a v2 mount.
  it('on v2 enables the controllers down the parent chain and writes cpu.max, memory.max, pids.max', async () => {
    const root = join(tmp.path, 'v2');
    mkdirSync(root);
    writeFileSync(join(root, 'cgroup.subtree_control'), 'memory\n');
    const host = detectCgroups(`28 22 0:25 / ${root} rw - cgroup2 cgroup2 rw`, '0::/\n', () => 'cpu memory pids');
    const cg = new VmCgroups(host, '/matchlock');
    // The kernel makes these files in every new cgroup; a plain directory needs them made.
    mkdirSync(join(root, 'matchlock'));
    writeFileSync(join(root, 'matchlock', 'cgroup.subtree_control'), '');
    const procs = await cg.create('01VM', limitsFor(1, 1024, 256, 129));
    assert.deepEqual(procs, [join(root, 'matchlock', '01VM', 'cgroup.procs')]);
    assert.equal(readFileSync(join(root, 'cgroup.subtree_control'), 'utf8'), '+cpu +pids', 'only what was not enabled yet');
    assert.equal(readFileSync(join(root, 'matchlock', 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids');
    const f = (n: string) => readFileSync(join(root, 'matchlock', '01VM', n), 'utf8');
    assert.deepEqual([f('cpu.max'), f('memory.max'), f('pids.max')], ['100000 100000', String(1280 * 2 ** 20), '129']);
    assert.ok(existsSync(join(root, 'matchlock', '01VM')));
  });
});
