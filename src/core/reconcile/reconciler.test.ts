import assert from 'node:assert/strict';
import { it } from 'node:test';
import { MemoryStore, silentLogger } from '../../../test/fakes/memory-store.js';
import { initialStatus, type MicroVM } from '../microvm/types.js';
import type { Runtime, RuntimeStatus } from '../ports.js';
import { MicroVMService } from '../microvm/service.js';
import { providerEntries } from '../../../test/fakes/provider-entries.js';
import { ErrorCode, MatchlockError, missingHostLink } from '../errors.js';
import { Reconciler } from './reconciler.js';

function vm(uid: string): MicroVM {
  return {
    uid,
    version: 1,
    spec: {
      name: 'n', namespace: 'default', labels: {}, vcpu: 2, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: false },
      additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false,
    },
    status: initialStatus(),
    createdAt: '2026-01-01T00:00:00.000Z',
    updatedAt: '2026-01-01T00:00:00.000Z',
  };
}

function setup(runtime: Runtime, maxRetries = 3) {
  const store = new MemoryStore();
  let now = Date.parse('2026-01-01T00:00:00Z');
  const clock = { now: () => new Date(now), advance: (ms: number) => (now += ms) };
  const r = new Reconciler({ store, runtime, clock, logger: silentLogger, maxRetries, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1 });
  return { store, clock, r };
}

const failing = (msg: string): Runtime => ({
  ensure: () => Promise.reject(new Error(msg)),
  teardown: () => Promise.reject(new Error(msg)),
});

it('sets CREATED when the runtime is ready, and does not bump the version when nothing changed', async () => {
  const ready: RuntimeStatus = { ready: true, vmmPid: 42 };
  const { store, r } = setup({ ensure: async () => ready, teardown: async () => {} });
  store.insert(vm('A'));
  assert.equal(await r.reconcile('A'), undefined);
  const after = store.get('A');
  assert.equal(after?.status.state, 'CREATED');
  assert.equal(after?.status.vmmPid, 42);
  assert.equal(after?.version, 2);
  await r.reconcile('A');
  assert.equal(store.get('A')?.version, 2);
});

it('records the error, backs off exponentially with the due time persisted, and ends in FAILED', async () => {
  const { store, clock, r } = setup(failing('bridge br-missing not found'), 3);
  store.insert(vm('A'));
  const delays: (number | undefined)[] = [];
  for (let i = 0; i < 4; i++) {
    const d = await r.reconcile('A');
    delays.push(d);
    // Called again before the due time, it does nothing but say how long to wait.
    if (d !== undefined) {
      assert.equal(await r.reconcile('A'), d);
      clock.advance(d);
    }
  }
  assert.deepEqual(delays, [1000, 2000, 4000, undefined]);
  const failed = store.get('A');
  assert.equal(failed?.status.state, 'FAILED');
  assert.equal(failed?.status.retry, 4);
  assert.equal(failed?.status.lastError, 'bridge br-missing not found');
  // FAILED is terminal: nothing runs until a delete.
  assert.equal(await r.reconcile('A'), undefined);
  assert.equal(store.get('A')?.status.retry, 4);
});

it('drops the record after teardown, and never leaves a failing delete stuck in DELETING', async () => {
  const ok = setup({ ensure: async () => ({ ready: false }), teardown: async () => {} });
  ok.store.insert({ ...vm('A'), status: { ...initialStatus(), state: 'DELETING' } });
  await ok.r.reconcile('A');
  assert.equal(ok.store.get('A'), undefined);

  const bad = setup(failing('tap busy'), 2);
  bad.store.insert({ ...vm('B'), status: { ...initialStatus(), state: 'DELETING' } });
  for (let i = 0; i < 3; i++) {
    const d = await bad.r.reconcile('B');
    if (i < 2) {
      assert.equal(bad.store.get('B')?.status.state, 'DELETING');
      assert.equal(bad.store.get('B')?.status.lastError, 'tap busy');
    }
    if (d !== undefined) bad.clock.advance(d);
  }
  assert.equal(bad.store.get('B'), undefined);
  assert.equal(bad.store.tombstone('B')?.reason, 'tap busy', 'a dropped record leaves a tombstone for the orphan sweep');
  assert.equal(ok.store.tombstone('A'), undefined, 'a finished teardown leaves none');
});

it('does not overwrite a delete that arrived during a create pass', async () => {
  const holder: { store?: MemoryStore } = {};
  const runtime: Runtime = {
    ensure: async (v) => {
      holder.store?.update(v.uid, (cur) => ({ ...cur, status: { ...cur.status, state: 'DELETING' } }));
      return { ready: true };
    },
    teardown: async () => {},
  };
  const s = setup(runtime);
  holder.store = s.store;
  s.store.insert(vm('A'));
  await s.r.reconcile('A');
  assert.equal(s.store.get('A')?.status.state, 'DELETING');
});

it('a delete of a VM waiting out a back-off starts at once', async () => {
  const torn: string[] = [];
  const runtime: Runtime = { ensure: () => Promise.reject(new Error('bridge br-missing not found')), teardown: async (v) => void torn.push(v.uid) };
  const { store, r } = setup(runtime, 10);
  const service = new MicroVMService({
    store,
    clock: { now: () => new Date('2026-01-01T00:00:00Z') },
    random: { bytes: (n) => new Uint8Array(n) },
    notifier: { changed: (uid) => r.changed(uid) },
    providers: providerEntries(),
    defaultProvider: 'qemu',
  });
  store.insert({ ...vm('01HZY3NDEKTSV4RRFFQ69G5FAA'), status: { ...initialStatus(), retry: 6, nextAttemptAt: '2026-01-01T00:05:00.000Z' } });
  service.delete('01HZY3NDEKTSV4RRFFQ69G5FAA');
  assert.equal(store.get('01HZY3NDEKTSV4RRFFQ69G5FAA')?.status.nextAttemptAt, undefined);
  assert.equal(await r.reconcile('01HZY3NDEKTSV4RRFFQ69G5FAA'), undefined);
  assert.deepEqual(torn, ['01HZY3NDEKTSV4RRFFQ69G5FAA']);
  assert.equal(store.get('01HZY3NDEKTSV4RRFFQ69G5FAA'), undefined);
});

it('a stop of a VM whose create waits out a back-off, or fails, leaves it PENDING and power STOPPED: no VMM runs', async () => {
  let attempts = 0;
  const { store, r } = setup({ ensure: () => (attempts++, Promise.reject(new Error('pull failed'))), teardown: async () => {} });
  store.insert({ ...vm('A'), status: { ...initialStatus(), retry: 1, lastError: 'pull failed', nextAttemptAt: '2026-01-01T00:05:00.000Z' } });
  await r.reconcile('A');
  assert.equal(store.get('A')?.status.power, undefined, 'running was asked for: nothing said of power yet');
  store.update('A', (cur) => ({ ...cur, power: { desired: 'STOPPED', restart: 0 } }));
  assert.ok(((await r.reconcile('A')) ?? 0) > 0, 'still waiting out its back-off');
  assert.equal(attempts, 0);
  assert.deepEqual([store.get('A')?.status.state, store.get('A')?.status.power, store.get('A')?.status.nextAttemptAt], ['PENDING', 'STOPPED', '2026-01-01T00:05:00.000Z']);
  // Desired STOPPED from the start, the attempt fails: none runs either.
  store.insert({ ...vm('B'), power: { desired: 'STOPPED', restart: 0 } });
  await r.reconcile('B');
  assert.equal(attempts, 1);
  assert.deepEqual([store.get('B')?.status.state, store.get('B')?.status.power, store.get('B')?.status.lastError], ['PENDING', 'STOPPED', 'pull failed']);
  // One whose VMM is known to run keeps its power until a pass stops that VMM.
  store.insert({ ...vm('C'), power: { desired: 'STOPPED', restart: 0 }, status: { ...initialStatus(), state: 'PENDING', vmmPid: 42, power: 'RUNNING', retry: 1, nextAttemptAt: '2026-01-01T00:05:00.000Z' } });
  await r.reconcile('C');
  assert.equal(store.get('C')?.status.power, 'RUNNING');
});

it('a delete calls off the create pass in flight, which is not counted as a failure', async () => {
  let seen: AbortSignal | undefined;
  const runtime: Runtime = {
    ensure: (_v, _log, _progress, signal) =>
      new Promise((_resolve, reject) => {
        seen = signal;
        signal?.addEventListener('abort', () => reject(signal.reason as Error));
      }),
    teardown: async () => {},
  };
  const { store, r } = setup(runtime);
  store.insert(vm('A'));
  const pass = r.reconcile('A');
  await new Promise((res) => setImmediate(res));
  assert.equal(r.running, 1);
  r.changed('A');
  assert.equal(seen?.aborted, false, 'a change that is not a delete leaves the pass alone');
  store.update('A', (cur) => ({ ...cur, status: { ...cur.status, state: 'DELETING' } }));
  r.changed('A');
  assert.equal(seen?.aborted, true);
  assert.equal(await pass, 0, 'runs again at once, now as a delete');
  assert.equal(store.get('A')?.status.retry, 0);
  assert.equal(store.get('A')?.status.lastError, '');
  assert.equal(r.running, 0);
  await r.reconcile('A');
  assert.equal(store.get('A'), undefined);
});

it('abortAll calls off every pass at shutdown without recording failures or asking to run again', async () => {
  const runtime: Runtime = {
    ensure: (_v, _log, _progress, signal) => new Promise((_resolve, reject) => signal?.addEventListener('abort', () => reject(signal.reason as Error))),
    teardown: async () => {},
  };
  const { store, r } = setup(runtime);
  store.insert(vm('A'));
  const pass = r.reconcile('A');
  await new Promise((res) => setImmediate(res));
  r.abortAll();
  assert.equal(await pass, undefined);
  assert.equal(store.get('A')?.status.retry, 0);
});

it('a VMM that stayed up resets the retry count without claiming the guest booted', () => {
  const { store, r } = setup({ ensure: async () => ({ ready: true }), teardown: async () => {} });
  store.insert({ ...vm('A'), status: { ...initialStatus(), state: 'CREATED', retry: 3, lastError: 'vmm pid 7 exited unexpectedly', vmmPid: 8 } });
  r.vmmHealthy('A');
  assert.equal(store.get('A')?.status.retry, 0);
  assert.equal(store.get('A')?.status.lastError, '');
  assert.equal(store.get('A')?.status.guestBooted, false);
  store.insert({ ...vm('B'), status: { ...initialStatus(), state: 'FAILED', retry: 11 } });
  r.vmmHealthy('B');
  assert.equal(store.get('B')?.status.retry, 11, 'FAILED stays as it is');
});

it('keeps a boot the supervisor saw while the create pass was still running', async () => {
  const later: { r?: Reconciler } = {};
  const runtime: Runtime = {
    // The console shows the boot line before the pass returns (a guest that boots in milliseconds).
    ensure: async () => {
      later.r?.guestBooted('A', 42);
      // Its status snapshot was taken before the boot was seen.
      return { ready: true, vmmPid: 42, guestBooted: false };
    },
    teardown: async () => {},
  };
  const s = setup(runtime);
  later.r = s.r;
  s.store.insert(vm('A'));
  await s.r.reconcile('A');
  assert.equal(s.store.get('A')?.status.state, 'CREATED');
  assert.equal(s.store.get('A')?.status.guestBooted, true);
});

it('clears guest_booted when a pass reports another VMM than the one that booted', async () => {
  const s = setup({ ensure: async () => ({ ready: true, vmmPid: 43 }), teardown: async () => {} });
  s.store.insert({ ...vm('A'), status: { ...initialStatus(), state: 'PENDING', vmmPid: 42, guestBooted: true } });
  await s.r.reconcile('A');
  assert.equal(s.store.get('A')?.status.vmmPid, 43);
  assert.equal(s.store.get('A')?.status.guestBooted, false);
});

it('tells its observer of every pass that did work, with its outcome and duration, and of no other', async () => {
  const passes: { kind: string; outcome: string; seconds: number }[] = [];
  const store = new MemoryStore();
  let now = Date.parse('2026-01-01T00:00:00Z');
  let fail = true;
  const runtime: Runtime = {
    ensure: async () => {
      now += 1500;
      if (fail) throw new Error('no bridge');
      return { ready: true, vmmPid: 7 };
    },
    teardown: async () => {
      now += 250;
    },
  };
  const r = new Reconciler({ store, runtime, clock: { now: () => new Date(now) }, logger: silentLogger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1, observer: { pass: (e) => passes.push(e) } });
  store.insert(vm('A'));
  const delay = await r.reconcile('A');
  assert.ok(delay !== undefined && delay > 0);
  await r.reconcile('A'); // not due yet: no work, nothing to tell
  now += delay;
  fail = false;
  await r.reconcile('A');
  store.update('A', (cur) => ({ ...cur, status: { ...cur.status, state: 'DELETING' } }));
  await r.reconcile('A');
  assert.deepEqual(passes, [
    { kind: 'ensure', outcome: 'failed', seconds: 1.5 },
    { kind: 'ensure', outcome: 'ok', seconds: 1.5 },
    { kind: 'teardown', outcome: 'ok', seconds: 0.25 },
  ]);
});

it('retryNow lets the next pass run before its back-off is over, also when asked while a pass runs', async () => {
  let fail = true;
  let release: (() => void) | undefined;
  const { store, r } = setup({
    ensure: async () => {
      if (release === undefined) await new Promise<void>((res) => (release = res));
      if (fail) throw new MatchlockError(ErrorCode.FailedPrecondition, 'interface eth0 (tap mltx0): bridge br0 for interface eth0 not found on this host', { cause: missingHostLink('br0', 'bridge br0 for interface eth0 not found on this host') });
      return { ready: true };
    },
    teardown: async () => {},
  });
  store.insert(vm('A'));
  const first = r.reconcile('A');
  await new Promise((res) => setImmediate(res));
  assert.equal(r.busy('A'), true);
  // The bridge came back while the pass that fails without it runs.
  r.retryNow('A', 'br0');
  release?.();
  assert.equal(await first, 1000);
  assert.equal(r.busy('A'), false);
  assert.equal(store.get('A')?.status.nextAttemptAt, undefined, 'the back-off the pass recorded is cleared when it ends');
  assert.equal(store.get('A')?.status.retry, 0, 'its failures for want of the link start over');
  assert.equal(store.get('A')?.status.missingLink, 'br0', 'found under the step\'s wrapper');
  assert.equal(await r.reconcile('A'), 1000, 'ran at once, failed again, backs off as after a first failure');
  assert.notEqual(store.get('A')?.status.nextAttemptAt, undefined);
  r.retryNow('A', 'br0');
  fail = false;
  assert.equal(await r.reconcile('A'), undefined, 'runs at once');
  assert.equal(store.get('A')?.status.state, 'CREATED');
  assert.equal(store.get('A')?.status.missingLink, undefined);
});

it('retryNow starts the retry count over for a VM backing off for want of that link, so its next outage again takes maximum-retry failures; a crashing VMM keeps its count', async () => {
  let bridge = false;
  const { store, r } = setup({
    ensure: async () => {
      if (!bridge) throw missingHostLink('br0', 'bridge br0 for interface eth0 not found on this host');
      return { ready: true, vmmPid: 42 };
    },
    teardown: async () => {},
  });
  store.insert(vm('A'));
  for (let i = 0; i < 3; i++) {
    store.update('A', (cur) => ({ ...cur, status: { ...cur.status, nextAttemptAt: undefined } }));
    await r.reconcile('A');
  }
  assert.deepEqual([store.get('A')?.status.state, store.get('A')?.status.retry], ['PENDING', 3], 'one short of FAILED');
  bridge = true;
  r.retryNow('A', 'br0');
  assert.deepEqual([store.get('A')?.status.retry, store.get('A')?.status.lastError, store.get('A')?.status.nextAttemptAt], [0, '', undefined]);
  assert.equal(await r.reconcile('A'), undefined);
  assert.equal(store.get('A')?.status.state, 'CREATED');
  // The next failure (its VMM exits, the guest not seen booting) is its first.
  assert.ok(r.vmmExited('A', 42) !== undefined);
  assert.deepEqual([store.get('A')?.status.state, store.get('A')?.status.retry], ['PENDING', 1]);
  // A VMM that keeps crashing: its failures name no link, so a link's return leaves its count.
  store.update('A', (cur) => ({ ...cur, status: { ...cur.status, retry: 3 } }));
  r.retryNow('A', 'br0');
  assert.equal(store.get('A')?.status.retry, 3);
  assert.notEqual(store.get('A')?.status.nextAttemptAt, undefined);
});

it('retryNow keeps the back-off of a VM whose last failure was not for want of that link', async () => {
  let why: Error = new Error('pull of r:1 failed: 503 Service Unavailable');
  let release: (() => void) | undefined;
  const { store, r } = setup({
    ensure: async () => {
      if (release === undefined) await new Promise<void>((res) => (release = res));
      throw why;
    },
    teardown: async () => {},
  });
  store.insert(vm('A'));
  const first = r.reconcile('A');
  await new Promise((res) => setImmediate(res));
  r.retryNow('A', 'br0');
  release?.();
  assert.equal(await first, 1000);
  assert.notEqual(store.get('A')?.status.nextAttemptAt, undefined, 'asked while the pass ran: the failure it recorded was another');
  r.retryNow('A', 'br0');
  assert.equal(await r.reconcile('A'), 1000, 'still backing off');
  // It failed for want of the macvtap parent: the bridge's return does not cut that short.
  r.retryNow('A', 'br0');
  store.update('A', (cur) => ({ ...cur, status: { ...cur.status, nextAttemptAt: undefined } }));
  why = missingHostLink('vparent', 'parent interface vparent for eth0 not found on this host');
  assert.equal(await r.reconcile('A'), 2000);
  r.retryNow('A', 'br0');
  assert.notEqual(store.get('A')?.status.nextAttemptAt, undefined, 'another link');
  r.retryNow('A', 'vparent');
  assert.equal(store.get('A')?.status.nextAttemptAt, undefined, 'its link');
});

it('tells after each pass the record it read, and nothing for a teardown or a missing record', async () => {
  const seen: [string, string | undefined][] = [];
  const store = new MemoryStore();
  const r = new Reconciler({ store, runtime: { ensure: async () => ({ ready: true }), teardown: async () => {} }, clock: { now: () => new Date() }, logger: silentLogger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1, passEnded: (uid, v) => seen.push([uid, v?.uid]) });
  store.insert(vm('A'));
  await r.reconcile('A');
  store.insert({ ...vm('B'), status: { ...initialStatus(), state: 'DELETING' } });
  await r.reconcile('B');
  await r.reconcile('C');
  assert.deepEqual(seen, [['A', 'A'], ['B', undefined], ['C', undefined]]);
});

it('a healthy VMM or a booted guest keeps the link the last failure missed with its back-off, so that link\'s return still cuts it short', async () => {
  for (const healthy of [(r: Reconciler) => r.vmmHealthy('A'), (r: Reconciler) => r.guestBooted('A', 42)]) {
    const { store, r } = setup({ ensure: () => Promise.reject(missingHostLink('br0', 'bridge br0 for interface eth0 not found on this host')), teardown: async () => {} });
    store.insert(vm('A'));
    assert.equal(await r.reconcile('A'), 1000);
    healthy(r);
    assert.equal(store.get('A')?.status.retry, 0, 'its failure count starts over');
    r.retryNow('A', 'br0');
    assert.equal(store.get('A')?.status.nextAttemptAt, undefined);
  }
});

it('tells after a pass that attempted nothing (retry not due, FAILED) the link the last attempt missed, and nothing after one that ran', async () => {
  const seen: string[] = [];
  const store = new MemoryStore();
  let now = Date.parse('2026-01-01T00:00:00Z');
  const r = new Reconciler({ store, runtime: { ensure: async () => ({ ready: true }), teardown: async () => {} }, clock: { now: () => new Date(now) }, logger: silentLogger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1, passEnded: (_uid, _v, link, stored) => seen.push(`${link} ${stored}`) });
  store.insert({ ...vm('A'), status: { ...initialStatus(), state: 'PENDING', missingLink: 'br0', nextAttemptAt: '2026-01-01T00:00:10.000Z' } });
  store.insert({ ...vm('B'), status: { ...initialStatus(), state: 'FAILED', missingLink: 'vparent' } });
  assert.equal(await r.reconcile('A'), 10_000);
  await r.reconcile('B');
  now += 10_000;
  assert.equal(await r.reconcile('A'), undefined);
  assert.equal(store.get('A')?.status.state, 'CREATED');
  assert.deepEqual(seen, ['br0 true', 'vparent true', 'undefined false'], 'the pass that ran succeeded: the link of the record it read is not missing');
});

it('retryNow revives a FAILED VM whose last failure found that link missing, and only such a one', async () => {
  const { store, r } = setup({ ensure: async () => ({ ready: true }), teardown: async () => {} });
  store.insert({ ...vm('A'), status: { ...initialStatus(), state: 'FAILED', retry: 4, lastError: 'bridge br0 for interface eth0 not found on this host', missingLink: 'br0' } });
  store.insert({ ...vm('B'), status: { ...initialStatus(), state: 'FAILED', retry: 4, lastError: 'pull failed' } });
  store.insert({ ...vm('C'), status: { ...initialStatus(), state: 'DELETING', retry: 1, missingLink: 'br0', nextAttemptAt: '2026-01-01T00:00:10.000Z' } });
  for (const uid of ['A', 'B', 'C']) r.retryNow(uid, 'br0');
  r.retryNow('A', 'vparent');
  assert.deepEqual([store.get('A')?.status.state, store.get('A')?.status.retry], ['PENDING', 0]);
  assert.equal(store.get('B')?.status.state, 'FAILED');
  assert.equal(store.get('C')?.status.nextAttemptAt, '2026-01-01T00:00:10.000Z', 'a delete keeps its back-off');
  assert.equal(await r.reconcile('A'), undefined);
  assert.equal(store.get('A')?.status.state, 'CREATED');
});

it('tells its observer of a VMM that exits on its own, which is no pass: unexpected while it should run, powered_off while it should be off', async () => {
  const exits: { provider: string; reason: string }[] = [];
  const passes: string[] = [];
  const store = new MemoryStore();
  const runtime: Runtime = { ensure: async () => ({ ready: true, vmmPid: 42 }), teardown: async () => {} };
  const r = new Reconciler({ store, runtime, clock: { now: () => new Date() }, logger: silentLogger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1, observer: { pass: (e) => passes.push(e.outcome), vmmExited: (e) => exits.push(e) } });
  store.insert(vm('A'));
  await r.reconcile('A');
  passes.length = 0;
  assert.ok(r.vmmExited('A', 42) !== undefined);
  assert.deepEqual(exits, [{ provider: store.get('A')?.spec.provider, reason: 'unexpected' }]);
  assert.deepEqual(passes, [], 'not counted as a pass');
  store.update('A', (cur) => ({ ...cur, power: { restart: 0, ...cur.power, desired: 'STOPPED' } }));
  assert.equal(r.vmmExited('A', 43), undefined);
  assert.equal(exits.at(-1)?.reason, 'powered_off');
});

it('a VMM that died while no daemon ran is, at start, an unexpected exit like one the supervisor saw: logged, counted, a retry; and only once', async () => {
  const exits: { provider: string; reason: string }[] = [];
  const lines: string[] = [];
  const logger = { ...silentLogger, warn: (o: object, m?: string) => void lines.push(`${m} ${JSON.stringify(o)}`), child: () => silentLogger };
  const store = new MemoryStore();
  const runtime: Runtime = { ensure: async () => ({ ready: true, vmmPid: 42 }), teardown: async () => {} };
  const r = new Reconciler({ store, runtime, clock: { now: () => new Date() }, logger, maxRetries: 3, backoffBaseMs: 1000, backoffMaxMs: 60_000, random01: () => 1, observer: { pass: () => undefined, vmmExited: (e) => exits.push(e) } });
  store.insert(vm('A'));
  store.insert(vm('B'));
  await r.reconcile('A');
  await r.reconcile('B');
  const gone = async () => undefined;
  // B's VMM still runs: nothing to report.
  assert.equal(await r.exitedWhileDown(store.get('B')!, async () => 42), undefined);
  assert.ok((await r.exitedWhileDown(store.get('A')!, gone)) !== undefined, 'reconciled again after the back-off');
  assert.deepEqual(exits, [{ provider: 'qemu', reason: 'unexpected' }]);
  assert.match(lines.join('\n'), /vmm exited \{"uid":"A","pid":42/);
  const a = store.get('A');
  assert.equal(a?.status.retry, 1);
  assert.equal(a?.status.vmmPid, 0);
  assert.equal(await r.exitedWhileDown(a!, gone), undefined, 'a second start reports it no more');
  assert.equal(exits.length, 1);
});
