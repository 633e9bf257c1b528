import { ownLink } from '../core/microvm/host-names.js';
import type { HostFiles, HostNetwork, Logger, Store, Tombstones } from '../core/ports.js';
import { runPlan } from '../core/plan/step.js';
import { runDirOf, type VmmProvider } from '../core/vmm.js';
import { unrecordedRefusal, vmDirs, type VmDirEntry } from './unrecorded.js';

/** Volumes that live outside VM directories (thin volumes): listed by owner, removed by key. */
export interface SweptVolumes {
  owned(): Promise<{ uid: string; volumeId: string }[]>;
  remove(key: { uid: string; volumeId: string; dir: string }, log: Logger): Promise<void>;
}

export interface SweepOptions {
  daemonId: string;
  stateDir: string;
  store: Store & Tombstones;
  network: HostNetwork;
  files: HostFiles;
  providers: ReadonlyMap<string, VmmProvider>;
  volumes?: SweptVolumes | undefined;
  stopTimeoutMs: number;
  log: Logger;
}

/**
 * The one place the sweep drives VMMs: stops whatever VMM still runs in a VM directory, then
 * runs each provider's delete steps, as a delete does (what a VMM held outside the directory: a
 * cgroup, a claimed uid, a jail). Kept apart so it follows the provider interface wherever that goes.
 */
async function stopVmmIn(o: SweepOptions, d: VmDirEntry): Promise<void> {
  const signal = new AbortController().signal;
  for (const p of o.providers.values()) {
    const vmm = p.instance({ ...d, runDir: runDirOf(o.stateDir, d.uid) });
    if ((await vmm.running()) !== undefined) {
      o.log.warn({ uid: d.uid, dir: d.dir, provider: p.descriptor.name }, 'stopping orphaned vmm');
      await vmm.stop({ timeoutMs: o.stopTimeoutMs, signal }, o.log);
    }
    await runPlan(vmm.deleteSteps(), o.log, { signal });
  }
}

/**
 * Start-up check and orphan sweep. It destroys only what is provably this daemon's and
 * deleted: host objects whose uid has a tombstone (a record the reconciler dropped after
 * teardown kept failing), and among links only those whose alias carries this daemon's id.
 *
 * A VM directory whose uid is neither a record nor a tombstone means the store lost records
 * (a missing, empty or replaced matchlock.db) while guests may still run: the daemon refuses to
 * start, naming the directories and the fix, instead of adopting or destroying them. Nothing is
 * touched before that check. Throws MatchlockError FailedPrecondition in that case.
 * Returns how many objects were removed.
 */
export async function sweepOrphans(o: SweepOptions): Promise<number> {
  const dirs = vmDirs(o.stateDir);
  const unknown = dirs.filter(({ uid }) => !o.store.get(uid) && !o.store.tombstone(uid));
  if (unknown.length) throw unrecordedRefusal(o.stateDir, unknown, true, false);
  let removed = 0;
  const buried = (uid: string) => o.store.tombstone(uid) !== undefined;
  // A buried VM whose VMM could not be stopped or whose delete steps failed keeps its
  // directory, links, volumes and tombstone for the next start; the others are swept all the
  // same, and the daemon starts (its host state never stops it).
  const kept = new Set<string>();
  for (const d of dirs) {
    if (!buried(d.uid)) continue;
    try {
      await stopVmmIn(o, d);
    } catch (err) {
      o.log.error({ uid: d.uid, dir: d.dir, err: (err as Error).message }, 'orphaned vmm not cleaned up; its directory is kept for the next start');
      kept.add(d.uid);
      continue;
    }
    o.log.warn({ uid: d.uid, dir: d.dir }, 'removing orphaned vm directory');
    await o.files.remove(d.dir);
    await o.files.remove(runDirOf(o.stateDir, d.uid));
    removed++;
  }
  for (const link of await o.network.listOwned()) {
    const owner = ownLink(link.alias, o.daemonId);
    // Another daemon's link, or one in the old alias form whose owner cannot be proven.
    if (!owner) continue;
    // A kept VM's links stay with it: its VMM may still run on them.
    if (o.store.get(owner.uid) || kept.has(owner.uid)) continue;
    if (!buried(owner.uid)) {
      o.log.warn({ link: link.name, alias: link.alias }, 'link of this daemon with neither a record nor a tombstone; left alone');
      continue;
    }
    o.log.warn({ link: link.name, alias: link.alias }, 'removing orphaned link');
    await o.network.remove(link.name);
    removed++;
  }
  for (const v of (await o.volumes?.owned()) ?? []) {
    if (!buried(v.uid) || kept.has(v.uid)) continue;
    o.log.warn({ uid: v.uid, volume: v.volumeId }, 'removing orphaned volume');
    await o.volumes?.remove({ ...v, dir: '' }, o.log);
    removed++;
  }
  // Everything a tombstone stood for is gone once the steps above did not throw.
  for (const t of o.store.tombstones()) if (!kept.has(t.uid)) o.store.forget(t.uid);
  return removed;
}
