import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkRecordable, HUB_DEFAULTS, loadHubConfig, validateHub } from '../../src/hub/config.js';
import { forwardDrops, parseDnsmasqLeases, parseIscLeases, whyDhcpFailed } from '../../src/hub/hub.js';
import { dhcpdConf } from '../../src/hub/render.js';
import { withHubLock } from '../../src/cli/hub.js';
import { ROOT, tempDir } from '../helpers/daemon.js';

describe('hub config', () => {
  const tmp = tempDir('hubconf');
  after(() => tmp.remove());

  it("writes the seed's dhcpd.conf field by field, and dhcpd -t accepts it", (t) => {
    const conf = dhcpdConf({ ...HUB_DEFAULTS });
    const lines = conf.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    assert.deepEqual(lines, [
      'default-lease-time 600;',
      'max-lease-time 7200;',
      'authoritative;',
      'subnet 192.168.10.0 netmask 255.255.255.128 {',
      'range 192.168.10.26 192.168.10.126;',
      'option routers 192.168.10.2;',
      'option domain-name-servers 8.8.8.8, 8.8.4.4;',
      '}',
    ]);
    const file = join(tmp.path, 'dhcpd.conf');
    writeFileSync(file, conf);
    const check = spawnSync('dhcpd', ['-t', '-4', '-cf', file], { encoding: 'utf8' });
    if (check.error && !process.env.CI) {
      t.skip('dhcpd is not installed (scripts/install-deps.sh)');
      return;
    }
    assert.equal(check.status, 0, check.stderr);
    writeFileSync(file, conf.replace('range 192.168.10.26', 'range 192.168.10.260'));
    assert.notEqual(spawnSync('dhcpd', ['-t', '-4', '-cf', file]).status, 0, 'dhcpd -t does reject a broken file');
  });

  it('refuses bad hub settings naming the key', () => {
    const bad = (over: Record<string, unknown>, re: RegExp) => assert.throws(() => validateHub({ ...HUB_DEFAULTS, ...over }), re);
    bad({ address: '192.168.10.2' }, /^MatchlockError: address: /);
    bad({ rangeStart: '192.168.10.200' }, /range-start: must be inside 192\.168\.10\.0\/25/);
    bad({ rangeStart: '192.168.10.100', rangeEnd: '192.168.10.50' }, /range-start: must not be after range-end/);
    bad({ address: '192.168.10.30/25' }, /address: the hub address must be outside the DHCP range/);
    bad({ mode: 'vlan' }, /parent: vlan mode needs the parent interface/);
    bad({ mode: 'vlan', parent: 'eth1', vlanId: 5000 }, /vlan-id: must be between 1 and 4094/);
    bad({ dnsServers: ['dns'] }, /dns-servers\[0\]: must be an IPv4 address/);
    bad({ uplink: 'mlhub0' }, /uplink: must differ from interface/);
    bad({ dhcp: 'kea' }, /dhcp: must be isc or dnsmasq/);
    const file = join(tmp.path, 'hub.yaml');
    writeFileSync(file, 'address: 10.0.0.1/24\nrange-start: 10.0.0.10\nrange-end: 10.0.0.20\nuplink: up0\nflavour: x\n');
    assert.throws(() => loadHubConfig(file, {}), /unknown key "flavour"/);
    writeFileSync(file, 'address: 10.0.0.1/24\nrange-start: 10.0.0.10\nrange-end: 10.0.0.20\nuplink: up0\n');
    assert.equal(loadHubConfig(file, { dhcp: 'dnsmasq' }).dhcp, 'dnsmasq');
  });

  it('refuses a router or range address that is the network or broadcast address, a VID outside 1-4094, VLAN settings in bridge mode and a relative state dir', () => {
    const bad = (over: Record<string, unknown>, re: RegExp) => assert.throws(() => validateHub({ ...HUB_DEFAULTS, ...over }), re);
    bad({ address: '192.168.10.0/25' }, /^MatchlockError: address: 192\.168\.10\.0 is the network address of 192\.168\.10\.0\/25, not a host address$/);
    bad({ address: '192.168.10.127/25' }, /^MatchlockError: address: 192\.168\.10\.127 is the broadcast address of 192\.168\.10\.0\/25/);
    bad({ address: '10.0.0.3/30', rangeStart: '10.0.0.1', rangeEnd: '10.0.0.2' }, /address: 10\.0\.0\.3 is the broadcast address of 10\.0\.0\.0\/30/);
    bad({ address: '192.168.10.100/25', rangeStart: '192.168.10.0', rangeEnd: '192.168.10.50' }, /range-start: 192\.168\.10\.0 is the network address/);
    bad({ rangeEnd: '192.168.10.127' }, /range-end: 192\.168\.10\.127 is the broadcast address/);
    bad({ mode: 'vlan', parent: 'eth1', vlanId: 0 }, /vlan-id: must be between 1 and 4094/);
    bad({ mode: 'vlan', parent: 'eth1' }, /vlan-id: vlan mode needs the VLAN id/);
    bad({ vlanId: 5000 }, /vlan-id: must be between 1 and 4094/);
    bad({ vlanId: 100 }, /vlan-id: only for mode vlan/);
    bad({ parent: 'eth1' }, /parent: only for mode vlan/);
    bad({ stateDir: 'relhub' }, /state-dir: must be an absolute path \(relhub is relative\)/);
    assert.equal(validateHub({ ...HUB_DEFAULTS, address: '192.168.10.1/25', rangeEnd: '192.168.10.126' }).address, '192.168.10.1/25');
  });

  it("refuses a DNS server at the LAN's own network or broadcast address, naming the flag and the rule", () => {
    const lan = { address: '192.168.20.2/25', 'range-start': '192.168.20.26', 'range-end': '192.168.20.126' };
    assert.throws(() => loadHubConfig(undefined, { ...lan, 'dns-servers': '8.8.8.8,192.168.20.127' }), /^MatchlockError: --dns-servers\[1\]: 192\.168\.20\.127 is the broadcast address of 192\.168\.20\.0\/25, not a host address/);
    assert.throws(() => loadHubConfig(undefined, { ...lan, 'dns-servers': '192.168.20.0' }), /^MatchlockError: --dns-servers\[0\]: 192\.168\.20\.0 is the network address of 192\.168\.20\.0\/25/);
    // Outside the LAN such an address is another network's host (a /25's .127 is a host of a /24 elsewhere).
    assert.deepEqual(loadHubConfig(undefined, { ...lan, 'dns-servers': '192.168.20.1,10.0.0.127' }).dnsServers, ['192.168.20.1', '10.0.0.127']);
  });

  it('refuses a hub address, range or DNS server that is not unicast, naming the flag and the rule', () => {
    const flags = (third: string, prefix = 24) => ({ address: `${third}.2/${prefix}`, 'range-start': `${third}.10`, 'range-end': `${third}.20` });
    for (const [f, rule] of [
      [flags('127.0.0', 8), /^MatchlockError: --address: 127\.0\.0\.2 is in 127\.0\.0\.0\/8, loopback, .*RFC 1122 3\.2\.1\.3/],
      [flags('0.0.0', 8), /^MatchlockError: --address: 0\.0\.0\.2 is in 0\.0\.0\.0\/8, "this network".*RFC 6890/],
      [flags('224.0.0'), /^MatchlockError: --address: 224\.0\.0\.2 is in 224\.0\.0\.0\/4, multicast/],
      [flags('255.255.255'), /^MatchlockError: --address: 255\.255\.255\.2 is in 240\.0\.0\.0\/4, reserved/],
      [flags('169.254.3'), /^MatchlockError: --address: 169\.254\.3\.2 is in 169\.254\.0\.0\/16, link-local/],
      [{ ...flags('169.255.0', 15), 'range-start': '169.254.0.10', 'range-end': '169.254.0.20' }, /^MatchlockError: --range-start: 169\.254\.0\.10 is in 169\.254\.0\.0\/16/],
      [{ ...flags('10.1.1'), 'dns-servers': '127.0.0.53' }, /^MatchlockError: --dns-servers\[0\]: 127\.0\.0\.53 is in 127\.0\.0\.0\/8/],
    ] as const) assert.throws(() => loadHubConfig(undefined, f), rule, JSON.stringify(f));
    assert.equal(loadHubConfig(undefined, flags('10.1.1')).address, '10.1.1.2/24');
  });

  it('names where a bad value came from: the flag (with its prefix), the file and key, or the bare key of a default', () => {
    assert.throws(() => loadHubConfig(undefined, { mode: 'bogus' }, 'hub-'), /^MatchlockError: --hub-mode: must be vlan or bridge$/);
    assert.throws(() => loadHubConfig(undefined, { 'vlan-id': 'x' }), /^MatchlockError: --vlan-id: must be a whole number in decimal digits \(got "x"\)$/);
    assert.throws(() => loadHubConfig(undefined, { 'dns-servers': '8.8.8.8,dns' }), /^MatchlockError: --dns-servers\[1\]: must be an IPv4 address$/);
    const file = join(tmp.path, 'origin.yaml');
    writeFileSync(file, 'address: 10.0.0.0/24\n');
    assert.throws(() => loadHubConfig(file, {}), new RegExp(`^MatchlockError: ${file}: address: 10\\.0\\.0\\.0 is the network address`));
    // The range is the default's, outside the address the flag gave.
    assert.throws(() => loadHubConfig(undefined, { address: '10.0.0.1/24' }), /^MatchlockError: range-start: must be inside 10\.0\.0\.0\/24$/);
  });

  it('takes whole numbers in decimal digits only: 0x10, 1e3 and " 7" are refused naming the flag', () => {
    const base = { mode: 'vlan', parent: 'eth1', 'vlan-id': '10' };
    assert.equal(loadHubConfig(undefined, base).vlanId, 10);
    assert.throws(() => loadHubConfig(undefined, { ...base, 'vlan-id': '0x10' }), /^MatchlockError: --vlan-id: must be a whole number in decimal digits \(got "0x10"\)$/);
    assert.throws(() => loadHubConfig(undefined, { 'default-lease-time': '1e3' }), /^MatchlockError: --default-lease-time: must be a whole number in decimal digits/);
    assert.throws(() => loadHubConfig(undefined, { 'max-lease-time': ' 7200' }), /^MatchlockError: --max-lease-time: must be a whole number in decimal digits/);
    const file = join(tmp.path, 'numbers.yaml');
    writeFileSync(file, 'default-lease-time: 900\n');
    assert.equal(loadHubConfig(file, {}).defaultLeaseSeconds, 900, 'a YAML integer is read as it is');
  });

  it('refuses a leading zero in a prefix, an octet, a VLAN id or a lease time (iproute2 reads numbers base 0: 010 is 8), naming the flag', () => {
    const lan = { 'range-start': '192.168.20.26', 'range-end': '192.168.20.126' };
    for (const prefix of ['010', '08', '025']) {
      assert.throws(() => loadHubConfig(undefined, { ...lan, address: `192.168.20.2/${prefix}` }), new RegExp(`^MatchlockError: --address: the prefix /${prefix} has a leading zero, which iproute2 reads as octal`));
    }
    assert.throws(() => loadHubConfig(undefined, { ...lan, address: '192.168.020.2/25' }), /^MatchlockError: --address: must be an IPv4 address .*without leading zeros/);
    assert.throws(() => loadHubConfig(undefined, { ...lan, 'range-start': '192.168.20.026' }), /^MatchlockError: --range-start: must be an IPv4 address$/);
    assert.throws(() => loadHubConfig(undefined, { ...lan, address: '192.168.20.2/25', 'dns-servers': '8.8.8.010' }), /^MatchlockError: --dns-servers\[0\]: must be an IPv4 address$/);
    assert.throws(() => loadHubConfig(undefined, { mode: 'vlan', parent: 'eth1', 'vlan-id': '010' }), /^MatchlockError: --vlan-id: must be a whole number in decimal digits without a leading zero \(got "010"/);
    assert.throws(() => loadHubConfig(undefined, { 'default-lease-time': '0600' }), /^MatchlockError: --default-lease-time: must be a whole number in decimal digits without a leading zero/);
    const file = join(tmp.path, 'zeros.yaml');
    writeFileSync(file, 'address: 192.168.20.2/010\nrange-start: 192.168.20.26\nrange-end: 192.168.20.126\n');
    assert.throws(() => loadHubConfig(file, {}), new RegExp(`^MatchlockError: ${file}: address: the prefix /010 has a leading zero`));
    assert.equal(loadHubConfig(undefined, { ...lan, address: '192.168.20.2/25' }).address, '192.168.20.2/25');
  });

  it('refuses link names the kernel reserves or refuses (all, default, "/", ":", whitespace, over 15 bytes) for interface, parent and uplink', () => {
    for (const name of ['all', 'default']) {
      assert.throws(() => loadHubConfig(undefined, { interface: name }), new RegExp(`^MatchlockError: --interface: "${name}" is reserved by the kernel`));
      assert.throws(() => loadHubConfig(undefined, { uplink: name }), new RegExp(`^MatchlockError: --uplink: "${name}" is reserved by the kernel`));
      assert.throws(() => loadHubConfig(undefined, { mode: 'vlan', 'vlan-id': '5', parent: name }), new RegExp(`^MatchlockError: --parent: "${name}" is reserved by the kernel`));
    }
    for (const name of ['a/b', 'a:b', 'a b', 'x'.repeat(16), '.x']) assert.throws(() => loadHubConfig(undefined, { interface: name }), /^MatchlockError: --interface: must be a Linux interface name/, name);
    assert.equal(loadHubConfig(undefined, { interface: 'allx' }).interface, 'allx');
  });

  it("refuses a lease time under dnsmasq's two-minute minimum with dnsmasq, naming the flag and the rule; dhcpd takes it", () => {
    for (const secs of ['60', '119']) {
      assert.throws(() => loadHubConfig(undefined, { dhcp: 'dnsmasq', 'default-lease-time': secs }), /^MatchlockError: --default-lease-time: must be at least 120 seconds with dnsmasq \(its minimum lease time, dnsmasq\(8\) --dhcp-range/);
      assert.equal(loadHubConfig(undefined, { dhcp: 'isc', 'default-lease-time': secs }).defaultLeaseSeconds, Number(secs));
    }
    assert.equal(loadHubConfig(undefined, { dhcp: 'dnsmasq', 'default-lease-time': '120' }).defaultLeaseSeconds, 120);
    // The file's dhcp with the flag's lease time: named as the flag.
    const file = join(tmp.path, 'dnsmasq-lease.yaml');
    writeFileSync(file, 'dhcp: dnsmasq\n');
    assert.throws(() => loadHubConfig(file, { 'default-lease-time': '90' }), /^MatchlockError: --default-lease-time: must be at least 120 seconds with dnsmasq/);
  });

  it('refuses an empty value for every key, in a hub.yaml (key:, "", []) or as a flag, naming the key and the default', () => {
    const file = join(tmp.path, 'empty.yaml');
    for (const key of ['dns-servers', 'interface', 'dhcp', 'address', 'uplink', 'default-lease-time', 'state-dir']) {
      for (const value of ['', ' ""', ' []']) {
        writeFileSync(file, `${key}:${value}\n`);
        assert.throws(() => loadHubConfig(file, {}), new RegExp(`^MatchlockError: ${file}: ${key}: is empty: give a value, or leave it out for the default \\(`), `${key}:${value}`);
      }
    }
    writeFileSync(file, 'dns-servers: ["", " "]\n');
    assert.throws(() => loadHubConfig(file, {}), new RegExp(`^MatchlockError: ${file}: dns-servers: is empty: give a value, or leave it out for the default \\(8\\.8\\.8\\.8,8\\.8\\.4\\.4\\)$`));
    for (const value of ['', ',', ' , ']) assert.throws(() => loadHubConfig(undefined, { 'dns-servers': value }), /^MatchlockError: --dns-servers: is empty: give a value, or leave it out for the default/, JSON.stringify(value));
    assert.throws(() => loadHubConfig(undefined, { mode: 'vlan', parent: 'eth1', 'vlan-id': '' }), /^MatchlockError: --vlan-id: is empty: give a value$/);
    writeFileSync(file, 'dns-servers: 1.1.1.1\n');
    assert.deepEqual(loadHubConfig(file, {}).dnsServers, ['1.1.1.1']);
  });

  it('bounds lease times to what dhcpd and dnsmasq take (2^31 - 1 s), and records nothing it could not read back', () => {
    assert.equal(loadHubConfig(undefined, { 'default-lease-time': '600', 'max-lease-time': '2147483647' }).maxLeaseSeconds, 2147483647);
    assert.throws(() => loadHubConfig(undefined, { 'max-lease-time': '99999999999999999999' }), /^MatchlockError: --max-lease-time: must be at most 2147483647 seconds \(dnsmasq reads a lease time as a C int; dhcpd's/);
    assert.throws(() => loadHubConfig(undefined, { 'default-lease-time': '2147483648', 'max-lease-time': '2147483648' }), /^MatchlockError: --default-lease-time: must be at most 2147483647 seconds/);
    // A config that skipped validation is not recorded: the record would not load.
    assert.throws(() => checkRecordable({ ...HUB_DEFAULTS, maxLeaseSeconds: 1e20 }), /could not be read back from its record: .*max-lease-time/);
    assert.doesNotThrow(() => checkRecordable(loadHubConfig(undefined, {})));
  });

  it("reads a hub.yaml's values as written: ~, 0x10, 0o17777 and 1e3 are not turned into null, 16 or numbers", () => {
    const file = join(tmp.path, 'typed.yaml');
    const load = (text: string) => {
      writeFileSync(file, text);
      return loadHubConfig(file, {});
    };
    assert.throws(() => load('interface: ~\n'), new RegExp(`^MatchlockError: ${file}: interface: must be a Linux interface name`));
    assert.equal(load('interface: 0x10\n').interface, '0x10', 'the name as written, not "16"');
    assert.throws(() => load('default-lease-time: 0x100\n'), new RegExp(`^MatchlockError: ${file}: default-lease-time: must be a whole number in decimal digits \\(got "0x100"\\)`));
    assert.throws(() => load('default-lease-time: 1e3\n'), /default-lease-time: must be a whole number in decimal digits \(got "1e3"\)/);
    assert.throws(() => load('max-lease-time: 0o17777\n'), /max-lease-time: must be a whole number in decimal digits \(got "0o17777"\)/);
    assert.throws(() => load('uplink: {a: 1}\n'), new RegExp(`^MatchlockError: ${file}: uplink: must be a single value`));
    assert.equal(load('interface: "0x10a"\ndefault-lease-time: 900\ndns-servers: [1.1.1.1, 9.9.9.9]\n').interface, '0x10a');
    assert.deepEqual(load('dns-servers: [1.1.1.1, 9.9.9.9]\n').dnsServers, ['1.1.1.1', '9.9.9.9']);
    assert.equal(load('').interface, HUB_DEFAULTS.interface);
  });

  it('names a missing vlan-mode setting as the flag that would give it, or the file key; host dev names --hub-state-dir', () => {
    assert.throws(() => loadHubConfig(undefined, { mode: 'vlan', parent: 'eth1' }), /^MatchlockError: --vlan-id: vlan mode needs the VLAN id \(1-4094\)$/);
    assert.throws(() => loadHubConfig(undefined, { mode: 'vlan' }), /^MatchlockError: --parent: vlan mode needs the parent interface$/);
    const file = join(tmp.path, 'vlan.yaml');
    writeFileSync(file, 'mode: vlan\nparent: eth1\n');
    assert.throws(() => loadHubConfig(file, {}), new RegExp(`^MatchlockError: ${file}: vlan-id: vlan mode needs the VLAN id`));
    assert.throws(() => loadHubConfig(undefined, { 'state-dir': 'rel/hub' }, '', { 'state-dir': 'hub-state-dir' }), /^MatchlockError: --hub-state-dir: must be an absolute path \(rel\/hub is relative\)$/);
  });

  it('spells a state dir one way: a trailing slash or "." is resolved away', () => {
    assert.equal(loadHubConfig(undefined, { 'state-dir': '/tmp/x/sA/' }).stateDir, '/tmp/x/sA');
    assert.equal(loadHubConfig(undefined, { 'state-dir': '/tmp/x/./sA' }).stateDir, '/tmp/x/sA');
  });

  it("shows why a DHCP server failed: dhcpd's cause without its banner and closing text, dnsmasq's own lines", () => {
    const isc = [
      'Internet Systems Consortium DHCP Server 4.4.3-P1', 'Copyright 2004-2022 Internet Systems Consortium.', 'All rights reserved.',
      'For info, please visit https://www.isc.org/software/dhcp/', 'Config file: /s/dhcpd.conf', 'Database file: /s/dhcpd.leases', 'PID file: /s/dhcp.pid',
      "There's already a DHCP server running.", '', 'If you think you have received this message due to a bug rather',
      'than a configuration issue please read the section on submitting', 'bugs on either our web page at www.isc.org or in the README file',
      'before submitting a bug.  These pages explain the proper', 'process and the information we find helpful for debugging.', '', 'exiting.',
    ].join('\n');
    assert.equal(whyDhcpFailed('isc', isc), "There's already a DHCP server running.");
    // A cause followed by one of dhcpd's advice paragraphs (common/discover.c): the cause, not the advice.
    const noSubnet = [
      'Internet Systems Consortium DHCP Server 4.4.3-P1', 'Wrote 0 leases to leases file.', 'No subnet declaration for mlbr0 (10.0.0.2).',
      '** Ignoring requests on mlbr0.  If this is not what', '   you want, please write a subnet declaration', '   in your dhcpd.conf file for the network segment',
      '   to which interface mlbr0 is attached. **', '', '', 'Not configured to listen on any interfaces!', '',
      'If you think you have received this message due to a bug rather', 'than a configuration issue please read the section on submitting', 'exiting.',
    ].join('\n');
    assert.equal(whyDhcpFailed('isc', noSubnet), 'No subnet declaration for mlbr0 (10.0.0.2). Not configured to listen on any interfaces!');
    assert.equal(whyDhcpFailed('dnsmasq', 'started\ndnsmasq: failed to open pidfile /s/dhcp.pid: Is a directory\n'), 'dnsmasq: failed to open pidfile /s/dhcp.pid: Is a directory');
  });

  it("finds another table's forward chain whose policy drop drops the hub's traffic, and the accept rules that let it through", () => {
    const chain = (family: string, table: string, name: string, policy?: string) => ({ chain: { family, table, name, ...(policy ? { type: 'filter', hook: 'forward', prio: 0, policy } : {}) } });
    const rule = (family: string, table: string, c: string, ...expr: Record<string, unknown>[]) => ({ rule: { family, table, chain: c, expr } });
    const meta = (key: string, right: unknown, op = '==') => ({ match: { op, left: { meta: { key } }, right } });
    const ct = { match: { op: 'in', left: { ct: { key: 'state' } }, right: ['established', 'related'] } };
    const docker = [chain('ip', 'filter', 'FORWARD', 'drop'), chain('ip', 'filter', 'DOCKER-USER'), rule('ip', 'filter', 'FORWARD', { counter: null }, { jump: { target: 'DOCKER-USER' } }), rule('ip', 'filter', 'FORWARD', meta('oifname', 'docker0'), { accept: null })];
    const ours = [chain('ip', 'matchlock_hub', 'forward', 'accept'), chain('inet', 'other', 'forward', 'accept')];
    const find = (items: unknown[]) => forwardDrops({ nftables: items }, 'mlbr0', 'up0');
    assert.deepEqual(find(docker), [{ family: 'ip', table: 'filter', chain: 'FORWARD', drops: ['out', 'back'] }]);
    assert.deepEqual(find(ours), []);
    // Accept rules in the chain jumped to, as iptables -I DOCKER-USER writes them (a wildcard, conntrack as xt).
    assert.deepEqual(find([...docker, rule('ip', 'filter', 'DOCKER-USER', meta('iifname', 'mlbr*'), { accept: null }), rule('ip', 'filter', 'DOCKER-USER', meta('oifname', 'mlbr0'), { xt: { type: 'match', name: 'conntrack' } }, { accept: null })]), []);
    // Only the way out accepted: the replies back are still dropped.
    assert.deepEqual(find([...docker, rule('ip', 'filter', 'DOCKER-USER', meta('iifname', 'mlbr0'), meta('oifname', 'up0'), { accept: null })]).map((d) => d.drops), [['back']]);
    // An accept for another bridge, or one excluding the LAN, does not count; a bare established accept covers the replies only.
    assert.deepEqual(find([chain('inet', 'fw', 'fwd', 'drop'), rule('inet', 'fw', 'fwd', meta('iifname', 'mlbr0', '!='), { accept: null }), rule('inet', 'fw', 'fwd', ct, { accept: null })]), [{ family: 'inet', table: 'fw', chain: 'fwd', drops: ['out'] }]);
    assert.deepEqual(find([chain('inet', 'fw', 'fwd', 'drop'), rule('inet', 'fw', 'fwd', meta('iifname', { set: ['eth9', 'mlbr0'] }), { accept: null }), rule('inet', 'fw', 'fwd', ct, { accept: null })]), []);
  });

  it('reads isc leases: the last block for an address wins, expired and freed ones are left out', () => {
    const text = [
      'lease 192.168.10.30 { starts 5 2026/11/27 10:00:00; ends 5 2099/11/27 10:10:00; binding state active; hardware ethernet 02:00:00:00:00:01; client-hostname "old"; }',
      'lease 192.168.10.30 { starts 5 2026/11/27 10:05:00; ends 5 2099/11/27 10:15:00; binding state active; hardware ethernet 02:00:00:00:00:01; client-hostname "vm-a"; }',
      'lease 192.168.10.31 { starts 5 2026/11/27 10:00:00; ends 5 2020/11/27 10:10:00; binding state active; hardware ethernet 02:00:00:00:00:02; }',
      'lease 192.168.10.32 { starts 5 2026/11/27 10:00:00; ends 5 2099/11/27 10:10:00; binding state free; hardware ethernet 02:00:00:00:00:03; }',
    ].join('\n');
    assert.deepEqual(parseIscLeases(text), [{ ip: '192.168.10.30', mac: '02:00:00:00:00:01', hostname: 'vm-a', expires: '2099-11-27T10:15:00.000Z' }]);
  });

  it('reads isc lease blocks whose strings hold braces, quotes, escapes and comments, and nested on-blocks', () => {
    // As dhcpd writes them: the uid of a client whose MAC ends in 0x7d (with the usual client
    // identifier 01 + MAC) holds a raw "}"; other bytes are octal escapes.
    const text = [
      '# The format of this file is documented in the dhcpd.leases(5) manual page.',
      'authoring-byte-order little-endian;',
      'server-duid "\\000\\001\\000\\001}{\\"";',
      'lease 192.168.10.40 {',
      '  starts 1 2026/11/30 01:00:00;',
      '  ends 1 2099/11/30 01:10:00;',
      '  binding state active;',
      '  next binding state free;',
      '  hardware ethernet 02:00:00:00:00:7d;',
      '  uid "\\001\\002\\000\\000\\000\\000}";',
      '  set vendor-class-identifier = "udhcp 1.36.1 {";',
      '  on expiry { set x = "}"; }',
      '  client-hostname "vm-\\"7d\\"#x";',
      '}',
      'lease 192.168.10.41 { starts 1 2026/11/30 01:00:00; ends epoch 4102444800; # Fri Jan 01 00:00:00 2100',
      '  binding state active; hardware ethernet 02:00:00:00:00:41; client-hostname "caf\\303\\251"; }',
      'lease 192.168.10.42 { ends never; binding state active; hardware ethernet 02:00:00:00:00:42; }',
    ].join('\n');
    assert.deepEqual(parseIscLeases(text), [
      { ip: '192.168.10.40', mac: '02:00:00:00:00:7d', hostname: 'vm-"7d"#x', expires: '2099-11-30T01:10:00.000Z' },
      { ip: '192.168.10.41', mac: '02:00:00:00:00:41', hostname: 'café', expires: '2100-01-01T00:00:00.000Z' },
      { ip: '192.168.10.42', mac: '02:00:00:00:00:42', hostname: '', expires: '' },
    ]);
    // A file cut off mid-block (dhcpd was writing) loses only that block.
    assert.equal(parseIscLeases(text.slice(0, text.indexOf('lease 192.168.10.41'))).length, 1);
  });

  it('reads dnsmasq lease files with client ids, DHCPv6 duid lines, infinite leases and junk', () => {
    const text = [
      '4102444800 02:00:00:00:00:7d 192.168.10.40 vm-7d 01:02:00:00:00:00:7d',
      '0 02:00:00:00:00:41 192.168.10.41 * *',
      '1000 02:00:00:00:00:42 192.168.10.42 old *',
      'duid 00:01:00:01:2c:f5:a4:1e:02:00:00:00:00:01',
      '4102444800 1234567 fd00::10 vm6 00:01:00:01:2c:f5:a4:1e:02:00:00:00:00:7d',
      '99999999999999999 02:00:00:00:00:43 192.168.10.43 far *',
      'garbage',
      '',
    ].join('\n');
    assert.deepEqual(parseDnsmasqLeases(text), [
      { ip: '192.168.10.40', mac: '02:00:00:00:00:7d', hostname: 'vm-7d', expires: '2100-01-01T00:00:00.000Z' },
      { ip: '192.168.10.41', mac: '02:00:00:00:00:41', hostname: '', expires: '' },
    ]);
  });
});

const need = ['dhcpd', 'dnsmasq', 'nft', 'busybox', 'ip'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = process.getuid?.() !== 0 ? 'needs root' : need.length ? `missing: ${need.join(', ')}` : false;

describe('hub setup in namespaces', { skip: skip && !process.env.CI ? skip : false }, () => {
  const id = randomBytes(3).toString('hex');
  const hub = `mlh-${id}`;
  const up = `mlu-${id}`;
  const cl = `mlc-${id}`;
  const tmp = tempDir('hub');
  const ip = (...a: string[]) => execFileSync('ip', a, { encoding: 'utf8' });
  // hub setup's record of the hub it made goes to the test's own directory, not the host's.
  const record = join(tmp.path, 'hub-record.yaml');
  const inNs = (ns: string, ...cmd: string[]) => spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', env: { ...process.env, MATCHLOCK_HUB_RECORD: record } });
  const script = join(tmp.path, 'udhcpc.sh');
  before(() => {
    assert.equal(skip, false, String(skip));
    for (const ns of [hub, up, cl]) {
      ip('netns', 'add', ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    // hub <-> uplink, and the uplink has no route back to the LAN: only NAT makes replies return.
    ip('-n', hub, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'srv0', 'netns', up);
    ip('-n', hub, 'addr', 'add', '10.99.0.1/24', 'dev', 'up0');
    ip('-n', hub, 'link', 'set', 'up0', 'up');
    ip('-n', up, 'addr', 'add', '10.99.0.2/24', 'dev', 'srv0');
    ip('-n', up, 'link', 'set', 'srv0', 'up');
    // client <-> hub: the hub end joins the LAN bridge once setup made it.
    ip('-n', cl, 'link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 'hc0', 'netns', hub);
    ip('-n', hub, 'link', 'set', 'hc0', 'up');
    writeFileSync(script, '#!/bin/sh\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; ip route replace default via "${router%% *}";; esac\n');
    chmodSync(script, 0o755);
  });
  after(() => {
    // A test that failed before its teardown leaves its DHCP server running; deleting the
    // namespace does not stop it, so it is stopped by the pid setup recorded.
    for (const dhcp of ['isc', 'dnsmasq']) {
      try {
        const pid = (JSON.parse(readFileSync(join(tmp.path, `state-${dhcp}`, 'hub-state.json'), 'utf8')) as { dhcp?: { pid: number } }).dhcp?.pid;
        // Only while that pid is still this test's server (pids are reused).
        if (pid && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(tmp.path)) process.kill(pid, 'SIGTERM');
      } catch {
        // no state file, or the server is already gone
      }
    }
    for (const ns of [cl, hub, up]) spawnSync('ip', ['netns', 'del', ns]);
    tmp.remove();
  });

  // IPv6 link-local addresses come and go with carrier (the kernel makes them), so they are left
  // out; everything the hub could have changed is compared.
  const snapshot = () => ({
    links: (JSON.parse(ip('-n', hub, '-json', 'link', 'show')) as { ifname: string; flags: string[]; master?: string }[]).map((l) => [l.ifname, l.flags.filter((f) => f !== 'LOWER_UP' && f !== 'NO-CARRIER').join(','), l.master ?? '']),
    addrs: (JSON.parse(ip('-n', hub, '-json', 'addr', 'show')) as { ifname: string; addr_info: { local: string; prefixlen: number }[] }[]).map((l) => [l.ifname, l.addr_info.filter((a) => !a.local.startsWith('fe80:')).map((a) => `${a.local}/${a.prefixlen}`).join(',')]),
    nft: inNs(hub, 'nft', 'list', 'ruleset').stdout,
    forward: inNs(hub, 'cat', '/proc/sys/net/ipv4/ip_forward').stdout,
  });

  for (const dhcp of ['isc', 'dnsmasq'] as const) {
    it(`with ${dhcp}: a client gets a lease from the range, reaches the uplink through NAT, hub leases lists it; teardown restores the namespace`, () => {
      const cli = (...a: string[]) => inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a);
      const flags = ['--interface', 'mlbr0', '--mode', 'bridge', '--address', '192.168.10.2/25', '--range-start', '192.168.10.26', '--range-end', '192.168.10.126', '--uplink', 'up0', '--dhcp', dhcp, '--state-dir', join(tmp.path, `state-${dhcp}`)];
      const before = snapshot();
      const setup = cli('hub', 'setup', ...flags);
      assert.equal(setup.status, 0, setup.stderr);
      assert.equal(cli('hub', 'setup', ...flags).status, 0, 'setup is idempotent');
      assert.match(readFileSync(record, 'utf8'), new RegExp(`^state-dir: ${join(tmp.path, `state-${dhcp}`)}$`, 'm'));
      ip('-n', hub, 'link', 'set', 'hc0', 'master', 'mlbr0');
      // The DHCP server is also written as a unit for systemd to supervise.
      const unitFile = join(tmp.path, `state-${dhcp}`, 'matchlock-hub-dhcp.service');
      const unit = readFileSync(unitFile, 'utf8');
      assert.match(unit, new RegExp(`^ExecStart=\\S*${dhcp === 'isc' ? 'dhcpd -4 -f -cf' : 'dnsmasq --keep-in-foreground'} `, 'm'));
      assert.match(unit, /^Restart=always$/m);
      const verify = spawnSync('systemd-analyze', ['verify', unitFile], { encoding: 'utf8' });
      if (!verify.error) assert.equal(verify.status, 0, verify.stderr);
      // status, leases and teardown need no flags: setup recorded the hub.
      const status = cli('-o', 'json', 'hub', 'status');
      assert.equal(status.status, 0, status.stdout + status.stderr);
      assert.ok((JSON.parse(status.stdout) as { ok: boolean }[]).every((p) => p.ok));

      // A MAC ending in 0x7d: udhcpc's client identifier (01 + MAC) then holds a "}" byte,
      // which the server writes raw into its lease file.
      ip('-n', cl, 'link', 'set', 'c0', 'address', '02:00:00:00:00:7d');
      ip('-n', cl, 'link', 'set', 'c0', 'up');
      const mac = (JSON.parse(ip('-n', cl, '-json', 'link', 'show', 'c0')) as { address: string }[])[0]?.address ?? '';
      const dhcpc = inNs(cl, 'busybox', 'udhcpc', '-i', 'c0', '-s', script, '-q', '-n', '-t', '10', '-T', '1', '-x', 'hostname:vm-7d');
      assert.equal(dhcpc.status, 0, dhcpc.stderr);
      const addr = (JSON.parse(ip('-n', cl, '-json', 'addr', 'show', 'c0')) as { addr_info: { family: string; local: string }[] }[])[0]?.addr_info.find((a) => a.family === 'inet')?.local ?? '';
      const last = Number(addr.split('.')[3]);
      assert.ok(addr.startsWith('192.168.10.') && last >= 26 && last <= 126, `lease ${addr} in the range`);
      assert.equal(inNs(cl, 'ping', '-c', '1', '-W', '2', '10.99.0.2').status, 0, 'the uplink answers through NAT');
      // iptables' FORWARD policy drop (as Docker sets it) drops the guests' traffic whatever
      // matchlock_hub accepts: status says so and names the rules that let it through, which do.
      if (dhcp === 'dnsmasq' && spawnSync('sh', ['-c', 'command -v iptables-nft']).status === 0) {
        const ipt = (...a: string[]) => assert.equal(inNs(hub, 'iptables-nft', ...a).status, 0, a.join(' '));
        ipt('-P', 'FORWARD', 'DROP');
        try {
          assert.notEqual(inNs(cl, 'ping', '-c', '1', '-W', '2', '10.99.0.2').status, 0, 'the policy drop drops the guest traffic');
          const dropped = cli('-o', 'json', 'hub', 'status');
          assert.equal(dropped.status, 6, dropped.stderr);
          const piece = (JSON.parse(dropped.stdout) as { piece: string; ok: boolean; fix?: string }[]).find((p) => p.piece === 'forward');
          assert.equal(piece?.ok, false);
          for (const cmd of (piece?.fix ?? '').split('; ')) ipt(...cmd.split(' ').slice(1));
          assert.equal(inNs(cl, 'ping', '-c', '1', '-W', '2', '10.99.0.2').status, 0, 'the rules status named let the guest out and the replies back');
          assert.equal(cli('hub', 'status').status, 0);
        } finally {
          inNs(hub, 'nft', 'delete', 'table', 'ip', 'filter');
        }
      }

      const leases = cli('-o', 'json', 'hub', 'leases');
      assert.equal(leases.status, 0, leases.stderr);
      assert.ok((JSON.parse(leases.stdout) as { ip: string; mac: string; hostname: string }[]).some((l) => l.ip === addr && l.mac === mac && l.hostname === 'vm-7d'), leases.stdout);

      // One piece broken at a time shows in status.
      inNs(hub, 'nft', 'flush', 'table', 'ip', 'matchlock_hub');
      const broken = cli('-o', 'json', 'hub', 'status');
      assert.notEqual(broken.status, 0);
      assert.deepEqual((JSON.parse(broken.stdout) as { piece: string; ok: boolean }[]).filter((p) => !p.ok).map((p) => p.piece), ['nat']);

      ip('-n', cl, 'addr', 'flush', 'dev', 'c0');
      ip('-n', cl, 'link', 'set', 'c0', 'down');
      const down = cli('hub', 'teardown');
      assert.equal(down.status, 0, down.stderr);
      assert.equal(existsSync(record), false, 'teardown removes the record of the hub it removed');
      const afterTeardown = snapshot();
      assert.deepEqual(afterTeardown.links, before.links);
      assert.deepEqual(afterTeardown.addrs, before.addrs);
      assert.deepEqual([afterTeardown.nft, afterTeardown.forward], [before.nft, before.forward]);
      assert.equal(spawnSync('pgrep', ['-f', join(tmp.path, `state-${dhcp}`)]).status, 1, 'no DHCP server left');
    });
  }

  it('host dev: one command makes bridge, DHCP and NAT and points the daemon config at it; --down undoes it', () => {
    const before = snapshot();
    const cli = (...a: string[]) => inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a);
    const dir = join(tmp.path, 'dev');
    const dev = ['--interface', 'mldev0', '--address', '192.168.20.2/25', '--range-start', '192.168.20.26', '--range-end', '192.168.20.126', '--uplink', 'up0', '--hub-state-dir', join(dir, 'hub')];
    const up = cli('host', 'dev', ...dev, '--config-out', join(dir, 'config.yaml'), '--unit-out', join(dir, 'unit.service'), '--set', `state-dir=${join(dir, 'state')}`);
    assert.equal(up.status, 0, up.stdout + up.stderr);
    assert.match(readFileSync(join(dir, 'config.yaml'), 'utf8'), /^bridge-name: mldev0$/m);
    const status = cli('-o', 'json', 'hub', 'status', '--interface', 'mldev0', '--address', '192.168.20.2/25', '--range-start', '192.168.20.26', '--range-end', '192.168.20.126', '--uplink', 'up0', '--dhcp', 'dnsmasq', '--state-dir', join(dir, 'hub'));
    assert.equal(status.status, 0, status.stdout);
    assert.equal(cli('host', 'dev', ...dev, '--down').status, 0);
    const after = snapshot();
    assert.deepEqual([after.links, after.addrs, after.nft, after.forward], [before.links, before.addrs, before.nft, before.forward]);
  });

  it("filters only the hub's own traffic: guests on its bridge reach each other (with br_netfilter), other links still forward, and the uplink opens nothing into the LAN", () => {
    const cli = (...a: string[]) => inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), ...a);
    const extra = ['g1', 'g2', 'o1', 'o2'].map((n) => `ml${n}-${id}`);
    const [g1 = '', g2 = '', o1 = '', o2 = ''] = extra;
    const state = join(tmp.path, 'state-fwd');
    try {
      const setup = cli('hub', 'setup', '--interface', 'mlbr1', '--address', '192.168.30.2/25', '--range-start', '192.168.30.26', '--range-end', '192.168.30.126', '--uplink', 'up0', '--dhcp', 'dnsmasq', '--state-dir', state);
      assert.equal(setup.status, 0, setup.stderr);
      for (const [i, ns] of extra.entries()) {
        ip('netns', 'add', ns);
        ip('-n', ns, 'link', 'add', 'x0', 'type', 'veth', 'peer', 'name', `hx${i}`, 'netns', hub);
        ip('-n', ns, 'link', 'set', 'x0', 'up');
        ip('-n', hub, 'link', 'set', `hx${i}`, 'up');
      }
      // Two guests on the hub's bridge, and two routed links that are none of the hub's.
      ip('-n', hub, 'link', 'set', 'hx0', 'master', 'mlbr1');
      ip('-n', hub, 'link', 'set', 'hx1', 'master', 'mlbr1');
      ip('-n', g1, 'addr', 'add', '192.168.30.10/25', 'dev', 'x0');
      ip('-n', g2, 'addr', 'add', '192.168.30.11/25', 'dev', 'x0');
      ip('-n', hub, 'addr', 'add', '10.51.1.1/24', 'dev', 'hx2');
      ip('-n', hub, 'addr', 'add', '10.51.2.1/24', 'dev', 'hx3');
      ip('-n', o1, 'addr', 'add', '10.51.1.2/24', 'dev', 'x0');
      ip('-n', o1, 'route', 'add', 'default', 'via', '10.51.1.1');
      ip('-n', o2, 'addr', 'add', '10.51.2.2/24', 'dev', 'x0');
      ip('-n', o2, 'route', 'add', 'default', 'via', '10.51.2.1');
      // Bridged frames pass the IP forward hook when br_netfilter is loaded and this is 1 (Docker
      // and Kubernetes hosts set it); without the module there is no such path to test.
      const brnf = inNs(hub, 'sysctl', '-w', 'net.bridge.bridge-nf-call-iptables=1');
      if (brnf.status === 0) assert.equal(inNs(hub, 'cat', '/proc/sys/net/bridge/bridge-nf-call-iptables').stdout.trim(), '1');
      assert.equal(inNs(g1, 'ping', '-c', '1', '-W', '2', '192.168.30.11').status, 0, 'guest to guest on the bridge');
      assert.equal(inNs(o1, 'ping', '-c', '1', '-W', '2', '10.51.2.2').status, 0, 'forwarding between two other links');
      // A connection opened from the uplink side into the LAN is dropped.
      ip('-n', up, 'route', 'add', '192.168.30.0/25', 'via', '10.99.0.1');
      assert.notEqual(inNs(up, 'ping', '-c', '1', '-W', '1', '192.168.30.10').status, 0, 'nothing new from the uplink into the LAN');
      ip('-n', up, 'route', 'del', '192.168.30.0/25', 'via', '10.99.0.1');
      const down = cli('hub', 'teardown');
      assert.equal(down.status, 0, down.stderr);
    } finally {
      for (const ns of extra) spawnSync('ip', ['netns', 'del', ns]);
      spawnSync('ip', ['-n', up, 'route', 'del', '192.168.30.0/25']);
      if (existsSync(record)) cli('hub', 'teardown');
      for (const i of [2, 3]) spawnSync('ip', ['-n', hub, 'link', 'del', `hx${i}`]);
    }
  });

  it('fails clearly where the kernel has no 802.1Q, naming the bridge alternative, and leaves nothing', () => {
    const before = snapshot();
    const r = inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), 'hub', 'setup', '--interface', 'up0.100', '--mode', 'vlan', '--parent', 'up0', '--vlan-id', '100', '--uplink', 'up0', '--state-dir', join(tmp.path, 'state-vlan'));
    const vlanWorks = r.status === 0;
    if (vlanWorks) {
      // A kernel with 802.1Q: then setup must have made the VLAN link; undo it.
      assert.equal(inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), 'hub', 'teardown', '--interface', 'up0.100', '--mode', 'vlan', '--parent', 'up0', '--vlan-id', '100', '--uplink', 'up0', '--state-dir', join(tmp.path, 'state-vlan')).status, 0);
    } else {
      assert.match(r.stderr, /cannot make 802\.1Q VLAN links .*use mode: bridge/);
    }
    assert.deepEqual(snapshot(), before);
  });

  it('refuses an uplink or VLAN parent that does not exist before it writes anything, its state directory included', () => {
    const before = snapshot();
    for (const [args, message] of [
      [['--mode', 'bridge', '--interface', 'mlbrx', '--uplink', 'nosuch0'], /uplink nosuch0 not found/],
      [['--mode', 'vlan', '--interface', 'nosuch1.7', '--parent', 'nosuch1', '--vlan-id', '7', '--uplink', 'up0'], /parent nosuch1 for the VLAN not found/],
    ] as const) {
      const state = join(tmp.path, 'state-refused');
      const r = inNs(hub, process.execPath, join(ROOT, 'bin/matchlock.js'), 'hub', 'setup', ...args, '--state-dir', state);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, message);
      assert.equal(existsSync(state), false, `${args.join(' ')}: no state directory left`);
    }
    assert.deepEqual(snapshot(), before);
  });
});

describe('stopping a DHCP server this process started', () => {
  const tmp = tempDir('hubstop');
  after(() => tmp.remove());

  it('waits for its exit even when it died before the stop and nothing else keeps the process going', () => {
    // The server is killed and becomes a zombie while the event loop is held, so its exit event
    // is still undelivered when the stop begins, from a callback of the loop's check phase: the
    // stop's wait for that event is then all the process has left to do.
    const script = `
      import { readFileSync } from 'node:fs';
      import { startDhcp, stopPid } from ${JSON.stringify(join(ROOT, 'src/hub/hub.ts'))};
      const dir = ${JSON.stringify(tmp.path)};
      const { child } = await startDhcp(['sleep', ['30']], { pid: dir + '/dhcp.pid', log: dir + '/dhcp.log' });
      setImmediate(() => {
        process.kill(child.pid, 'SIGKILL');
        const zombie = () => { try { return readFileSync('/proc/' + child.pid + '/stat', 'utf8').split(') ')[1].startsWith('Z'); } catch { return false; } };
        while (!zombie()) ;
        stopPid(child.pid).then(() => process.stdout.write('stopped ' + child.pid + '\\n'));
      });
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `exit ${r.status} (13: it ended waiting on nothing): ${r.stderr}`);
    assert.match(r.stdout, /^stopped \d+\n$/);
  });
});

describe('the hub lock', () => {
  const tmp = tempDir('hublock');
  after(() => tmp.remove());
  /** A live process that is not a hub setup, and its start time (field 22 of /proc/<pid>/stat). */
  const bystander = () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
    return { child, pid: child.pid as number, start: stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] };
  };

  it("takes over a lock whose pid now names another process (the setup that held it was killed and its pid reused)", async () => {
    const record = join(tmp.path, 'reused', 'hub.yaml');
    mkdirSync(dirname(record), { recursive: true });
    const other = bystander();
    try {
      writeFileSync(`${record}.lock`, `${other.pid} 1\n`);
      const ran = await withHubLock(async () => readFileSync(`${record}.lock`, 'utf8'), record, 1000);
      assert.match(ran, new RegExp(`^${process.pid} \\d+\\n$`), 'the lock now names this process');
      assert.equal(existsSync(`${record}.lock`), false, 'and is released');
    } finally {
      other.child.kill();
    }
  });

  it('takes over a pid-only lock (the older form) whose pid is not a matchlock CLI, and waits for one that is', async () => {
    const record = join(tmp.path, 'pid-only', 'hub.yaml');
    mkdirSync(dirname(record), { recursive: true });
    // pid 1 is always alive and never a hub setup.
    writeFileSync(`${record}.lock`, '1\n');
    assert.equal(await withHubLock(async () => 'ran', record, 500), 'ran');
    const cliLike = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)', join(ROOT, 'bin', 'matchlock.js')], { stdio: 'ignore' });
    try {
      writeFileSync(`${record}.lock`, `${cliLike.pid}\n`);
      await assert.rejects(withHubLock(async () => 'ran', record, 500), new RegExp(`another hub setup \\(pid ${cliLike.pid}\\)`));
    } finally {
      cliLike.kill();
    }
  });

  it('waits for a live holder, and for one that made the lock and has not written it yet', async () => {
    const record = join(tmp.path, 'held', 'hub.yaml');
    mkdirSync(dirname(record), { recursive: true });
    const holder = bystander();
    try {
      writeFileSync(`${record}.lock`, `${holder.pid} ${holder.start}\n`);
      await assert.rejects(withHubLock(async () => 'ran', record, 500), new RegExp(`another hub setup \\(pid ${holder.pid}\\) holds ${record}\\.lock`));
      // An empty lock is one being written: it is not taken over, and its holder's pid counts once there.
      writeFileSync(`${record}.lock`, '');
      setTimeout(() => writeFileSync(`${record}.lock`, `${holder.pid} ${holder.start}\n`), 300);
      await assert.rejects(withHubLock(async () => 'ran', record, 800), /another hub setup/);
    } finally {
      holder.child.kill();
    }
    assert.equal(await withHubLock(async () => 'ran', record, 1000), 'ran', 'taken over once its holder is gone');
  });
});
