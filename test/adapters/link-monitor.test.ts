import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventLinkName, LinkMonitor, parseLinkEvent } from '../../src/adapters/network/iproute2/link-monitor.js';
import { silentLogger } from '../../src/adapters/silent-logger.js';
import { hostDeviceName } from '../../src/core/microvm/host-names.js';
import type { MicroVM } from '../../src/core/microvm/types.js';
import type { LinkInfo } from '../../src/core/ports.js';
import { LinkWatch } from '../../src/core/reconcile/link-watch.js';
import { Reconciler } from '../../src/core/reconcile/reconciler.js';
import { missingHostLink } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/ports.js';
import { MemoryStore } from '../fakes/memory-store.js';
import { storedMicroVM } from '../helpers/records.js';
import { tempDir } from '../helpers/daemon.js';

// Lines `ip -o monitor link` (iproute2 6.1) printed while a TAP named as matchlock names one
// (mlt + 10 characters of a uid + 0) was made, put on br0, detached, set down, moved to br1,
// and deleted, and while its bridge was deleted and made again; and for a macvtap, also while
// its parent (a veth) was deleted and made again.
const L = {
  tapNew: '3: mlt01abcdefgh0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  tapOnBr0: '3: mlt01abcdefgh0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc pfifo_fast master br0 state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  /** The bridge driver's own message of its port (AF_BRIDGE): no qdisc. */
  portOnBr0: '3: mlt01abcdefgh0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 master br0 state DOWN \\    link/ether fe:67:5f:ad:2f:16',
  /** `ip link set <tap> nomaster`: the port's AF_BRIDGE deletion, then the link's own message. */
  portLeft: 'Deleted 3: mlt01abcdefgh0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 master br0 state DOWN \\    link/ether fe:67:5f:ad:2f:16',
  tapNoMaster: '3: mlt01abcdefgh0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc pfifo_fast state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  tapDown: '3: mlt01abcdefgh0: <BROADCAST,MULTICAST> mtu 1500 qdisc pfifo_fast master br0 state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  tapOnBr1: '3: mlt01abcdefgh0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc pfifo_fast master br1 state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  tapDeleted: 'Deleted 3: mlt01abcdefgh0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  br0Up: '2: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UNKNOWN group default \\    link/ether 8e:92:bd:1d:82:ad brd ff:ff:ff:ff:ff:ff',
  br0Feature: '2: br0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN group default event FEATURE CHANGE \\    link/ether 00:00:00:00:00:00 brd ff:ff:ff:ff:ff:ff',
  br0Deleted: 'Deleted 2: br0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether fe:67:5f:ad:2f:16 brd ff:ff:ff:ff:ff:ff',
  br0Again: '5: br0: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether b6:54:af:7e:6e:1e brd ff:ff:ff:ff:ff:ff',
  macvtapUp: '11: mlv01abcdefgh0@vparent: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc pfifo_fast state LOWERLAYERDOWN group default \\    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff',
  macvtapDown: '11: mlv01abcdefgh0@vparent: <BROADCAST,MULTICAST> mtu 1500 qdisc pfifo_fast state DOWN group default \\    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff',
  /** The macvtap parent (a veth here) deleted: its macvtap is set down and deleted first. */
  macvtapParentGoing: '4: mlv01abcdefgh0@vparent: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc pfifo_fast state DOWN group default \\    link/ether 1a:5d:95:cf:fc:ab brd ff:ff:ff:ff:ff:ff',
  macvtapGone: 'Deleted 4: mlv01abcdefgh0@vparent: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN group default \\    link/ether 1a:5d:95:cf:fc:ab brd ff:ff:ff:ff:ff:ff',
  parentDeleted: 'Deleted 3: vparent@NONE: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether f2:28:f7:4b:64:4d brd ff:ff:ff:ff:ff:ff',
  parentAgain: '6: vparent@vbridge: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN group default \\    link/ether 12:a5:45:e0:f2:4e brd ff:ff:ff:ff:ff:ff',
  parentAgainUp: '6: vparent@vbridge: <NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN> mtu 1500 qdisc noqueue state LOWERLAYERDOWN group default \\    link/ether 12:a5:45:e0:f2:4e brd ff:ff:ff:ff:ff:ff',
  vethNone: '9: vbridge@NONE: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN group default \\    link/ether 32:1e:99:b3:24:e2 brd ff:ff:ff:ff:ff:ff',
};

describe('ip -o monitor link lines', () => {
  it('name the link, with or without a peer after @', () => {
    assert.equal(eventLinkName(L.tapOnBr0), 'mlt01abcdefgh0');
    assert.equal(eventLinkName(L.tapDeleted), 'mlt01abcdefgh0');
    assert.equal(eventLinkName(L.macvtapUp), 'mlv01abcdefgh0');
    assert.equal(eventLinkName(L.vethNone), 'vbridge');
    assert.equal(eventLinkName('Timestamp: Mon Nov 30 2026'), undefined);
    assert.equal(eventLinkName(''), undefined);
  });

  it('give the link\'s index, whether it was deleted, is up, and its master', () => {
    assert.deepEqual(parseLinkEvent(L.tapNew), { name: 'mlt01abcdefgh0', ifindex: 3, deleted: false, up: false, master: undefined });
    assert.deepEqual(parseLinkEvent(L.tapOnBr0), { name: 'mlt01abcdefgh0', ifindex: 3, deleted: false, up: true, master: 'br0' });
    assert.deepEqual(parseLinkEvent(L.tapNoMaster), { name: 'mlt01abcdefgh0', ifindex: 3, deleted: false, up: true, master: undefined });
    assert.deepEqual(parseLinkEvent(L.tapDown), { name: 'mlt01abcdefgh0', ifindex: 3, deleted: false, up: false, master: 'br0' });
    assert.deepEqual(parseLinkEvent(L.tapOnBr1)?.master, 'br1');
    assert.deepEqual(parseLinkEvent(L.tapDeleted), { name: 'mlt01abcdefgh0', ifindex: 3, deleted: true, up: false, master: undefined });
    assert.deepEqual(parseLinkEvent(L.br0Deleted), { name: 'br0', ifindex: 2, deleted: true, up: false, master: undefined });
    assert.deepEqual(parseLinkEvent(L.br0Again), { name: 'br0', ifindex: 5, deleted: false, up: false, master: undefined });
    // LOWER_UP or NO-CARRIER are not UP: only IFF_UP is.
    assert.equal(parseLinkEvent(L.br0Feature)?.up, true);
    assert.deepEqual(parseLinkEvent(L.macvtapDown), { name: 'mlv01abcdefgh0', ifindex: 11, deleted: false, up: false, master: undefined });
  });

  it('skip the bridge driver\'s messages of its ports, whose "Deleted" does not delete the link', () => {
    assert.equal(parseLinkEvent(L.portOnBr0), undefined);
    assert.equal(parseLinkEvent(L.portLeft), undefined);
  });
});

/** A uid whose last 10 characters are those of the captured links' names. */
const UID = '01ARZ3NDEKTSV4RR01ABCDEFGH';

function harness(opts: { state?: MicroVM['status']['state']; macvtap?: boolean } = {}) {
  const vm = storedMicroVM(UID, { interfaces: [{ deviceId: 'eth0', type: opts.macvtap ? 'MACVTAP' : 'TAP' }] }, { state: opts.state ?? 'CREATED', lastError: '' });
  const records = new Map([[UID, vm]]);
  // The host's links as the watch reads them; br0 is there until a test takes it away.
  const host = new Map<string, LinkInfo>([
    ['br0', { name: 'br0', ifindex: 2, mac: '', kind: 'other', up: true }],
    ['vparent', { name: 'vparent', ifindex: 7, mac: '', kind: 'other', up: true }],
  ]);
  const busy = new Set<string>();
  const repairs: { uid: string; returned: string | undefined }[] = [];
  /** Told of every read of a link, after the link's state was taken. */
  const hooks: { afterRead?: ((name: string) => void) | undefined } = {};
  const watch = new LinkWatch({
    store: { get: (uid) => records.get(uid) },
    network: {
      get: async (name) => {
        const l = host.get(name);
        hooks.afterRead?.(name);
        return l;
      },
    },
    bridgeName: 'br0',
    parentIface: 'vparent',
    busy: (uid) => busy.has(uid),
    repair: (uid, returned) => repairs.push({ uid, returned }),
    logger: silentLogger,
    debounceMs: 5,
  });
  const name = hostDeviceName(vm, 0);
  /** Feeds lines as LinkMonitor does: the name first, then the whole line. */
  const feed = (...lines: string[]) => {
    for (const line of lines) {
      const n = eventLinkName(line);
      if (n === undefined || !watch.wants(n)) continue;
      const e = parseLinkEvent(line);
      if (e) watch.seen(e);
    }
  };
  const settle = () => new Promise((r) => setTimeout(r, 30));
  const tap = (l: Partial<LinkInfo> = {}) => host.set(name, { name, ifindex: 3, mac: '', kind: opts.macvtap ? 'macvtap' : 'tap', master: opts.macvtap ? undefined : 'br0', up: true, ...l });
  return { vm, records, host, busy, repairs, watch, name, feed, settle, tap, hooks };
}

describe('which link events repair a VM', () => {
  it('the captured names are this VM\'s', () => {
    assert.equal(harness().name, 'mlt01abcdefgh0');
    assert.equal(harness({ macvtap: true }).name, 'mlv01abcdefgh0');
  });

  it('nothing before the VM is tracked: a burst\'s own link events cost a map lookup', async () => {
    const h = harness();
    assert.equal(h.watch.wants(h.name), false);
    h.feed(L.tapNew, L.tapNoMaster, L.tapDeleted);
    await h.settle();
    assert.deepEqual(h.repairs, []);
  });

  for (const [what, lines, hostLink] of [
    ['detached (nomaster)', [L.portLeft, L.tapNoMaster], { master: undefined }],
    ['set down', [L.tapDown], { up: false }],
    ['moved to another bridge', [L.portLeft, L.tapOnBr1], { master: 'br1' }],
    ['deleted', [L.portLeft, L.tapNoMaster, L.tapDeleted], undefined],
  ] as const) {
    it(`a CREATED VM's TAP ${what}: repaired once, however many lines`, async () => {
      const h = harness();
      h.watch.track(UID, h.vm);
      if (hostLink) h.tap(hostLink);
      h.feed(...lines, ...lines);
      await h.settle();
      assert.deepEqual(h.repairs, [{ uid: UID, returned: undefined }]);
    });
  }

  it('a macvtap set down or deleted', async () => {
    const h = harness({ macvtap: true });
    h.watch.track(UID, h.vm);
    h.tap({ up: false });
    h.feed(L.macvtapUp);
    await h.settle();
    assert.deepEqual(h.repairs, [], 'up is as it should be');
    h.feed(L.macvtapDown);
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: undefined }]);
  });

  it('not while a pass of the VM runs: after it, only if still broken; never a VM not CREATED', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.tap({ master: undefined });
    h.busy.add(UID);
    h.feed(L.tapNoMaster);
    await h.settle();
    assert.deepEqual(h.repairs, [], 'its own pass may be what detached it');
    h.busy.clear();
    h.watch.track(UID, h.vm);
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: undefined }], 'the pass ended and left it detached');
    h.busy.add(UID);
    h.feed(L.tapNoMaster);
    await h.settle();
    h.busy.clear();
    h.tap();
    h.watch.track(UID, h.vm);
    await h.settle();
    assert.equal(h.repairs.length, 1, 'the pass ended with it attached');
    h.tap({ master: undefined });
    h.records.set(UID, { ...h.vm, status: { ...h.vm.status, state: 'PENDING' } });
    h.feed(L.tapNoMaster);
    await h.settle();
    assert.equal(h.repairs.length, 1, 'a VM not CREATED');
  });

  it('not when the link is fine again by the time it is read (events of a pass that ended)', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.tap();
    h.feed(L.tapNew, L.tapNoMaster, L.tapOnBr0);
    await h.settle();
    assert.deepEqual(h.repairs, []);
  });

  it('a bridge made again re-attaches its VMs at once, skipping their back-off', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.feed(L.br0Up, L.br0Feature);
    await h.settle();
    assert.deepEqual(h.repairs, [], 'the same bridge');
    h.tap({ master: undefined });
    h.host.delete('br0');
    h.feed(L.portLeft, L.tapNoMaster, L.br0Deleted);
    await h.settle();
    // A pass now would fail for want of the bridge and count against the VM's retries.
    assert.deepEqual(h.repairs, [], 'not while its bridge is missing');
    h.feed(L.br0Again);
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }], 'once the bridge is back');
    h.feed(L.br0Again);
    assert.equal(h.repairs.length, 1, 'once per new bridge');
  });

  it('a VM whose TAP left a bridge that is missing waits for the bridge, also when its deletion was not seen', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.tap({ master: undefined });
    h.host.delete('br0');
    // Only the port's own line: the bridge's deletion went unseen (missed events).
    h.feed(L.tapNoMaster);
    await h.settle();
    assert.deepEqual(h.repairs, []);
    h.feed(L.br0Again);
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }]);
  });

  it('a macvtap whose parent is deleted waits for the parent; its return repairs the VM', async () => {
    const h = harness({ macvtap: true });
    h.watch.track(UID, h.vm);
    h.host.delete('vparent');
    h.host.delete(h.name);
    h.feed(L.macvtapParentGoing, L.macvtapGone, L.parentDeleted);
    await h.settle();
    // A pass now would fail for want of the parent and count against the VM's retries.
    assert.deepEqual(h.repairs, [], 'not while its parent is missing');
    h.feed(L.parentAgain, L.parentAgainUp);
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'vparent' }], 'once the parent is back, not again when it comes up');
  });

  it('a VM whose pass failed for want of its uplink is reconciled when it appears, its deletion never seen', async () => {
    for (const macvtap of [false, true]) {
      const uplink = macvtap ? 'vparent' : 'br0';
      const h = harness({ macvtap, state: 'PENDING' });
      const failed = { ...h.vm, status: { ...h.vm.status, missingLink: uplink, nextAttemptAt: '2099-01-01T00:00:00.000Z' } };
      h.records.set(UID, failed);
      h.host.delete(uplink);
      h.watch.track(UID, h.vm, uplink);
      await h.settle();
      assert.deepEqual(h.repairs, []);
      h.feed(macvtap ? L.parentAgain : L.br0Again);
      assert.deepEqual(h.repairs, [{ uid: UID, returned: uplink }], uplink);
    }
  });

  it('an uplink that appeared while the pass that found it missing ended: that pass\'s VM is repaired', async () => {
    const h = harness({ macvtap: true, state: 'PENDING' });
    h.records.set(UID, { ...h.vm, status: { ...h.vm.status, missingLink: 'vparent', nextAttemptAt: '2099-01-01T00:00:00.000Z' } });
    // Its event came before the VM was tracked, so it was not wanted.
    h.watch.track(UID, h.vm, 'vparent');
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'vparent' }]);
  });

  it('a bridge\'s return cuts short only the back-off of VMs whose last failure found it missing', async () => {
    const records = new Map<string, MicroVM>();
    const repairs: { uid: string; returned: string | undefined }[] = [];
    const watch = new LinkWatch({
      store: { get: (uid) => records.get(uid) },
      network: { get: async () => undefined },
      bridgeName: 'br0',
      parentIface: 'vparent',
      busy: () => false,
      repair: (uid, returned) => repairs.push({ uid, returned }),
      logger: silentLogger,
      debounceMs: 5,
    });
    const later = '2099-01-01T00:00:00.000Z';
    const vms = {
      waitsForBr0: { state: 'PENDING', lastError: 'interface eth0 (tap x): bridge br0 for interface eth0 not found on this host', missingLink: 'br0', nextAttemptAt: later },
      pullFailed: { state: 'PENDING', lastError: 'image r:1: pull failed: 503', nextAttemptAt: later },
      waitsForVparent: { state: 'PENDING', lastError: 'parent interface vparent for eth1 not found on this host', missingLink: 'vparent', nextAttemptAt: later },
      notReadyYet: { state: 'PENDING', lastError: '' },
      running: { state: 'CREATED', lastError: '' },
      failed: { state: 'FAILED', lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0' },
    } as const;
    const uids = new Map<string, string>();
    for (const [n, status] of Object.entries(vms)) {
      const uid = `01ARZ3NDEKTSV4RR01ABCDEFG${uids.size}`;
      uids.set(uid, n);
      const vm = storedMicroVM(uid, { interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'MACVTAP' }] }, { ...status });
      records.set(uid, vm);
      watch.track(uid, vm);
    }
    const repaired = () => repairs.map((r) => `${uids.get(r.uid)} ${r.returned}`).sort();
    watch.seen({ name: 'br0', ifindex: 2, deleted: true, up: false, master: undefined });
    watch.seen({ name: 'br0', ifindex: 5, deleted: false, up: false, master: undefined });
    assert.deepEqual(repaired(), ['failed br0', 'notReadyYet br0', 'running br0', 'waitsForBr0 br0'], 'not one backing off after another failure; the FAILED one ran out of attempts for want of br0');
    repairs.length = 0;
    // The repairs above would have run passes: as if the two that waited for br0 now ran.
    for (const [uid, n] of uids) {
      const cur = records.get(uid);
      if (cur && (n === 'waitsForBr0' || n === 'failed')) records.set(uid, { ...cur, status: { ...cur.status, state: 'CREATED', lastError: '', missingLink: undefined, nextAttemptAt: undefined } });
    }
    watch.seen({ name: 'vparent', ifindex: 3, deleted: true, up: false, master: undefined });
    watch.seen({ name: 'vparent', ifindex: 6, deleted: false, up: false, master: undefined });
    assert.deepEqual(repaired(), ['failed vparent', 'notReadyYet vparent', 'running vparent', 'waitsForBr0 vparent', 'waitsForVparent vparent']);
  });

  it('a VM on two uplinks waits for both: the first back does not reconcile it, the last cuts short the back-off its failure recorded', async () => {
    const h = harness({ state: 'PENDING' });
    const vm = storedMicroVM(UID, { interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'MACVTAP' }] }, { state: 'PENDING', lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0', nextAttemptAt: '2099-01-01T00:00:00.000Z' });
    h.records.set(UID, vm);
    h.host.delete('br0');
    h.host.delete('vparent');
    h.watch.track(UID, vm, 'br0');
    h.feed(L.parentDeleted);
    await h.settle();
    h.feed(L.br0Again);
    await h.settle();
    assert.deepEqual(h.repairs, [], 'its macvtap parent is still missing: a pass could only fail');
    h.feed(L.parentAgain);
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }], 'both are back: the back-off recorded for want of br0 is cut short');
  });

  it('a return among missed events is found when the monitor says events were missed', async () => {
    const h = harness({ state: 'FAILED' });
    h.records.set(UID, { ...h.vm, status: { ...h.vm.status, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0' } });
    h.host.delete('br0');
    h.watch.track(UID, h.vm, 'br0');
    await h.settle();
    // br0 is back, its event dropped; a pass of the FAILED VM reads nothing already known missing.
    h.host.set('br0', { name: 'br0', ifindex: 5, mac: '', kind: 'other', up: true });
    h.watch.track(UID, h.vm, 'br0');
    await h.settle();
    assert.deepEqual(h.repairs, []);
    h.watch.eventsMissed();
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }]);
  });

  it('a pass that attempted nothing does not take the stored link as missing when the watch has seen it since', async () => {
    const h = harness();
    // Another VM on br0 whose last failure missed br0, and whose macvtap parent is gone too.
    const other = storedMicroVM('01ARZ3NDEKTSV4RR01ABCDEFGZ', { interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'MACVTAP' }] }, { state: 'PENDING', lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0', nextAttemptAt: '2099-01-01T00:00:00.000Z' });
    h.records.set(other.uid, other);
    h.watch.track(UID, h.vm);
    h.watch.track(other.uid, other);
    h.feed(L.parentDeleted, L.br0Deleted);
    await h.settle();
    h.feed(L.br0Again);
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }], 'the other waits for its parent');
    // Each of its passes while it backs off attempts nothing and names br0.
    h.watch.track(other.uid, other, 'br0', true);
    h.watch.track(other.uid, other, 'br0', true);
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }], 'br0 is not read as returned again, reconciling every VM on it');
    h.feed(L.parentAgain);
    assert.deepEqual(h.repairs.at(-1), { uid: other.uid, returned: 'br0' }, 'its parent back: the back-off for want of br0 is cut short');
  });

  it('an uplink whose TAP check read it missing, back before it was marked so, is read again and repairs the VM', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.tap({ master: undefined });
    h.host.delete('br0');
    h.hooks.afterRead = (name) => {
      if (name !== 'br0') return;
      h.hooks.afterRead = undefined;
      // br0 comes back between this read and what the check makes of it.
      h.host.set('br0', { name: 'br0', ifindex: 5, mac: '', kind: 'other', up: true });
      h.feed(L.br0Again);
    };
    h.feed(L.tapNoMaster);
    await h.settle();
    assert.deepEqual(h.repairs, [{ uid: UID, returned: 'br0' }]);
  });

  it('says which kind of uplink came back, by the VMs\' links on it, also when parent-iface names the bridge', async () => {
    const lines: string[] = [];
    const logger: Logger = { debug: () => {}, info: (_o, m) => void lines.push(m ?? ''), warn: () => {}, error: () => {}, child: () => logger };
    const vm = storedMicroVM(UID, {}, { state: 'CREATED', lastError: '' });
    const watch = new LinkWatch({ store: { get: () => vm }, network: { get: async () => undefined }, bridgeName: 'br0', parentIface: 'br0', busy: () => false, repair: () => {}, logger });
    watch.track(UID, vm);
    watch.seen({ name: 'br0', ifindex: 2, deleted: true, up: false, master: undefined });
    watch.seen({ name: 'br0', ifindex: 5, deleted: false, up: false, master: undefined });
    assert.deepEqual(lines, ['bridge appeared again: re-attaching its VMs now']);
  });

  it('forgets a VM whose record is gone', async () => {
    const h = harness();
    h.watch.track(UID, h.vm);
    h.watch.track(UID, undefined);
    assert.equal(h.watch.wants(h.name), false);
    assert.equal(h.watch.wants('br0'), false);
  });
});

describe('the link watch and the reconciler together', () => {
  /**
   * A Reconciler on a store of records and a LinkWatch told of its passes, as the daemon wires
   * them; `present` holds the host's uplinks, and ensure fails for want of br0 while it lacks it.
   */
  function daemon(maxRetries = 3, logger: Logger = silentLogger) {
    const store = new MemoryStore();
    let now = Date.parse('2026-06-01T00:00:00Z');
    const clock = { now: () => new Date(now), advance: (ms: number) => (now += ms) };
    const present = new Map<string, LinkInfo>();
    const reconciled: string[] = [];
    let watch: LinkWatch | undefined = undefined;
    const r = new Reconciler({
      store,
      runtime: {
        ensure: async () => {
          if (!present.has('br0')) throw missingHostLink('br0', 'bridge br0 for interface eth0 not found on this host');
          return { ready: true };
        },
        teardown: async () => {},
      },
      clock, logger, maxRetries, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1,
      passEnded: (uid, vm, missingLink, stored) => watch?.track(uid, vm, missingLink, stored),
    });
    watch = new LinkWatch({
      store, network: { get: async (name) => present.get(name) }, bridgeName: 'br0', parentIface: 'vparent', busy: (uid) => r.busy(uid), logger, debounceMs: 5,
      repair: (uid, returned) => {
        if (returned !== undefined) r.retryNow(uid, returned);
        reconciled.push(uid);
      },
    });
    const bridgeBack = () => {
      present.set('br0', { name: 'br0', ifindex: 5, mac: '', kind: 'other', up: true });
      watch?.seen({ name: 'br0', ifindex: 5, deleted: false, up: false, master: undefined });
    };
    return { store, clock, r, reconciled, bridgeBack, present, settle: () => new Promise((res) => setTimeout(res, 30)) };
  }

  it('after a restart, the first pass of a VM backing off for want of its bridge finds its retry not due; the bridge\'s return still cuts the back-off short', async () => {
    const d = daemon();
    d.store.insert(storedMicroVM(UID, {}, { state: 'PENDING', retry: 2, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0', nextAttemptAt: '2026-06-01T00:05:00.000Z' }));
    assert.equal(await d.r.reconcile(UID), 300_000, 'not due: nothing attempted');
    await d.settle();
    d.bridgeBack();
    assert.deepEqual(d.reconciled, [UID]);
    assert.equal(d.store.get(UID)?.status.nextAttemptAt, undefined, 'its back-off is over');
    assert.equal(await d.r.reconcile(UID), undefined);
    assert.equal(d.store.get(UID)?.status.state, 'CREATED');
  });

  it('a VM worn down to FAILED while its bridge was away is revived when the bridge returns, also after a restart', async () => {
    for (const restart of [false, true]) {
      const d = daemon(2);
      d.store.insert(storedMicroVM(UID, {}, { state: 'PENDING', lastError: '' }));
      // Resync passes while the bridge is missing each count a failure.
      for (let delay = await d.r.reconcile(UID); delay !== undefined; delay = await d.r.reconcile(UID)) d.clock.advance(delay);
      assert.equal(d.store.get(UID)?.status.state, 'FAILED');
      assert.equal(d.store.get(UID)?.status.missingLink, 'br0');
      if (restart) {
        const stored = d.store.get(UID);
        const again = daemon(2);
        if (stored) again.store.insert(stored);
        Object.assign(d, again);
        assert.equal(await d.r.reconcile(UID), undefined, 'FAILED: nothing attempted');
        await d.settle();
      }
      d.bridgeBack();
      assert.deepEqual(d.reconciled, [UID], `restart ${restart}`);
      const s = d.store.get(UID)?.status;
      assert.deepEqual([s?.state, s?.retry, s?.nextAttemptAt], ['PENDING', 0, undefined], 'PENDING again, its attempts counted from 0, no back-off');
      assert.equal(await d.r.reconcile(UID), undefined);
      assert.equal(d.store.get(UID)?.status.state, 'CREATED');
    }
  });

  it('after a restart with the bridge back, a FAILED VM is revived also when an event of the bridge (another VM\'s TAP put on it) came before its first pass, and not again once a pass finds the bridge missing', async () => {
    const d = daemon();
    const B = '01ARZ3NDEKTSV4RR01ABCDEFGB';
    d.store.insert(storedMicroVM(UID, {}, { state: 'FAILED', retry: 4, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0' }));
    d.store.insert(storedMicroVM(B, {}, { state: 'PENDING', lastError: '' }));
    d.present.set('br0', { name: 'br0', ifindex: 5, mac: '', kind: 'other', up: true });
    assert.equal(await d.r.reconcile(B), undefined);
    // br0's event as B's TAP was put on it: the watch learns its ifindex, nothing came back.
    d.bridgeBack();
    await d.settle();
    assert.deepEqual(d.reconciled, []);
    assert.equal(await d.r.reconcile(UID), undefined, 'FAILED: nothing attempted');
    assert.deepEqual(d.reconciled, [UID], 'repaired: its link is there');
    assert.deepEqual([d.store.get(UID)?.status.state, d.store.get(UID)?.status.retry], ['PENDING', 0]);
    // br0 went away unseen (missed events): the revived pass fails for want of it, and the
    // passes that attempt nothing then wait for its return rather than repair the VM again.
    d.present.delete('br0');
    const delay = await d.r.reconcile(UID);
    assert.ok(delay !== undefined && delay > 0);
    await d.settle();
    for (let i = 0; i < 3; i++) await d.r.reconcile(UID);
    await d.settle();
    assert.deepEqual(d.reconciled, [UID], 'no loop');
    d.bridgeBack();
    assert.deepEqual(d.reconciled.filter((u) => u === UID), [UID, UID], 'its return');
  });

  it('a link a record names as missing that is there at a restart repairs only the VMs waiting for it, and is not logged as back', async () => {
    const lines: string[] = [];
    const logger: Logger = { debug: () => {}, info: (_o, m) => void lines.push(m ?? ''), warn: () => {}, error: () => {}, child: () => logger };
    const d = daemon(3, logger);
    const B = '01ARZ3NDEKTSV4RR01ABCDEFGB';
    d.present.set('br0', { name: 'br0', ifindex: 5, mac: '', kind: 'other', up: true });
    d.store.insert(storedMicroVM(B, {}, { state: 'PENDING', lastError: '' }));
    d.store.insert(storedMicroVM(UID, {}, { state: 'PENDING', retry: 2, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0', nextAttemptAt: '2026-06-01T00:05:00.000Z' }));
    assert.equal(await d.r.reconcile(B), undefined);
    assert.equal(d.store.get(B)?.status.state, 'CREATED');
    assert.equal(await d.r.reconcile(UID), 300_000, 'not due: nothing attempted');
    await d.settle();
    assert.deepEqual(d.reconciled, [UID], 'the CREATED VM on br0 is left alone');
    assert.equal(d.store.get(UID)?.status.nextAttemptAt, undefined);
    assert.ok(!lines.some((l) => l.includes('appeared again')), lines.join('; '));
  });

  it('a VM FAILED for another reason stays FAILED when the bridge returns', async () => {
    const d = daemon();
    d.store.insert(storedMicroVM(UID, {}, { state: 'FAILED', retry: 4, lastError: 'image r:1: pull failed: 503' }));
    await d.r.reconcile(UID);
    d.bridgeBack();
    assert.deepEqual(d.reconciled, []);
    assert.equal(d.store.get(UID)?.status.state, 'FAILED');
  });
});

describe('the monitor tells when events may have been missed', () => {
  /**
   * Runs a LinkMonitor whose `ip` is `script` (a shell script first in PATH) for `ms`, and
   * resolves the events it handed on and how often onMissed was told.
   */
  async function monitorWith(script: string, ms: number): Promise<{ events: string[]; missed: number }> {
    const tmp = tempDir('link-monitor');
    const path = process.env.PATH;
    const events: string[] = [];
    let missed = 0;
    const m = new LinkMonitor({ wants: () => true, onEvent: (e) => events.push(e.name), onMissed: () => missed++, logger: silentLogger });
    try {
      writeFileSync(join(tmp.path, 'ip'), `#!/bin/sh\n${script}\n`);
      chmodSync(join(tmp.path, 'ip'), 0o755);
      process.env.PATH = `${tmp.path}:${path ?? ''}`;
      m.start();
      await new Promise((r) => setTimeout(r, ms));
    } finally {
      m.close();
      process.env.PATH = path;
      tmp.remove();
    }
    return { events, missed };
  }

  it('when ip says the kernel dropped events (ENOBUFS, on its stderr), once however often it says so', async () => {
    const r = await monitorWith(`echo '${L.tapNoMaster}'; for i in 1 2 3; do echo 'netlink receive error No buffer space available (105)' >&2; done; exec sleep 30`, 1500);
    assert.deepEqual(r.events, ['mlt01abcdefgh0']);
    assert.equal(r.missed, 1);
  });

  it('not for a monitor that fails at once, again and again: it ran for no events to be missed', async () => {
    // Restarts after 0.5, 1 and 2 s fall in the window; none runs.
    const r = await monitorWith('exit 1', 4000);
    assert.equal(r.missed, 0);
  });

  it('once a monitor started again has run', async (t) => {
    // The first ends at once; the second, 0.5 s later, runs on.
    const dir = tempDir('link-monitor-flag');
    t.after(() => dir.remove());
    const flag = join(dir.path, 'ran');
    const r = await monitorWith(`if [ -e '${flag}' ]; then exec sleep 30; fi; : > '${flag}'; exit 1`, 2500);
    assert.equal(r.missed, 1);
  });
});
