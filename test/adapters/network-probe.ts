// Run inside a network namespace by network.test.ts: exercises the iproute2 adapter both ways
// (sysfs reads and `ip -json`) on the same links and prints what each saw and what it cost.
// Mode "group" asks for link changes together and counts the `ip` processes they cost by the
// lines an `ip` on PATH (the test's, which logs its arguments, then runs the real one) wrote to
// $IP_LOG. It starts the process spawner first, as the daemon does, so the shared ip is streamed
// through it; mode "full" runs without one, as a CLI does, and spawns ip directly.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import type { Logger } from '../../src/core/ports.js';
import { spawnCount } from '../../src/adapters/exec.js';
import { spawnerPid, startSpawner } from '../../src/adapters/spawner.js';
import { Iproute2Network, sysfsShowsOwnNamespace } from '../../src/adapters/network/iproute2/network.js';

/**
 * Pids of the children of the process that starts programs here, the spawner or this one (the
 * shared ip runs as one, under sh and stdbuf's execs).
 */
function ipChildren(): number[] {
  const parent = spawnerPid() ?? process.pid;
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent) out.push(Number(e));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** Polls `cond` every 20 ms for up to 10 s; whether it came true. */
async function until(cond: () => boolean): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

const [mode = 'full', tap = 'mltprobe0', mvt = 'mlvprobe1'] = process.argv.slice(2);
const own = sysfsShowsOwnNamespace();
if (mode === 'detect') {
  process.stdout.write(JSON.stringify({ own }));
  process.exit(0);
}
if (mode === 'group') {
  const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => quiet } as unknown as Logger;
  if (!(await startSpawner(quiet))) throw new Error('the process spawner did not start');
  const ipRuns = () => readFileSync(process.env.IP_LOG ?? '', 'utf8').split('\n').filter((l) => l.includes('-batch')).length;
  const processes = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
    const before = ipRuns();
    const v = await fn();
    return [v, ipRuns() - before];
  };
  const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: v }), (e: unknown) => ({ error: (e as Error).message }));
  const alias = (i: number) => `matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth${i}`;
  // One `ip` takes lines for a minute here, so counts do not depend on how fast this runs.
  const long = (useSysfs: boolean) => new Iproute2Network({ useSysfs, lifeMs: 60_000 });
  const sysfs = long(true);
  const out: Record<string, unknown> = {};
  for (const [kind, net] of [['sysfs', sysfs], ['ip', long(false)]] as const) {
    // Eight passes creating their TAPs in one turn, then one alone and seven more while its
    // `ip` runs.
    const [together, n1] = await processes(() => Promise.all([...Array(8).keys()].map((i) => net.createTap(`mlg${kind[0]}${i}`, { bridge: 'br0', alias: alias(i) }))));
    const [during, n2] = await processes(async () => {
      const first = net.createTap(`mlg${kind[0]}8`, { bridge: 'br0', alias: alias(8) });
      await new Promise((r) => setImmediate(r));
      return Promise.all([first, ...[...Array(7).keys()].map((i) => net.createTap(`mlg${kind[0]}${9 + i}`, { bridge: 'br0', alias: alias(9 + i) }))]);
    });
    const links = await Promise.all([...together, ...during].map((l) => sysfs.get(l.name)));
    out[kind] = { processes: [n1, n2], links: links.map((l) => l && { name: l.name, kind: l.kind, master: l.master, up: l.up, alias: l.alias }) };
  }
  // Creates asked one after another, each once the one before was answered, while one ip runs.
  {
    const net = long(false);
    const before = spawnCount();
    for (let i = 0; i < 4; i++) await net.createTap(`mlgq${i}`, { bridge: 'br0', alias: alias(40 + i) });
    out.sequential = { spawns: spawnCount() - before };
  }
  // One turn of changes, some of which fail, without sysfs (a show after each create).
  const net = long(false);
  await net.createTap('mlgbusy', { bridge: 'br0', alias: alias(20) });
  const asks: [string, () => Promise<unknown>][] = [
    ['good1', () => net.createTap('mlgood1', { bridge: 'br0', alias: alias(21) })],
    ['longName', () => net.createTap('mlg-name-too-long-for-linux', { bridge: 'br0', alias: alias(22) })],
    ['good2', () => net.createTap('mlgood2', { bridge: 'br0', alias: alias(23) })],
    ['noBridge', () => net.createTap('mlgnobr', { bridge: 'nobr0', alias: alias(24) })],
    ['exists', () => net.createTap('mlgbusy', { bridge: 'br0', alias: alias(25) })],
    ['good3', () => net.createTap('mlgood3', { bridge: 'br0', alias: alias(26) })],
    ['noParent', () => net.createMacvtap('mlgmv0', { parent: 'noparent0', alias: alias(27), mac: '02:00:00:00:00:41' })],
    ['good4', () => net.createMacvtap('mlgood4', { parent: 'vparent', alias: alias(28), mac: '02:00:00:00:00:42' })],
  ];
  const [grouped, n3] = await processes(() => Promise.all(asks.map(([, fn]) => settle(fn()))));
  const state = async () => Object.fromEntries(await Promise.all(['mlgood1', 'mlgood2', 'mlgood3', 'mlgood4', 'mlgnobr', 'mlgbusy', 'mlgmv0'].map(async (n) => {
    const l = await sysfs.get(n);
    return [n, l && { kind: l.kind, master: l.master, up: l.up, alias: l.alias }];
  })));
  const after = await state();
  // The same failing calls alone, one after another, from the same host state.
  await net.remove('mlgnobr');
  const alone: Record<string, unknown> = {};
  for (const [key, fn] of asks) if (!key.startsWith('good')) alone[key] = await settle(fn());
  out.errors = { grouped: Object.fromEntries(asks.map(([key], i) => [key, grouped[i]])), alone, processes: n3, after };
  // One VM's changes and reads in the order asked, in one turn: read, create, read, remove,
  // read, create again.
  const ord = 'mlgord';
  const onet = long(false);
  const [o, n4] = await processes(() =>
    Promise.all([onet.get(ord), onet.createTap(ord, { bridge: 'br0', alias: alias(30) }), onet.get(ord), onet.remove(ord), onet.get(ord), onet.createTap(ord, { bridge: 'br0', alias: alias(31) })]),
  );
  const now = await sysfs.get(ord);
  out.order = { reads: [o[0] ?? null, o[2]?.ifindex ?? null, o[4] ?? null], first: o[1].ifindex, second: o[5].ifindex, now: now?.ifindex, alias: now?.alias, processes: n4 };
  // Links deleted and re-created by another process (here `ip` run directly) while a shared ip
  // knows their old ifindex. The test made bridge brst.
  const sh = (...args: string[]) => execFileSync('ip', args);
  const stale: Record<string, unknown> = {};
  {
    // Within one ip's life: a read of the TAP re-created meanwhile sees the new one.
    const before = spawnCount();
    await onet.createTap('mlst0', { bridge: 'brst', alias: alias(50) });
    const first = await onet.get('mlst0');
    sh('link', 'del', 'mlst0');
    sh('tuntap', 'add', 'dev', 'mlst0', 'mode', 'tap');
    stale.reread = { first: first?.ifindex, now: (await sysfs.get('mlst0'))?.ifindex, read: (await onet.get('mlst0'))?.ifindex, spawns: spawnCount() - before };
    // Deleted by another process, not re-created: ip asks the kernel for the ifindex it
    // remembers, gets ENODEV and exits; the read is asked again in a fresh ip, which finds no
    // such link. A link read is what a create does for its bridge before using it.
    sh('link', 'add', 'brgone', 'type', 'bridge');
    const seen = await onet.get('brgone');
    sh('link', 'del', 'brgone');
    const again = await onet.get('brgone').then((l) => l ?? null, (e: unknown) => (e as Error).message);
    stale.deleted = { seen: seen?.name, again };
  }
  {
    // After an ip's life (lifeMs 200): the bridge it attached to is deleted and re-created;
    // the next creates and attaches find the new one. The ip that did the first create is
    // the spawner's child (this process never forks for it) and is gone once its life is over and its lines are answered.
    const short = new Iproute2Network({ useSysfs: false, lifeMs: 200 });
    const children = ipChildren();
    const made = short.createTap('mlst1', { bridge: 'brst', alias: alias(51) });
    let pid: number | undefined;
    // The spawner starts it a moment later; the create needs it, so it comes.
    await until(() => (pid = ipChildren().find((p) => !children.includes(p))) !== undefined);
    await made;
    const gone = await until(() => pid !== undefined && !ipChildren().includes(pid));
    sh('link', 'del', 'brst');
    sh('link', 'add', 'brst', 'type', 'bridge');
    sh('link', 'set', 'brst', 'up');
    const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: v }), (e: unknown) => ({ error: (e as Error).message }));
    const created = await settle(short.createTap('mlst2', { bridge: 'brst', alias: alias(52) }));
    const attached = await settle(short.adopt('mlst1', { alias: 'matchlock:probe', bridge: 'brst' }));
    stale.afterLife = { pid: pid ?? null, gone, created: 'error' in created ? created.error : created.ok.master, attached: 'error' in attached ? attached.error : 'ok', masters: [(await sysfs.get('mlst1'))?.master, (await sysfs.get('mlst2'))?.master] };
  }
  {
    // Within one ip's life, the bridge a create attached to is deleted and re-created by another
    // process: ip still holds its old ifindex (the `master` lookup alone keeps it), so the next
    // `master` line gets EINVAL from the kernel. Both ways (no show with sysfs, a show without).
    const master: Record<string, unknown> = {};
    for (const [k, useSysfs] of [['s', true], ['i', false]] as const) {
      const br = `brm${k}`;
      sh('link', 'add', br, 'type', 'bridge');
      sh('link', 'set', br, 'up');
      const mnet = long(useSysfs);
      await mnet.createTap(`mlm${k}0`, { bridge: br, alias: alias(53) });
      sh('link', 'del', br);
      sh('link', 'add', br, 'type', 'bridge');
      sh('link', 'set', br, 'up');
      const before = ipRuns();
      const created = await settle(mnet.createTap(`mlm${k}1`, { bridge: br, alias: alias(54) }));
      const adopted = await settle(mnet.adopt(`mlm${k}0`, { alias: alias(53), bridge: br }));
      const processes = ipRuns() - before;
      const masters = [(await sysfs.get(`mlm${k}0`))?.master, (await sysfs.get(`mlm${k}1`))?.master];
      // Deleted and not made again: the line run again in a fresh ip says so.
      sh('link', 'del', br);
      const gone = await settle(mnet.createTap(`mlm${k}2`, { bridge: br, alias: alias(55) }));
      master[k] = {
        created: 'error' in created ? created.error : created.ok.master,
        adopted: 'error' in adopted ? adopted.error : 'ok',
        masters,
        processes,
        gone: 'error' in gone ? gone.error : gone.ok.master,
      };
    }
    stale.master = master;
  }
  out.stale = stale;
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}
// A fresh adapter for each counted step: its first change starts an ip, which later steps would
// otherwise share for its life.
const sys = () => new Iproute2Network({ useSysfs: true });
const ip = () => new Iproute2Network({ useSysfs: false });
const cost = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
  const before = spawnCount();
  const v = await fn();
  return [v, spawnCount() - before];
};
const sysNet = sys();
const [created, tapSpawns] = await cost(() => sys().createTap(tap, { bridge: 'br0', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth0' }));
const [mcreated, macvtapSpawns] = await cost(() => sys().createMacvtap(mvt, { parent: 'vparent', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth1', mac: '02:00:00:00:00:31' }));
const names = [tap, mvt, 'br0', 'vparent', 'lo', 'absent0', 'mltun0'];
const [bySysfs, getSpawns] = await cost(() => Promise.all(names.map((n) => sysNet.get(n))));
// Reads asked for together share one `ip` process without sysfs.
const [byIp, ipGetSpawns] = await cost(() => {
  const net = ip();
  return Promise.all(names.map((n) => net.get(n)));
});
const [ownedSys, listSpawns] = await cost(() => sysNet.listOwned());
const ownedIp = await ip().listOwned();
// Without sysfs the batch that makes a link also shows it: still one process, and what it
// resolves is what a read afterwards sees.
const [ipCreated, ipTapSpawns] = await cost(() => ip().createTap(`${tap}i`, { bridge: 'br0', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth2' }));
const [ipMcreated, ipMacvtapSpawns] = await cost(() => ip().createMacvtap(`${mvt}i`, { parent: 'vparent', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth3', mac: '02:00:00:00:00:33' }));
const ipNet = ip();
const ipRead = [await ipNet.get(`${tap}i`), await ipNet.get(`${mvt}i`)];
process.stdout.write(JSON.stringify({ own, created, mcreated, bySysfs, byIp, ownedSys, ownedIp, ipCreated: [ipCreated, ipMcreated], ipRead, spawns: { tap: tapSpawns, macvtap: macvtapSpawns, get: getSpawns, list: listSpawns, ipTap: ipTapSpawns, ipMacvtap: ipMacvtapSpawns, ipGet: ipGetSpawns } }));
