import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { chArgs, chDefaultCmdline, type ChLaunch } from '../../src/adapters/vmm/cloudhypervisor/args.js';
import { chCheckSpec } from '../../src/adapters/vmm/cloudhypervisor/spec-rules.js';
import { mergeCmdline } from '../../src/core/microvm/cloudinit.js';
import type { MicroVMSpec } from '../../src/core/microvm/types.js';

// Golden argv per scenario (flintlock's buildargs_test.go is the model): a change in argument
// building shows as a diff here. UPDATE_GOLDEN=1 rewrites the files after a deliberate change.
const FIXTURES = fileURLToPath(new URL('../fixtures/cloudhypervisor/', import.meta.url));
const uid = '01HZY3NDEKTSV4RRFFQ69G5FAV';
const base: ChLaunch = {
  uid,
  dir: `/var/lib/matchlock/vm/ns1/worker-0/${uid}`,
  runDir: `/var/lib/matchlock/run/${uid}`,
  vcpu: 2,
  memoryInMb: 2048,
  kernelPath: '/var/lib/matchlock/images/k/boot/vmlinux',
  cmdline: mergeCmdline(chDefaultCmdline(true), {}),
  disks: [
    { id: 'root', path: '/var/lib/matchlock/vm/ns1/worker-0/x/volume-root.img', readOnly: false },
    { id: 'cidata', path: `/var/lib/matchlock/vm/ns1/worker-0/${uid}/cloud-init.img`, readOnly: true },
  ],
  nics: [{ deviceId: 'eth0', type: 'TAP', hostDevice: 'mltap0abc123', ifindex: 7, mac: '02:aa:bb:cc:dd:01' }],
  shares: [],
};
const macvtap = { deviceId: 'eth1', type: 'MACVTAP' as const, hostDevice: 'mlvtap0abc12', ifindex: 9, mac: '5a:11:22:33:44:55' };

const scenarios: Record<string, ChLaunch> = {
  'tap-only': base,
  'tap-macvtap': { ...base, nics: [...base.nics, macvtap, { ...macvtap, deviceId: 'eth2', hostDevice: 'mlvtap1abc12', ifindex: 10, mac: '5a:11:22:33:44:66' }] },
  'extra-volumes': {
    ...base,
    disks: [base.disks[0]!, { id: 'modules', path: '/v/modules.img', readOnly: true }, { id: 'data', path: '/v/data.img', readOnly: false }, base.disks[1]!],
  },
  'initrd-no-root': { ...base, initrdPath: '/var/lib/matchlock/images/i/initrd.img', cmdline: mergeCmdline(chDefaultCmdline(false), { 'rdinit': '/init' }), disks: [base.disks[1]!] },
  'vsock': { ...base, guestAgent: { cid: 3 } },
  'virtiofs-share': { ...base, shares: [{ id: 'data', hostPath: '/srv/data', readOnly: false }, { id: 'models', hostPath: '/srv/models', readOnly: false }] },
};

describe('cloud-hypervisor argv', () => {
  for (const [name, launch] of Object.entries(scenarios)) {
    it(`matches the golden argv: ${name}`, () => {
      const file = `${FIXTURES}${name}.json`;
      const argv = chArgs(launch);
      if (process.env.UPDATE_GOLDEN) {
        mkdirSync(FIXTURES, { recursive: true });
        writeFileSync(file, JSON.stringify(argv, null, 1) + '\n');
      }
      assert.ok(existsSync(file), `${file} missing; run with UPDATE_GOLDEN=1 once`);
      assert.deepEqual(argv, JSON.parse(readFileSync(file, 'utf8')));
    });
  }

  it('uses flintlock\'s default kernel arguments with the serial console', () => {
    assert.equal(mergeCmdline(chDefaultCmdline(true), {}), 'console=ttyS0 root=/dev/vda rw reboot=k panic=1');
    assert.equal(mergeCmdline(chDefaultCmdline(false), { console: 'hvc0' }), 'console=hvc0 reboot=k panic=1');
  });

  it('numbers MACVTAP descriptors from 3 in NIC order and keeps the macvtap MAC', () => {
    const argv = chArgs(scenarios['tap-macvtap']!);
    const nets = argv.slice(argv.indexOf('--net') + 1, argv.indexOf('--net') + 4);
    assert.deepEqual(nets, ['tap=mltap0abc123,mac=02:aa:bb:cc:dd:01', 'fd=3,mac=5a:11:22:33:44:55', 'fd=4,mac=5a:11:22:33:44:66']);
  });

  it('shares memory only when a virtio-fs share needs it', () => {
    assert.equal(chArgs(base)[chArgs(base).indexOf('--memory') + 1], 'size=2048M');
    const s = chArgs(scenarios['virtiofs-share']!);
    assert.equal(s[s.indexOf('--memory') + 1], 'size=2048M,shared=on');
  });

  it('refuses a path the option parser would split', () => {
    assert.throws(() => chArgs({ ...base, disks: [{ id: 'root', path: '/a,b/root.img', readOnly: false }] }), /disk root "\/a,b\/root.img" cannot be passed/);
  });

  // Every golden argv must be accepted by the stand-in's parser (it exits 2 on a grammar error
  // before looking at files; a file error exits 1 with "Error booting VM").
  it('every golden argv parses under cloud-hypervisor\'s grammar', () => {
    const fake = fileURLToPath(new URL('../fakes/cloud-hypervisor.mjs', import.meta.url));
    const tmp = mkdtempSync(join(tmpdir(), 'ch-args-'));
    try {
      for (const [name, launch] of Object.entries(scenarios)) {
        // The VM directory exists (the log opens); the kernel does not, so boot is where it stops.
        const argv = chArgs({ ...launch, dir: tmp, runDir: tmp });
        const r = spawnSync(fake, argv, { encoding: 'utf8', env: { ...process.env, FAKE_CH_FAULTS: 'no-api' }, timeout: 60_000 });
        assert.equal(r.status, 1, `${name}: ${r.stderr}`);
        assert.match(r.stderr, /Error booting VM\n\s+Cannot load kernel/, `${name} failed before boot: ${r.stderr}`);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('cloud-hypervisor create-time rules', () => {
  const spec = (volumes: MicroVMSpec['additionalVolumes']): MicroVMSpec => ({
    name: 'n', namespace: 'ns', labels: {}, vcpu: 2, memoryInMb: 1024,
    kernel: { image: 'k', filename: 'vmlinux', cmdline: {}, addNetworkConfig: false },
    additionalVolumes: volumes, interfaces: [], metadata: {}, provider: 'cloudhypervisor', allowGuestAgent: false,
  });

  it('accepts a read-write share and container volumes', () => {
    assert.equal(chCheckSpec(spec([{ id: 'data', isReadOnly: false, source: { virtiofsSource: '/srv/data' } }, { id: 'm', isReadOnly: true, source: { containerSource: 'ghcr.io/x/y:1' } }])), undefined);
  });

  it('refuses a read-only share, naming the field', () => {
    const err = chCheckSpec(spec([{ id: 'data', isReadOnly: true, source: { virtiofsSource: '/srv/data' } }]));
    assert.equal(err?.code, 'FailedPrecondition');
    assert.match(err?.message ?? '', /^microvm.additional_volumes\[0\].is_read_only: .*read-only/);
  });

  it('refuses a share path the option syntax would split', () => {
    const err = chCheckSpec(spec([{ id: 'data', isReadOnly: false, source: { virtiofsSource: '/srv/a,b' } }]));
    assert.match(err?.message ?? '', /^microvm.additional_volumes\[0\].source.virtiofs_source: must not contain commas/);
  });
});
