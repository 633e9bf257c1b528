import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { mergeCmdline } from '../../src/core/microvm/cloudinit.js';
import {
  defaultCmdline,
  firecrackerArgs,
  firecrackerConfig,
  mmdsInterface,
  mmdsMetadata,
  type FirecrackerLaunch,
} from '../../src/adapters/vmm/firecracker/config.js';
import { DEFAULT_JAILER, cgroupLimits, jailPlan, jailUidRange, jailedSocket } from '../../src/adapters/vmm/firecracker/jailer.js';
import { ROOT } from '../helpers/daemon.js';
import { configShapeError, swaggerAvailable, swaggerPath } from '../fakes/firecracker-spec.mjs';

// Golden files: the exact argv, config file, command line and metadata.json per scenario, so
// argument building cannot drift unnoticed (flintlock's buildargs tests are the model).
// Regenerate after an intended change with UPDATE_GOLDEN=1 and review the diff.
const GOLDEN = join(ROOT, 'test', 'fixtures', 'firecracker');
const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';
const DIR = `/var/lib/matchlock/vm/ns1/vm1/${UID}`;
const RUN = `/var/lib/matchlock/run/${UID}`;
const META_NIC = { deviceId: 'eth0', type: 'TAP' as const, hostDevice: 'mlt0abcdefghij', ifindex: 4, mac: 'AA:FF:00:00:00:01' };
const USER_NIC = { deviceId: 'eth1', type: 'TAP' as const, hostDevice: 'mlt1abcdefghij', ifindex: 5, mac: '02:00:00:0a:0b:01' };
const SEED = {
  'meta-data': Buffer.from(`instance_id: ${UID}\nlocal_hostname: vm1\n`),
  'user-data': Buffer.from('#cloud-config\nruncmd: [echo hi]\n'),
  'vendor-data': Buffer.from('#cloud-config\n{}\n'),
};
const NETWORK_CONFIG = Buffer.from('version: 2\nethernets:\n  eth1:\n    match:\n      macaddress: 02:00:00:0a:0b:01\n    dhcp4: true\n');

function launch(over: Partial<FirecrackerLaunch> = {}): FirecrackerLaunch {
  const base: FirecrackerLaunch = {
    uid: UID,
    namespace: 'ns1',
    name: 'vm1',
    dir: DIR,
    runDir: RUN,
    vcpu: 2,
    memoryInMb: 2048,
    kernelPath: '/var/lib/matchlock/images/k/boot/vmlinux',
    cmdline: '',
    hasRoot: true,
    shares: [],
    disks: [{ id: 'root', path: `${DIR}/volume-root.img`, readOnly: false }],
    nics: [META_NIC, USER_NIC],
    metadata: SEED,
    ...over,
  };
  const mmds = mmdsInterface(base.nics) !== undefined;
  const cmdline = over.cmdline ?? mergeCmdline(defaultCmdline({ mmds, networkConfig: base.metadata['network-config'] }), {});
  return { ...base, cmdline };
}

const SCENARIOS: Record<string, FirecrackerLaunch> = {
  'root-only': launch({ nics: [META_NIC] }),
  'extra-volumes': launch({
    disks: [
      { id: 'root', path: `${DIR}/volume-root.img`, readOnly: false },
      { id: 'modules', path: `${DIR}/volume-modules.img`, readOnly: true },
      { id: 'data', path: `${DIR}/volume-data.img`, readOnly: false },
    ],
  }),
  'several-interfaces': launch({
    nics: [META_NIC, USER_NIC, { deviceId: 'eth2', type: 'TAP', hostDevice: 'mlt2abcdefghij', ifindex: 6, mac: '02:00:00:0a:0b:02' }],
    metadata: { ...SEED, 'network-config': NETWORK_CONFIG },
  }),
  'guest-agent': launch({ guestAgent: { cid: 3 } }),
  'initrd-no-root': launch({ hasRoot: false, initrdPath: '/var/lib/matchlock/images/i/boot/initrd.img', disks: [{ id: 'data', path: `${DIR}/volume-data.img`, readOnly: false }] }),
  'no-mmds-interface': launch({ vcpu: 3, nics: [USER_NIC] }),
};

function render(l: FirecrackerLaunch) {
  return {
    argv: firecrackerArgs(l, l),
    config: firecrackerConfig(l),
    cmdline: l.cmdline,
    metadata: mmdsMetadata(l.metadata),
  };
}

const JAILER = { ...DEFAULT_JAILER, bin: '/usr/bin/jailer', chrootBase: '/var/lib/matchlock/jailer' };

function renderJailed(l: FirecrackerLaunch) {
  const plan = jailPlan(l, JAILER, '/usr/bin/firecracker', JAILER.uidBase);
  return { argv: plan.argv, config: firecrackerConfig(plan.launch, plan.paths), links: plan.links, root: plan.root, cgroup: plan.cgroup, apiSocket: jailedSocket(plan, 'api') };
}

describe('firecracker config golden files', () => {
  it('jailer', () => {
    const file = join(GOLDEN, 'jailer.json');
    const got = JSON.stringify(renderJailed(SCENARIOS['extra-volumes']!), null, 2) + '\n';
    if (process.env.UPDATE_GOLDEN) writeFileSync(file, got);
    assert.equal(got, readFileSync(file, 'utf8'));
  });
  for (const [name, l] of Object.entries(SCENARIOS)) {
    it(name, () => {
      const file = join(GOLDEN, `${name}.json`);
      const got = JSON.stringify(render(l), null, 2) + '\n';
      if (process.env.UPDATE_GOLDEN) writeFileSync(file, got);
      assert.ok(existsSync(file), `${file} missing: run with UPDATE_GOLDEN=1`);
      assert.equal(got, readFileSync(file, 'utf8'));
    });
  }
});

const specMissing = swaggerAvailable() ? undefined : `the Firecracker swagger is not at ${swaggerPath()}`;
describe('firecracker config against the swagger', { skip: specMissing && !process.env.CI ? specMissing : false }, () => {
  it('every scenario fits the swagger definitions (closed objects, enums, types)', () => {
    assert.equal(specMissing, undefined, specMissing);
    for (const [name, l] of Object.entries(SCENARIOS)) assert.equal(configShapeError(firecrackerConfig(l)), undefined, name);
    assert.equal(configShapeError(renderJailed(SCENARIOS['guest-agent']!).config), undefined, 'jailed');
  });
});

describe('firecracker config rules', () => {
  it('never sets smt, so an odd vCPU count boots', () => {
    assert.deepEqual(firecrackerConfig(SCENARIOS['no-mmds-interface']!)['machine-config'], { vcpu_count: 3, mem_size_mib: 2048, smt: false });
  });
  it('writes mmds-config only with a non-empty interface list, and ds= only then', () => {
    const without = SCENARIOS['no-mmds-interface']!;
    assert.equal(firecrackerConfig(without)['mmds-config'], undefined);
    assert.doesNotMatch(without.cmdline, /ds=/);
    const withMmds = firecrackerConfig(SCENARIOS['root-only']!);
    assert.deepEqual(withMmds['mmds-config'], { version: 'V1', network_interfaces: ['eth0'] });
  });
  it('marks a root device only when the VM has a root volume', () => {
    assert.equal(firecrackerConfig(SCENARIOS['initrd-no-root']!).drives.some((d) => d.is_root_device), false);
    assert.deepEqual(firecrackerConfig(SCENARIOS['extra-volumes']!).drives.map((d) => d.is_root_device), [true, false, false]);
  });
  it('passes network-config base64 on the command line and flintlock defaults first', () => {
    const l = SCENARIOS['several-interfaces']!;
    assert.ok(l.cmdline.startsWith('console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd ds=nocloud-net;s=http://169.254.169.254/latest/ network-config='));
    const b64 = /network-config=(\S+)/.exec(l.cmdline)?.[1] ?? '';
    assert.equal(Buffer.from(b64, 'base64').toString(), NETWORK_CONFIG.toString());
  });
  it('refuses MACVTAP interfaces, which Firecracker cannot use', () => {
    assert.throws(() => firecrackerConfig(launch({ nics: [{ ...USER_NIC, type: 'MACVTAP' }] })), /eth1: provider firecracker supports only TAP interfaces, not MACVTAP/);
  });
  it('metadata.json holds the decoded seed files under latest', () => {
    assert.deepEqual(mmdsMetadata(SEED).latest['meta-data'], `instance_id: ${UID}\nlocal_hostname: vm1\n`);
  });
});

describe('firecracker jailer plan', () => {
  it('claims ids from uidBase on, 65536 of them, and cgroup v2 limits from the spec', () => {
    assert.deepEqual(jailUidRange(JAILER), { first: 900_000, last: 900_000 + 65_535 });
    assert.deepEqual(cgroupLimits({ vcpu: 2, memoryInMb: 1024 }, JAILER), ['cpu.max=200000 100000', `memory.max=${(1024 + 64) * 1024 * 1024}`, 'memory.swap.max=0']);
  });
  it('paths inside the jail, --id given once (by the jailer)', () => {
    const r = renderJailed(SCENARIOS['guest-agent']!);
    assert.equal(r.argv.filter((a) => a === '--id').length, 1);
    assert.equal(r.config['boot-source'].kernel_image_path, '/vmlinux');
    assert.equal(r.config.vsock?.uds_path, '/run/guest-agent.vsock');
    assert.equal(r.apiSocket, `/var/lib/matchlock/jailer/firecracker/${UID}/root/run/firecracker.sock`);
  });
});
