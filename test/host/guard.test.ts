import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GUARD_TABLE } from '../../src/host/guard.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

const need = ['dnsmasq', 'nft', 'busybox', 'ip'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = process.getuid?.() !== 0 ? 'needs root' : need.length ? `missing: ${need.join(', ')}` : false;

/**
 * The guard for real, in namespaces: a host namespace running `matchlock host dev` (bridge,
 * DHCP, NAT and the guard), a guest namespace behind a veth named like a matchlock TAP and
 * enslaved to the bridge as a TAP would be, an uplink namespace beyond NAT, and a namespace
 * behind a port with another name, which the guard must leave alone.
 */
describe('guest guard (nftables) in namespaces', { skip: skip && !process.env.CI ? skip : false }, () => {
  const id = randomBytes(3).toString('hex');
  const [host, guest, up, other] = ['mlgh', 'mlgg', 'mlgu', 'mlgo'].map((p) => `${p}-${id}`) as [string, string, string, string];
  const tmp = tempDir('guard');
  const ip = (...a: string[]) => execFileSync('ip', a, { encoding: 'utf8' });
  // host dev records its hub; the record goes to the test's own directory, not the host's.
  const inNs = (ns: string, ...cmd: string[]) => spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', env: { ...process.env, MATCHLOCK_HUB_RECORD: join(tmp.path, 'hub-record.yaml') } });
  const ping = (ns: string, addr: string) => inNs(ns, 'ping', '-c', '1', '-W', '1', addr).status === 0;
  const cli = (...a: string[]) => inNs(host, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a);
  const script = join(tmp.path, 'udhcpc.sh');
  const dev = ['--interface', 'mldev0', '--address', '192.168.30.2/25', '--range-start', '192.168.30.26', '--range-end', '192.168.30.126', '--uplink', 'up0', '--hub-state-dir', join(tmp.path, 'hub')];
  const files = ['--config-out', join(tmp.path, 'etc', 'config.yaml'), '--unit-out', join(tmp.path, 'etc', 'matchlockd.service'), '--set', `state-dir=${join(tmp.path, 'state')}`];

  before(() => {
    assert.equal(skip, false, String(skip));
    for (const ns of [host, guest, up, other]) {
      ip('netns', 'add', ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    ip('-n', host, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'srv0', 'netns', up);
    ip('-n', host, 'addr', 'add', '10.99.0.1/24', 'dev', 'up0');
    ip('-n', host, 'link', 'set', 'up0', 'up');
    ip('-n', up, 'addr', 'add', '10.99.0.2/24', 'dev', 'srv0');
    ip('-n', up, 'link', 'set', 'srv0', 'up');
    ip('-n', host, 'addr', 'add', '10.123.0.1/32', 'dev', 'lo');
    writeFileSync(script, '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; ip route replace default via "${router%% *}";; esac\n');
    chmodSync(script, 0o755);
  });
  after(() => {
    for (const ns of [guest, other, up, host]) spawnSync('ip', ['netns', 'del', ns]);
    tmp.remove();
  });

  it('host dev installs it: a guest gets DHCP and reaches the uplink, but not the host; other ports are untouched; --down removes it', () => {
    const nftBefore = inNs(host, 'nft', 'list', 'ruleset').stdout;
    const r = cli('host', 'dev', ...dev, ...files);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const unit = readFileSync(join(tmp.path, 'etc', 'matchlockd.service'), 'utf8');
    const guardFile = join(tmp.path, 'etc', 'guard.nft');
    assert.match(unit, new RegExp(`^ExecStartPre=\\S*nft -f ${guardFile}$`, 'm'), 'the unit loads the guard before every start');
    assert.equal(inNs(host, 'nft', '-c', '-f', guardFile).status, 0, 'nft accepts the guard file');
    assert.equal(cli('host', 'dev', ...dev, ...files).status, 0, 'idempotent');
    assert.equal((inNs(host, 'nft', 'list', 'tables').stdout.match(new RegExp(GUARD_TABLE, 'g')) ?? []).length, 2, 'one bridge and one inet table, not duplicated');

    // The guest: a port named like a matchlock TAP on the bridge.
    ip('-n', host, 'link', 'add', 'mltguard0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', guest);
    ip('-n', host, 'link', 'set', 'mltguard0', 'master', 'mldev0', 'up');
    ip('-n', guest, 'link', 'set', 'eth0', 'up');
    const dhcp = inNs(guest, 'busybox', 'udhcpc', '-i', 'eth0', '-s', script, '-q', '-n', '-t', '10', '-T', '1');
    assert.equal(dhcp.status, 0, `DHCP to the hub passes the guard: ${dhcp.stderr}`);
    const addr = (JSON.parse(ip('-n', guest, '-json', 'addr', 'show', 'eth0')) as { addr_info: { family: string; local: string }[] }[])[0]?.addr_info.find((a) => a.family === 'inet')?.local ?? '';
    assert.match(addr, /^192\.168\.30\./);
    assert.equal(ping(guest, '10.99.0.2'), true, 'through the host (NAT) to the uplink');
    assert.equal(ping(host, addr), true, 'the host reaches the guest; the replies come back');
    assert.equal(ping(guest, '192.168.30.2'), false, "the host's bridge address is dropped");
    assert.equal(ping(guest, '10.99.0.1'), false, "the host's uplink address is dropped");
    assert.equal(ping(guest, '10.123.0.1'), false, "and so is any other of the host's own addresses (one on lo)");

    // A port with another name is not a guest of matchlock's.
    ip('-n', host, 'link', 'add', 'other0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', other);
    ip('-n', host, 'link', 'set', 'other0', 'master', 'mldev0', 'up');
    ip('-n', other, 'addr', 'add', '192.168.30.20/25', 'dev', 'eth0');
    ip('-n', other, 'link', 'set', 'eth0', 'up');
    assert.equal(ping(other, '192.168.30.2'), true, 'a non-matchlock port reaches the host');

    // The drops above are the guard's: without it the same guest reaches the host.
    assert.equal(inNs(host, 'nft', 'delete', 'table', 'inet', GUARD_TABLE).status, 0);
    assert.equal(ping(guest, '192.168.30.2'), true, 'without the guard the guest reaches the host');
    assert.equal(cli('host', 'dev', ...dev, ...files).status, 0, 'setup puts it back');
    assert.equal(ping(guest, '192.168.30.2'), false);

    for (const l of ['mltguard0', 'other0']) ip('-n', host, 'link', 'del', l);
    const down = cli('host', 'dev', ...dev, '--down');
    assert.equal(down.status, 0, down.stderr);
    assert.equal(inNs(host, 'nft', 'list', 'ruleset').stdout, nftBefore, 'nothing of the guard or hub left');
  });
});
