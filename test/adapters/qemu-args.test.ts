import assert from 'node:assert/strict';
import { it } from 'node:test';
import { FIRST_TAP_FD, qemuArgs } from '../../src/adapters/vmm/qemu/args.js';
import { hostKhz } from '../../src/adapters/vmm/qemu/provider.js';
import type { Launch } from '../../src/core/vmm.js';

const launch: Launch = {
  uid: '01HZY3NDEKTSV4RRFFQ69G5FAV',
  namespace: 'ns',
  name: 'n',
  dir: '/state/vm/ns/n/01HZY3NDEKTSV4RRFFQ69G5FAV',
  runDir: '/state/run/01HZY3NDEKTSV4RRFFQ69G5FAV',
  shares: [],
  metadata: {},
  vcpu: 2,
  memoryInMb: 2048,
  kernelPath: '/k',
  initrdPath: '/i',
  cmdline: 'console=ttyS0 root=/dev/vda',
  disks: [{ id: 'root', path: '/v/root.img', readOnly: false }, { id: 'cidata', path: '/v/cidata.img', readOnly: true }],
  nics: [
    { deviceId: 'eth0', type: 'TAP' as const, hostDevice: 'mlt0', ifindex: 4, mac: '02:00:00:00:00:01' },
    { deviceId: 'eth1', type: 'MACVTAP' as const, hostDevice: 'mlv1', ifindex: 5, mac: '02:00:00:00:00:02' },
    { deviceId: 'eth2', type: 'MACVTAP' as const, hostDevice: 'mlv2', ifindex: 6, mac: '02:00:00:00:00:03' },
  ],
};

const after = (args: string[], flag: string) => args.filter((_, i) => args[i - 1] === flag);

it('builds a microvm command line: accel from config, files in the VM dir, QMP in the run dir, disks and NICs in order', () => {
  const args = qemuArgs(launch, { accel: 'tcg' });
  assert.deepEqual(after(args, '-M'), ['microvm,x-option-roms=off,isa-serial=on']);
  assert.deepEqual(after(args, '-accel'), ['tcg']);
  assert.deepEqual(after(args, '-cpu'), ['qemu64']);
  assert.deepEqual(after(args, '-m'), ['2048']);
  assert.deepEqual(after(args, '-smp'), ['2']);
  // The console is a socket (for input) whose output QEMU also appends to console.log.
  assert.deepEqual(after(args, '-serial'), ['chardev:console']);
  assert.deepEqual(after(args, '-chardev'), [`socket,id=console,path=${launch.runDir}/console.sock,server=on,wait=off,logfile=${launch.dir}/console.log,logappend=on`]);
  assert.deepEqual(after(args, '-qmp'), [`unix:${launch.runDir}/qmp.sock,server=on,wait=off`]);
  assert.deepEqual(after(args, '-pidfile'), [`${launch.dir}/qemu.pid`]);
  assert.deepEqual(after(args, '-append'), ['console=ttyS0 root=/dev/vda']);
  assert.deepEqual(after(args, '-drive'), ['id=root,file=/v/root.img,format=raw,if=none', 'id=cidata,file=/v/cidata.img,format=raw,if=none,readonly=on']);
  assert.deepEqual(after(args, '-netdev'), [
    'tap,id=eth0,ifname=mlt0,script=no,downscript=no',
    `tap,id=eth1,fd=${FIRST_TAP_FD},vhost=off`,
    `tap,id=eth2,fd=${FIRST_TAP_FD + 1},vhost=off`,
  ]);
  assert.ok(args.includes('-no-reboot') && args.includes('-nodefaults'));
  assert.deepEqual(after(qemuArgs(launch, { accel: 'kvm' }), '-cpu'), ['host']);
  assert.deepEqual(after(qemuArgs({ ...launch, initrdPath: undefined }, { accel: 'tcg' }), '-initrd'), []);
});

it('reads the host kHz for tsc_early_khz from cpuinfo', () => {
  assert.equal(hostKhz('processor : 0\ncpu MHz\t\t: 2096.011\n'), 2096011);
  assert.equal(hostKhz('no such line'), undefined);
});
