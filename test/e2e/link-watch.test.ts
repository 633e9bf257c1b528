import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { api, importGuest, stateOf, waitFor } from './vm.js';

// The lab runs matchlockd with --resync-period 1h and a retry back-off of 60 s: a link repaired
// within the waits below was repaired because the daemon saw the change, not by a resync or a
// retry that came due.
const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');
/** Far below the resync period and the back-off, well above what a repair takes. */
const REPAIR_MS = 10_000;

interface IpLinkJson {
  ifname: string;
  ifindex: number;
  master?: string;
  flags?: string[];
}

describe('host link changes that cut a CREATED VM off are repaired as they happen', { skip }, () => {
  let lab: Lab;
  let uid: string;
  let tap: string;
  const ip = (...args: string[]) => execFileSync('ip', ['-n', lab.ns, ...args], { encoding: 'utf8' });
  const link = (name: string): IpLinkJson | undefined => {
    try {
      return (JSON.parse(execFileSync('ip', ['-n', lab.ns, '-json', 'link', 'show', 'dev', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as IpLinkJson[])[0];
    } catch {
      return undefined;
    }
  };
  /** The TAP, once it is up on br0 again, with br0's ifindex. */
  const attached = () => {
    const l = link(tap);
    const br = link('br0');
    return l?.master === 'br0' && l.flags?.includes('UP') && br ? { tap: l, bridge: br.ifindex } : undefined;
  };
  const created = () => waitFor('CREATED', async () => { const vm = await api(lab).get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 90_000);

  before(async () => {
    assert.equal(missing, undefined, `the link watch tests ${missing}`);
    lab = await startLab(['--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--retry-backoff', '60s']);
    await importGuest(lab, testGuestLayout());
    uid = await api(lab).create('watched', [{ id: 'eth0', type: 'TAP' }]);
    await created();
    const links = lab.ourLinks();
    assert.equal(links.length, 1);
    tap = links[0] ?? '';
    assert.ok(attached(), 'the TAP is up on br0 after the create');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('a TAP detached from its bridge (ip link set nomaster) is on the bridge again', async () => {
    ip('link', 'set', 'dev', tap, 'nomaster');
    assert.equal(link(tap)?.master, undefined);
    await waitFor('the TAP on br0 again', attached, REPAIR_MS, 50);
    await created();
  });

  it('a TAP set down is set up again', async () => {
    ip('link', 'set', 'dev', tap, 'down');
    await waitFor('the TAP up again', attached, REPAIR_MS, 50);
    await created();
  });

  it('a bridge deleted and made again has the TAP on it; while it is missing no pass fails and counts against the VM', async () => {
    const old = link('br0')?.ifindex;
    const before = await api(lab).get(uid);
    ip('link', 'del', 'dev', 'br0');
    // A pass now could only fail for want of the bridge: a bridge that comes and goes would
    // wear the VM's retries down to FAILED. So none runs (the watch reacts within ~100 ms).
    await new Promise((r) => setTimeout(r, 1500));
    const waiting = await api(lab).get(uid);
    assert.deepEqual([stateOf(waiting), waiting?.status?.retry, waiting?.status?.lastError], [stateOf(before), before?.status?.retry, before?.status?.lastError]);
    ip('link', 'add', 'br0', 'type', 'bridge');
    ip('link', 'set', 'dev', 'br0', 'up');
    const back = await waitFor('the TAP on the new br0', attached, REPAIR_MS, 50);
    assert.notEqual(back.bridge, old, 'a new bridge');
    await created();
  });

  it('a deleted TAP is made again and attached', async () => {
    const old = link(tap)?.ifindex;
    ip('link', 'del', 'dev', tap);
    const back = await waitFor('the TAP made again on br0', attached, REPAIR_MS, 50);
    assert.notEqual(back.tap.ifindex, old, 'a new link');
    await created();
  });

  it('a repair is logged once, naming the VM, the link and what changed', () => {
    const lines = lab.daemon.logs.filter((l) => l.includes('host link of a VM changed'));
    assert.ok(lines.some((l) => l.includes(uid) && l.includes(tap) && l.includes(`detached from br0`)), lines.join('\n'));
    assert.ok(lines.some((l) => l.includes('set down')), lines.join('\n'));
    assert.ok(lines.some((l) => l.includes('deleted')), lines.join('\n'));
    // nomaster, down, the TAP deleted; the bridge's deletion waits for its return instead.
    assert.equal(lines.length, 3, lines.join('\n'));
    assert.equal(lab.daemon.logs.filter((l) => l.includes('bridge appeared again')).length, 1);
    // A deleted TAP made again is a new device: the running VMM's queue stays on the old one.
    const held = lab.daemon.logs.filter((l) => l.includes('the running VMM still holds the old one'));
    assert.equal(held.length, 1, held.join('\n'));
    assert.ok(held[0]?.includes(tap));
  });

  // The lab's macvtap parent is a veth whose peer is on br0: deleting it takes the pair, and the
  // kernel deletes the macvtaps on it.
  const deleteParent = () => ip('link', 'del', 'dev', 'vparent');
  const addParent = () => {
    ip('link', 'add', 'vparent', 'type', 'veth', 'peer', 'name', 'vbridge');
    ip('link', 'set', 'dev', 'vbridge', 'master', 'br0', 'up');
    ip('link', 'set', 'dev', 'vparent', 'up');
  };
  let mvUid = '';

  it('a macvtap VM whose parent is missing at its create is created as soon as the parent is back', async () => {
    deleteParent();
    mvUid = await api(lab).create('watched-macvtap', [{ id: 'eth0', type: 'MACVTAP' }]);
    const failed = await waitFor('a failed attempt', async () => { const vm = await api(lab).get(mvUid); return (vm?.status?.retry ?? 0) > 0 ? vm : undefined; }, 90_000);
    assert.match(failed.status?.lastError ?? '', /parent interface vparent .*not found/);
    addParent();
    // The back-off is 60 s: CREATED this soon means the parent's return cut it short.
    await waitFor('CREATED', async () => { const vm = await api(lab).get(mvUid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, REPAIR_MS);
  });

  it('a macvtap deleted with its parent waits for the parent without failing a pass, and is made again when it is back', async () => {
    const mv = lab.ourLinks().find((n) => n.startsWith('mlv')) ?? '';
    assert.ok(link(mv)?.flags?.includes('UP'));
    const before = await api(lab).get(mvUid);
    deleteParent();
    assert.equal(link(mv), undefined, 'the kernel deleted the macvtap with its parent');
    await new Promise((r) => setTimeout(r, 1500));
    const waiting = await api(lab).get(mvUid);
    assert.deepEqual([stateOf(waiting), waiting?.status?.retry, waiting?.status?.lastError], [stateOf(before), before?.status?.retry, before?.status?.lastError]);
    addParent();
    await waitFor('the macvtap made again, up', () => (link(mv)?.flags?.includes('UP') ? true : undefined), REPAIR_MS, 50);
    await waitFor('CREATED', async () => { const vm = await api(lab).get(mvUid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, REPAIR_MS);
    assert.equal(lab.daemon.logs.filter((l) => l.includes('macvtap parent appeared again')).length, 2);
    // The guest's /dev/tap<ifindex> went with the old macvtap: a restart brings its traffic back.
    assert.ok(lab.daemon.logs.some((l) => l.includes('the running VMM still holds the old one') && l.includes(mv)));
  });

  it('after a restart, a VM backing off for want of its parent is created as soon as the parent is back', async () => {
    deleteParent();
    const waiter = await api(lab).create('watched-restart', [{ id: 'eth0', type: 'MACVTAP' }]);
    await waitFor('a failed attempt', async () => { const vm = await api(lab).get(waiter); return (vm?.status?.retry ?? 0) > 0 ? vm : undefined; }, 90_000);
    // The new daemon's first pass finds the retry not due: only the stored record says that the
    // parent is what the VM waits for.
    await lab.restartDaemon(false);
    addParent();
    // The back-off is 30 to 60 s: CREATED this soon means the parent's return cut it short.
    await waitFor('CREATED', async () => { const vm = await api(lab).get(waiter); return stateOf(vm) === 'CREATED' ? vm : undefined; }, REPAIR_MS);
    await waitFor('the other macvtap VM CREATED', async () => { const vm = await api(lab).get(mvUid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, REPAIR_MS);
  });

  /** The daemon's `ip -o monitor link`: in the lab's network namespace, named so in its cmdline. */
  const monitors = () => {
    const nsInode = statSync(`/run/netns/${lab.ns}`).ino;
    return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8') === 'ip\0-o\0monitor\0link\0' && statSync(`/proc/${pid}/ns/net`).ino === nsInode;
      } catch {
        return false;
      }
    });
  };

  it('a link monitor that ended is started again, and repairs go on', async () => {
    const [first] = await waitFor('the monitor', () => (monitors().length === 1 ? monitors() : undefined), REPAIR_MS, 50);
    assert.ok(first);
    process.kill(first, 'SIGKILL');
    await waitFor('another monitor', () => { const m = monitors(); return m.length === 1 && m[0] !== first ? m : undefined; }, REPAIR_MS, 50);
    ip('link', 'set', 'dev', tap, 'nomaster');
    await waitFor('the TAP on br0 again', attached, REPAIR_MS, 50);
  });

  it('the monitor ends with the daemon, stopped or killed', async () => {
    const [first] = monitors();
    assert.ok(first);
    await lab.restartDaemon(false);
    const [next] = await waitFor('one monitor, of the new daemon', () => { const m = monitors(); return m.length === 1 && m[0] !== first ? m : undefined; }, REPAIR_MS, 50);
    // SIGKILL: nothing in the daemon runs, and ip never reads its stdin.
    await lab.daemon.kill();
    await waitFor('no monitor left', () => (monitors().length === 0 ? true : undefined), REPAIR_MS, 50);
    assert.ok(next);
  });
});

describe('a VM worn down to FAILED while its macvtap parent was away', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the link watch tests ${missing}`);
    // Two attempts, a second apart: FAILED within seconds. The resync is an hour away.
    lab = await startLab(['--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--retry-backoff', '1s', '--maximum-retry', '1']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('is revived and created when the parent is back, also after a restart', async () => {
    const ip = (...args: string[]) => execFileSync('ip', ['-n', lab.ns, ...args], { encoding: 'utf8' });
    ip('link', 'del', 'dev', 'vparent');
    const uid = await api(lab).create('worn-down', [{ id: 'eth0', type: 'MACVTAP' }]);
    const failed = await waitFor('FAILED', async () => { const vm = await api(lab).get(uid); return stateOf(vm) === 'FAILED' ? vm : undefined; }, 90_000);
    assert.match(failed.status?.lastError ?? '', /parent interface vparent .*not found/);
    // FAILED stays FAILED without the parent: nothing runs for it.
    await lab.restartDaemon(false);
    ip('link', 'add', 'vparent', 'type', 'veth', 'peer', 'name', 'vbridge');
    ip('link', 'set', 'dev', 'vbridge', 'master', 'br0', 'up');
    ip('link', 'set', 'dev', 'vparent', 'up');
    const back = await waitFor('CREATED', async () => { const vm = await api(lab).get(uid); return stateOf(vm) === 'CREATED' ? vm : undefined; }, REPAIR_MS);
    assert.equal(back.status?.retry, 0);
    assert.ok(lab.daemon.logs.some((l) => l.includes('a FAILED VM ran out of attempts for appeared again') && l.includes(uid)));
  });
});
