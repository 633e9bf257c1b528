import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { removeCgroupParent, ROOT, startDaemon, tempDir, type DaemonHandle } from './daemon.js';

export const GUEST_REF = 'localhost/matchlock/test-guest:1';

/** Why the real-VM tests cannot run here, or undefined when they can. */
export function labMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const tool of ['qemu-system-x86_64', 'dnsmasq', 'mkfs.vfat', 'mcopy', 'mkfs.ext4', 'ip']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed (scripts/install-deps.sh)`;
  }
  return undefined;
}

/** Builds (once per machine, cached by kernel ABI) the test guest's OCI layout. */
export function testGuestLayout(): string {
  const cache = join(tmpdir(), 'matchlock-test-guest');
  mkdirSync(cache, { recursive: true });
  return execFileSync(join(ROOT, 'scripts/build-test-image.sh'), [cache], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

/** Live processes whose command line names `path`. */
export function pidsNaming(path: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
    if (pid === process.pid) return false;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path) && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  });
}

export interface Lab {
  ns: string;
  stateDir: string;
  subnet: string;
  /** The lab's `vmm-cgroup-parent` (relative to the test's own cgroups). */
  cgroupParent: string;
  daemon: DaemonHandle;
  leases: string;
  /** Leases from dnsmasq's file: mac -> ip. */
  readLeases(): Map<string, string>;
  ping(address: string): boolean;
  /** Links in the lab namespace whose names look like matchlock's. */
  ourLinks(): string[];
  qemuPids(): number[];
  restartDaemon(kill: boolean): Promise<void>;
  destroy(): Promise<void>;
}

/**
 * A private network namespace holding everything a runtime test touches: a bridge with a
 * DHCP server (dnsmasq), a veth pair whose far end is on the bridge (the MACVTAP parent), and
 * matchlockd itself, so every TAP, macvtap and QEMU it makes lives in the namespace. Each lab
 * uses its own 10.x subnet and removes all of it in destroy().
 */
export async function startLab(extraFlags: string[] = [], opts: { entry?: string[]; stateDir?: string } = {}): Promise<Lab> {
  const id = randomBytes(3).toString('hex');
  const ns = `mlt-${id}`;
  const octet = 10 + (parseInt(id.slice(0, 2), 16) % 200);
  const subnet = `10.${octet}.0`;
  const tmp = tempDir(`lab-${id}`);
  // A caller's state dir (e.g. on a small filesystem of its own) is the caller's to remove.
  const stateDir = opts.stateDir ?? join(tmp.path, 'state');
  const leases = join(tmp.path, 'dnsmasq.leases');
  let dnsmasq: ChildProcess | undefined;
  let daemon: DaemonHandle | undefined;
  // A unix socket reaches the daemon inside the namespace from the test, through the filesystem.
  // VM cgroups go under the test's own cgroups (a relative parent), so the lab's QEMUs stay
  // inside whatever limits the test runs under, and the lab removes the parent afterwards.
  const cgroupParent = `matchlock-lab-${id}`;
  const flags = ['--grpc-endpoint', `unix:${join(tmp.path, 'grpc.sock')}`, '--bridge-name', 'br0', '--parent-iface', 'vparent', '--delete-vm-timeout', '1s', '--resync-period', '1h', '--vmm-cgroup-parent', cgroupParent, ...extraFlags];
  try {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', ns, 'addr', 'add', `${subnet}.1/24`, 'dev', 'br0');
    ip('-n', ns, 'link', 'set', 'br0', 'up');
    ip('-n', ns, 'link', 'add', 'vparent', 'type', 'veth', 'peer', 'name', 'vbridge');
    ip('-n', ns, 'link', 'set', 'vbridge', 'master', 'br0', 'up');
    ip('-n', ns, 'link', 'set', 'vparent', 'up');
    dnsmasq = spawn('ip', ['netns', 'exec', ns, 'dnsmasq', '--no-daemon', '--conf-file=/dev/null', '--port=0', '--interface=br0', '--bind-interfaces',
      `--dhcp-range=${subnet}.50,${subnet}.150,255.255.255.0,1h`, `--dhcp-option=option:router,${subnet}.1`, `--dhcp-leasefile=${leases}`,
      '--dhcp-authoritative', '--no-ping'], { stdio: 'ignore' });
    daemon = await startDaemon(stateDir, flags, {}, ns, opts.entry);
  } catch (err) {
    dnsmasq?.kill();
    await daemon?.stop();
    spawnSync('ip', ['netns', 'del', ns]);
    tmp.remove();
    throw err;
  }
  const lab: Lab = {
    ns,
    stateDir,
    subnet,
    cgroupParent,
    daemon,
    leases,
    readLeases() {
      const out = new Map<string, string>();
      if (!existsSync(leases)) return out;
      for (const line of readFileSync(leases, 'utf8').split('\n')) {
        const [, mac, addr] = line.split(' ');
        if (mac && addr) out.set(mac.toLowerCase(), addr);
      }
      return out;
    },
    ping(address) {
      return spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '2', address]).status === 0;
    },
    ourLinks() {
      return ip('-n', ns, '-o', 'link', 'show').split('\n').map((l) => l.split(': ')[1]?.split('@')[0] ?? '').filter((n) => /^ml[tv]/.test(n));
    },
    qemuPids() {
      // Only QEMUs started for this lab's state dir.
      return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
        try {
          const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
          return cmd.includes('qemu-system') && cmd.includes(stateDir) && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
        } catch {
          return false;
        }
      });
    },
    async restartDaemon(kill) {
      await (kill ? lab.daemon.kill() : lab.daemon.stop());
      lab.daemon = await startDaemon(stateDir, flags, {}, ns, opts.entry);
    },
    async destroy() {
      await lab.daemon.stop();
      for (const pid of lab.qemuPids()) process.kill(pid, 'SIGKILL');
      // Any other VMM stand-in a failed test left (they name the state dir in their arguments).
      for (const pid of pidsNaming(stateDir)) process.kill(pid, 'SIGKILL');
      dnsmasq?.kill();
      await new Promise((r) => setTimeout(r, 200));
      spawnSync('ip', ['netns', 'del', ns]);
      // VM cgroups the daemon did not remove (a test that failed midway), then the parent; a
      // just-killed QEMU takes a moment to leave its cgroup.
      await new Promise((r) => setTimeout(r, 300));
      removeCgroupParent(cgroupParent);
      tmp.remove();
    },
  };
  return lab;
}
