import type { Launch } from '../../../core/vmm.js';

export interface QemuSettings {
  accel: 'tcg' | 'kvm';
}

/** Files in the VM directory, what operators look at. */
export const FILES = {
  pid: 'qemu.pid',
  stdout: 'qemu.stdout',
  stderr: 'qemu.stderr',
  console: 'console.log',
  cmdline: 'qemu.cmdline',
} as const;

/** The QMP socket, in the VM's run directory (short, so it fits the unix socket limit). */
export const QMP_SOCKET = 'qmp.sock';

/** The serial console's socket (guest input and output, one client at a time), in the run directory. */
export const CONSOLE_SOCKET = 'console.sock';

/** The first fd QEMU receives for MACVTAP devices (0-2 are stdio). */
export const FIRST_TAP_FD = 3;

/**
 * The QEMU command line for one VM on the `microvm` machine: no firmware option ROMs, a serial
 * console on a unix socket logged to console.log, QMP on a unix socket, virtio-mmio disks and NICs in spec order (root is
 * vda). MACVTAP NICs use the fds the caller passes from FIRST_TAP_FD on; vhost stays off.
 */
export function qemuArgs(l: Launch, s: QemuSettings): string[] {
  const f = (name: string) => `${l.dir}/${name}`;
  const args = [
    '-name', `matchlock-${l.uid}`,
    '-M', 'microvm,x-option-roms=off,isa-serial=on',
    '-accel', s.accel,
    '-cpu', s.accel === 'kvm' ? 'host' : 'qemu64',
    '-m', String(l.memoryInMb),
    '-smp', String(l.vcpu),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    // The serial port is a socket the daemon attaches to for interactive use; QEMU logs every
    // byte the guest writes to console.log whether or not a client is attached. logappend opens
    // the log O_APPEND, so when the daemon truncates it at its bound the next write lands at the
    // start instead of leaving a hole.
    '-chardev', `socket,id=console,path=${l.runDir}/${CONSOLE_SOCKET},server=on,wait=off,logfile=${f(FILES.console)},logappend=on`,
    '-serial', 'chardev:console',
    '-qmp', `unix:${l.runDir}/${QMP_SOCKET},server=on,wait=off`,
    '-pidfile', f(FILES.pid),
    '-kernel', l.kernelPath,
  ];
  if (l.initrdPath) args.push('-initrd', l.initrdPath);
  args.push('-append', l.cmdline);
  for (const d of l.disks) {
    args.push('-drive', `id=${d.id},file=${d.path},format=raw,if=none${d.readOnly ? ',readonly=on' : ''}`, '-device', `virtio-blk-device,drive=${d.id}`);
  }
  let fd = FIRST_TAP_FD;
  for (const n of l.nics) {
    const backend = n.type === 'TAP' ? `tap,id=${n.deviceId},ifname=${n.hostDevice},script=no,downscript=no` : `tap,id=${n.deviceId},fd=${fd++},vhost=off`;
    args.push('-netdev', backend, '-device', `virtio-net-device,netdev=${n.deviceId},mac=${n.mac}`);
  }
  return args;
}
