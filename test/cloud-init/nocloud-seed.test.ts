import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { noCloudSeed, type GuestInterface } from '../../src/core/microvm/cloudinit.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import { validateSpec, type SpecInput } from '../../src/core/microvm/validate.js';
import { cloudInitMissing, cloudInitReads } from '../helpers/cloud-init.js';

// Debian 12's cloud-init reads every seed here: its NoCloud datasource, its user-data and
// vendor-data handlers and its network renderers decide what is right, not our idea of them.
const missing = cloudInitMissing();
const skip = missing && !process.env.CI ? missing : false;

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

/** A VM as create stores it (validateSpec applies the create-time meta-data rules). */
function created(over: Partial<SpecInput> = {}): MicroVM {
  const input: SpecInput = {
    id: 'vm', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, allowGuestAgent: false,
    kernel: { image: 'ghcr.io/x/kernel:1', filename: 'boot/vmlinux', cmdline: {}, addNetworkConfig: true },
    rootVolume: { id: 'root', isReadOnly: false, source: { containerSource: 'ghcr.io/x/root:1' } },
    additionalVolumes: [],
    interfaces: [{ deviceId: 'eth1', type: 1 }],
    metadata: {},
    ...over,
  };
  return { uid: UID, version: 1, spec: validateSpec(input, UID, 'qemu'), status: initialStatus(), createdAt: '', updatedAt: '' };
}

const guests = (vm: MicroVM): GuestInterface[] => vm.spec.interfaces.map((i, n) => ({ deviceId: i.deviceId, mac: i.guestMac ?? `02:00:00:00:00:0${n + 1}` }));
const reads = (vm: MicroVM) => cloudInitReads(noCloudSeed(vm, guests(vm)));
/** What cloud-init logged at WARNING or worse. */
const complaints = (r: ReturnType<typeof reads>) => r.logs;

const CAPMVM_META = 'local_hostname: capmvm-wl-md-0-abcde\nvm_host: host-1\nplatform: liquid_metal\n';

describe('cloud-init reads the NoCloud seed', { skip }, () => {
  it('instance id: the uid, under the key cloud-init reads and the one CAPMVM reads; hostname from local_hostname', () => {
    const r = reads(created({ metadata: { 'meta-data': b64(CAPMVM_META), 'user-data': b64('#cloud-config\n{}\n') } }));
    assert.equal(r.found, true);
    assert.equal(r.instance_id, UID, 'cloud-init would otherwise call every VM "nocloud" and skip per-instance modules on a golden image');
    assert.equal(r.metadata?.instance_id, UID, "CAPMVM's provider id template reads instance_id");
    assert.equal(r.hostname, 'capmvm-wl-md-0-abcde');
    assert.equal(r.metadata?.vm_host, 'host-1');
    // An instance id the client chose is kept, in both spellings.
    const own = reads(created({ metadata: { 'meta-data': b64('instance-id: golden-7\n'), 'user-data': b64('#cloud-config\n{}\n') } }));
    assert.equal(own.instance_id, 'golden-7');
    assert.equal(own.metadata?.instance_id, 'golden-7');
  });

  it('instance id also for a VM stored before the rule (meta-data with only instance_id)', () => {
    const vm = created();
    vm.spec.metadata = { 'meta-data': b64(`instance_id: ${UID}\nlocal_hostname: old\n`) };
    const r = reads(vm);
    assert.equal(r.instance_id, UID);
    assert.equal(r.hostname, 'old');
  });

  it('a VM without user-data still has a seed cloud-init takes, network-config included', () => {
    const vm = created({
      metadata: { 'meta-data': b64(CAPMVM_META) },
      interfaces: [{ deviceId: 'eth1', type: 1, address: { address: '10.9.0.5/24', gateway: '10.9.0.1', nameservers: ['10.9.0.1'] } }],
    });
    const r = reads(vm);
    assert.equal(r.found, true, 'NoCloud requires user-data beside meta-data');
    assert.deepEqual(r.network?.interfaces.map((i) => [i.name, i.subnets[0]?.address, i.subnets[0]?.prefix]), [['eth1', '10.9.0.5', 24]]);
    assert.deepEqual(complaints(r), []);
  });

  it('network-config: every renderer configures the NIC with the MAC, and the NIC is renamed to its device_id', () => {
    const vm = created({
      interfaces: [
        { deviceId: 'eth1', type: 1, guestMac: '02:AA:00:00:00:01' },
        { deviceId: 'eth2', type: 1, guestMac: '02:AA:00:00:00:02', address: { address: '10.9.0.5/24', gateway: '10.9.0.1', nameservers: ['10.9.0.1'] } },
        { deviceId: 'data', type: 1, guestMac: '02:AA:00:00:00:03', address: { address: 'fd00::5/64', gateway: 'fd00::1', nameservers: [] } },
      ],
    });
    const r = reads(vm);
    const net = r.network;
    assert.ok(net);
    const want = [['02:aa:00:00:00:01', 'eth1'], ['02:aa:00:00:00:02', 'eth2'], ['02:aa:00:00:00:03', 'data']];
    // The guest names its NICs eth0, eth1, data... in device order; cloud-init renames each NIC
    // with a listed MAC to its name before any renderer's config applies.
    assert.deepEqual(net.renames.map(([mac, name]) => [mac, name]).sort(), [...want].sort());
    assert.deepEqual(net.interfaces.map((i) => [i.mac_address, i.name]), want);
    const eni = net.rendered.eni['etc/network/interfaces'] ?? '';
    const udev = net.rendered.eni['etc/udev/rules.d/70-persistent-net.rules'] ?? '';
    assert.match(eni, /^iface eth1 inet dhcp$/m);
    assert.match(eni, /^iface eth2 inet static$/m);
    assert.match(eni, /^iface data inet6 static$/m);
    for (const [mac, name] of want) {
      assert.match(udev, new RegExp(`ATTR\\{address\\}=="${mac}", NAME="${name}"`), `eni: udev names ${mac} ${name}`);
      const unit = net.rendered.networkd[`etc/systemd/network/10-cloud-init-${name}.network`] ?? '';
      assert.match(unit, new RegExp(`^MACAddress=${mac}$`, 'm'), `networkd matches ${name} by MAC`);
      assert.match(unit, new RegExp(`^Name=${name}$`, 'm'));
    }
    assert.match(net.rendered.networkd['etc/systemd/network/10-cloud-init-eth1.network'] ?? '', /^DHCP=(yes|ipv4)$/m);
    assert.match(net.rendered.networkd['etc/systemd/network/10-cloud-init-eth2.network'] ?? '', /^Address=10\.9\.0\.5\/24$/m);
    const netplan = net.rendered.netplan['etc/netplan/50-cloud-init.yaml'] ?? '';
    assert.match(netplan, /set-name: eth1/);
    assert.match(netplan, /macaddress: 02:aa:00:00:00:01/);
  });

  it('network-config is read as YAML 1.1 reads it: a MAC of decimal digits and a NIC named on or yes stay strings', () => {
    // cloud-init reads with PyYAML (YAML 1.1): unquoted, 52:54:00:12:34:56 is a base-60 integer
    // and `on:` / `yes:` are the same boolean key, so one entry replaced the other.
    const vm = created({
      interfaces: [
        { deviceId: 'eth1', type: 1, guestMac: '52:54:00:12:34:56' },
        { deviceId: 'on', type: 1, guestMac: '02:AA:00:00:00:02' },
        { deviceId: 'yes', type: 1, guestMac: '02:AA:00:00:00:03', address: { address: '10.9.0.5/24', gateway: '10.9.0.1', nameservers: ['10.9.0.1'] } },
      ],
    });
    const r = reads(vm);
    const want = [['52:54:00:12:34:56', 'eth1'], ['02:aa:00:00:00:02', 'on'], ['02:aa:00:00:00:03', 'yes']];
    assert.deepEqual(r.network?.interfaces.map((i) => [i.mac_address, i.name]), want);
    assert.deepEqual(r.network?.renames.map(([mac, name]) => [mac, name]).sort(), [...want].sort());
    assert.deepEqual(complaints(r), []);
  });

  describe("vendor-data: the client's bytes reach cloud-init intact, and the mounts too", () => {
    const volumes = [
      { id: 'modules', isReadOnly: false, mountPoint: '/lib/modules/6.1', source: { containerSource: 'ghcr.io/x/modules:1' } },
      { id: 'scratch', isReadOnly: false, source: { containerSource: 'ghcr.io/x/scratch:1' } },
    ];
    const ours = ['vdb', '/lib/modules/6.1'];
    const script = '#!/bin/sh\necho vendor script ran > /run/vendor-marker\n';
    const mime = [
      'Content-Type: multipart/mixed; boundary="XYZ"', 'MIME-Version: 1.0', '',
      '--XYZ', 'Content-Type: text/cloud-config; charset="us-ascii"', 'MIME-Version: 1.0', 'Content-Disposition: attachment; filename="config.yaml"', '',
      '#cloud-config', 'ntp: {enabled: true}', 'mounts:', '- [vdz, /z]', '',
      '--XYZ', 'Content-Type: text/x-shellscript; charset="us-ascii"', 'MIME-Version: 1.0', 'Content-Disposition: attachment; filename="vendor.sh"', '',
      script, '--XYZ--', '',
    ].join('\n');
    const cases: [string, Buffer, (r: ReturnType<typeof reads>) => void][] = [
      ['MIME multipart (cloud-config part + script part)', Buffer.from(mime), (r) => {
        assert.deepEqual(r.cloud_config?.ntp, { enabled: true });
        assert.deepEqual(r.cloud_config?.mounts, [['vdz', '/z'], ours], "the client's mounts stay, ours follow");
        assert.equal(r.instance_files?.['scripts/vendor/vendor.sh'], script);
      }],
      ['#cloud-config', Buffer.from('#cloud-config\npackages: [jq]\nmounts:\n  - [vdz, /z]\n'), (r) => {
        assert.deepEqual(r.cloud_config?.packages, ['jq']);
        assert.deepEqual(r.cloud_config?.mounts, [['vdz', '/z'], ours]);
      }],
      ['a shell script', Buffer.from(script), (r) => {
        assert.deepEqual(r.cloud_config?.mounts, [ours]);
        assert.deepEqual(Object.entries(r.instance_files ?? {}).filter(([k]) => k.startsWith('scripts/vendor/')).map(([, v]) => v), [script]);
      }],
      ['gzip-compressed cloud-config', gzipSync('#cloud-config\nruncmd: [[touch, /run/gz]]\n'), (r) => {
        assert.deepEqual(r.cloud_config?.runcmd, [['touch', '/run/gz']]);
        assert.deepEqual(r.cloud_config?.mounts, [ours]);
      }],
      ['#cloud-config-archive', Buffer.from('#cloud-config-archive\n- type: text/cloud-config\n  content: "timezone: Europe/Paris"\n'), (r) => {
        assert.equal(r.cloud_config?.timezone, 'Europe/Paris');
        assert.deepEqual(r.cloud_config?.mounts, [ours]);
      }],
      ['none', Buffer.alloc(0), (r) => {
        assert.deepEqual(r.cloud_config?.mounts, [ours]);
      }],
    ];
    for (const [name, vendor, check] of cases) {
      it(name, () => {
        const metadata: Record<string, string> = { 'user-data': b64('#cloud-config\nhostname: h\n') };
        if (vendor.length) metadata['vendor-data'] = b64(vendor);
        const vm = created({ additionalVolumes: volumes, metadata });
        const seed = noCloudSeed(vm, guests(vm));
        // A MIME document is embedded as it is; anything else as a base64 part (any bytes survive).
        if (vendor.length) assert.ok(seed['vendor-data']?.includes(name.startsWith('MIME') ? vendor : Buffer.from(vendor.toString('base64').slice(0, 76))), 'the client bytes are in the vendor-data');
        const r = cloudInitReads(seed);
        assert.equal(r.found, true);
        check(r);
        assert.deepEqual(complaints(r), []);
        assert.equal(r.cloud_config?.hostname, 'h', 'user-data still wins over vendor-data');
      });
    }
  });

  it('big meta-data (about 1 MiB, within the limit) keeps the client bytes and cloud-init reads it', () => {
    const lines: string[] = ['# comment kept', 'local_hostname: big'];
    for (let n = 0; lines.join('\n').length < 1000 * 1000; n += 1000) {
      // An alias in one entry of 25: meta-data takes at most 1,000 (META_DATA_MAX_ALIASES).
      for (let k = n; k < n + 1000; k++) lines.push(k % 25 === 2 ? `key_${k}: {a: [${k}, "v${k}"], b: &x${k} text, c: *x${k}}` : `key_${k}: {a: [${k}, "v${k}"], b: text, c: text}`);
    }
    const text = `${lines.join('\n')}\n`;
    const vm = created({ metadata: { 'meta-data': b64(text), 'user-data': b64('#cloud-config\n{}\n') } });
    const stored = Buffer.from(vm.spec.metadata['meta-data'] ?? '', 'base64').toString('utf8');
    assert.ok(stored.startsWith(text), 'appended to, not re-encoded');
    const r = reads(vm);
    assert.equal(r.instance_id, UID);
    assert.equal(r.hostname, 'big');
    assert.deepEqual(r.metadata?.key_77, { a: [77, 'v77'], b: 'text', c: 'text' });
  });
});
