import { readFileSync, readdirSync } from 'node:fs';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { ALIAS_PREFIX } from '../../../core/microvm/host-names.js';
import type { HostNetwork, LinkInfo } from '../../../core/ports.js';
import { noteSpawn, run } from '../../exec.js';
import { runProgram } from '../../spawner.js';

interface IpLink {
  ifname: string;
  ifindex: number;
  address?: string;
  master?: string;
  ifalias?: string;
  flags?: string[];
  operstate?: string;
  linkinfo?: { info_kind?: string };
}

function toInfo(l: IpLink): LinkInfo {
  const kind = l.linkinfo?.info_kind;
  return {
    name: l.ifname,
    ifindex: l.ifindex,
    mac: l.address ?? '',
    kind: kind === 'tun' ? 'tap' : kind === 'macvtap' ? 'macvtap' : 'other',
    master: l.master,
    alias: l.ifalias,
    up: l.flags?.includes('UP') ?? false,
  };
}

/** IFF_UP in a link's `flags` (include/uapi/linux/if.h): what `ip link` shows as UP. */
const IFF_UP = 0x1;

const SYS_NET = '/sys/class/net';

/**
 * Whether /sys/class/net shows this process's network namespace. sysfs shows the namespace of
 * whoever mounted it, so a daemon entered into a namespace with `nsenter --net` sees the host's
 * links there, while /proc/self/net follows the process. The two agree when the link names are
 * the same and each link's receive counter read from procfs lies between two sysfs reads of it.
 */
export function sysfsShowsOwnNamespace(): boolean {
  try {
    const counters = () => new Map(readdirSync(SYS_NET).map((n) => [n, Number(readFileSync(`${SYS_NET}/${n}/statistics/rx_bytes`, 'utf8'))]));
    const before = counters();
    const proc = new Map<string, number>();
    for (const line of readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2)) {
      const m = /^\s*([^:\s]+):\s*(\d+)/.exec(line);
      if (m?.[1] && m[2]) proc.set(m[1], Number(m[2]));
    }
    const after = counters();
    if (proc.size !== before.size || proc.size !== after.size) return false;
    for (const [name, rx] of proc) {
      const a = before.get(name);
      const b = after.get(name);
      if (a === undefined || b === undefined || rx < a || rx > b) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** One link read from sysfs; undefined when it does not exist (or vanished while read). */
async function sysfsLink(name: string): Promise<LinkInfo | undefined> {
  const dir = `${SYS_NET}/${name}`;
  const read = (f: string) => readFile(`${dir}/${f}`, 'utf8').then((s) => s.trim());
  try {
    const [ifindex, address, flags, ifalias, master, entries] = await Promise.all([
      read('ifindex'),
      read('address'),
      read('flags'),
      read('ifalias').catch(() => ''),
      readlink(`${dir}/master`).catch(() => undefined),
      readdir(dir),
    ]);
    return {
      name,
      ifindex: Number(ifindex),
      mac: address,
      // tun_flags exists on tun and tap devices (ip's info_kind "tun"), a macvtap has its
      // character device's directory.
      kind: entries.includes('tun_flags') ? 'tap' : entries.includes('macvtap') ? 'macvtap' : 'other',
      master: master?.split('/').pop(),
      alias: ifalias === '' ? undefined : ifalias,
      up: (Number.parseInt(flags, 16) & IFF_UP) !== 0,
    };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Linux names a link with up to 15 bytes and no '/', ':' or blank; quotes would confuse -batch. */
function batchable(name: string): boolean {
  return name !== '' && !/[\s"'\\#]/.test(name);
}

/**
 * Each named link as `ip -json -details link show dev <name>` shows it, in one process; undefined
 * for a link that does not exist, an Error naming the command for one `ip` could not show.
 */
async function showLinks(names: readonly string[]): Promise<Map<string, IpLink | undefined | Error>> {
  noteSpawn();
  const args = ['-json', '-details', '-force', '-batch', '-'];
  let r;
  try {
    r = await runProgram('ip', args, { input: names.map((n) => `link show dev ${n}`).join('\n') + '\n', timeoutMs: 60_000, maxBytes: 64 * 1024 * 1024 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new MatchlockError(code === 'ENOENT' ? ErrorCode.FailedPrecondition : ErrorCode.Internal, `ip ${args.join(' ')}: ${code === 'ENOENT' ? 'ip is not installed' : (err as Error).message}`, { cause: err });
  }
  const found = new Map<string, IpLink>();
  // With -force a failed line does not stop the rest; each show that worked prints its array.
  for (const line of r.stdout.toString('utf8').split('\n')) {
    if (!line.startsWith('[')) continue;
    for (const l of JSON.parse(line) as IpLink[]) found.set(l.ifname, l);
  }
  const stderr = r.stderr.toString('utf8');
  const out = new Map<string, IpLink | undefined | Error>();
  for (const name of names) {
    const l = found.get(name);
    if (l) out.set(name, l);
    else if (stderr.includes(`Device "${name}" does not exist`) || stderr.includes(`Cannot find device "${name}"`)) out.set(name, undefined);
    else {
      const why = r.killed ? `ip was killed (${r.killed})` : stderr.trim().split('\n').slice(-3).join(' ') || `exited with ${r.code ?? r.signal}`;
      out.set(name, new MatchlockError(ErrorCode.Internal, `ip -json -details link show dev ${name}: ${why}`));
    }
  }
  return out;
}

/**
 * Host links, in the network namespace the daemon runs in. Reads come from sysfs (no process
 * per read) when sysfs shows the daemon's namespace, from `ip -json` otherwise; the changes of
 * one create go to iproute2 as one `ip -batch` so a link costs one process.
 */
export class Iproute2Network implements HostNetwork {
  private sysfs: boolean | undefined;
  /** Link reads waiting for the next shared `ip` process, by name (see read()). */
  private waiting = new Map<string, ((r: IpLink | undefined | Error) => void)[]>();
  private reading = false;

  /** `useSysfs`: tests force a path; by default it is chosen by sysfsShowsOwnNamespace(). */
  constructor(opts: { useSysfs?: boolean } = {}) {
    this.sysfs = opts.useSysfs;
  }

  private get viaSysfs(): boolean {
    this.sysfs ??= sysfsShowsOwnNamespace();
    return this.sysfs;
  }

  private async links(name?: string): Promise<IpLink[]> {
    try {
      const { stdout } = await run('ip', ['-json', '-details', 'link', 'show', ...(name ? ['dev', name] : [])]);
      return JSON.parse(stdout || '[]') as IpLink[];
    } catch (err) {
      if (name && /does not exist|Cannot find device/.test((err as Error).message)) return [];
      throw err;
    }
  }

  async get(name: string): Promise<LinkInfo | undefined> {
    // A name with a slash or dots would leave /sys/class/net; no link can have one.
    if (this.viaSysfs && !name.includes('/') && name !== '.' && name !== '..') return sysfsLink(name);
    if (!batchable(name)) {
      const [l] = await this.links(name);
      return l ? toInfo(l) : undefined;
    }
    const l = await this.read(name);
    return l ? toInfo(l) : undefined;
  }

  /**
   * One link by name, read without sysfs. Reads asked for while an `ip` process is reading
   * share the next one (`ip -json -details -force -batch -`, one `link show dev` a line), which
   * starts once that one ended, so every answer was read after it was asked for: during a burst
   * of creates, each VM's reads of its TAP and of the bridge cost a share of a process instead
   * of a process each. Rejects with the error `ip` gave for this name.
   */
  private read(name: string): Promise<IpLink | undefined> {
    return new Promise((resolve, reject) => {
      const waiters = this.waiting.get(name) ?? [];
      waiters.push((r) => (r instanceof Error ? reject(r) : resolve(r)));
      this.waiting.set(name, waiters);
      if (!this.reading) void this.readWaiting();
    });
  }

  private async readWaiting(): Promise<void> {
    this.reading = true;
    // Reads asked for in the same turn (a plan's Promise.all) go in this first process too.
    await Promise.resolve();
    try {
      while (this.waiting.size > 0) {
        const batch = this.waiting;
        this.waiting = new Map();
        let shown: Map<string, IpLink | undefined | Error>;
        try {
          shown = await showLinks([...batch.keys()]);
        } catch (err) {
          shown = new Map([...batch.keys()].map((n) => [n, err as Error]));
        }
        for (const [name, waiters] of batch) for (const w of waiters) w(shown.get(name));
      }
    } finally {
      this.reading = false;
    }
  }

  /**
   * Runs iproute2 commands (one per line, without the leading `ip`) in one process. Without
   * sysfs, the same process then shows `show` (ip -json -details), which saves the read that
   * would follow: the link as it is after the change, or undefined when it was not shown.
   */
  private async batch(lines: string[][], show: string): Promise<LinkInfo | undefined> {
    for (const l of lines) {
      // -batch splits on blanks and reads quotes and backslashes; our names and aliases never
      // hold them, and one that did would silently become another command.
      if (l.some((a) => a === '' || /[\s"'\\#]/.test(a))) throw new MatchlockError(ErrorCode.InvalidArgument, `ip arguments must not hold blanks, quotes or backslashes: ${l.join(' ')}`);
    }
    const viaIp = !this.viaSysfs;
    const all = viaIp ? [...lines, ['link', 'show', 'dev', show]] : lines;
    const { stdout } = await run('ip', [...(viaIp ? ['-json', '-details'] : []), '-batch', '-'], { input: all.map((l) => l.join(' ')).join('\n') + '\n' });
    if (!viaIp) return undefined;
    // Only the show prints: one JSON array on its line.
    const last = stdout.trim().split('\n').at(-1) ?? '';
    const [l] = (last.startsWith('[') ? JSON.parse(last) : []) as IpLink[];
    return l?.ifname === show ? toInfo(l) : undefined;
  }

  async createTap(name: string, opts: { bridge: string; alias: string }): Promise<LinkInfo> {
    const shown = await this.batch(
      [
        ['tuntap', 'add', 'dev', name, 'mode', 'tap'],
        ['link', 'set', 'dev', name, 'alias', opts.alias],
        ['link', 'set', 'dev', name, 'master', opts.bridge, 'up'],
      ],
      name,
    );
    return shown ?? this.must(name);
  }

  async attach(name: string, bridge: string): Promise<void> {
    await run('ip', ['link', 'set', 'dev', name, 'master', bridge, 'up']);
  }

  async createMacvtap(name: string, opts: { parent: string; alias: string; mac: string }): Promise<LinkInfo> {
    const shown = await this.batch(
      [
        ['link', 'add', 'link', opts.parent, 'name', name, 'address', opts.mac, 'type', 'macvtap', 'mode', 'bridge'],
        ['link', 'set', 'dev', name, 'alias', opts.alias, 'up'],
      ],
      name,
    );
    return shown ?? this.must(name);
  }

  async remove(name: string): Promise<void> {
    try {
      await run('ip', ['link', 'del', 'dev', name]);
    } catch (err) {
      if (!/does not exist|Cannot find device/.test((err as Error).message)) throw err;
    }
  }

  async listOwned(): Promise<LinkInfo[]> {
    if (this.viaSysfs) {
      const out: LinkInfo[] = [];
      for (const name of await readdir(SYS_NET)) {
        const alias = (await readFile(`${SYS_NET}/${name}/ifalias`, 'utf8').catch(() => '')).trim();
        if (!alias.startsWith(ALIAS_PREFIX)) continue;
        const link = await sysfsLink(name);
        if (link) out.push(link);
      }
      return out;
    }
    return (await this.links()).filter((l) => l.ifalias?.startsWith(ALIAS_PREFIX)).map(toInfo);
  }

  private async must(name: string): Promise<LinkInfo> {
    const l = await this.get(name);
    if (!l) throw new MatchlockError(ErrorCode.Internal, `link ${name} vanished right after it was created`);
    return l;
  }
}
