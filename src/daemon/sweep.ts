import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { aliasOwner } from '../core/microvm/host-names.js';
import type { HostFiles, HostNetwork, Logger, Store } from '../core/ports.js';
import { runDirOf, type VmmProvider } from '../core/vmm.js';

/**
 * Removes host objects that carry matchlock's mark but belong to no record: links whose alias
 * names a uid the store does not know, and VM directories (with any VMM still running in them)
 * of deleted VMs. Runs once at start, before anything is reconciled.
 */
export async function sweepOrphans(o: {
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
    if (known(aliasOwner(link.alias))) continue;
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
        const runDir = runDirOf(o.stateDir, uid);
        for (const p of o.providers.values()) {
          const vmm = p.instance({ uid, namespace: ns, name, dir, runDir });
          if ((await vmm.running()) !== undefined) {
            o.log.warn({ uid, dir, provider: p.descriptor.name }, 'stopping orphaned vmm');
            await vmm.stop({ timeoutMs: o.stopTimeoutMs, signal: new AbortController().signal }, o.log);
          }
        }
        o.log.warn({ uid, dir }, 'removing orphaned vm directory');
        await o.files.remove(dir);
        await o.files.remove(runDir);
        removed++;
      }
    }
  }
  return removed;
}
