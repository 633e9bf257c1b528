import { basename } from 'node:path';
import type { UidRange } from '../confine/uids.js';
import { FILES, SOCKETS, firecrackerArgs, type FirecrackerLaunch, type FirecrackerPaths } from './config.js';

/** Jailer settings (firecracker-jailer-bin and friends); the jailer is off when `bin` is empty. */
export interface JailerSettings {
  bin: string;
  /** `--chroot-base-dir`; on the same filesystem as the state dir, so files can be hard-linked in. */
  chrootBase: string;
  /** First uid/gid of the range each VM gets its own from (`uidBase + n`, n < uidCount). */
  uidBase: number;
  uidCount: number;
  /** `--parent-cgroup` under the cgroup v2 root. */
  parentCgroup: string;
  /** Memory the VMM itself may use on top of the guest's (MiB), in memory.max. */
  vmmOverheadMb: number;
}

export const DEFAULT_JAILER: Omit<JailerSettings, 'bin' | 'chrootBase'> = { uidBase: 900_000, uidCount: 65_536, parentCgroup: 'matchlock', vmmOverheadMb: 64 };

/**
 * The uids/gids the jailer gives VMs, `uidBase` to `uidBase + uidCount - 1`. Each VM claims one
 * of its own from them through the same claims as vmm-uid-range (confine/uids.ts UidPool), so
 * no two live VMs share one, as Firecracker's production host setup asks (one unique
 * unprivileged uid/gid per microVM, docs/prod-host-setup.md); a hash of the VM's uid would
 * collide (the birthday bound: about one in two after 300 VMs over 65536 ids).
 */
export function jailUidRange(s: Pick<JailerSettings, 'uidBase' | 'uidCount'>): UidRange {
  return { first: s.uidBase, last: s.uidBase + s.uidCount - 1 };
}

/** `<chroot-base>/<exec-file name>/<id>/root`, where the jailer pivots to (docs/jailer.md). */
export function jailRoot(uid: string, s: Pick<JailerSettings, 'chrootBase'>, execFile: string): string {
  return `${s.chrootBase}/${basename(execFile)}/${uid}/root`;
}

/** cgroup v2 limits from the spec: vcpu CPUs of bandwidth and the guest memory plus overhead. */
export function cgroupLimits(l: Pick<FirecrackerLaunch, 'vcpu' | 'memoryInMb'>, s: Pick<JailerSettings, 'vmmOverheadMb'>): string[] {
  const period = 100_000;
  return [`cpu.max=${l.vcpu * period} ${period}`, `memory.max=${(l.memoryInMb + s.vmmOverheadMb) * 1024 * 1024}`, 'memory.swap.max=0'];
}

/** One file the VM needs inside the jail: hard-linked from `host` to `jail` (a path under the jail root). */
export interface JailLink {
  host: string;
  jail: string;
}

export interface JailPlan {
  root: string;
  id: number;
  /** The launch as Firecracker sees it from inside the jail (paths relative to its root). */
  launch: FirecrackerLaunch;
  /** Paths Firecracker uses inside the jail. */
  paths: FirecrackerPaths;
  /** Files to link in before the start; operators' files stay in the VM directory. */
  links: JailLink[];
  /** The jailer's argv (after the jailer binary). */
  argv: string[];
  /** The cgroup the jailer makes: `<parent>/<uid>` under the v2 root. */
  cgroup: string;
}

/**
 * Everything about running one VM under the jailer: paths inside the jail, the files to link
 * in (kernel, initrd, drives; and the VM directory's cfg, metadata, log, metrics so operators
 * keep reading them where flintlock keeps them), and the jailer's argv. `--new-pid-ns`: the
 * VMM gets its own pid namespace and the jailer writes its pid to
 * `<jail root>/<exec-file name>.pid`, where the daemon reads it. `id` is the VM's claimed uid/gid
 * (jailUidRange). No `--daemonize`: it would
 * send the serial console to /dev/null. The jailer passes --id itself, so it is not repeated
 * after `--`.
 */
export function jailPlan(l: FirecrackerLaunch, s: JailerSettings, execFile: string, id: number): JailPlan {
  const root = jailRoot(l.uid, s, execFile);
  const paths: FirecrackerPaths = { dir: '', runDir: '/run' };
  const links: JailLink[] = [];
  const link = (host: string, jail: string) => {
    links.push({ host, jail });
    return jail;
  };
  for (const f of ['config', 'metadata', 'log', 'metrics'] as const) link(`${l.dir}/${FILES[f]}`, `/${FILES[f]}`);
  const launch: FirecrackerLaunch = {
    ...l,
    dir: '',
    runDir: '/run',
    kernelPath: link(l.kernelPath, '/vmlinux'),
    initrdPath: l.initrdPath ? link(l.initrdPath, '/initrd') : undefined,
    disks: l.disks.map((d) => ({ ...d, path: link(d.path, `/drive-${d.id}`) })),
  };
  const fcArgs = firecrackerArgs(l, paths);
  const argv = [
    '--id', l.uid,
    '--exec-file', execFile,
    '--uid', String(id),
    '--gid', String(id),
    '--chroot-base-dir', s.chrootBase,
    '--cgroup-version', '2',
    '--parent-cgroup', s.parentCgroup,
    ...cgroupLimits(l, s).flatMap((c) => ['--cgroup', c]),
    '--new-pid-ns',
    '--',
    ...fcArgs.filter((_, i) => fcArgs[i] !== '--id' && fcArgs[i - 1] !== '--id'),
  ];
  return { root, id, launch, paths, links, argv, cgroup: `${s.parentCgroup}/${l.uid}` };
}

/** The API socket as the host sees it: inside the jail root. */
export function jailedSocket(plan: Pick<JailPlan, 'root' | 'paths'>, s: keyof typeof SOCKETS): string {
  return `${plan.root}${plan.paths.runDir}/${SOCKETS[s]}`;
}
