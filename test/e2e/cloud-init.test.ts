import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CreateMicroVMRequestSchema, type CreateMicroVMResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { NetworkInterface_IfaceType } from '../../src/gen/types/microvm_pb.js';
import { rawClient } from '../helpers/client.js';
import { ROOT } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { api, consoleOf, stateOf, waitFor } from './vm.js';

// A real Debian 12 guest (systemd, systemd-networkd, cloud-init 22.4) booted through
// matchlockd's API with a CAPMVM-shaped spec; what cloud-init did is read from the guest.
const missing = labMissing() ?? (['mmdebstrap', 'docker-registry', 'skopeo'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) ? 'mmdebstrap, docker-registry or skopeo missing (scripts/install-deps.sh)' : undefined);
const skip = missing && !process.env.CI ? missing : false;

/** Builds (once per machine, cached under the OS temp dir) the Debian cloud guest's OCI layout. */
function cloudGuestLayout(testGuest: string): string {
  const cache = join(tmpdir(), 'matchlock-cloud-guest');
  mkdirSync(cache, { recursive: true });
  return execFileSync(join(ROOT, 'scripts/build-cloud-image.sh'), [cache, testGuest], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 60 * 60_000 }).trim();
}

// The kernel names the first NIC eth0 and the second eth1; cloud-init must rename them.
const ETH1_MAC = '02:00:00:e2:e0:01';
const ETH2_MAC = '02:00:00:e2:e0:02';
const SSH_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMatchlockE2eTestKeyOnlyForCloudInitChecks0000 e2e@matchlock';
const VENDOR_SCRIPT = '#!/bin/sh\necho "vendor script ran" > /var/tmp/vendor-script.txt\n';

/** The client's vendor-data: MIME multipart with a cloud-config part and a shell script part. */
const VENDOR_DATA = [
  'Content-Type: multipart/mixed; boundary="==client=="', 'MIME-Version: 1.0', '',
  '--==client==', 'Content-Type: text/cloud-config; charset="us-ascii"', 'MIME-Version: 1.0', 'Content-Disposition: attachment; filename="vendor.yaml"', '',
  '#cloud-config', 'bootcmd:', '  - [sh, -c, "echo vendor bootcmd ran > /var/tmp/vendor-bootcmd.txt"]', '',
  '--==client==', 'Content-Type: text/x-shellscript; charset="us-ascii"', 'MIME-Version: 1.0', 'Content-Disposition: attachment; filename="vendor.sh"', '',
  VENDOR_SCRIPT, '--==client==--', '',
].join('\n');

const REPORTED_FILES = ['/root/written.txt', '/root/runcmd.txt', '/home/capmvm/.ssh/authorized_keys', '/var/tmp/vendor-script.txt', '/var/tmp/vendor-bootcmd.txt'];

const USER_DATA = `#cloud-config
write_files:
  - path: /root/written.txt
    content: "written by write_files\\n"
  - path: /etc/matchlock-report.files
    content: |
${REPORTED_FILES.map((f) => `      ${f}`).join('\n')}
runcmd:
  - [sh, -c, "echo runcmd ran as $(id -un) > /root/runcmd.txt"]
users:
  - name: capmvm
    shell: /bin/bash
    ssh_authorized_keys:
      - ${SSH_KEY}
`;

interface Report {
  values: Map<string, string[]>;
  files: Map<string, string | undefined>;
}

function report(console: string): Report {
  const values = new Map<string, string[]>();
  const files = new Map<string, string | undefined>();
  for (const line of console.split(/\r?\n/)) {
    const m = /ML_REPORT (\S+) ?(.*)$/.exec(line);
    if (!m?.[1]) continue;
    const [key, rest = ''] = [m[1], m[2]];
    if (key === 'file') {
      const [path = '', b64 = '-'] = rest.split(' ');
      files.set(path, b64 === '-' ? undefined : Buffer.from(b64, 'base64').toString('utf8'));
    } else values.set(key, [...(values.get(key) ?? []), rest]);
  }
  return { values, files };
}

describe('runtime: cloud-init in a Debian 12 guest reads what matchlockd seeds', { skip, timeout: 60 * 60_000 }, () => {
  let lab: Lab;
  let registry: Registry;
  let cloudRef = '';
  let modulesRef = '';
  before(async () => {
    assert.equal(missing, undefined);
    const guest = testGuestLayout();
    const cloud = cloudGuestLayout(guest);
    lab = await startLab();
    registry = await startRegistry(lab.ns);
    registry.push(`${cloud}:latest`, 'matchlock/cloud-guest:12');
    registry.push(`${guest}:latest`, 'matchlock/extra:1');
    cloudRef = `${registry.host}/matchlock/cloud-guest:12`;
    modulesRef = `${registry.host}/matchlock/extra:1`;
  }, { timeout: 60 * 60_000 });
  after(async () => {
    await lab?.destroy();
    await registry?.stop();
  });

  it('boots a CAPMVM-shaped spec: instance id, hostname, user-data, users, DHCP on eth1, static eth2, mounts, vendor-data', { timeout: 40 * 60_000 }, async () => {
    const staticAddress = `${lab.subnet}.201`;
    const c = rawClient(lab.daemon.target);
    let uid = '';
    try {
      const res = await c.call<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, {
        microvm: {
          id: 'ci-node-1',
          namespace: 'e2e',
          vcpu: 1,
          memoryInMb: 1024,
          kernel: { image: cloudRef, filename: 'boot/vmlinuz', addNetworkConfig: true },
          initrd: { image: cloudRef, filename: 'boot/initrd.img' },
          rootVolume: { id: 'root', source: { containerSource: cloudRef } },
          additionalVolumes: [{ id: 'extra', mountPoint: '/mnt/extra', source: { containerSource: modulesRef } }],
          interfaces: [
            { deviceId: 'eth1', type: NetworkInterface_IfaceType.TAP, guestMac: ETH1_MAC },
            { deviceId: 'eth2', type: NetworkInterface_IfaceType.TAP, guestMac: ETH2_MAC, address: { address: `${staticAddress}/24`, nameservers: [] } },
          ],
          metadata: {
            'meta-data': Buffer.from('local_hostname: ci-node-1\nvm_host: host-1\nplatform: liquid_metal\n').toString('base64'),
            'user-data': Buffer.from(USER_DATA).toString('base64'),
            'vendor-data': Buffer.from(VENDOR_DATA).toString('base64'),
          },
        },
      }));
      uid = res.microvm?.spec?.uid ?? '';
    } finally {
      c.close();
    }
    assert.match(uid, /^[0-9A-Z]{26}$/);
    const vms = api(lab);
    await waitFor('CREATED', async () => stateOf(await vms.get(uid)) === 'CREATED', 10 * 60_000, 1000);
    // status.network_interfaces carries the host TAP's MAC (flintlock's meaning); the guest's
    // are the spec's guest_mac.
    const [eth1Mac, eth2Mac] = [ETH1_MAC, ETH2_MAC];

    const console = await waitFor('the guest reports cloud-init done', () => {
      const text = consoleOf(lab, 'ci-node-1', uid);
      return text.includes('ML_REPORT_DONE') ? text : undefined;
    }, 30 * 60_000, 2000);
    const r = report(console);
    const one = (k: string) => r.values.get(k)?.[0] ?? '';

    assert.match(one('status'), /status: done/, one('status'));
    const result = JSON.parse(one('result')) as { v1: { datasource: string; errors: unknown[] } };
    assert.deepEqual(result.v1.errors, [], 'cloud-init finished without errors');
    assert.match(result.v1.datasource, /DataSourceNoCloud/);
    assert.equal(one('instance-id'), uid, 'instance id = uid, not "nocloud"');
    assert.equal(one('hostname'), 'ci-node-1', 'hostname from local_hostname');

    assert.equal(r.files.get('/root/written.txt'), 'written by write_files\n');
    assert.equal(r.files.get('/root/runcmd.txt'), 'runcmd ran as root\n');
    assert.match(r.files.get('/home/capmvm/.ssh/authorized_keys') ?? '', new RegExp(SSH_KEY.replace(/[+]/g, '\\+')));
    assert.equal(r.files.get('/var/tmp/vendor-script.txt'), 'vendor script ran\n', "the client's vendor-data script part ran");
    assert.equal(r.files.get('/var/tmp/vendor-bootcmd.txt'), 'vendor bootcmd ran\n', "the client's vendor-data cloud-config part applied");

    // The NIC with eth1's MAC is named eth1 and got its address from the lab's DHCP server.
    const links = r.values.get('link') ?? [];
    const linkOf = (name: string) => links.find((l) => new RegExp(`^\\d+: ${name}: `).test(l)) ?? '';
    assert.match(linkOf('eth1'), new RegExp(`link/ether ${eth1Mac}`), links.join('\n'));
    assert.match(linkOf('eth2'), new RegExp(`link/ether ${eth2Mac}`), links.join('\n'));
    const addrs = r.values.get('addr') ?? [];
    const inet = (name: string) => addrs.filter((l) => new RegExp(`^\\d+: ${name}\\s+inet `).test(l)).map((l) => /inet (\S+)/.exec(l)?.[1]);
    const leased = lab.readLeases().get(eth1Mac);
    assert.ok(leased, `dnsmasq leased an address to ${eth1Mac}`);
    assert.deepEqual(inet('eth1'), [`${leased}/24`], addrs.join('\n'));
    assert.deepEqual(inet('eth2'), [`${staticAddress}/24`], addrs.join('\n'));
    assert.ok(lab.ping(staticAddress), 'the static address answers from the lab bridge');
    assert.ok(lab.ping(leased), 'the DHCP address answers from the lab bridge');

    const mounts = r.values.get('mount') ?? [];
    assert.ok(mounts.some((m) => /^\/mnt\/extra \/dev\/vd[b-z] ext4$/.test(m)), mounts.join('\n'));

    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 120_000);
  });
});
