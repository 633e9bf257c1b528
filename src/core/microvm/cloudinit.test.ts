import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parse } from 'yaml';
import { EMPTY_USER_DATA, diskLetter, mergeCmdline, networkConfig, noCloudSeed, vendorDataWithMounts } from './cloudinit.js';
import { MatchlockError } from '../errors.js';
import { cloudInitMetaData } from './metadata.js';
import { deviceAlias, parseAlias, generatedMac, guestMac, hostDeviceName, ownLink } from './host-names.js';
import { initialStatus, type MicroVM } from './types.js';

function vm(over: Partial<MicroVM['spec']> = {}): MicroVM {
  return {
    uid: '01HZY3NDEKTSV4RRFFQ69G5FAV',
    version: 1,
    spec: {
      name: 'n', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024,
      kernel: { image: 'k', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
      rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'r' } },
      additionalVolumes: [],
      interfaces: [{ deviceId: 'eth0', type: 'TAP' }, { deviceId: 'eth1', type: 'MACVTAP', guestMac: 'AA:BB:CC:00:11:22' }],
      metadata: {}, provider: 'qemu', allowGuestAgent: false, ...over,
    },
    status: initialStatus(),
    createdAt: '', updatedAt: '',
  };
}

it('merges the kernel command line deterministically: defaults in order, overrides in place, new keys sorted, bare flags', () => {
  const defaults: [string, string][] = [['console', 'ttyS0'], ['reboot', 'k'], ['panic', '1']];
  assert.equal(mergeCmdline(defaults, {}), 'console=ttyS0 reboot=k panic=1');
  assert.equal(mergeCmdline(defaults, { zswap: '1', panic: '5', apic: '', console: 'hvc0' }), 'console=hvc0 reboot=k panic=5 apic zswap=1');
});

it('writes netplan v2 for DHCP and static interfaces, matching on the guest MAC and naming the NIC after device_id', () => {
  const v = vm({
    interfaces: [
      { deviceId: 'eth0', type: 'TAP' },
      { deviceId: 'eth1', type: 'TAP', address: { address: '192.168.10.30/25', gateway: '192.168.10.2', nameservers: ['1.1.1.1'] } },
      { deviceId: 'eth2', type: 'TAP', address: { address: 'fd00::5/64', gateway: 'fd00::1', nameservers: [] } },
    ],
  });
  const doc = parse(networkConfig(v, [{ deviceId: 'eth0', mac: '02:00:00:00:00:01' }, { deviceId: 'eth1', mac: '02:00:00:00:00:02' }, { deviceId: 'eth2', mac: '02:00:00:00:00:03' }]));
  assert.deepEqual(doc, {
    version: 2,
    ethernets: {
      eth0: { match: { macaddress: '02:00:00:00:00:01' }, 'set-name': 'eth0', dhcp4: true, dhcp6: true, 'dhcp-identifier': 'mac' },
      eth1: { match: { macaddress: '02:00:00:00:00:02' }, 'set-name': 'eth1', addresses: ['192.168.10.30/25'], dhcp4: false, dhcp6: false, gateway4: '192.168.10.2', nameservers: { addresses: ['1.1.1.1'] } },
      eth2: { match: { macaddress: '02:00:00:00:00:03' }, 'set-name': 'eth2', addresses: ['fd00::5/64'], dhcp4: false, dhcp6: false, gateway6: 'fd00::1' },
    },
  });
});

it('adds cloud-init mounts for volumes with a mount point as a MIME part after the client vendor-data bytes', () => {
  const v = vm({
    additionalVolumes: [
      { id: 'modules', isReadOnly: false, mountPoint: '/lib/modules/5.10', source: { containerSource: 'm' } },
      { id: 'scratch', isReadOnly: false, source: { containerSource: 's' } },
      { id: 'data', isReadOnly: true, mountPoint: '/data', source: { containerSource: 'd' } },
    ],
  });
  const mounts = [['vdb', '/lib/modules/5.10'], ['vdd', '/data']];
  assert.deepEqual(parse(vendorDataWithMounts(v, undefined)?.toString() ?? ''), { mounts });
  const mime = Buffer.from('Content-Type: multipart/mixed; boundary="matchlock-vendor-data"\nMIME-Version: 1.0\n\n--matchlock-vendor-data\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--matchlock-vendor-data--\n');
  const out = vendorDataWithMounts(v, mime) ?? Buffer.alloc(0);
  assert.ok(out.includes(mime), 'a MIME document is nested as it is');
  const boundary = /boundary="([^"]+)"/.exec(out.toString())?.[1] ?? '';
  assert.notEqual(boundary, 'matchlock-vendor-data', "the outer boundary is not one the client's bytes use");
  assert.ok(out.toString().endsWith(`#cloud-config\nmounts:\n  - - vdb\n    - /lib/modules/5.10\n  - - vdd\n    - /data\n--${boundary}--\n`));
  const binary = Buffer.from([0x1f, 0x8b, 0, 1, 2, 255]);
  assert.ok(vendorDataWithMounts(v, binary)?.toString().includes(`Content-Type: application/x-gzip\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="vendor-data"\n\n${binary.toString('base64')}\n`));
  assert.equal(vendorDataWithMounts(vm(), mime), mime, 'untouched without mount points');
  assert.equal(diskLetter(0), 'vda');
});

it('always seeds user-data and meta-data, since NoCloud takes neither alone', () => {
  const seed = noCloudSeed(vm(), [{ deviceId: 'eth0', mac: '02:00:00:00:00:01' }, { deviceId: 'eth1', mac: 'AA:BB:CC:00:11:22' }]);
  assert.deepEqual(Object.keys(seed).sort(), ['meta-data', 'network-config', 'user-data']);
  assert.equal(seed['user-data']?.toString(), EMPTY_USER_DATA);
  assert.deepEqual(parse(seed['meta-data']?.toString() ?? ''), { instance_id: vm().uid, 'instance-id': vm().uid });
  const client = noCloudSeed(vm({ metadata: { 'user-data': Buffer.from('#!/bin/sh\n').toString('base64') }, kernel: { ...vm().spec.kernel, addNetworkConfig: false } }), []);
  assert.equal(client['user-data']?.toString(), '#!/bin/sh\n');
  assert.equal(client['network-config'], undefined);
});

it('meta-data: keeps the client bytes and writes missing keys into its top-level mapping', () => {
  const uid = vm().uid;
  const text = '# CAPMVM\nlocal_hostname: n1   # node\nvm_host: h\n';
  assert.equal(cloudInitMetaData(Buffer.from(text), uid, 'f').toString(), `${text}instance_id: ${uid}\ninstance-id: ${uid}\nlocal-hostname: n1\n`);
  assert.equal(cloudInitMetaData(Buffer.from('n: 1\n'), '0123', 'f').toString(), "n: 1\ninstance_id: '0123'\ninstance-id: '0123'\n", 'quoted where a plain scalar would be a number');
  const complete = Buffer.from(`instance_id: a\ninstance-id: a\n`);
  assert.equal(cloudInitMetaData(complete, uid, 'f'), complete, 'nothing to add: the same buffer');
  // A flow mapping takes its entries before its closing brace.
  assert.deepEqual(parse(cloudInitMetaData(Buffer.from('{local_hostname: n1}'), uid, 'f').toString()), { local_hostname: 'n1', instance_id: uid, 'instance-id': uid, 'local-hostname': 'n1' });
  assert.deepEqual(parse(cloudInitMetaData(Buffer.from('a: 1\n...\n'), uid, 'f').toString()), { a: 1, instance_id: uid, 'instance-id': uid });
  // Documents whose last value runs to the end of the text still mean the same with lines appended.
  for (const [doc, value] of [
    ['a: |\n  text', { a: 'text\n' }],
    ['a: |+\n  text\n\n', { a: 'text\n\n' }],
    ['a: >-\n  folded\n  text\n', { a: 'folded text' }],
    ['a: plain\n  continued', { a: 'plain continued' }],
    ['a:\n  - 1\n  - 2 # c', { a: [1, 2] }],
    ['---\n"quoted key": "multi\n  line"', { 'quoted key': 'multi line' }],
    ['%YAML 1.2\n---\na: 1', { a: 1 }],
    ['  a: 1\n  b: 2\n', { a: 1, b: 2 }],
    ['? a\n: 1\n', { a: 1 }],
  ] as const) {
    assert.deepEqual(parse(cloudInitMetaData(Buffer.from(doc), uid, 'f').toString()), { ...value, instance_id: uid, 'instance-id': uid }, JSON.stringify(doc));
  }
  for (const [bad, rule] of [
    ['a: *nowhere\n', /must be a YAML mapping \(Unresolved alias/],
    ['- a\n', /must be a YAML mapping of keys to values/],
    ['a: 1\n---\nb: 2\n', /must be a YAML mapping \(expected a single document/],
    [`a: ${'['.repeat(150)}${']'.repeat(150)}`, /must be a YAML mapping \(nesting exceeded/],
    [['a: &a [x, x, x, x, x, x, x, x, x, x]', ...'bcdefg'.split('').map((k, n) => `${k}: &${k} [${Array(10).fill(`*${'abcdefg'[n]}`).join(', ')}]`)].join('\n'), /must not expand to more than 1048576 values through YAML aliases/],
  ] as const) {
    assert.throws(() => cloudInitMetaData(Buffer.from(bad), uid, 'microvm.metadata["meta-data"]'), (err: MatchlockError) => {
      assert.equal(err.code, 'InvalidArgument');
      assert.equal(err.field, 'microvm.metadata["meta-data"]');
      assert.match(err.message, rule);
      return true;
    });
  }
});

it('derives short, traceable host names and stable locally administered MACs', () => {
  const v = vm();
  assert.equal(hostDeviceName(v, 0), 'mltffq69g5fav0');
  assert.ok(hostDeviceName(v, 0).length <= 15, hostDeviceName(v, 0));
  assert.equal(hostDeviceName(v, 1), 'mlvffq69g5fav1');
  assert.deepEqual(parseAlias(deviceAlias('0123456789abcdef', v.uid, 'eth0')), { daemonId: '0123456789abcdef', uid: v.uid, deviceId: 'eth0' });
  assert.deepEqual(parseAlias(`matchlock:${v.uid}:eth0`), { daemonId: undefined, uid: v.uid, deviceId: 'eth0' }, 'the form without a daemon id');
  assert.equal(parseAlias('something else'), undefined);
  assert.equal(parseAlias('matchlock:not-ours:x'), undefined);
  assert.throws(() => deviceAlias('', v.uid, 'eth0'), /16 lowercase hex/);
  // ownLink: a VM's steps (with the VM) and the sweep (without) read one rule.
  const [me, other] = ['0123456789abcdef', 'fedcba9876543210'];
  const eth0 = { uid: v.uid, deviceId: 'eth0' };
  const cases: [alias: string | undefined, withVm: boolean, withoutVm: boolean][] = [
    [deviceAlias(me, v.uid, 'eth0'), true, true],
    [deviceAlias(me, v.uid, 'eth1'), false, true],
    [deviceAlias(other, v.uid, 'eth0'), false, false],
    [`matchlock:${v.uid}:eth0`, true, false],
    [`matchlock:${v.uid}:eth1`, false, false],
    [undefined, true, false],
    ['', true, false],
    ["an operator's", false, false],
  ];
  for (const [alias, withVm, withoutVm] of cases) {
    assert.equal(ownLink(alias, me, eth0) !== undefined, withVm, `${String(alias)} with the VM`);
    assert.equal(ownLink(alias, me) !== undefined, withoutVm, `${String(alias)} without the VM`);
  }
  assert.deepEqual(ownLink(deviceAlias(me, v.uid, 'eth1'), me), { uid: v.uid, deviceId: 'eth1' });
  assert.ok(deviceAlias('0123456789abcdef', v.uid, 'e'.repeat(63)).length <= 255, 'fits IFALIASZ');
  const mac = generatedMac(v.uid, 'eth0');
  assert.equal(mac, generatedMac(v.uid, 'eth0'));
  assert.notEqual(mac, generatedMac(v.uid, 'eth1'));
  assert.match(mac, /^02(:[0-9a-f]{2}){5}$/);
  assert.equal(guestMac(v, 1), 'aa:bb:cc:00:11:22');
});
