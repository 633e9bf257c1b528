// Run inside a network namespace by network.test.ts: exercises the iproute2 adapter both ways
// (sysfs reads and `ip -json`) on the same links and prints what each saw and what it cost.
import { spawnCount } from '../../src/adapters/exec.js';
import { Iproute2Network, sysfsShowsOwnNamespace } from '../../src/adapters/network/iproute2/network.js';

const [mode = 'full', tap = 'mltprobe0', mvt = 'mlvprobe1'] = process.argv.slice(2);
const own = sysfsShowsOwnNamespace();
if (mode === 'detect') {
  process.stdout.write(JSON.stringify({ own }));
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
