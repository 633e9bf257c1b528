import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { ALIAS_PREFIX } from '../../../core/microvm/host-names.js';
import type { HostNetwork, LinkInfo } from '../../../core/ports.js';
import { run } from '../../exec.js';

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

/** Host links through iproute2 (`ip -json`), in the network namespace the daemon runs in. */
export class Iproute2Network implements HostNetwork {
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
    const [l] = await this.links(name);
    return l ? toInfo(l) : undefined;
  }

  async createTap(name: string, opts: { bridge: string; alias: string }): Promise<LinkInfo> {
    await run('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap']);
    await run('ip', ['link', 'set', 'dev', name, 'alias', opts.alias]);
    await this.attach(name, opts.bridge);
    return this.must(name);
  }

  async attach(name: string, bridge: string): Promise<void> {
    await run('ip', ['link', 'set', 'dev', name, 'master', bridge, 'up']);
  }

  async createMacvtap(name: string, opts: { parent: string; alias: string; mac: string }): Promise<LinkInfo> {
    await run('ip', ['link', 'add', 'link', opts.parent, 'name', name, 'address', opts.mac, 'type', 'macvtap', 'mode', 'bridge']);
    await run('ip', ['link', 'set', 'dev', name, 'alias', opts.alias, 'up']);
    return this.must(name);
  }

  async remove(name: string): Promise<void> {
    try {
      await run('ip', ['link', 'del', 'dev', name]);
    } catch (err) {
      if (!/does not exist|Cannot find device/.test((err as Error).message)) throw err;
    }
  }

  async listOwned(): Promise<LinkInfo[]> {
    return (await this.links()).filter((l) => l.ifalias?.startsWith(ALIAS_PREFIX)).map(toInfo);
  }

  private async must(name: string): Promise<LinkInfo> {
    const l = await this.get(name);
    if (!l) throw new MatchlockError(ErrorCode.Internal, `link ${name} vanished right after it was created`);
    return l;
  }
}
