import { failedPrecondition } from '../../../core/errors.js';
import type { Launch } from '../../../core/vmm.js';

/**
 * Cloud Hypervisor's command line for one VM, built from plain inputs (no I/O). Grammar:
 * cloud-hypervisor/src/main.rs and vmm/src/config.rs (v41 to v53): options taking several values
 * get them as separate argv entries after one flag, each value a comma-separated key=value list.
 */

/** What the command line depends on: the seam's Launch without the metadata files. */
export type ChLaunch = Pick<Launch, 'uid' | 'dir' | 'runDir' | 'vcpu' | 'memoryInMb' | 'kernelPath' | 'initrdPath' | 'cmdline' | 'disks' | 'nics' | 'shares' | 'guestAgent'>;

/** flintlock's file names in the VM directory (operators know them), plus matchlock's own. */
export const FILES = {
  pid: 'cloudhypervisor.pid',
  log: 'cloudhypervisor.log',
  stdout: 'cloudhypervisor.stdout',
  stderr: 'cloudhypervisor.stderr',
  /** The guest's serial port (ttyS0), read by the supervisor for the boot line. */
  console: 'console.log',
  /** The argv as JSON, for operators and `matchlock inspect`. */
  cmdline: 'cloudhypervisor.cmdline',
  /** The NoCloud seed disk (FAT, label cidata). */
  seed: 'cloud-init.img',
} as const;

/** Socket names in the run dir; shares are numbered, so every name has a known length. */
export const SOCKETS = {
  api: 'cloudhypervisor.sock',
  vsock: 'guest-agent.vsock',
  share: (n: number) => `virtiofsd-${n}.sock`,
} as const;

/** The first descriptor the VMM inherits for MACVTAP devices (0-2 are stdio). */
export const FIRST_TAP_FD = 3;

/**
 * The kernel command line before the spec's `kernel.cmdline` is merged over it: flintlock's
 * `root=/dev/vda rw reboot=k panic=1`, with the console on the serial port (ttyS0) instead of
 * virtio-console (hvc0), because the 8250 UART is built into every x86 kernel and shows the boot
 * from its first line, which the supervisor needs.
 */
export function chDefaultCmdline(hasRoot: boolean): [string, string][] {
  const c: [string, string][] = [['console', 'ttyS0']];
  if (hasRoot) c.push(['root', '/dev/vda'], ['rw', '']);
  c.push(['reboot', 'k'], ['panic', '1']);
  return c;
}

/** Refuses what CH's option parser would split or misread: commas, quotes and brackets end a value. */
function value(what: string, v: string): string {
  if (/[,"[\]\s]/.test(v) || v === '') throw failedPrecondition(`${what} ${JSON.stringify(v)} cannot be passed to cloud-hypervisor: it must be non-empty without commas, quotes, brackets or spaces`);
  return v;
}

/**
 * The argv (without the binary) for `l`. MACVTAP NICs get `fd=` from FIRST_TAP_FD on, in NIC
 * order: the caller opens `/dev/tap<ifindex>` for each and passes them as those descriptors.
 * Memory is shared when a virtio-fs share needs it (vhost-user maps guest memory).
 */
export function chArgs(l: ChLaunch): string[] {
  const f = (name: string) => `${l.dir}/${name}`;
  const s = (name: string) => `${l.runDir}/${name}`;
  const shares = l.shares;
  const args = ['--api-socket', `path=${value('api socket', s(SOCKETS.api))}`, '--log-file', f(FILES.log), '-v', '--kernel', l.kernelPath];
  if (l.initrdPath) args.push('--initramfs', l.initrdPath);
  args.push('--cmdline', l.cmdline, '--cpus', `boot=${l.vcpu}`, '--memory', `size=${l.memoryInMb}M${shares.length ? ',shared=on' : ''}`);
  if (l.disks.length) args.push('--disk', ...l.disks.map((d) => `path=${value(`disk ${d.id}`, d.path)}${d.readOnly ? ',readonly=on' : ''}`));
  let fd = FIRST_TAP_FD;
  if (l.nics.length) {
    args.push('--net', ...l.nics.map((n) => `${n.type === 'TAP' ? `tap=${value(`interface ${n.deviceId}`, n.hostDevice)}` : `fd=${fd++}`},mac=${n.mac}`));
  }
  if (l.guestAgent) args.push('--vsock', `cid=${l.guestAgent.cid},socket=${s(SOCKETS.vsock)}`);
  if (shares.length) args.push('--fs', ...shares.map((sh, n) => `tag=${value(`share ${sh.id} tag`, sh.id)},socket=${value(`share ${sh.id} socket`, s(SOCKETS.share(n)))},num_queues=1,queue_size=1024`));
  args.push('--serial', `file=${value('console file', f(FILES.console))}`, '--console', 'off');
  return args;
}
