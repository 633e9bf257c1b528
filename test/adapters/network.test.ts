import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT } from '../helpers/daemon.js';

const root = process.getuid?.() === 0;
const skip = !root && !process.env.CI ? 'needs root (network namespaces)' : false;
const probe = join(ROOT, 'test/adapters/network-probe.ts');

describe('iproute2 adapter: links read from sysfs, changed in one ip -batch', { skip }, () => {
  const ns = `mlnet-${randomBytes(3).toString('hex')}`;
  before(() => {
    assert.ok(root, 'needs root');
    for (const args of [['netns', 'add', ns], ['-n', ns, 'link', 'set', 'lo', 'up'], ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge'], ['-n', ns, 'link', 'set', 'br0', 'up'],
      ['-n', ns, 'link', 'add', 'vparent', 'type', 'veth', 'peer', 'name', 'vbridge'], ['-n', ns, 'link', 'set', 'vparent', 'up']]) execFileSync('ip', args);
  });
  after(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });
  const node = (prefix: string[], args: string[]) => JSON.parse(execFileSync(prefix[0] ?? '', [...prefix.slice(1), process.execPath, '--import', 'tsx', probe, ...args], { cwd: ROOT, encoding: 'utf8' })) as Record<string, unknown>;

  it('sysfs and ip -json see the same links; a TAP or a MACVTAP costs one process either way', () => {
    // `ip netns exec` mounts a sysfs of the namespace, as a daemon in its own namespace sees it.
    const r = node(['ip', 'netns', 'exec', ns], ['full']) as { own: boolean; bySysfs: unknown[]; byIp: unknown[]; ownedSys: unknown[]; ownedIp: unknown[]; ipCreated: unknown[]; ipRead: unknown[]; created: { kind: string; master: string; up: boolean; alias: string }; mcreated: { kind: string; mac: string }; spawns: Record<string, number> };
    assert.equal(r.own, true, 'sysfs shows the namespace');
    assert.deepEqual(r.bySysfs, r.byIp);
    assert.equal(r.bySysfs.length, 6);
    assert.equal(r.bySysfs[5], null, 'an absent link is undefined');
    assert.deepEqual(r.ownedSys, r.ownedIp);
    assert.equal((r.ownedSys as unknown[]).length, 2);
    assert.deepEqual({ kind: r.created.kind, master: r.created.master, up: r.created.up }, { kind: 'tap', master: 'br0', up: true });
    assert.match(r.created.alias, /^matchlock:/);
    assert.deepEqual({ kind: r.mcreated.kind, mac: r.mcreated.mac }, { kind: 'macvtap', mac: '02:00:00:00:00:31' });
    assert.deepEqual(r.spawns, { tap: 1, macvtap: 1, get: 0, list: 0, ipTap: 1, ipMacvtap: 1, ipGet: 1 }, 'without sysfs, six reads asked for at once (one absent) cost one ip');
    assert.deepEqual(r.ipCreated, r.ipRead, 'without sysfs, a create resolves the link as a read after it');
  });

  it('under nsenter --net, whose /sys still shows the host, sysfs is not used', () => {
    const r = node(['nsenter', `--net=/run/netns/${ns}`], ['detect']);
    assert.equal(r.own, false);
  });

  it('refuses an argument that ip -batch would split into other words', async () => {
    const { Iproute2Network } = await import('../../src/adapters/network/iproute2/network.js');
    await assert.rejects(new Iproute2Network({ useSysfs: false }).createTap('mlt0', { bridge: 'br0', alias: 'a b' }), /must not hold blanks/);
  });
});
