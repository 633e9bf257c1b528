// Run inside a network namespace by network.test.ts: exercises the iproute2 adapter both ways
// (sysfs reads and `ip -json`) on the same links and prints what each saw and what it cost.
// Mode "group" asks for link changes together and counts the `ip` processes they cost by the
// lines an `ip` on PATH (the test's, which logs its arguments, then runs the real one) wrote to
// $IP_LOG.
import { readFileSync } from 'node:fs';
import { spawnCount } from '../../src/adapters/exec.js';
import { Iproute2Network, sysfsShowsOwnNamespace } from '../../src/adapters/network/iproute2/network.js';

const [mode = 'full', tap = 'mltprobe0', mvt = 'mlvprobe1'] = process.argv.slice(2);
const own = sysfsShowsOwnNamespace();
if (mode === 'detect') {
  process.stdout.write(JSON.stringify({ own }));
  process.exit(0);
}
if (mode === 'group') {
  const ipRuns = () => readFileSync(process.env.IP_LOG ?? '', 'utf8').split('\n').filter((l) => l.includes('-batch')).length;
  const processes = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
    const before = ipRuns();
    const v = await fn();
    return [v, ipRuns() - before];
  };
  const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: v }), (e: unknown) => ({ error: (e as Error).message }));
  const alias = (i: number) => `matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth${i}`;
  const sysfs = new Iproute2Network({ useSysfs: true });
  const out: Record<string, unknown> = {};
  for (const [kind, net] of [['sysfs', sysfs], ['ip', new Iproute2Network({ useSysfs: false })]] as const) {
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
  // One turn of changes, some of which fail, without sysfs (a show after each create).
  const net = new Iproute2Network({ useSysfs: false });
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
  const [o, n4] = await processes(() =>
    Promise.all([net.get(ord), net.createTap(ord, { bridge: 'br0', alias: alias(30) }), net.get(ord), net.remove(ord), net.get(ord), net.createTap(ord, { bridge: 'br0', alias: alias(31) })]),
  );
  const now = await sysfs.get(ord);
  out.order = { reads: [o[0] ?? null, o[2]?.ifindex ?? null, o[4] ?? null], first: o[1].ifindex, second: o[5].ifindex, now: now?.ifindex, alias: now?.alias, processes: n4 };
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}
const sys = new Iproute2Network({ useSysfs: true });
const ip = new Iproute2Network({ useSysfs: false });
const cost = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
  const before = spawnCount();
  const v = await fn();
  return [v, spawnCount() - before];
};
const [created, tapSpawns] = await cost(() => sys.createTap(tap, { bridge: 'br0', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth0' }));
const [mcreated, macvtapSpawns] = await cost(() => sys.createMacvtap(mvt, { parent: 'vparent', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth1', mac: '02:00:00:00:00:31' }));
const names = [tap, mvt, 'br0', 'vparent', 'lo', 'absent0'];
const [bySysfs, getSpawns] = await cost(() => Promise.all(names.map((n) => sys.get(n))));
// Reads asked for together share one `ip` process without sysfs.
const [byIp, ipGetSpawns] = await cost(() => Promise.all(names.map((n) => ip.get(n))));
const [ownedSys, listSpawns] = await cost(() => sys.listOwned());
const ownedIp = await ip.listOwned();
// Without sysfs the batch that makes a link also shows it: still one process, and what it
// resolves is what a read afterwards sees.
const [ipCreated, ipTapSpawns] = await cost(() => ip.createTap(`${tap}i`, { bridge: 'br0', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth2' }));
const [ipMcreated, ipMacvtapSpawns] = await cost(() => ip.createMacvtap(`${mvt}i`, { parent: 'vparent', alias: 'matchlock:0123456789abcdef:01ARZ3NDEKTSV4RRFFQ69G5FAV:eth3', mac: '02:00:00:00:00:33' }));
const ipRead = [await ip.get(`${tap}i`), await ip.get(`${mvt}i`)];
process.stdout.write(JSON.stringify({ own, created, mcreated, bySysfs, byIp, ownedSys, ownedIp, ipCreated: [ipCreated, ipMcreated], ipRead, spawns: { tap: tapSpawns, macvtap: macvtapSpawns, get: getSpawns, list: listSpawns, ipTap: ipTapSpawns, ipMacvtap: ipMacvtapSpawns, ipGet: ipGetSpawns } }));
