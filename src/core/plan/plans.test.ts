import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FakeWorld } from '../../../test/fakes/host.js';
import { silentLogger as quiet } from '../../../test/fakes/memory-store.js';
import { hostDeviceName } from '../microvm/host-names.js';
import { initialStatus, type MicroVM, type MicroVMStatus } from '../microvm/types.js';
import type { RuntimeStatus } from '../ports.js';
import type { ProviderDescriptor, VmmProvider } from '../vmm.js';
import { CreateContext, DeleteContext } from './context.js';
import { HostRuntime } from './host-runtime.js';
import { createPlan, deletePlan } from './plans.js';
import type { Step } from './step.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';

function vm(over: Partial<MicroVM['spec']> = {}): MicroVM {
  return {
    uid: UID,
    version: 1,
    spec: {
      name: 'web', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: { quiet: '' }, addNetworkConfig: true },
      initrd: { image: 'k', filename: 'boot/initrd' },
      rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r' } },
      additionalVolumes: [
        { id: 'data', isReadOnly: false, mountPoint: '/data', source: { containerSource: 'r' } },
        { id: 'share', isReadOnly: true, source: { virtiofsSource: '/srv/share' } },
      ],
      interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'MACVTAP' }],
      metadata: { 'user-data': Buffer.from('#cloud-config\n').toString('base64') },
      provider: 'fake', allowGuestAgent: false, ...over,
    },
    status: initialStatus(),
    createdAt: '', updatedAt: '',
  };
}

function runtime(world: FakeWorld, provider: VmmProvider = world.provider()): HostRuntime {
  return new HostRuntime({ ...world.deps(), stateDir: '/state', providers: new Map([[provider.descriptor.name, provider]]) });
}

/** Runs a create pass, saving status after each step as the reconciler does. */
async function ensure(world: FakeWorld, record: MicroVM, opts: { crashAfter?: number; provider?: VmmProvider } = {}) {
  const ctl = new AbortController();
  let changes = 0;
  let saved: MicroVMStatus = record.status;
  const progress = ({ ready: _r, ...s }: RuntimeStatus) => {
    saved = { ...saved, ...s };
    if (++changes === opts.crashAfter) ctl.abort('the daemon died');
  };
  try {
    const r = await runtime(world, opts.provider).ensure(record, quiet, progress, ctl.signal);
    return { ok: true as const, status: { ...saved, ...r }, changes };
  } catch (err) {
    return { ok: false as const, err: err as Error, status: saved, changes };
  }
}

function countsOf(calls: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const c of calls) m.set(c, (m.get(c) ?? 0) + 1);
  return m;
}

describe('create plan on fakes', () => {
  it('builds every host object once; a second pass finds nothing to do', async () => {
    const world = new FakeWorld();
    const first = await ensure(world, vm());
    assert.ok(first.ok, first.ok ? '' : first.err.message);
    assert.equal(first.status.ready, true);
    const vmm = world.vmms.get(UID);
    assert.ok(vmm, 'the VMM runs');
    assert.deepEqual(vmm.launch.disks.map((d) => [d.id, d.readOnly]), [['root', false], ['data', false], ['cidata', true]], 'seed disk last, read-only');
    assert.deepEqual(vmm.launch.shares, [{ id: 'share', hostPath: '/srv/share', readOnly: true }]);
    assert.deepEqual(vmm.launch.nics.map((n) => n.hostDevice), ['mltffq69g5fav0', 'mlvffq69g5fav1']);
    assert.equal(vmm.launch.cmdline, 'console=ttyS0 root=/dev/vda quiet');
    assert.equal(vmm.launch.runDir, `/state/run/${UID}`);
    assert.ok(world.watched.has(UID), 'supervised');
    const calls = world.calls.length;
    const again = await ensure(world, { ...vm(), status: { ...vm().status, ...first.status } });
    assert.ok(again.ok);
    assert.equal(again.changes, 0, 'no step needed on the second pass');
    assert.equal(world.calls.length, calls, 'nothing touched the host');
  });

  it('every step: needed, then run makes it not needed, and verify passes', async () => {
    const world = new FakeWorld();
    const record = vm();
    const provider = world.provider();
    const ref = runtime(world, provider).ref(record);
    const ctx = new CreateContext(record, ref, provider.descriptor, provider.instance(ref), world.deps(), quiet);
    const steps = createPlan(ctx);
    const signal = new AbortController().signal;
    for (const step of steps) {
      assert.equal(await step.needed(), true, `${step.name} is needed on an empty host`);
      await step.run(signal);
      await step.verify();
      assert.equal(await step.needed(), false, `${step.name} is not needed once it ran`);
    }
  });

  it("verify fails when a step's run did not achieve its goal", async () => {
    // Each adapter is broken once in turn; the step that relies on it must notice.
    const cases: [string[], string][] = [[['mkdir'], 'vm directory'], [['volume'], 'volume root'], [['tap', 'adopt'], 'interface eth0'], [['macvtap'], 'interface eth1'], [['seed'], 'cloud-init seed'], [['vmm'], 'vmm fake']];
    for (const [broken, stepName] of cases) {
      const world = new FakeWorld();
      for (const b of broken) world.sabotage.add(b);
      const r = await ensure(world, vm());
      assert.equal(r.ok, false, `${broken}: the plan fails`);
      assert.match(r.ok ? '' : r.err.message, new RegExp(`^${stepName}`), `${broken}: the error names the step`);
    }
  });

  it('reads each new link once (needed): run reads it back with its change, and verify uses that read', async () => {
    // Without sysfs (a daemon entered into a namespace) every read is an `ip` process.
    const world = new FakeWorld();
    const r = await ensure(world, vm());
    assert.ok(r.ok);
    const [tap, macvtap] = [hostDeviceName(vm(), 0), hostDeviceName(vm(), 1)];
    assert.deepEqual([world.linkReads.get(tap), world.linkReads.get(macvtap)], [1, 1]);
  });

  it('the daemon died between step k and k+1: the next pass converges, for every k', async () => {
    const clean = new FakeWorld();
    const full = await ensure(clean, vm());
    assert.ok(full.ok);
    const total = full.changes;
    assert.ok(total >= 10, `the plan has ${total} host-changing steps`);
    for (let k = 1; k < total; k++) {
      for (const resumeFrom of ['saved status', 'the stored record only'] as const) {
        const world = new FakeWorld();
        const crashed = await ensure(world, vm(), { crashAfter: k });
        assert.equal(crashed.ok, false, `k=${k}: the first pass stopped`);
        const record = resumeFrom === 'saved status' ? { ...vm(), status: crashed.status } : vm();
        const resumed = await ensure(world, record);
        assert.ok(resumed.ok, `k=${k}, from ${resumeFrom}: ${resumed.ok ? '' : resumed.err.message}`);
        assert.equal(resumed.status.ready, true);
        assert.deepEqual(world.snapshot(), clean.snapshot(), `k=${k}, from ${resumeFrom}: same host as a clean run`);
        for (const [call, n] of countsOf(world.calls)) {
          if (/^(tap|macvtap|volume create|vmm start|seed) /.test(call)) assert.equal(n, 1, `k=${k}, from ${resumeFrom}: ${call} happened ${n} times`);
        }
      }
    }
  });

  it('finishes links a create left half-made (no alias, down, off the bridge) and leaves another owner\'s alone', async () => {
    const [tap, macvtap] = [hostDeviceName(vm(), 0), hostDeviceName(vm(), 1)];
    // What a kill between ip's lines leaves: the link made, its alias and up lines never run;
    // and a link of an older daemon, whose alias had no daemon id.
    const world = new FakeWorld();
    world.links.set(tap, { name: tap, ifindex: 40, mac: 'fe:00:00:00:00:40', kind: 'tap', up: false });
    world.links.set(macvtap, { name: macvtap, ifindex: 41, mac: '02:00:00:00:00:41', kind: 'macvtap', alias: `matchlock:${UID}:eth1`, up: false });
    const r = await ensure(world, vm());
    assert.ok(r.ok, r.ok ? '' : r.err.message);
    assert.deepEqual(
      [world.links.get(tap), world.links.get(macvtap)].map((l) => [l?.alias, l?.master, l?.up]),
      [[`matchlock:0123456789abcdef:${UID}:eth0`, 'br0', true], [`matchlock:0123456789abcdef:${UID}:eth1`, undefined, true]],
    );
    assert.deepEqual(world.calls.filter((c) => /^(tap|macvtap|adopt) /.test(c)), [`adopt ${tap}`, `adopt ${macvtap}`], 'finished, not created again');

    for (const [alias, kind] of [[`matchlock:fedcba9876543210:${UID}:eth0`, 'tap'], ['an operator\'s', 'tap'], [undefined, 'other']] as const) {
      const w = new FakeWorld();
      w.links.set(tap, { name: tap, ifindex: 42, mac: 'fe:00:00:00:00:42', kind, alias, up: false });
      const failed = await ensure(w, vm());
      assert.equal(failed.ok, false, `${alias} ${kind}`);
      assert.match(failed.ok ? '' : failed.err.message, new RegExp(`^interface eth0 .*${tap} exists (with the alias|as a link of kind other)`));
      assert.deepEqual([w.links.get(tap)?.alias, w.links.get(tap)?.up], [alias, false], 'left as it was');
    }
  });

  it('delivers metadata as the provider asks: a seed disk, or the seed files in the launch', async () => {
    const world = new FakeWorld();
    const mmds: Partial<ProviderDescriptor> = { metadata: { kind: 'provider' } };
    const r = await ensure(world, vm(), { provider: world.provider(mmds) });
    assert.ok(r.ok);
    const launch = world.vmms.get(UID)?.launch;
    assert.deepEqual(launch?.disks.map((d) => d.id), ['root', 'data'], 'no seed disk');
    assert.deepEqual(Object.keys(launch?.metadata ?? {}).sort(), ['meta-data', 'network-config', 'user-data', 'vendor-data'], 'noCloudSeed: meta-data and user-data always');
    assert.equal([...world.files.keys()].some((f) => f.endsWith('cidata.img')), false);
  });

  it("runs the provider's own steps before the VMM starts and after it stopped", async () => {
    const world = new FakeWorld();
    const order: string[] = [];
    const marker = (name: string, file: (dir: string) => string, make: boolean) => (ref: { dir: string }): Step[] => [{
      name,
      needed: async () => world.files.has(file(ref.dir)) !== make,
      run: async () => {
        order.push(`${name} (vmm running: ${world.vmms.has(UID)})`);
        if (make) world.files.set(file(ref.dir), Buffer.from(''));
        else world.files.delete(file(ref.dir));
      },
      verify: async () => undefined,
    }];
    const jail = (dir: string) => `${dir}/jail`;
    const provider = world.provider({}, { createSteps: marker('make jail', jail, true), deleteSteps: marker('remove jail', jail, false) });
    assert.ok((await ensure(world, vm(), { provider })).ok);
    await runtime(world, provider).teardown(vm(), quiet);
    assert.deepEqual(order, ['make jail (vmm running: false)', 'remove jail (vmm running: false)']);
  });
});

describe('delete plan on fakes', () => {
  async function created() {
    const world = new FakeWorld();
    const baseline = world.snapshot();
    const r = await ensure(world, vm());
    assert.ok(r.ok);
    return { world, baseline, record: { ...vm(), status: { ...vm().status, ...r.status, state: 'DELETING' as const } } };
  }

  it('removes the VMM, volumes, links and directories: the host is as before', async () => {
    const { world, baseline, record } = await created();
    await runtime(world).teardown(record, quiet);
    const after = world.snapshot() as { files: string[] };
    assert.deepEqual({ ...after, files: after.files.filter((f) => !f.startsWith('/images/')) }, baseline);
  });

  it('the daemon died between step k and k+1 of a delete: the next pass converges, for every k', async () => {
    const probe = await created();
    const provider = probe.world.provider();
    const ref = runtime(probe.world, provider).ref(probe.record);
    const total = deletePlan(new DeleteContext(probe.record, ref, provider.instance(ref), probe.world.deps(), quiet)).length;
    for (let k = 1; k < total; k++) {
      const { world, baseline, record } = await created();
      const ctl = new AbortController();
      const p = world.provider();
      const steps = deletePlan(new DeleteContext(record, ref, p.instance(ref), world.deps(), quiet));
      let done = 0;
      for (const s of steps) {
        if (done === k) break;
        if (await s.needed()) {
          await s.run(ctl.signal);
          done++;
        }
      }
      await runtime(world, p).teardown(record, quiet);
      const after = world.snapshot() as { files: string[] };
      assert.deepEqual({ ...after, files: after.files.filter((f) => !f.startsWith('/images/')) }, baseline, `k=${k}`);
    }
  });

  it("removes a half-made link of the VM's name and leaves one carrying another owner's alias", async () => {
    const { world, record } = await created();
    const [tap, macvtap] = [hostDeviceName(vm(), 0), hostDeviceName(vm(), 1)];
    const tapLink = world.links.get(tap);
    const macvtapLink = world.links.get(macvtap);
    assert.ok(tapLink && macvtapLink);
    tapLink.alias = undefined; // a create cut short before its alias line
    macvtapLink.alias = `matchlock:fedcba9876543210:${UID}:eth1`; // another daemon's
    await runtime(world).teardown(record, quiet);
    assert.equal(world.links.has(tap), false, 'the half-made TAP is removed');
    assert.equal(world.links.get(macvtap)?.alias, `matchlock:fedcba9876543210:${UID}:eth1`, "another owner's link is left alone");
    assert.ok(!world.calls.includes(`link rm ${macvtap}`));
  });

  it('a VM of a provider this matchlock does not know fails with a clear error instead of leaking its VMM', async () => {
    const { world, record } = await created();
    await assert.rejects(runtime(world).teardown({ ...record, spec: { ...record.spec, provider: 'gone' } }, quiet), /provider gone is not known/);
    assert.ok(world.vmms.has(UID), 'nothing was removed around a running VMM');
    assert.ok(world.dirs.has(`/state/vm/ns/web/${UID}`));
  });
});
