import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { ROOT, tempDir } from '../helpers/daemon.js';

/**
 * What hub setup, teardown and host dev leave behind when a run is refused, fails part way,
 * is repeated with other settings, or meets another hub: all in private network namespaces.
 */
const need = ['dhcpd', 'dnsmasq', 'nft', 'ip'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = process.getuid?.() !== 0 ? 'needs root' : need.length ? `missing: ${need.join(', ')}` : false;

describe('hub lifecycle in namespaces', { skip: skip && !process.env.CI ? skip : false }, () => {
  const id = randomBytes(3).toString('hex');
  const ns = `mlhl-${id}`;
  const tmp = tempDir('hub-lifecycle');
  const record = join(tmp.path, 'hub-record.yaml');
  const ip = (...a: string[]) => execFileSync('ip', ['-n', ns, ...a], { encoding: 'utf8' });
  const inNs = (...cmd: string[]) => spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', cwd: tmp.path, env: { ...process.env, MATCHLOCK_HUB_RECORD: record } });
  const cli = (...a: string[]) => inNs(process.execPath, join(ROOT, 'bin/matchlock.js'), ...a);
  const cliWith = (rec: string, ...a: string[]) => spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a], { encoding: 'utf8', cwd: tmp.path, env: { ...process.env, MATCHLOCK_HUB_RECORD: rec } });
  /** The CLI started in the background: its exit status and stderr when it ends. */
  const cliAsync = (...a: string[]) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a], { cwd: tmp.path, env: { ...process.env, MATCHLOCK_HUB_RECORD: record } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<{ status: number | null; signal: NodeJS.Signals | null; stderr: string }>((r) => child.on('close', (status, signal) => r({ status, signal, stderr })));
    return { child, done };
  };
  const running = (pid: number) => {
    try {
      return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z');
    } catch {
      return false;
    }
  };
  const hubFlags = (n: number, dhcp = 'dnsmasq') => ['--interface', `mlbr${n}`, '--mode', 'bridge', '--address', `192.168.${40 + n}.2/25`, '--range-start', `192.168.${40 + n}.26`, '--range-end', `192.168.${40 + n}.126`, '--uplink', 'up0', '--dhcp', dhcp, '--state-dir', join(tmp.path, `state-${n}`)];
  before(() => {
    assert.equal(skip, false, String(skip));
    execFileSync('ip', ['netns', 'add', ns]);
    ip('link', 'set', 'lo', 'up');
    // The uplink: one end of a veth pair with an address and no default route, as a host without one.
    ip('link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'upx0');
    ip('addr', 'add', '10.98.0.1/24', 'dev', 'up0');
    ip('link', 'set', 'up0', 'up');
    ip('link', 'set', 'upx0', 'up');
  });
  // A test that failed before its own teardown leaves its DHCP servers running (deleting the
  // namespace does not stop them): each is stopped by the pid its state recorded.
  const stopServers = () => {
    for (const file of readdirSync(tmp.path, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('hub-state.json'))) {
      try {
        const pid = (JSON.parse(readFileSync(join(tmp.path, file), 'utf8')) as { dhcp?: { pid: number } }).dhcp?.pid;
        if (pid && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(tmp.path)) process.kill(pid, 'SIGTERM');
      } catch {
        // no state file, or the server is already gone
      }
    }
  };
  // A test that leaves a record fails, and its hub goes with the record, so the tests after it
  // start from no hub instead of failing on this one's leftovers.
  afterEach(() => {
    const left = existsSync(record);
    if (left) {
      cli('hub', 'teardown');
      rmSync(record, { force: true });
    }
    assert.equal(left, false, 'each test leaves no hub record');
  });
  after(() => {
    stopServers();
    spawnSync('ip', ['netns', 'del', ns]);
    tmp.remove();
  });

  const snapshot = () => ({
    links: (JSON.parse(ip('-json', 'link', 'show')) as { ifname: string }[]).map((l) => l.ifname),
    addrs: (JSON.parse(ip('-json', 'addr', 'show')) as { ifname: string; addr_info: { local: string; prefixlen: number }[] }[]).map((l) => [l.ifname, l.addr_info.filter((a) => !a.local.startsWith('fe80:')).map((a) => `${a.local}/${a.prefixlen}`).join(',')]),
    nft: inNs('nft', 'list', 'ruleset').stdout,
    forward: inNs('cat', '/proc/sys/net/ipv4/ip_forward').stdout,
  });
  const addrsOf = (link: string) => (JSON.parse(ip('-json', 'addr', 'show', 'dev', link)) as { addr_info: { family: string; local: string; prefixlen: number }[] }[])[0]?.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`);

  it('host dev refuses a bad --set before it makes the hub: nothing is made, nothing recorded', () => {
    const before = snapshot();
    const dir = join(tmp.path, 'dev-bad');
    const r = cli('host', 'dev', '--interface', 'mldev1', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard', '--set', 'bogus=1');
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--set bogus: unknown key/);
    assert.deepEqual(snapshot(), before);
    assert.equal(existsSync(dir), false, 'no directory made');
  });

  it('host dev that fails after making the hub (the unit cannot be written) tears that hub down and restores the config', () => {
    const before = snapshot();
    const dir = join(tmp.path, 'dev-fail');
    mkdirSync(dir);
    writeFileSync(join(dir, 'not-a-dir'), '');
    const r = cli('host', 'dev', '--interface', 'mldev2', '--uplink', 'up0', '--hub-state-dir', join(dir, 'deep', 'er', 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'not-a-dir', 'sub', 'unit.service'), '--no-guard', '--set', `state-dir=${join(dir, 'state')}`);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`--unit-out ${join(dir, 'not-a-dir', 'sub', 'unit.service')}: ${join(dir, 'not-a-dir')} is not a directory \\(ENOTDIR\\)`));
    assert.deepEqual(snapshot(), before);
    assert.deepEqual(readdirSync(dir), ['not-a-dir'], 'config, hub state and daemon state dir are gone');
  });

  it('hub setup that fails part way (the DHCP server cannot start) undoes what it made and keeps what was there', () => {
    const before = snapshot();
    const state = join(tmp.path, 'state-fail');
    // A directory where dnsmasq wants its pid file: the server exits at once.
    mkdirSync(join(state, 'dhcp.pid'), { recursive: true });
    const r = cli('hub', 'setup', ...hubFlags(1).slice(0, -1), state);
    assert.equal(r.status, 6, r.stderr);
    assert.match(r.stderr, /dnsmasq exited at once/);
    assert.deepEqual(snapshot(), before);
    assert.deepEqual(readdirSync(state), ['dhcp.pid'], 'only what was there before stays');
  });

  // The state as a failed re-run must put it back: the DHCP server's pid is the restarted one's.
  const stateSansPid = (file: string) => ({ ...(JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>), dhcp: undefined });
  const dhcpUp = () => (JSON.parse(cli('-o', 'json', 'hub', 'status').stdout) as { piece: string; ok: boolean }[]).find((p) => p.piece === 'dhcp')?.ok;

  it('a re-run that fails part way puts back the files, state and NAT of the run before it, and restarts the DHCP server it stopped', () => {
    const state = join(tmp.path, 'state-6');
    assert.equal(cli('hub', 'setup', ...hubFlags(6)).status, 0);
    const kept = { conf: readFileSync(join(state, 'dhcpd.conf'), 'utf8'), unit: readFileSync(join(state, 'matchlock-hub-dhcp.service'), 'utf8'), state: stateSansPid(join(state, 'hub-state.json')), nft: inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, addrs: addrsOf('mlbr6') };
    // dhcpd cannot open a lease file that is a directory: the isc server exits at once.
    mkdirSync(join(state, 'dhcpd.leases'));
    const moved = hubFlags(6, 'isc').map((f) => f.replace('192.168.46.', '192.168.47.'));
    const r = cli('hub', 'setup', ...moved);
    assert.equal(r.status, 6, r.stderr);
    assert.match(r.stderr, /dhcpd exited at once: .*dhcpd\.leases/, 'the cause, not the closing text');
    assert.doesNotMatch(r.stderr, /helpful for debugging|exiting\./);
    assert.deepEqual({ conf: readFileSync(join(state, 'dhcpd.conf'), 'utf8'), unit: readFileSync(join(state, 'matchlock-hub-dhcp.service'), 'utf8'), state: stateSansPid(join(state, 'hub-state.json')), nft: inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, addrs: addrsOf('mlbr6') }, kept);
    assert.equal(dhcpUp(), true, 'the server the re-run stopped runs again');
    rmdirSync(join(state, 'dhcpd.leases'));
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.equal(existsSync(state), false);
  });

  it('a re-run with another --address replaces the address it added; teardown removes it and keeps the link and address that were there', () => {
    ip('link', 'add', 'mlpre0', 'type', 'bridge');
    ip('addr', 'add', '10.77.0.1/24', 'dev', 'mlpre0');
    const flags = (third: number) => ['--interface', 'mlpre0', '--address', `192.168.${third}.2/25`, '--range-start', `192.168.${third}.26`, '--range-end', `192.168.${third}.126`, '--uplink', 'up0', '--dhcp', 'dnsmasq', '--state-dir', join(tmp.path, 'state-pre')];
    assert.equal(cli('hub', 'setup', ...flags(50)).status, 0);
    const again = cli('hub', 'setup', ...flags(51));
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(addrsOf('mlpre0'), ['10.77.0.1/24', '192.168.51.2/25']);
    // The same state dir for another link would leave this hub's link and address unrecorded.
    const other = cli('hub', 'setup', ...flags(51).map((f) => (f === 'mlpre0' ? 'mlother0' : f)));
    assert.equal(other.status, 6, other.stderr);
    assert.match(other.stderr, /state dir \S+ holds the hub on mlpre0, not mlother0: tear that hub down first/);
    assert.equal(ip('-json', 'link', 'show').includes('"mlother0"'), false);
    const down = cli('hub', 'teardown');
    assert.equal(down.status, 0, down.stderr);
    assert.deepEqual(addrsOf('mlpre0'), ['10.77.0.1/24']);
    ip('link', 'del', 'mlpre0');
  });

  it('refuses a second hub while one is recorded and up, naming it and its teardown; the first keeps its NAT', () => {
    const first = cli('hub', 'setup', ...hubFlags(2));
    assert.equal(first.status, 0, first.stderr);
    const nat = inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout;
    const recorded = readFileSync(record, 'utf8');
    const second = cli('hub', 'setup', ...hubFlags(3));
    assert.equal(second.status, 6, second.stderr);
    assert.match(second.stderr, new RegExp(`a hub is already set up on this host: mlbr2 192\\.168\\.42\\.2/25 \\(state dir ${join(tmp.path, 'state-2')}.*matchlock hub teardown`));
    assert.equal(existsSync(join(tmp.path, 'state-3')), false);
    assert.equal(ip('-json', 'link', 'show').includes('"mlbr3"'), false);
    assert.equal(inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, nat);
    assert.equal(readFileSync(record, 'utf8'), recorded);
    const dev = cli('host', 'dev', '--interface', 'mldev3', '--uplink', 'up0', '--hub-state-dir', join(tmp.path, 'dev3'), '--config-out', join(tmp.path, 'dev3.yaml'), '--unit-out', join(tmp.path, 'dev3.service'), '--no-guard');
    assert.equal(dev.status, 6, dev.stderr);
    assert.match(dev.stderr, /host dev: a hub is already set up/);
    assert.equal(existsSync(join(tmp.path, 'dev3.yaml')), false);
    assert.equal(cli('hub', 'teardown').status, 0);
  });

  it('host dev records its hub: status and leases need no flags; --down with no default route and no --uplink removes hub and record', () => {
    const before = snapshot();
    const dir = join(tmp.path, 'dev');
    const dev = ['--interface', 'mldev0', '--address', '192.168.60.2/25', '--range-start', '192.168.60.26', '--range-end', '192.168.60.126', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard'];
    const up = cli('host', 'dev', ...dev, '--uplink', 'up0', '--set', `state-dir=${join(dir, 'state')}`);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    assert.match(readFileSync(record, 'utf8'), new RegExp(`^state-dir: ${join(dir, 'hub')}$`, 'm'));
    const status = cli('-o', 'json', 'hub', 'status');
    assert.equal(status.status, 0, status.stdout + status.stderr);
    assert.ok((JSON.parse(status.stdout) as { piece: string; detail: string }[]).some((p) => p.piece === 'interface' && p.detail === 'mldev0 up'));
    const leases = cli('-o', 'json', 'hub', 'leases');
    assert.equal(leases.status, 0, leases.stderr);
    assert.deepEqual(JSON.parse(leases.stdout), []);
    const down = cli('host', 'dev', ...dev, '--down');
    assert.equal(down.status, 0, down.stderr);
    assert.equal(existsSync(record), false);
    assert.deepEqual(snapshot(), before);
  });

  it('hub leases: a hub that does not exist is an error naming its lease file (exit 6, as status); an empty lease file is an empty table', () => {
    const state = join(tmp.path, 'state-none');
    const missing = cli('hub', 'leases', ...hubFlags(4).slice(0, -1), state);
    assert.equal(missing.status, 6, missing.stdout + missing.stderr);
    assert.match(missing.stderr, new RegExp(`lease file ${join(state, 'dnsmasq.leases')} does not exist`));
    const status = cli('hub', 'status', ...hubFlags(4).slice(0, -1), state);
    assert.equal(status.status, missing.status, 'the same exit code as status for a hub that is down');
    mkdirSync(state);
    writeFileSync(join(state, 'dnsmasq.leases'), '');
    const empty = cli('-o', 'json', 'hub', 'leases', ...hubFlags(4).slice(0, -1), state);
    assert.equal(empty.status, 0, empty.stderr);
    assert.deepEqual(JSON.parse(empty.stdout), []);
  });

  it('refuses a relative --state-dir and bad addresses or VLAN ids with exit 2 naming the flag, before making anything', () => {
    const before = snapshot();
    for (const [over, message] of [
      [['--state-dir', 'relhub'], /^matchlock: --state-dir: must be an absolute path \(relhub is relative\)$/m],
      [['--address', '192.168.44.0/25'], /^matchlock: --address: 192\.168\.44\.0 is the network address of 192\.168\.44\.0\/25, not a host address$/m],
      [['--address', '192.168.44.127/25'], /^matchlock: --address: 192\.168\.44\.127 is the broadcast address of 192\.168\.44\.0\/25/m],
      [['--vlan-id', '5000'], /^matchlock: --vlan-id: must be between 1 and 4094/m],
      [['--vlan-id', '100'], /^matchlock: --vlan-id: only for mode vlan/m],
      // iproute2 would read /010 as /8 and refuse /08; matchlock would have used /10.
      [['--address', '192.168.44.2/010'], /^matchlock: --address: the prefix \/010 has a leading zero, which iproute2 reads as octal/m],
      [['--address', '192.168.44.2/08'], /^matchlock: --address: the prefix \/08 has a leading zero/m],
      [['--address', '192.168.044.2/25'], /^matchlock: --address: must be an IPv4 address/m],
    ] as const) {
      const flags = hubFlags(4);
      for (let i = 0; i < over.length; i += 2) {
        const at = flags.indexOf(over[i] ?? '');
        if (at >= 0) flags.splice(at, 2);
      }
      const r = cli('hub', 'setup', ...flags, ...over);
      assert.equal(r.status, 2, `${over.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    assert.equal(existsSync(join(tmp.path, 'relhub')), false);
    assert.equal(existsSync(join(tmp.path, 'state-4')), false);
    assert.deepEqual(snapshot(), before);
  });

  it('teardown of an isc hub leaves no file in its state dir (dhcpd.leases~ included); a refused vlan setup leaves no state dir', () => {
    const state = join(tmp.path, 'state-5');
    const up = cli('hub', 'setup', ...hubFlags(5, 'isc'));
    assert.equal(up.status, 0, up.stderr);
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.equal(existsSync(state), false, existsSync(state) ? readdirSync(state).join(', ') : '');
    const vlanState = join(tmp.path, 'state-vlan');
    const vlan = cli('hub', 'setup', '--interface', 'up0.100', '--mode', 'vlan', '--parent', 'up0', '--vlan-id', '100', '--uplink', 'up0', '--state-dir', vlanState);
    if (vlan.status === 0) {
      assert.equal(cli('hub', 'teardown').status, 0);
    } else {
      assert.equal(vlan.status, 6, vlan.stderr);
    }
    assert.equal(existsSync(vlanState), false);
  });
  it('re-running an isc hub with changed settings replaces its dhcpd: the old one is gone, the new one runs', () => {
    const state = join(tmp.path, 'state-8');
    const up = cli('hub', 'setup', ...hubFlags(8, 'isc'));
    assert.equal(up.status, 0, up.stderr);
    const pidOf = () => (JSON.parse(readFileSync(join(state, 'hub-state.json'), 'utf8')) as { dhcp?: { pid: number } }).dhcp?.pid ?? 0;
    const first = pidOf();
    for (const change of [['--max-lease-time', '9000'], ['--dns-servers', '1.1.1.1']]) {
      const again = cli('hub', 'setup', ...hubFlags(8, 'isc'), ...change);
      assert.equal(again.status, 0, `${change.join(' ')}: ${again.stderr}`);
      assert.equal(dhcpUp(), true, change.join(' '));
    }
    assert.equal(running(first), false, 'the first dhcpd is stopped');
    const last = pidOf();
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.equal(running(last), false);
    assert.equal(existsSync(state), false);
  });

  it('a dnsmasq hub re-run as isc starts dhcpd (no stale pid file stops it)', () => {
    assert.equal(cli('hub', 'setup', ...hubFlags(9)).status, 0);
    const isc = cli('hub', 'setup', ...hubFlags(9, 'isc'));
    assert.equal(isc.status, 0, isc.stderr);
    assert.equal(dhcpUp(), true);
    assert.equal(cli('hub', 'teardown').status, 0);
  });

  it('a setup killed while it waits on its DHCP server has recorded it: teardown stops it', async () => {
    const state = join(tmp.path, 'state-10');
    const { child, done } = cliAsync('hub', 'setup', ...hubFlags(10));
    // dnsmasq writes its pid file once it is up, within setup's wait for an early exit.
    for (let i = 0; i < 500 && !existsSync(join(state, 'dhcp.pid')); i++) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGKILL');
    await done;
    const pid = Number(readFileSync(join(state, 'dhcp.pid'), 'utf8').trim());
    assert.ok(pid > 0);
    const down = cli('hub', 'teardown', ...hubFlags(10));
    assert.equal(down.status, 0, down.stderr);
    assert.equal(running(pid), false, 'the server the killed setup started is stopped');
    assert.equal(existsSync(state), false);
  });

  it('host dev --down without --hub-state-dir removes the recorded hub and names its interface', () => {
    const before = snapshot();
    const dir = join(tmp.path, 'dev-rec');
    const up = cli('host', 'dev', '--interface', 'mldev5', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard', '--set', `state-dir=${join(dir, 'state')}`);
    assert.equal(up.status, 0, up.stderr);
    const down = cli('-o', 'json', 'host', 'dev', '--down', '--no-guard');
    assert.equal(down.status, 0, down.stderr);
    assert.equal((JSON.parse(down.stdout) as { removed: string }).removed, 'mldev5');
    assert.equal(existsSync(record), false);
    assert.deepEqual(snapshot(), before);
    assert.equal(existsSync(join(dir, 'hub')), false);
  });

  it('one hub per host: two setups at once make one hub; an unreadable record or a table another record made is refused', async () => {
    const [a, b] = await Promise.all([cliAsync('hub', 'setup', ...hubFlags(11)).done, cliAsync('hub', 'setup', ...hubFlags(12)).done]);
    assert.deepEqual([a.status, b.status].sort(), [0, 6], a.stderr + b.stderr);
    assert.match(a.status === 6 ? a.stderr : b.stderr, /a hub is already set up on this host/);
    assert.equal(cli('hub', 'teardown').status, 0);
    const nothing = snapshot();

    writeFileSync(record, 'interface: [\n');
    const bad = cli('hub', 'setup', ...hubFlags(13));
    assert.equal(bad.status, 6, bad.stderr);
    assert.match(bad.stderr, new RegExp(`hub record ${record} cannot be read`));
    assert.equal(readFileSync(record, 'utf8'), 'interface: [\n');
    assert.equal(existsSync(join(tmp.path, 'state-13')), false);
    unlinkSync(record);

    assert.equal(cli('hub', 'setup', ...hubFlags(14)).status, 0);
    const nat = inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout;
    const other = cliWith(join(tmp.path, 'other-record.yaml'), 'hub', 'setup', ...hubFlags(15));
    assert.equal(other.status, 6, other.stderr);
    assert.match(other.stderr, /nftables table ip matchlock_hub exists and this hub's state .* did not make it.*nft list table ip matchlock_hub/);
    assert.equal(inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, nat);
    assert.equal(existsSync(join(tmp.path, 'state-15')), false);
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.deepEqual(snapshot(), nothing);
  });

  it('the same state dir with a trailing slash is the same hub; a state dir made with parents goes with them', () => {
    const deep = join(tmp.path, 'deep-16');
    const flags = hubFlags(16).slice(0, -1);
    assert.equal(cli('hub', 'setup', ...flags, join(deep, 'er', 's')).status, 0);
    const again = cli('hub', 'setup', ...flags, `${join(deep, 'er', 's')}/`);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.equal(existsSync(deep), false, 'the parents setup made are removed');
  });

  it("teardown keeps the admin's secondary address and puts a link that was down back down, also after a failed setup", () => {
    ip('link', 'add', 'mlpre1', 'type', 'bridge');
    const flags = ['--interface', 'mlpre1', '--address', '192.168.52.2/25', '--range-start', '192.168.52.26', '--range-end', '192.168.52.126', '--uplink', 'up0', '--dhcp', 'dnsmasq', '--state-dir', join(tmp.path, 'state-pre1')];
    const isUp = () => (JSON.parse(ip('-json', 'link', 'show', 'dev', 'mlpre1')) as { flags: string[] }[])[0]?.flags.includes('UP');
    mkdirSync(join(tmp.path, 'state-pre1', 'dhcp.pid'), { recursive: true });
    assert.equal(cli('hub', 'setup', ...flags).status, 6);
    assert.equal(isUp(), false, 'a failed setup leaves the link down as it found it');
    rmSync(join(tmp.path, 'state-pre1'), { recursive: true });
    const up = cli('hub', 'setup', ...flags);
    assert.equal(up.status, 0, up.stderr);
    assert.equal(isUp(), true);
    ip('addr', 'add', '192.168.52.9/25', 'dev', 'mlpre1');
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.deepEqual(addrsOf('mlpre1'), ['192.168.52.9/25']);
    assert.equal(isUp(), false);
    ip('link', 'del', 'mlpre1');
  });

  it('teardown without the state file, or with one that cannot be read, removes nothing, says so, exits 6 and keeps the record', () => {
    const state = join(tmp.path, 'state-17');
    assert.equal(cli('hub', 'setup', ...hubFlags(17)).status, 0);
    const saved = readFileSync(join(state, 'hub-state.json'), 'utf8');
    const recorded = readFileSync(record, 'utf8');
    unlinkSync(join(state, 'hub-state.json'));
    const down = cli('hub', 'teardown');
    assert.equal(down.status, 6, down.stderr);
    assert.match(down.stderr, new RegExp(`no hub state at ${join(state, 'hub-state.json')}: nothing removed`));
    assert.equal(readFileSync(record, 'utf8'), recorded);
    assert.equal(ip('-json', 'link', 'show').includes('"mlbr17"'), true);
    // A state that cannot be read is not "no hub" either: refused naming it.
    writeFileSync(join(state, 'hub-state.json'), saved.slice(0, 20));
    const garbled = cli('hub', 'teardown');
    assert.equal(garbled.status, 6, garbled.stderr);
    assert.match(garbled.stderr, new RegExp(`hub state ${join(state, 'hub-state.json')} cannot be read`));
    assert.equal(readFileSync(record, 'utf8'), recorded);
    writeFileSync(join(state, 'hub-state.json'), saved);
    assert.equal(cli('hub', 'teardown').status, 0);
  });

  it("teardown puts back the admin's files of a state dir that was there and keeps the dir; a failed run leaves them untouched", () => {
    const state = join(tmp.path, 'state-admin');
    mkdirSync(state);
    const admin = { 'dhcpd.conf': '# the admin\'s dhcpd.conf\n', 'dhcpd.leases': '# the admin\'s leases\n', 'dhcp.log': 'the admin\'s log\n' };
    for (const [f, text] of Object.entries(admin)) writeFileSync(join(state, f), text);
    const contents = () => Object.fromEntries(readdirSync(state).sort().map((f) => [f, readFileSync(join(state, f), 'utf8')]));
    // dnsmasq cannot write a pid file that is a directory: this run fails after writing the conf and the log.
    mkdirSync(join(state, 'dhcp.pid'));
    const failed = cli('hub', 'setup', ...hubFlags(19).slice(0, -1), state);
    assert.equal(failed.status, 6, failed.stderr);
    rmdirSync(join(state, 'dhcp.pid'));
    assert.deepEqual(contents(), admin, 'a failed run leaves the files as they were, the log not appended to');
    const up = cli('hub', 'setup', ...hubFlags(19, 'isc').slice(0, -1), state);
    assert.equal(up.status, 0, up.stderr);
    assert.notEqual(readFileSync(join(state, 'dhcpd.conf'), 'utf8'), admin['dhcpd.conf']);
    const down = cli('hub', 'teardown');
    assert.equal(down.status, 0, down.stderr);
    assert.deepEqual(contents(), admin, 'teardown puts them back and removes only what setup made');
    // An empty state dir that was there stays too.
    const empty = join(tmp.path, 'state-empty');
    mkdirSync(empty);
    assert.equal(cli('hub', 'setup', ...hubFlags(20).slice(0, -1), empty).status, 0);
    assert.equal(cli('hub', 'teardown').status, 0);
    assert.deepEqual(readdirSync(empty), []);
  });

  it("teardown and a failed run put back the mode and owner of the admin's files too, not only their content", () => {
    const state = join(tmp.path, 'state-admin-modes');
    mkdirSync(state);
    const admin: Record<string, [string, number, number, number]> = {
      'dhcpd.conf': ['# the admin\'s dhcpd.conf\n', 0o640, 1234, 2345],
      'dhcpd.leases': ['# the admin\'s leases\n', 0o600, 1234, 2345],
      'dhcp.log': ['the admin\'s log\n', 0o604, 0, 2345],
    };
    for (const [f, [text, mode, uid, gid]] of Object.entries(admin)) {
      writeFileSync(join(state, f), text);
      chownSync(join(state, f), uid, gid);
      chmodSync(join(state, f), mode);
    }
    const files = () => Object.fromEntries(readdirSync(state).sort().map((f) => {
      const st = statSync(join(state, f));
      return [f, [readFileSync(join(state, f), 'utf8'), st.mode & 0o7777, st.uid, st.gid]];
    }));
    // dnsmasq cannot write a pid file that is a directory: this run fails after rewriting the conf and the log.
    mkdirSync(join(state, 'dhcp.pid'));
    const failed = cli('hub', 'setup', ...hubFlags(32).slice(0, -1), state);
    assert.equal(failed.status, 6, failed.stderr);
    rmdirSync(join(state, 'dhcp.pid'));
    assert.deepEqual(files(), admin, 'a failed run puts back content, mode and owner');
    const up = cli('hub', 'setup', ...hubFlags(32, 'isc').slice(0, -1), state);
    assert.equal(up.status, 0, up.stderr);
    const down = cli('hub', 'teardown');
    assert.equal(down.status, 0, down.stderr);
    assert.deepEqual(files(), admin, 'teardown puts back content, mode and owner (dhcpd replaced the lease file by a new inode)');
  });

  it('host dev --down removes the guest guard only when dev mode installed it, never one host setup left for a daemon', () => {
    const dir = join(tmp.path, 'dev-guard');
    const dev = ['--interface', 'mldev6', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--set', `state-dir=${join(dir, 'state')}`];
    const guard = () => inNs('nft', 'list', 'table', 'inet', 'matchlock_guard').status === 0;
    // The guard host setup installed for a running daemon.
    assert.equal(inNs('nft', 'add', 'table', 'inet', 'matchlock_guard').status, 0);
    const up = cli('host', 'dev', ...dev);
    assert.equal(up.status, 0, up.stderr);
    const down = cli('host', 'dev', '--down');
    assert.equal(down.status, 0, down.stderr);
    assert.equal(guard(), true, 'the guard that was there stays');
    assert.equal(inNs('nft', 'delete', 'table', 'inet', 'matchlock_guard').status, 0);
    inNs('nft', 'delete', 'table', 'bridge', 'matchlock_guard');
    const again = cli('host', 'dev', ...dev);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(guard(), true);
    assert.equal(cli('host', 'dev', '--down').status, 0);
    assert.equal(guard(), false, 'the guard dev mode installed goes with it');
    rmSync(dir, { recursive: true, force: true });
  });

  it('host dev --down leaves a guard host setup installed after dev mode (a daemon relies on it), and --no-guard never drops the only record of a guard dev mode installed', () => {
    const dir = join(tmp.path, 'dev-guard-claimed');
    const dev = ['--interface', 'mldev31', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--set', `state-dir=${join(dir, 'state')}`];
    const guard = () => inNs('nft', 'list', 'table', 'inet', 'matchlock_guard').status === 0;
    assert.equal(guard(), false);
    const up = cli('host', 'dev', ...dev);
    assert.equal(up.status, 0, up.stderr);
    assert.equal(guard(), true);
    // --no-guard on a hub whose state is the guard's only record: refused, hub and guard stay.
    const keep = cli('host', 'dev', '--down', '--no-guard');
    assert.equal(keep.status, 2, keep.stderr);
    assert.match(keep.stderr, /^matchlock: host dev --down --no-guard: dev mode installed the guest guard with the hub in .*; run host dev --down without --no-guard/m);
    assert.equal(existsSync(join(dir, 'hub', 'hub-state.json')), true);
    assert.equal(existsSync(record), true);
    // A daemon is set up on the dev bridge: the guard is its now.
    const setup = cli('host', 'setup', '--set', 'bridge-name=mldev31', '--set', `state-dir=${join(dir, 'daemon')}`, '--set', 'vmm-user=root', '--config-out', join(dir, 'd', 'config.yaml'), '--unit-out', join(dir, 'd', 'unit.service'));
    assert.ok(existsSync(join(dir, 'd', 'unit.service')), setup.stderr);
    const down = cli('host', 'dev', '--down');
    assert.equal(down.status, 0, down.stderr);
    assert.equal(guard(), true, 'the guard host setup claimed stays for its daemon');
    assert.equal(inNs('nft', 'delete', 'table', 'inet', 'matchlock_guard').status, 0);
    inNs('nft', 'delete', 'table', 'bridge', 'matchlock_guard');
    rmSync(dir, { recursive: true, force: true });
  });

  it('a host dev re-run that cannot write its unit leaves the hub, its NAT and the record as the run before left them', () => {
    const dir = join(tmp.path, 'dev-rerun');
    const dev = (third: number, unit: string) => ['--interface', 'mldev7', '--address', `192.168.${third}.2/25`, '--range-start', `192.168.${third}.26`, '--range-end', `192.168.${third}.126`, '--uplink', 'up0', '--dhcp', 'dnsmasq', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', unit, '--no-guard', '--set', `state-dir=${join(dir, 'state')}`];
    const up = cli('host', 'dev', ...dev(63, join(dir, 'unit.service')));
    assert.equal(up.status, 0, up.stderr);
    const kept = { addrs: addrsOf('mldev7'), nft: inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, record: readFileSync(record, 'utf8'), conf: readFileSync(join(dir, 'hub', 'dhcpd.conf'), 'utf8') };
    writeFileSync(join(dir, 'a-file'), '');
    const again = cli('host', 'dev', ...dev(64, join(dir, 'a-file', 'unit.service')));
    assert.deepEqual({ addrs: addrsOf('mldev7'), nft: inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, record: readFileSync(record, 'utf8'), conf: readFileSync(join(dir, 'hub', 'dhcpd.conf'), 'utf8') }, kept);
    assert.equal(again.status, 2, again.stderr);
    assert.match(again.stderr, /--unit-out \S+: \S+a-file is not a directory \(ENOTDIR\)/);
    assert.equal(dhcpUp(), true);
    assert.equal(cli('host', 'dev', '--down', '--no-guard').status, 0);
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a --state-dir that is a file or cannot be written naming the flag, and a state file of the wrong shape as unreadable (exit 6), removing nothing', () => {
    const before = snapshot();
    const file = join(tmp.path, 'state-is-a-file');
    writeFileSync(file, '');
    const r = cli('hub', 'setup', ...hubFlags(21).slice(0, -1), file);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`^matchlock: --state-dir ${file}: ${file} is not a directory$`, 'm'));
    // Nor is it a hub for leases, status or teardown: no hub there, exit 6, not a bare ENOTDIR.
    for (const cmd of ['leases', 'status', 'teardown']) {
      const none = cli('hub', cmd, ...hubFlags(21).slice(0, -1), file);
      assert.equal(none.status, 6, `${cmd}: ${none.stderr}`);
      assert.doesNotMatch(none.stderr, /ENOTDIR/, cmd);
    }
    const frozen = join(tmp.path, 'state-frozen');
    mkdirSync(frozen);
    if (spawnSync('chattr', ['+i', frozen]).status === 0) {
      try {
        const imm = cli('hub', 'setup', ...hubFlags(21).slice(0, -1), join(frozen, 'hub'));
        assert.equal(imm.status, 6, imm.stderr);
        assert.match(imm.stderr, new RegExp(`^matchlock: --state-dir ${join(frozen, 'hub')}: ${frozen} cannot be written \\(EPERM\\)$`, 'm'));
      } finally {
        spawnSync('chattr', ['-i', frozen]);
      }
    }
    assert.deepEqual(snapshot(), before);
    // Hand-edited states: teardown removes nothing they name, relative names in the cwd least of all.
    const state = join(tmp.path, 'state-shape');
    mkdirSync(state);
    for (const f of ['a', 'b', 'c']) writeFileSync(join(tmp.path, f), '');
    for (const [text, why] of [
      ['null', /holds null, not a JSON object/],
      ['"str"', /holds "str", not a JSON object/],
      ['{}', /"createdLink" must be true or false/],
      ['{"createdLink":false,"nft":false,"files":"abc"}', /"files" must be a list of absolute paths directly in/],
      ['{"createdLink":false,"nft":false,"files":["/etc/hostname"]}', /"files" must be a list of absolute paths directly in/],
    ] as const) {
      writeFileSync(join(state, 'hub-state.json'), text);
      const down = cli('hub', 'teardown', ...hubFlags(21).slice(0, -1), state);
      assert.equal(down.status, 6, `${text}: ${down.stderr}`);
      assert.match(down.stderr, new RegExp(`hub state ${join(state, 'hub-state.json')} cannot be read \\(`), text);
      assert.match(down.stderr, why, text);
    }
    assert.deepEqual(['a', 'b', 'c'].map((f) => existsSync(join(tmp.path, f))), [true, true, true]);
    assert.equal(existsSync('/etc/hostname'), true);
  });

  it('teardown with no state and no record does not speak of a record; teardown waits for a setup holding the lock', async () => {
    const state = join(tmp.path, 'state-none-22');
    const none = cli('hub', 'teardown', ...hubFlags(22).slice(0, -1), state);
    assert.equal(none.status, 6, none.stderr);
    assert.match(none.stderr, /nothing removed$/m);
    assert.doesNotMatch(none.stderr, /the record/);
    assert.equal(cli('hub', 'setup', ...hubFlags(22)).status, 0);
    // A setup in progress (this process stands in for it) holds the lock: teardown waits for it.
    const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
    writeFileSync(`${record}.lock`, `${process.pid} ${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]}\n`);
    const down = cliAsync('hub', 'teardown');
    const early = await Promise.race([down.done, new Promise((r) => setTimeout(() => r('waiting'), 2000))]);
    assert.equal(early, 'waiting', 'teardown does not run while a setup holds the lock');
    assert.equal(existsSync(join(tmp.path, 'state-22', 'hub-state.json')), true);
    unlinkSync(`${record}.lock`);
    const done = await down.done;
    assert.equal(done.status, 0, done.stderr);
    assert.equal(existsSync(record), false);
  });

  it('host dev refusing a state dir that holds another hub names --hub-state-dir, its own flag', () => {
    const dir = join(tmp.path, 'dev-names');
    assert.equal(cli('hub', 'setup', ...hubFlags(23).slice(0, -1), join(dir, 'hub')).status, 0);
    const dev = cli('host', 'dev', '--interface', 'mldev8', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--no-guard');
    assert.equal(dev.status, 6, dev.stderr);
    assert.match(dev.stderr, /holds the hub on mlbr23, not mldev8: .* or give another --hub-state-dir$/m);
    assert.equal(cli('hub', 'teardown').status, 0);
  });

  it("writes the DHCP server's unit so systemd reads back a state dir with a space, % and $ as it is", (t) => {
    const state = join(tmp.path, 'st ate %Z $x');
    const up = cli('hub', 'setup', ...hubFlags(24).slice(0, -1), state);
    assert.equal(up.status, 0, up.stderr);
    const unitFile = join(state, 'matchlock-hub-dhcp.service');
    const exec = readFileSync(unitFile, 'utf8').split('\n').find((l) => l.startsWith('ExecStart=')) ?? '';
    assert.ok(exec.includes(` "--dhcp-leasefile=${join(tmp.path, 'st ate %%Z $$x')}/dnsmasq.leases" `), exec);
    const verify = spawnSync('systemd-analyze', ['verify', unitFile], { encoding: 'utf8' });
    assert.equal(cli('hub', 'teardown').status, 0);
    if (verify.error) t.skip('systemd-analyze is not installed');
    else assert.equal(verify.status, 0, verify.stderr);
  });

  it('a host dev re-run that fails after changing the hub (the guard cannot be loaded) puts the previous hub and record back', () => {
    const dir = join(tmp.path, 'dev-restore');
    const dev = (third: number) => ['host', 'dev', '--interface', 'mldev9', '--address', `192.168.${third}.2/25`, '--range-start', `192.168.${third}.26`, '--range-end', `192.168.${third}.126`, '--uplink', 'up0', '--dhcp', 'dnsmasq', '--hub-state-dir', join(dir, 'hub'), '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--set', `state-dir=${join(dir, 'state')}`];
    const up = cli(...dev(65));
    assert.equal(up.status, 0, up.stderr);
    const kept = () => ({ addrs: addrsOf('mldev9'), nft: inNs('nft', 'list', 'table', 'ip', 'matchlock_hub').stdout, record: readFileSync(record, 'utf8'), conf: readFileSync(join(dir, 'hub', 'dhcpd.conf'), 'utf8'), config: readFileSync(join(dir, 'config.yaml'), 'utf8') });
    const before = kept();
    // An nft that loads everything but the guard: the run fails after it re-ran the hub's setup.
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const nft = execFileSync('sh', ['-c', 'command -v nft'], { encoding: 'utf8' }).trim();
    writeFileSync(join(bin, 'nft'), `#!/bin/sh\nif [ "$1" = -f ] && [ "$2" = - ]; then in=$(cat); case "$in" in *matchlock_guard*) echo "nft: guard refused" >&2; exit 1;; esac; printf '%s\\n' "$in" | exec ${nft} "$@"; fi\nexec ${nft} "$@"\n`, { mode: 0o755 });
    const again = spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), ...dev(66)], { encoding: 'utf8', cwd: tmp.path, env: { ...process.env, MATCHLOCK_HUB_RECORD: record, PATH: `${bin}:${process.env.PATH ?? ''}` } });
    assert.deepEqual(kept(), before);
    assert.equal(again.status, 1, again.stderr);
    assert.match(again.stderr, /guard refused/);
    assert.equal(dhcpUp(), true);
    assert.equal(cli('host', 'dev', '--down').status, 0);
    assert.equal(inNs('nft', 'list', 'table', 'inet', 'matchlock_guard').status, 1, 'the guard dev mode installed is gone');
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses bridge mode on a link that is not a bridge, and host dev names --hub-state-dir', () => {
    ip('link', 'add', 'mlveth0', 'type', 'veth', 'peer', 'name', 'mlveth1');
    const r = cli('hub', 'setup', ...hubFlags(18).map((f) => (f === 'mlbr18' ? 'mlveth0' : f)));
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--interface mlveth0: is a veth link, not a bridge/);
    assert.equal(existsSync(join(tmp.path, 'state-18')), false);
    ip('link', 'del', 'mlveth0');
    const dev = cli('host', 'dev', '--uplink', 'up0', '--hub-state-dir', 'rel/hub', '--no-guard', '--config-out', join(tmp.path, 'x.yaml'), '--unit-out', join(tmp.path, 'x.service'));
    assert.equal(dev.status, 2, dev.stderr);
    assert.match(dev.stderr, /^matchlock: --hub-state-dir: must be an absolute path/m);
  });

  it('refuses a link name the kernel reserves (all, default) and a MATCHLOCK_HUB_RECORD under a file with exit 2 naming the flag or the variable, making nothing', () => {
    const before = snapshot();
    for (const name of ['all', 'default']) {
      const r = cli('hub', 'setup', ...hubFlags(30).map((f) => (f === 'mlbr30' ? name : f)));
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`^matchlock: --interface: "${name}" is reserved by the kernel`, 'm'));
      const dev = cli('host', 'dev', '--interface', name, '--uplink', 'up0', '--hub-state-dir', join(tmp.path, 'dev-30'), '--no-guard', '--config-out', join(tmp.path, 'dev-30.yaml'), '--unit-out', join(tmp.path, 'dev-30.service'));
      assert.equal(dev.status, 2, dev.stderr);
      assert.match(dev.stderr, new RegExp(`^matchlock: --interface: "${name}" is reserved`, 'm'));
    }
    const uplink = cli('hub', 'setup', ...hubFlags(30).map((f) => (f === 'up0' ? 'default' : f)));
    assert.equal(uplink.status, 2, uplink.stderr);
    assert.match(uplink.stderr, /^matchlock: --uplink: "default" is reserved/m);
    const file = join(tmp.path, 'record-parent-is-a-file');
    writeFileSync(file, '');
    const under = join(file, 'hub.yaml');
    for (const args of [['hub', 'setup', ...hubFlags(30)], ['hub', 'teardown', ...hubFlags(30)], ['host', 'dev', '--interface', 'mldev30', '--uplink', 'up0', '--hub-state-dir', join(tmp.path, 'dev-30'), '--no-guard', '--config-out', join(tmp.path, 'dev-30.yaml'), '--unit-out', join(tmp.path, 'dev-30.service')], ['host', 'dev', '--down', '--no-guard']]) {
      const r = cliWith(under, ...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^matchlock: MATCHLOCK_HUB_RECORD=${under}: ${file} is not a directory`, 'm'), args.join(' '));
    }
    const dir = join(tmp.path, 'record-is-a-dir');
    mkdirSync(dir);
    const r = cliWith(dir, 'hub', 'setup', ...hubFlags(30));
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`^matchlock: MATCHLOCK_HUB_RECORD=${dir}: is not a regular file`, 'm'));
    assert.deepEqual(snapshot(), before);
    assert.equal(existsSync(join(tmp.path, 'state-30')), false);
    assert.equal(existsSync(join(tmp.path, 'dev-30')), false);
    rmdirSync(dir);
    rmSync(file);
  });

  it("refuses a DHCP server whose path systemd cannot run (a quote in it) before making anything, naming the server and the rule", () => {
    const before = snapshot();
    const bin = join(tmp.path, "bin'q");
    mkdirSync(bin);
    const real = execFileSync('sh', ['-c', 'command -v dnsmasq'], { encoding: 'utf8' }).trim();
    execFileSync('ln', ['-s', real, join(bin, 'dnsmasq')]);
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), 'hub', 'setup', ...hubFlags(31)], { encoding: 'utf8', cwd: tmp.path, env: { ...process.env, MATCHLOCK_HUB_RECORD: record, PATH: `${bin}:${process.env.PATH ?? ''}` } });
    assert.equal(r.status, 6, r.stderr);
    assert.ok(r.stderr.includes(`dnsmasq at ${join(bin, 'dnsmasq')}: systemd refuses an executable whose path holds a quote or a backslash`), r.stderr);
    assert.deepEqual(snapshot(), before);
    assert.equal(existsSync(join(tmp.path, 'state-31')), false);
    assert.equal(existsSync(record), false);
    rmSync(bin, { recursive: true });
  });

  it("says why dhcpd failed at once when port 67 is taken: the bind error, not dhcpd's advice paragraph", async () => {
    const before = snapshot();
    // Another DHCP server stands in: a UDP socket on 0.0.0.0:67 in the namespace.
    const holder = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', "require('dgram').createSocket('udp4').bind(67, '0.0.0.0', () => console.log('bound'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.on('data', () => resolve());
        holder.on('exit', (code) => reject(new Error(`the port holder exited with ${code}`)));
      });
      const r = cli('hub', 'setup', ...hubFlags(33, 'isc'));
      assert.equal(r.status, 6, r.stderr);
      assert.match(r.stderr, /^matchlock: dhcpd exited at once: Can't bind to dhcp address: Address already in use$/m);
    } finally {
      holder.kill('SIGTERM');
    }
    assert.deepEqual(snapshot(), before);
    assert.equal(existsSync(join(tmp.path, 'state-33')), false);
  });

  it("status reports another table's forward chain that drops the hub's traffic (iptables FORWARD policy DROP, as Docker sets), with the rules that let it through, and leaves that table alone", (t) => {
    if (spawnSync('sh', ['-c', 'command -v iptables-nft']).status !== 0) return t.skip('iptables-nft is not installed');
    const ipt = (...a: string[]) => {
      const r = inNs('iptables-nft', ...a);
      assert.equal(r.status, 0, r.stderr);
    };
    assert.equal(cli('hub', 'setup', ...hubFlags(34)).status, 0);
    try {
      ipt('-N', 'DOCKER-USER');
      ipt('-A', 'FORWARD', '-j', 'DOCKER-USER');
      ipt('-P', 'FORWARD', 'DROP');
      const before = inNs('nft', 'list', 'table', 'ip', 'filter').stdout;
      const status = cli('hub', 'status');
      assert.equal(status.status, 6, status.stdout);
      assert.match(status.stdout, /forward +down +table ip filter chain FORWARD \(policy drop\) drops mlbr34 to up0 and the replies back into mlbr34: a drop in any base chain drops the packet/);
      const json = (JSON.parse(cli('-o', 'json', 'hub', 'status').stdout) as { piece: string; ok: boolean; fix?: string }[]).find((p) => p.piece === 'forward');
      assert.equal(json?.fix, 'iptables -I DOCKER-USER -i mlbr34 -o up0 -j ACCEPT; iptables -I DOCKER-USER -i up0 -o mlbr34 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT');
      assert.equal(inNs('nft', 'list', 'table', 'ip', 'filter').stdout, before, 'status changes no other table');
      // The fix it names, run as given, lets the hub through.
      for (const cmd of (json?.fix ?? '').split('; ')) ipt(...cmd.split(' ').slice(1));
      const fixed = cli('hub', 'status');
      assert.equal(fixed.status, 0, fixed.stdout);
      assert.match(fixed.stdout, /forward +up +no other table's forward chain drops mlbr34's traffic/);
    } finally {
      inNs('nft', 'delete', 'table', 'ip', 'filter');
      assert.equal(cli('hub', 'teardown').status, 0);
    }
  });
});
