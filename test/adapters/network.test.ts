import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
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
    for (const args of [['netns', 'add', ns], ['-n', ns, 'link', 'set', 'lo', 'up'], ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge'], ['-n', ns, 'link', 'set', 'br0', 'up'], ['-n', ns, 'link', 'add', 'brst', 'type', 'bridge'], ['-n', ns, 'link', 'set', 'brst', 'up'],
      ['-n', ns, 'link', 'add', 'vparent', 'type', 'veth', 'peer', 'name', 'vbridge'], ['-n', ns, 'link', 'set', 'vparent', 'up'], ['-n', ns, 'tuntap', 'add', 'dev', 'mltun0', 'mode', 'tun']]) execFileSync('ip', args);
  });
  after(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });
  const node = (prefix: string[], args: string[]) => JSON.parse(execFileSync(prefix[0] ?? '', [...prefix.slice(1), process.execPath, '--import', 'tsx', probe, ...args], { cwd: ROOT, encoding: 'utf8' })) as Record<string, unknown>;

  it('sysfs and ip -json see the same links; a TAP or a MACVTAP costs at most one process either way', () => {
    // `ip netns exec` mounts a sysfs of the namespace, as a daemon in its own namespace sees it.
    const r = node(['ip', 'netns', 'exec', ns], ['full']) as { own: boolean; bySysfs: unknown[]; byIp: unknown[]; ownedSys: unknown[]; ownedIp: unknown[]; ipCreated: unknown[]; ipRead: unknown[]; created: { kind: string; master: string; up: boolean; alias: string }; mcreated: { kind: string; mac: string }; spawns: Record<string, number> };
    assert.equal(r.own, true, 'sysfs shows the namespace');
    assert.deepEqual(r.bySysfs, r.byIp);
    assert.equal(r.bySysfs.length, 7);
    assert.equal(r.bySysfs[5], null, 'an absent link is undefined');
    // A tun device (layer 3) is no TAP, though sysfs gives both tun_flags and ip both kind "tun".
    assert.equal((r.bySysfs[6] as { kind: string }).kind, 'other');
    assert.deepEqual(r.ownedSys, r.ownedIp);
    assert.equal((r.ownedSys as unknown[]).length, 2);
    assert.deepEqual({ kind: r.created.kind, master: r.created.master, up: r.created.up }, { kind: 'tap', master: 'br0', up: true });
    assert.match(r.created.alias, /^matchlock:/);
    assert.deepEqual({ kind: r.mcreated.kind, mac: r.mcreated.mac }, { kind: 'macvtap', mac: '02:00:00:00:00:31' });
    assert.deepEqual(r.spawns, { tap: 1, macvtap: 1, get: 0, list: 0, ipTap: 1, ipMacvtap: 1, ipGet: 1 }, 'without sysfs, seven reads asked for at once (one absent) cost one ip');
    assert.deepEqual(r.ipCreated, r.ipRead, 'without sysfs, a create resolves the link as a read after it');
  });

  it('under nsenter --net, whose /sys still shows the host, sysfs is not used', () => {
    const r = node(['nsenter', `--net=/run/netns/${ns}`], ['detect']);
    assert.equal(r.own, false);
  });

  describe('link changes asked for together, or while an ip runs, share one ip -force -batch fed line by line', () => {
    type Link = { name: string; kind: string; master?: string; up: boolean; alias?: string } | undefined;
    let r: Record<'sysfs' | 'ip', { processes: number[]; links: Link[] }> & {
      errors: { grouped: Record<string, { ok?: unknown; error?: string }>; alone: Record<string, { error?: string }>; processes: number; after: Record<string, Link> };
      order: { reads: (number | null)[]; first: number; second: number; now: number; alias: string; processes: number };
      sequential: { spawns: number };
      stale: {
        reread: { first: number; now: number; read: number; spawns: number };
        deleted: { seen: string; again: string | null };
        afterLife: { pid: number | null; gone: boolean; created: string; attached: string; masters: (string | undefined)[] };
        master: Record<'s' | 'i', { created: string; adopted: string; masters: (string | undefined)[]; processes: number; gone: string }>;
      };
    };
    before(() => {
      // An `ip` first on PATH logs each run, then execs the real one: the count is of processes.
      const dir = mkdtempSync(join(tmpdir(), 'mlnet-ip-'));
      try {
        const real = execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim();
        writeFileSync(join(dir, 'ip'), `#!/bin/sh\necho "$*" >> "$IP_LOG"\nexec ${real} "$@"\n`);
        chmodSync(join(dir, 'ip'), 0o755);
        writeFileSync(join(dir, 'log'), '');
        const out = execFileSync(real, ['netns', 'exec', ns, process.execPath, '--import', 'tsx', probe, 'group'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, IP_LOG: join(dir, 'log') } });
        r = JSON.parse(out) as typeof r;
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('creates asked for in one turn cost one ip, and those asked while it runs none more', () => {
      for (const kind of ['sysfs', 'ip'] as const) {
        // One ip a create would be 8, then 8; one ip a group, 1 then 2.
        assert.deepEqual(r[kind].processes, [1, 0], `${kind}: 8 creates in one turn cost one ip; one, then 7 while it runs, cost none more`);
        assert.equal(r[kind].links.length, 16);
        for (const [i, l] of r[kind].links.entries()) {
          assert.deepEqual(l, { name: `mlg${kind[0]}${i}`, kind: 'tap', master: 'br0', up: true, alias: `matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth${i}` });
        }
      }
    });

    it('a failed line fails only its own caller, with the error it gets alone; the others succeed', () => {
      const { grouped, alone, after } = r.errors;
      for (const good of ['good1', 'good2', 'good3', 'good4']) assert.ok(grouped[good]?.ok, `${good} succeeds beside the failures: ${grouped[good]?.error}`);
      for (const name of ['mlgood1', 'mlgood2', 'mlgood3']) assert.deepEqual({ ...after[name], alias: undefined }, { kind: 'tap', master: 'br0', up: true, alias: undefined }, name);
      assert.deepEqual(after.mlgood4 && { kind: after.mlgood4.kind, up: after.mlgood4.up }, { kind: 'macvtap', up: true });
      // Each failure names its own line and ip's message for it, as when the call runs alone.
      assert.match(grouped.longName?.error ?? '', /^ip tuntap add dev mlg-name-too-long-for-linux mode tap: .*not a valid ifname/);
      assert.match(grouped.noBridge?.error ?? '', /^ip link set dev mlgnobr master nobr0 up: .*"nobr0" is wrong: Device does not exist/);
      assert.match(grouped.exists?.error ?? '', /^ip tuntap add dev mlgbusy mode tap: .*Device or resource busy/);
      assert.match(grouped.noParent?.error ?? '', /^ip link add link noparent0 name mlgmv0 .*: Cannot find device "noparent0"/);
      for (const key of Object.keys(alone)) assert.equal(grouped[key]?.error, alone[key]?.error, `${key}: the same error grouped as alone`);
      // The TAP whose master was refused was made and named before ip stopped, as alone.
      assert.deepEqual(after.mlgnobr && { master: after.mlgnobr.master, up: after.mlgnobr.up }, { master: undefined, up: false });
      assert.equal(after.mlgmv0, undefined, 'the MACVTAP whose parent is missing was not made');
      assert.equal(r.errors.processes, 2, 'the running ip, and one more after each of the two lines ip exited at (an argument it refused)');
    });

    it("one VM's changes and reads asked in one turn run in that order, in one ip", () => {
      // Read, create, read, remove, read, create again: each read sees what was asked before it,
      // the second create made a new link, and it is the one left.
      assert.deepEqual(r.order.reads, [null, r.order.first, null]);
      assert.notEqual(r.order.first, r.order.second);
      assert.equal(r.order.now, r.order.second);
      assert.match(r.order.alias, /eth31$/);
      assert.equal(r.order.processes, 1);
    });

    it('creates asked one after another, each after the last was answered, share the running ip', () => {
      // A process a create (or a group) would be 4.
      assert.equal(r.sequential.spawns, 1);
    });

    it('a link deleted and re-created by another process is found anew: a read at once, a change after the ip\'s life', () => {
      const { reread, afterLife } = r.stale;
      // ip prints [{}] for a name whose cached ifindex is gone; the read runs again in a new ip.
      assert.notEqual(reread.first, reread.now, 'the TAP was re-created');
      assert.equal(reread.read, reread.now, 'the read sees the new TAP');
      assert.equal(reread.spawns, 1, 'the running ip did the create and the first read; the re-read cost a fresh one');
      // Deleted, not re-created: ip exits at the stale ifindex; the read, asked again, finds none.
      assert.deepEqual(r.stale.deleted, { seen: 'brgone', again: null });
      // The bridge the old ip attached to was re-created once that ip's life was over.
      assert.equal(afterLife.created, 'brst', 'a create attaches to the new bridge');
      assert.equal(afterLife.attached, 'ok');
      assert.deepEqual(afterLife.masters, ['brst', 'brst']);
    });

    it("a bridge deleted and re-created by another process within an ip's life: a master line failing on the stale ifindex runs again in a fresh ip", () => {
      for (const k of ['s', 'i'] as const) {
        const m = r.stale.master[k];
        const br = `brm${k}`;
        assert.equal(m.created, br, `${k}: the create attaches to the new bridge`);
        assert.equal(m.adopted, 'ok', `${k}: so does an adopt after it`);
        assert.deepEqual(m.masters, [br, br]);
        assert.equal(m.processes, 1, `${k}: one fresh ip for the line run again, which then takes the next change`);
        // The fresh ip looks the name up anew: the error says the bridge is gone, not EINVAL.
        assert.match(m.gone, new RegExp(`^ip link set dev mlm${k}2 master ${br} up: .*"${br}" is wrong: Device does not exist`), k);
      }
    });

    it('the shared ip exits once its life is over and its lines are answered', () => {
      const { afterLife } = r.stale;
      assert.ok(afterLife.pid !== null, 'a create started an ip as a child of the process spawner');
      assert.equal(afterLife.gone, true, `ip ${afterLife.pid} still runs`);
    });
  });

  it('refuses an argument that ip -batch would split into other words', async () => {
    const { Iproute2Network } = await import('../../src/adapters/network/iproute2/network.js');
    await assert.rejects(new Iproute2Network({ useSysfs: false }).createTap('mlt0', { bridge: 'br0', alias: 'a b' }), /must not hold blanks/);
  });
});
