import { existsSync } from 'node:fs';
import type { Logger } from '../../../core/ports.js';
import { ensureSystemUser, rootIds, type Account } from '../../system/accounts.js';
import { detectCgroups, limitsFor, VmCgroups, type CgroupHost } from './cgroup.js';
import { parseUidRange, UidPool } from './uids.js';

/**
 * What the VMM process needs beyond the guest's memory, in MiB: QEMU's own heap and device
 * emulation (the NSDI'20 figure for QEMU with KVM is about 131 MB) and, under TCG, the
 * translated-code cache. Measured here: the whole cgroup of a 1-vCPU, 1024 MiB busybox test
 * guest peaks at about 230 MiB (test/e2e/confine.test.ts prints it).
 */
export const VMM_OVERHEAD_MB = 256;

/** Tasks (threads count) per VMM: QEMU's main, RCU and I/O worker threads (the pool is 64) plus one per vCPU. */
export const PIDS_BASE = 128;

export interface ConfinementOptions {
  /** `vmm-user`: a user name, `uid:gid`, or `root` for no drop. */
  user: string;
  /** `vmm-uid-range`: `FIRST-LAST` for one uid per VM, or empty for vmm-user for all. */
  uidRange: string;
  /** Where per-VM uid claims are kept (`<state-dir>/vmm-uids`). */
  claimsDir: string;
  /** `qemu-sandbox`: QEMU's seccomp filter. */
  sandbox: boolean;
  /** `vmm-cgroups`: a cgroup per VM with limits. */
  cgroups: boolean;
  /** `vmm-cgroup-parent`. */
  cgroupParent: string;
  /** Tests pass a host description; by default it is read from /proc. */
  cgroupHost?: CgroupHost;
}

/**
 * How matchlock confines a VMM process, following Firecracker's production host setup (the
 * jailer's unprivileged uid, seccomp and cgroups), for QEMU:
 *
 * - `-runas uid:gid`: QEMU opens its files (kernel, initrd, -drive images, the serial file, the
 *   QMP socket, the pid file, TAP devices through /dev/net/tun; MACVTAP fds arrive open) as root,
 *   then drops to the VMM user for good before the guest runs its first instruction;
 * - `-chroot <vm dir>`: after the drop it sees only its own (root-owned, unwritable) directory;
 * - `-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny`: seccomp. With -runas,
 *   `elevateprivileges` must stay `allow`: QEMU 7.2 installs the filter before it drops to the
 *   user, so its own setgid() is killed with SIGSYS (exit 159, measured). After the drop QEMU
 *   holds no privilege to elevate and spawn=deny forbids exec of setuid programs, so the drop
 *   itself does the job; without a VMM user the filter also denies it;
 * - a cgroup per VM (cpu, memory, pids; v2 or v1, whichever the host mounts) which the process
 *   enters before it execs QEMU, so not one instruction of QEMU runs outside its limits.
 */
export class VmmConfinement {
  constructor(
    readonly user: Account | undefined,
    private readonly sandbox: boolean,
    readonly cgroups: VmCgroups | undefined,
    private readonly uids?: UidPool,
  ) {}

  /**
   * QEMU options that confine one VM's QEMU; appended to its command line. With a uid range
   * the VM's own uid is claimed here.
   */
  async qemuArgs(vm: { uid: string; dir: string }): Promise<string[]> {
    const drop = this.uids ? await this.uids.claim(vm.uid).then((u) => `${u}:${u}`) : this.user ? `${this.user.uid}:${this.user.gid}` : undefined;
    const out: string[] = [];
    if (this.sandbox) out.push('-sandbox', `on,obsolete=deny,elevateprivileges=${drop ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`);
    if (drop) out.push('-runas', drop, '-chroot', vm.dir);
    return out;
  }

  /**
   * Prepares the VM's cgroup and resolves the command that starts `bin args` inside it: a
   * shell that writes its own pid into each cgroup.procs and then execs the VMM, so the pid
   * the caller gets is the VMM's own.
   */
  async command(vm: { uid: string; vcpu: number; memoryInMb: number }, bin: string, args: string[]): Promise<[string, string[]]> {
    if (!this.cgroups) return [bin, args];
    const procs = await this.cgroups.create(vm.uid, limitsFor(vm.vcpu, vm.memoryInMb, VMM_OVERHEAD_MB, PIDS_BASE + vm.vcpu));
    const script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"';
    return ['/bin/sh', ['-c', script, 'matchlock-cgroup-exec', ...procs, '--', bin, ...args]];
  }

  /** Whether anything command() or qemuArgs() made for the VM is still there: a cgroup of it, its claimed uid. */
  async holds(uid: string): Promise<boolean> {
    return (this.cgroups?.dirs(uid).some((d) => existsSync(d)) ?? false) || ((await this.uids?.holds(uid)) ?? false);
  }

  /** Removes what command() made for the VM once its VMM is gone; removing nothing succeeds. */
  async release(uid: string): Promise<void> {
    await this.cgroups?.remove(uid);
    await this.uids?.release(uid);
  }
}

/** Whether vmm-user asks for no drop (QEMU stays root): `root` or `0:0`, and no vmm-uid-range. */
export function vmmUserIsRoot(user: string, uidRange: string): boolean {
  return uidRange.trim() === '' && (user === 'root' || user === '0:0');
}

/**
 * Builds the confinement from settings: resolves (or creates, as a system account) the VMM user
 * and finds the host's cgroup hierarchies. What the host cannot do is logged, not fatal.
 */
export async function createConfinement(o: ConfinementOptions, log: Logger): Promise<VmmConfinement> {
  const range = parseUidRange(o.uidRange);
  let user: Account | undefined;
  if (range) log.info({ first: range.first, last: range.last }, 'each QEMU VMM runs as its own uid from vmm-uid-range');
  else if (vmmUserIsRoot(o.user, o.uidRange)) log.warn({ 'vmm-user': o.user }, 'VMM processes run as root: a guest that escapes QEMU owns the host');
  else {
    const { account, created } = await ensureSystemUser(o.user);
    if (created) log.info({ user: account.name, uid: account.uid }, 'created the VMM user');
    const root = rootIds(account);
    if (root) throw new Error(`vmm-user ${o.user} has ${root}; name an unprivileged user, or root to run VMMs as root`);
    user = account;
  }
  let cgroups: VmCgroups | undefined;
  if (o.cgroups) {
    cgroups = new VmCgroups(o.cgroupHost ?? detectCgroups(), o.cgroupParent);
    const missing = cgroups.missing();
    if (missing.length === 3) {
      log.warn({}, 'no cgroup hierarchy with cpu, memory or pids is mounted; VMMs run without cgroup limits');
      cgroups = undefined;
    } else if (missing.length) log.warn({ missing }, 'some cgroup controllers are not mounted; those limits are not applied');
  }
  return new VmmConfinement(user, o.sandbox, cgroups, range ? new UidPool(o.claimsDir, range) : undefined);
}
