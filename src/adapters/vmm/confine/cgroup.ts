import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The controllers a VM's cgroup limits. */
export const CONTROLLERS = ['cpu', 'memory', 'pids'] as const;
export type Controller = (typeof CONTROLLERS)[number];

/**
 * Where each controller lives on this host. A host may have cgroup v2 only, v1 only, or a hybrid
 * (v1 hierarchies for some controllers, an empty unified tree beside them, as our machines have),
 * so the choice is made per controller.
 */
export interface CgroupHost {
  /** Controller -> mount point of the hierarchy it is bound to and its version. */
  mounts: Partial<Record<Controller, { root: string; version: 1 | 2 }>>;
  /** This process's own cgroup path in each hierarchy ('/' when unknown), for relative parents. */
  own: { v2: string; v1: Partial<Record<Controller, string>> };
}

/**
 * Reads which controllers are mounted where from /proc/self/mountinfo (v1 mounts list their
 * controllers in the super options; the v2 mount lists its own in cgroup.controllers) and this
 * process's place from /proc/self/cgroup.
 */
export function detectCgroups(
  mountinfo = readFileSync('/proc/self/mountinfo', 'utf8'),
  selfCgroup = readFileSync('/proc/self/cgroup', 'utf8'),
  readControllers = (root: string) => (existsSync(join(root, 'cgroup.controllers')) ? readFileSync(join(root, 'cgroup.controllers'), 'utf8') : ''),
): CgroupHost {
  const host: CgroupHost = { mounts: {}, own: { v2: '/', v1: {} } };
  const v2Roots: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const mountPoint = pre.split(' ')[4] ?? '';
    const [fstype, , superOpts = ''] = post.split(' ');
    if (fstype === 'cgroup') {
      const opts = superOpts.split(',');
      for (const c of CONTROLLERS) if (opts.includes(c)) host.mounts[c] = { root: mountPoint, version: 1 };
    } else if (fstype === 'cgroup2') v2Roots.push(mountPoint);
  }
  for (const root of v2Roots) {
    const available = readControllers(root).trim().split(/\s+/);
    for (const c of CONTROLLERS) if (available.includes(c) && !host.mounts[c]) host.mounts[c] = { root, version: 2 };
  }
  for (const line of selfCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const [, id, ctrls = '', path = '/'] = m;
    if (id === '0' && ctrls === '') host.own.v2 = path;
    for (const c of ctrls.split(',')) if ((CONTROLLERS as readonly string[]).includes(c)) host.own.v1[c as Controller] = path;
  }
  return host;
}

export interface VmLimits {
  /** CFS bandwidth: quota per period, in microseconds; quota = vCPUs × period. */
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  memoryBytes: number;
  pidsMax: number;
}

export const CPU_PERIOD_US = 100_000;

/**
 * Limits from a VM's spec: its vCPUs as whole CPUs of bandwidth, its memory plus what the VMM
 * itself needs (`overheadMb`), and a bound on tasks (threads count as tasks) so a VMM cannot
 * fork-bomb the host.
 */
export function limitsFor(vcpu: number, memoryInMb: number, overheadMb: number, pidsMax: number): VmLimits {
  return { cpuQuotaUs: vcpu * CPU_PERIOD_US, cpuPeriodUs: CPU_PERIOD_US, memoryBytes: (memoryInMb + overheadMb) * 1024 * 1024, pidsMax };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One cgroup per VM, `<parent>/<uid>` in every hierarchy that carries cpu, memory or pids.
 * `parent` is absolute from each hierarchy's root (`/matchlock`, like the Firecracker jailer's
 * parent cgroup) or, without a leading slash, relative to matchlockd's own cgroup there.
 */
export class VmCgroups {
  constructor(
    private readonly host: CgroupHost,
    private readonly parent: string,
  ) {}

  /** Controllers this host cannot limit (not mounted anywhere). */
  missing(): Controller[] {
    return CONTROLLERS.filter((c) => !this.host.mounts[c]);
  }

  private parentDir(c: Controller): string | undefined {
    const m = this.host.mounts[c];
    if (!m) return undefined;
    const base = this.parent.startsWith('/') ? '/' : m.version === 2 ? this.host.own.v2 : (this.host.own.v1[c] ?? '/');
    return join(m.root, base, this.parent);
  }

  /** The VM's cgroup directories, one per hierarchy (v1 controllers may share one). */
  dirs(uid: string): string[] {
    const out = new Set<string>();
    for (const c of CONTROLLERS) {
      const p = this.parentDir(c);
      if (p) out.add(join(p, uid));
    }
    return [...out];
  }

  /**
   * Makes the VM's cgroups and writes its limits; idempotent, so a restarted VMM reuses them.
   * Resolves the `cgroup.procs` files the VMM's pid must be written to before it execs.
   */
  async create(uid: string, limits: VmLimits): Promise<string[]> {
    const v2Controllers = CONTROLLERS.filter((c) => this.host.mounts[c]?.version === 2);
    const v2Parent = v2Controllers[0] ? this.parentDir(v2Controllers[0]) : undefined;
    if (v2Parent && v2Controllers[0]) {
      // v2 passes a controller down only where every ancestor enables it for its children.
      const root = this.host.mounts[v2Controllers[0]]?.root ?? '';
      await mkdir(v2Parent, { recursive: true });
      const chain: string[] = [];
      for (let d = v2Parent; d.length > root.length; d = join(d, '..')) chain.unshift(d);
      for (const d of [root, ...chain]) {
        const enabled = (await readFile(join(d, 'cgroup.subtree_control'), 'utf8')).trim().split(/\s+/);
        const add = v2Controllers.filter((c) => !enabled.includes(c));
        if (add.length) await writeFile(join(d, 'cgroup.subtree_control'), add.map((c) => `+${c}`).join(' '));
      }
    }
    const procs = new Set<string>();
    for (const c of CONTROLLERS) {
      const m = this.host.mounts[c];
      const p = this.parentDir(c);
      if (!m || !p) continue;
      const dir = join(p, uid);
      await mkdir(dir, { recursive: true });
      procs.add(join(dir, 'cgroup.procs'));
      const set = (file: string, value: string) => writeFile(join(dir, file), value);
      if (c === 'cpu') {
        if (m.version === 2) await set('cpu.max', `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`);
        else {
          await set('cpu.cfs_period_us', String(limits.cpuPeriodUs));
          await set('cpu.cfs_quota_us', String(limits.cpuQuotaUs));
        }
      } else if (c === 'memory') await set(m.version === 2 ? 'memory.max' : 'memory.limit_in_bytes', String(limits.memoryBytes));
      else await set('pids.max', String(limits.pidsMax));
    }
    return [...procs];
  }

  /**
   * Removes the VM's cgroups. A cgroup can only go once its last task is gone, and a killed
   * VMM leaves it a moment after the kill, so EBUSY is retried for up to `waitMs`.
   */
  async remove(uid: string, waitMs = 5000): Promise<void> {
    const until = Date.now() + waitMs;
    for (const dir of this.dirs(uid)) {
      for (;;) {
        try {
          await rmdir(dir);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') break;
          if (code !== 'EBUSY' || Date.now() > until) throw new Error(`cannot remove cgroup ${dir}: ${(err as Error).message}`, { cause: err });
          await sleep(100);
        }
      }
    }
  }
}
