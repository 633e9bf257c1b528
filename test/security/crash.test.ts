import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { detectCgroups, VmCgroups } from '../../src/adapters/vmm/confine/cgroup.js';
import { ListMicroVMsRequestSchema, type ListMicroVMsResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import type { MicroVM } from '../../src/gen/types/microvm_pb.js';
import { api, importGuest, sleep, stateOf, waitFor } from '../e2e/vm.js';
import { rawClient } from '../helpers/client.js';
import { ROOT } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

/** mulberry32: a small seeded generator, so a failing storm can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NS = 'crash';

/**
 * A call the kill cut off (the connection went, or never came while the daemon restarted): its
 * outcome is unknown. Any other error is an answer, and the storm only sends valid requests.
 */
const unanswered_ = (err: unknown) => [1, 4, 13, 14].includes((err as { code?: number }).code ?? -1);

interface Tracked {
  name: string;
  /** The create answered with this uid. */
  createAcked: boolean;
  deleteSent: boolean;
  deleteAcked: boolean;
  maxVersion: number;
  /** A real guest: the storm never deletes it. */
  keep?: boolean;
}

/** Every process whose command line names the state dir, except the daemon itself. */
function processesOf(stateDir: string, daemonPid: number | undefined): string[] {
  const out: string[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    if (Number(p) === daemonPid || Number(p) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').replaceAll('\0', ' ');
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue;
      if (cmd.includes(stateDir) && !cmd.includes(' run --state-dir ')) out.push(`${p}: ${cmd.slice(0, 200)}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function findAll(dir: string, test: (name: string) => boolean): string[] {
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (test(e.name)) out.push(p);
    if (e.isDirectory()) out.push(...findAll(p, test));
  }
  return out;
}

/**
 * Crash consistency: matchlockd is killed with SIGKILL at random moments of a create/delete
 * storm and restarted after each kill. Most VMs use the scratch provider (a VMM stand-in that
 * boots nothing, so the storm is about the daemon, not the guests); two are real QEMU guests.
 * Nothing the API acknowledged may be lost, record versions never go back, and once every VM is
 * deleted nothing the VMs had on the host is left. MATCHLOCK_CRASH_SEED=<seed> replays a storm,
 * MATCHLOCK_CRASH_KILLS=<n> sets the number of kills (at least 30 in CI).
 */
describe('crash consistency: kill -9 during a create/delete storm', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the crash test ${missing}`);
    lab = await startLab(['--default-provider', 'scratch', '--retry-backoff', '200ms'], { entry: ['--import', 'tsx', join(ROOT, 'test/fakes/providers/scratch/matchlockd.ts')] });
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('loses no acknowledged operation, never lowers a version, and leaks nothing', { timeout: 20 * 60_000 }, async () => {
    const seed = Number(process.env.MATCHLOCK_CRASH_SEED ?? randomInt(2 ** 31));
    const kills = Number(process.env.MATCHLOCK_CRASH_KILLS ?? 30);
    process.stderr.write(`crash storm seed ${seed} (replay: MATCHLOCK_CRASH_SEED=${seed}), ${kills} kills\n`);
    const rand = prng(seed);
    const pick = <T>(xs: T[]): T | undefined => xs[Math.floor(rand() * xs.length)];
    const started = Date.now();

    const tracked = new Map<string, Tracked>();
    /** Names of creates whose answer was lost in a kill: they may or may not exist. */
    const unanswered = new Set<string>();
    let serial = 0;
    let acked = 0;
    let paused: Promise<void> | undefined;
    let stop = false;
    const failures: string[] = [];
    /** Acknowledged operations found undone, by uid (each counted once, however many rounds saw it). */
    const lostUids = new Set<string>();

    const call = async <T>(method: string, req: unknown): Promise<T> => {
      const c = rawClient(lab.daemon.target);
      try {
        return await c.call<T>(method, req);
      } finally {
        c.close();
      }
    };
    const list = async (): Promise<MicroVM[]> => (await call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: NS }))).microvm;

    const worker = async (w: number) => {
      const vms = () => api(lab);
      while (!stop) {
        if (paused) await paused;
        const live = [...tracked.entries()].filter(([, t]) => t.createAcked && !t.deleteSent && !t.keep);
        if (live.length < 3 || rand() < 0.55) {
          const name = `s${w}-${serial++}`;
          try {
            const uid = await vms().create(name, [{ id: 'eth0', type: 'TAP' }], undefined, undefined, { namespace: NS });
            tracked.set(uid, { name, createAcked: true, deleteSent: false, deleteAcked: false, maxVersion: 0 });
            acked++;
          } catch (err) {
            if (!unanswered_(err)) failures.push(`create ${name} refused: ${(err as Error).message}`);
            unanswered.add(name);
          }
        } else {
          const [uid, t] = pick(live) ?? [];
          if (!uid || !t) continue;
          t.deleteSent = true;
          try {
            await vms().delete(uid);
            t.deleteAcked = true;
            acked++;
          } catch (err) {
            // unknown outcome: the record may be DELETING or untouched
            if (!unanswered_(err)) failures.push(`delete ${uid} refused: ${(err as Error).message}`);
          }
        }
        await sleep(20 + rand() * 80);
      }
    };

    /** Checks every invariant against what the restarted daemon holds. */
    const check = async (round: number) => {
      const held = new Map((await list()).map((vm) => [vm.spec?.uid ?? '', vm]));
      for (const [uid, t] of tracked) {
        const vm = held.get(uid);
        if (t.createAcked && !t.deleteSent && !vm) {
          failures.push(`round ${round}: acknowledged create ${t.name} (${uid}) is lost`);
          lostUids.add(uid);
        }
        if (t.createAcked && !t.deleteSent && vm && stateOf(vm) === 'DELETING') failures.push(`round ${round}: ${t.name} (${uid}) is DELETING, never asked`);
        if (t.deleteAcked && vm && stateOf(vm) !== 'DELETING') {
          failures.push(`round ${round}: acknowledged delete of ${uid} undone: ${stateOf(vm)}`);
          lostUids.add(uid);
        }
        if (vm) {
          if (vm.version < t.maxVersion) failures.push(`round ${round}: ${uid} version went back from ${t.maxVersion} to ${vm.version}`);
          t.maxVersion = Math.max(t.maxVersion, vm.version);
        }
      }
      for (const [uid, vm] of held) {
        if (tracked.has(uid)) continue;
        const name = vm.spec?.id ?? '';
        // A create whose answer the kill lost may have been stored: it is ours to delete.
        if (!unanswered.has(name)) failures.push(`round ${round}: ${uid} (${name}) was never asked for`);
        tracked.set(uid, { name, createAcked: false, deleteSent: false, deleteAcked: false, maxVersion: vm.version });
      }
    };

    // Two real guests, created as the storm starts, so the first kills land in their create plans.
    const real: string[] = [];
    for (const name of ['real-a', 'real-b']) {
      const uid = await api(lab).create(name, [{ id: 'eth0', type: 'TAP' }], undefined, undefined, { namespace: NS, provider: 'qemu' });
      tracked.set(uid, { name, createAcked: true, deleteSent: false, deleteAcked: false, maxVersion: 0, keep: true });
      real.push(uid);
      acked++;
    }
    const workers = [0, 1, 2].map((w) => worker(w));
    let survived = 0;
    let restartMs = 0;
    for (let k = 1; k <= kills; k++) {
      await sleep(100 + rand() * 1000);
      let resume = () => undefined as void;
      paused = new Promise<void>((r) => (resume = r));
      const t0 = Date.now();
      await lab.restartDaemon(true);
      restartMs += Date.now() - t0;
      survived++;
      if (k % 10 === 0) process.stderr.write(`crash storm: ${k} kills, ${Math.round((Date.now() - started) / 1000)} s (restarts ${Math.round(restartMs / 1000)} s)\n`);
      try {
        await check(k);
      } finally {
        paused = undefined;
        resume();
      }
    }
    stop = true;
    await Promise.all(workers);

    const lost = lostUids.size;
    if (failures.length) process.stderr.write(`crash storm seed ${seed}: kills survived ${survived}/${kills}, acknowledged operations ${acked}, lost ${lost}\n`);
    assert.deepEqual(failures, [], `seed ${seed}`);
    // The real guests kept running through every kill (QEMU outlives the daemon).
    for (const uid of real) {
      const vm = await waitFor(`real guest ${uid} CREATED`, async () => { const v = await api(lab).get(uid); return stateOf(v) === 'CREATED' ? v : undefined; }, 120_000);
      assert.ok((vm.status?.vmmPid ?? 0) > 0);
    }
    // Once every VM the kills interrupted has converged, nothing half-made is left beside them
    // either: a killed step's temporaries go when the step runs again.
    await waitFor('every VM the storm left to converge', async () => (await list()).every((vm) => stateOf(vm) === 'CREATED'), 120_000, 500);
    const idleTemporaries = findAll(lab.stateDir, (n) => /\.tmp|\.part$|^\.import-|^\.cidata-/.test(n));
    assert.deepEqual(idleTemporaries, [], `seed ${seed}: temporaries beside converged VMs`);

    const stormS = Math.round((Date.now() - started) / 1000);
    // Delete everything and wait until the daemon holds nothing.
    for (const vm of await list()) {
      if (stateOf(vm) !== 'DELETING') await api(lab).delete(vm.spec?.uid ?? '');
    }
    await waitFor('every VM deleted', async () => (await list()).length === 0, 180_000, 500);
    const cgroups = new VmCgroups(detectCgroups(), lab.cgroupParent).dirs('').flatMap((d) => (existsSync(d) ? readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(d, e.name)) : []));
    const leaks = {
      processes: processesOf(lab.stateDir, lab.daemon.proc.pid),
      links: lab.ourLinks(),
      'vm directories': existsSync(join(lab.stateDir, 'vm')) ? readdirSync(join(lab.stateDir, 'vm')) : [],
      'run directories': existsSync(join(lab.stateDir, 'run')) ? readdirSync(join(lab.stateDir, 'run')) : [],
      volumes: findAll(lab.stateDir, (n) => /^volume-.*\.img/.test(n)),
      temporaries: findAll(lab.stateDir, (n) => /\.tmp|\.part$|^\.import-|^\.cidata-/.test(n)),
      cgroups,
    };
    const leaked = Object.values(leaks).reduce((n, l) => n + l.length, 0);
    const storm = [...tracked.values()];
    process.stderr.write(`crash storm seed ${seed}: kills survived ${survived}/${kills}, VMs ${storm.length} (${real.length} QEMU), acknowledged operations ${acked}, lost ${lost}, leaks ${leaked}; storm ${stormS} s (restarts ${Math.round(restartMs / 1000)} s), total ${Math.round((Date.now() - started) / 1000)} s\n`);
    assert.deepEqual(failures, [], `seed ${seed}`);
    assert.deepEqual(leaks, { processes: [], links: [], 'vm directories': [], 'run directories': [], volumes: [], temporaries: [], cgroups: [] }, `seed ${seed}`);
    assert.equal(survived, kills);
    assert.ok(kills >= 30 || !process.env.CI, 'CI runs at least 30 kills');
  });
});
