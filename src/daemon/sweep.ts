import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAlias } from '../core/microvm/host-names.js';
import type { HostFiles, HostNetwork, Logger, Store, VmmProvider } from '../core/ports.js';

/**
 * Removes host objects that carry this daemon's mark but belong to no record: links whose alias
 * names this daemon and a uid the store does not know, and VM directories (with any VMM still
 * running in them) of deleted VMs. Links of other daemons (another state dir in the same
 * network namespace) are never touched; neither are links in the alias form without a daemon
 * id, whose owner cannot be proven. Runs once at start, before anything is reconciled.
 */
export async function sweepOrphans(o: {
  daemonId: string;
  stateDir: string;
  store: Store;
  network: HostNetwork;
  files: HostFiles;
  providers: ReadonlyMap<string, VmmProvider>;
  stopTimeoutMs: number;
  log: Logger;
}): Promise<number> {
  let removed = 0;
  const known = (uid: string | undefined) => uid !== undefined && o.store.get(uid) !== undefined;
  for (const link of await o.network.listOwned()) {
    const owner = parseAlias(link.alias);
    if (!owner || owner.daemonId !== o.daemonId || known(owner.uid)) continue;
    o.log.warn({ link: link.name, alias: link.alias }, 'removing orphaned link');
    await o.network.remove(link.name);
    removed++;
  }
  const vmRoot = join(o.stateDir, 'vm');
  const list = async (d: string) => (await readdir(d, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory()).map((e) => e.name);
  for (const ns of await list(vmRoot)) {
    for (const name of await list(join(vmRoot, ns))) {
      for (const uid of await list(join(vmRoot, ns, name))) {
        if (known(uid)) continue;
        const dir = join(vmRoot, ns, name, uid);
        for (const p of o.providers.values()) {
          if ((await p.running(uid, dir)) !== undefined) {
            o.log.warn({ uid, dir, provider: p.name }, 'stopping orphaned vmm');
            await p.stop(uid, dir, o.stopTimeoutMs, o.log);
          }
        }
        o.log.warn({ uid, dir }, 'removing orphaned vm directory');
        await o.files.remove(dir);
        removed++;
      }
    }
  }
  return removed;
}
