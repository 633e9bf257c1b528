import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parse } from 'yaml';
import { diskLetter, mergeCmdline, networkConfig, vendorDataWithMounts } from './cloudinit.js';
import { deviceAlias, parseAlias, generatedMac, guestMac, hostDeviceName } from './host-names.js';
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

it('writes netplan v2 for DHCP and static interfaces, matching on the guest MAC', () => {
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
      eth0: { match: { macaddress: '02:00:00:00:00:01' }, dhcp4: true, dhcp6: true, 'dhcp-identifier': 'mac' },
      eth1: { match: { macaddress: '02:00:00:00:00:02' }, addresses: ['192.168.10.30/25'], dhcp4: false, dhcp6: false, gateway4: '192.168.10.2', nameservers: { addresses: ['1.1.1.1'] } },
      eth2: { match: { macaddress: '02:00:00:00:00:03' }, addresses: ['fd00::5/64'], dhcp4: false, dhcp6: false, gateway6: 'fd00::1' },
    },
  });
});

it('adds cloud-init mounts for additional volumes with a mount point, keeping vendor-data keys', () => {
  const v = vm({
    additionalVolumes: [
      { id: 'modules', isReadOnly: false, mountPoint: '/lib/modules/5.10', source: { containerSource: 'm' } },
      { id: 'scratch', isReadOnly: false, source: { containerSource: 's' } },
      { id: 'data', isReadOnly: true, mountPoint: '/data', source: { containerSource: 'd' } },
    ],
  });
  const out = vendorDataWithMounts(v, Buffer.from('#cloud-config\npackages: [jq]\nmounts:\n  - [vdz, /z]\n'));
  assert.ok(out?.toString().startsWith('#cloud-config\n'));
  assert.deepEqual(parse(out?.toString() ?? ''), { packages: ['jq'], mounts: [['vdz', '/z'], ['vdb', '/lib/modules/5.10'], ['vdd', '/data']] });
  assert.deepEqual(parse(vendorDataWithMounts(v, undefined)?.toString() ?? ''), { mounts: [['vdb', '/lib/modules/5.10'], ['vdd', '/data']] });
  assert.equal(vendorDataWithMounts(vm(), undefined), undefined);
  assert.equal(diskLetter(0), 'vda');
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
  assert.ok(deviceAlias('0123456789abcdef', v.uid, 'e'.repeat(63)).length <= 255, 'fits IFALIASZ');
  const mac = generatedMac(v.uid, 'eth0');
  assert.equal(mac, generatedMac(v.uid, 'eth0'));
  assert.notEqual(mac, generatedMac(v.uid, 'eth1'));
  assert.match(mac, /^02(:[0-9a-f]{2}){5}$/);
  assert.equal(guestMac(v, 1), 'aa:bb:cc:00:11:22');
});
