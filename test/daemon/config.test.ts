import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { KEYS, flintlockdEnvFor, loadConfig } from '../../src/daemon/config.js';
import { MatchlockError } from '../../src/core/errors.js';
import { isLocalEndpoint as isLoopbackEndpoint, isLoopbackHost } from '../../src/core/endpoint.js';
import { parseDuration } from '../../src/core/duration.js';
import { tempDir } from '../helpers/daemon.js';

describe('daemon configuration', () => {
  const tmp = tempDir('config');
  after(() => tmp.remove());
  const file = (name: string, text: string) => {
    const p = join(tmp.path, name);
    writeFileSync(p, text);
    return p;
  };
  const load = (flags: Record<string, unknown>, path: string, env: Record<string, string> = {}) => loadConfig({ flags, file: { path, explicit: true }, env });

  it('takes flags over the file over the environment over defaults', () => {
    const path = file('a.yaml', 'state-dir: /from/file\nresync-period: 5m\nverbosity: 1\n');
    const env = { MATCHLOCK_STATE_DIR: '/from/env', MATCHLOCK_RESYNC_PERIOD: '1m', MATCHLOCK_BRIDGE_NAME: 'br-env', MATCHLOCK_VERBOSITY: '3' };
    const cfg = load({ 'state-dir': '/from/flag' }, path, env);
    assert.equal(cfg.stateDir, '/from/flag');
    assert.equal(cfg.resyncPeriodMs, 5 * 60_000);
    assert.equal(cfg.bridgeName, 'br-env');
    assert.equal(cfg.verbosity, 1);
    assert.equal(cfg.grpcEndpoint, '127.0.0.1:9090');
    assert.equal(cfg.maximumRetry, 10);
    assert.equal(cfg.deleteVmTimeoutMs, 10_000);
  });

  it("reads flintlockd's environment variables (FLINTLOCKD_ + the key upper-cased, hyphens kept) below MATCHLOCK_ ones", () => {
    const path = file('env.yaml', 'bridge-name: br-file\n');
    const warnings: string[] = [];
    const env = {
      'FLINTLOCKD_PARENT-IFACE': 'bond0.1000', 'FLINTLOCKD_GRPC-ENDPOINT': ':9090', FLINTLOCKD_INSECURE: 'TRUE',
      'FLINTLOCKD_DELETEMICROVM-TIMEOUT': '20s', 'FLINTLOCKD_BRIDGE-NAME': 'br-env', 'FLINTLOCKD_STATE-DIR': '/from/flintlockd',
      MATCHLOCK_STATE_DIR: '/from/matchlock', FLINTLOCKD_VERBOSITY: '', FLINTLOCKD_TLS_CERT: '/c.pem', 'FLINTLOCKD_CONTAINERD-NS': 'x',
    };
    const cfg = loadConfig({ flags: {}, file: { path, explicit: true }, env }, undefined, warnings);
    assert.equal(cfg.parentIface, 'bond0.1000');
    assert.equal(cfg.grpcEndpoint, ':9090');
    assert.equal(cfg.insecure, true);
    assert.equal(cfg.deleteVmTimeoutMs, 20_000, 'a flintlockd spelling is read under its matchlock name');
    assert.equal(cfg.bridgeName, 'br-file', 'the file wins over the environment');
    assert.equal(cfg.stateDir, '/from/matchlock', 'MATCHLOCK_ wins over FLINTLOCKD_');
    assert.equal(cfg.verbosity, 0, 'an empty variable is unset, as viper reads it');
    assert.equal(cfg.tlsCert, '', 'flintlockd does not read underscores for hyphens');
    assert.ok(warnings.includes('environment FLINTLOCKD_STATE-DIR ignored: MATCHLOCK_STATE_DIR is set too and wins'), warnings.join('\n'));
    assert.ok(warnings.includes('environment FLINTLOCKD_TLS_CERT ignored: flintlockd keeps the key\'s hyphens: FLINTLOCKD_TLS-CERT'), warnings.join('\n'));
    assert.ok(warnings.some((w) => w.startsWith('environment FLINTLOCKD_CONTAINERD-NS ignored: matchlock pulls images')), warnings.join('\n'));
    assert.throws(() => load({}, path, { 'FLINTLOCKD_DISABLE-RECONCILE': 'T' }), /environment FLINTLOCKD_DISABLE-RECONCILE: matchlockd cannot run without reconciling; unset it/);
    assert.throws(() => load({}, path, { 'FLINTLOCKD_ENABLE-HTTP': 'yes' }), /environment FLINTLOCKD_ENABLE-HTTP: enable-http must be true or false/);
    // --help names the flintlockd variable beside matchlock's.
    assert.deepEqual(['parent-iface', 'delete-vm-timeout', 'qemu-accel'].map(flintlockdEnvFor), ['FLINTLOCKD_PARENT-IFACE', 'FLINTLOCKD_DELETEMICROVM-TIMEOUT', undefined]);
  });

  it("reads booleans as Go's strconv.ParseBool does, from flags, the file and the environment", () => {
    const empty = file('bools.yaml', '');
    for (const [text, want] of [['1', true], ['t', true], ['T', true], ['TRUE', true], ['true', true], ['True', true], ['0', false], ['f', false], ['F', false], ['FALSE', false], ['false', false], ['False', false]] as const) {
      assert.equal(load({ insecure: text }, empty).insecure, want, `flag ${text}`);
      assert.equal(load({}, empty, { MATCHLOCK_INSECURE: text }).insecure, want, `environment ${text}`);
      assert.equal(load({}, file('b1.yaml', `insecure: ${text}\nenable-http: "${text}"\n`)).enableHttp, want, `file ${text}`);
    }
    for (const text of ['yes', 'no', 'on', 'tRUE', '2', 'y']) {
      assert.throws(() => load({ insecure: text }, empty), /insecure must be true or false \(or 1, t, T, TRUE, True, 0, f, F, FALSE, False/, text);
    }
    assert.throws(() => load({}, file('b2.yaml', 'insecure: 2\n')), /insecure must be true or false/);
  });

  it('reads values as written: whitespace around a boolean, number or duration is refused in every source, as flintlockd refuses it', () => {
    const empty = file('ws.yaml', '');
    const rule = /insecure must be true or false \(or 1, t, T, TRUE, True, 0, f, F, FALSE, False/;
    assert.throws(() => load({ insecure: ' true' }, empty), rule);
    assert.throws(() => load({}, empty, { MATCHLOCK_INSECURE: 'true ' }), /environment MATCHLOCK_INSECURE: insecure must be true or false/);
    assert.throws(() => load({}, empty, { FLINTLOCKD_INSECURE: ' true' }), /environment FLINTLOCKD_INSECURE: insecure must be true or false/);
    assert.throws(() => load({}, file('ws1.yaml', 'insecure: " true"\n')), rule);
    assert.throws(() => load({ 'grpc-endpoint': ' :9090' }, empty), /grpc-endpoint must be host:port.*" " is not a host name or IP address/);
    assert.throws(() => load({ verbosity: ' 1' }, empty), /verbosity must be a whole number >= 0/);
    assert.throws(() => load({ 'maximum-retry': '' }, empty), /maximum-retry must be/);
    assert.throws(() => load({ 'resync-period': '5m ' }, empty), /resync-period must be a duration/);
  });

  it("refuses an empty boolean flag or file value (ParseBool's error) and reads an empty variable as unset", () => {
    const empty = file('eb.yaml', '');
    assert.throws(() => load({ insecure: '' }, empty), /^MatchlockError: flag: insecure must be true or false .*\(got ""\)/);
    assert.throws(() => load({}, file('eb1.yaml', 'enable-http: ""\n')), /enable-http must be true or false/);
    assert.equal(load({}, empty, { MATCHLOCK_VMM_CGROUPS: '' }).vmmCgroups, true, 'an empty MATCHLOCK_ variable leaves the default');
    assert.equal(load({}, empty, { 'FLINTLOCKD_ENABLE-HTTP': '', MATCHLOCK_INSECURE: '' }).insecure, false);
  });

  it("accepts flintlockd's config file as it is", () => {
    const path = file('flintlockd.yaml', [
      'grpc-endpoint: 0.0.0.0:9090', 'state-dir: /var/lib/flintlock', 'resync-period: 10m', 'enable-http: true',
      'http-endpoint: 0.0.0.0:8090', 'basic-auth-token: abc', 'insecure: true', 'tls-cert: ""', 'tls-key: ""',
      'tls-client-validate: false', 'tls-client-ca: ""', 'default-provider: firecracker', 'firecracker-bin: /usr/local/bin/firecracker',
      'firecracker-detach: true', 'cloudhypervisor-bin: /usr/local/bin/cloud-hypervisor', 'cloudhypervisor-detach: true',
      'parent-iface: bond0.1000', 'bridge-name: ""', 'debug-endpoint: ""', 'verbosity: 0', 'log-format: json', '',
    ].join('\n'));
    const cfg = load({}, path);
    assert.equal(cfg.defaultProvider, 'firecracker');
    assert.equal(cfg.parentIface, 'bond0.1000');
    assert.equal(cfg.enableHttp, true);
    assert.equal(cfg.insecure, true);
    assert.equal(cfg.logFormat, 'json');
  });

  it("takes the registry lists as YAML sequences too, as Docker's daemon.json writes them", async () => {
    const { registryConfigOf } = await import('../../src/adapters/images/oci/registry.js');
    const path = file('lists.yaml', [
      'insecure-registries: [harbor.lan:5000, 10.0.0.0/8]',
      'plain-http-registries:', '  - cache.lan:5000', '  - " Quay.IO "',
      'registry-mirrors: ["docker.io=mirror.lan:5000"]', '',
    ].join('\n'));
    const cfg = load({}, path);
    assert.equal(cfg.insecureRegistries, 'harbor.lan:5000,10.0.0.0/8');
    assert.equal(cfg.plainHttpRegistries, 'cache.lan:5000,Quay.IO');
    const reg = registryConfigOf(cfg);
    assert.deepEqual(reg.insecure, ['harbor.lan:5000', '10.0.0.0/8']);
    assert.deepEqual(reg.plainHttp, ['cache.lan:5000', 'Quay.IO']);
    assert.deepEqual(reg.mirrors, ['docker.io=mirror.lan:5000']);
    // Only these settings are lists: another string setting given a sequence is refused, and so
    // is a sequence holding something other than strings.
    assert.throws(() => load({}, file('l2.yaml', 'state-dir: [/a, /b]\n')), /state-dir must be a string \(got \["\/a","\/b"\]\)/);
    assert.throws(() => load({}, file('l3.yaml', 'insecure-registries: [{a: 1}]\n')), /insecure-registries must be a string or a list of strings/);
    assert.throws(() => load({}, file('l4.yaml', 'plain-http-registries: [reg.lan, 1.10]\n')), /plain-http-registries must be a string or a list of strings \(got \["reg.lan",1.1\]\)/);
  });

  it('names the key in every startup error', () => {
    assert.throws(() => load({}, file('u.yaml', 'grpc-endpoint: x:1\nstate_dir: /x\n')), /unknown key "state_dir"/);
    assert.throws(() => load({}, file('b.yaml', 'resync-period: soon\n')), /resync-period must be a duration/);
    // Endpoints from the file and the environment are held to the flags' rule.
    assert.equal(load({}, file('ep.yaml', 'grpc-endpoint: ":9090"\nhttp-endpoint: "[::1]:8090"\n')).grpcEndpoint, ':9090');
    assert.throws(() => load({}, file('ep2.yaml', 'http-endpoint: 8090\n')), /ep2\.yaml: http-endpoint must be host:port .*the port is missing \(got 8090\)/);
    assert.throws(() => load({}, file('ep3.yaml', ''), { MATCHLOCK_METRICS_ENDPOINT: '0.0.0.0:65536' }), /environment MATCHLOCK_METRICS_ENDPOINT: metrics-endpoint must be host:port/);
    assert.throws(() => load({}, file('c.yaml', 'enable-http: maybe\n')), /enable-http must be true or false/);
    assert.throws(() => load({ 'default-provider': 'vmware' }, file('d.yaml', '')), /default-provider must be firecracker, cloudhypervisor, qemu/);
    assert.throws(() => load({}, file('e.yaml', ''), { MATCHLOCK_QEMU_ACCEL: 'hvf' }), /environment MATCHLOCK_QEMU_ACCEL: qemu-accel must be tcg or kvm/);
    assert.throws(() => load({ 'reconcile-workers': '0' }, file('f.yaml', '')), /reconcile-workers must be between 1 and 64/);
    assert.throws(() => load({}, file('g.yaml', '- a\n- b\n')), /must be a mapping/);
    assert.throws(() => load({}, file('h.yaml', 'a: [\n')), /not valid YAML/);
    assert.throws(() => load({ 'tls-cert': '/c' }, file('i.yaml', '')), /tls-cert and tls-key must be given together/);
    assert.throws(() => load({}, join(tmp.path, 'missing.yaml')), MatchlockError);
    // A default config path that does not exist is fine.
    assert.equal(loadConfig({ flags: {}, file: { path: join(tmp.path, 'missing.yaml'), explicit: false }, env: {} }).providerSettings['qemu-accel'], 'tcg');
  });

  it('refuses vmm-uid-range and vmm-user of the wrong shape when the config is read, naming the key and the rule', () => {
    const empty = file('vmm.yaml', '');
    const refused = (flags: Record<string, unknown>, message: RegExp) =>
      assert.throws(() => load(flags, empty), (err: unknown) => err instanceof MatchlockError && message.test(err.message), JSON.stringify(flags));
    refused({ 'vmm-uid-range': '5-1' }, /^vmm-uid-range 5-1: must be FIRST-LAST with 1000 <= FIRST <= LAST/);
    refused({ 'vmm-uid-range': '2000-1000' }, /^vmm-uid-range 2000-1000: must be FIRST-LAST/);
    for (const user of ['1:1:1', 'a:b', 'two words', 'a,b', '-rf', '+nis', '']) refused({ 'vmm-user': user }, new RegExp(`^vmm-user ${user.replace(/[+]/g, '\\+')}: must be root, uid:gid`));
    refused({ 'vmm-user': '0:5' }, /^vmm-user 0:5: uid 0 is root: write root \(or 0:0\)/);
    // Root's group is root's too, from a flag, the config file or the environment alike.
    refused({ 'vmm-user': '5:0' }, /^vmm-user 5:0: gid 0 is root's group: write root \(or 0:0\)/);
    assert.throws(() => load({}, file('gid0.yaml', 'vmm-user: "1000:0"\n')), /vmm-user 1000:0: gid 0 is root's group/);
    assert.throws(() => load({}, empty, { MATCHLOCK_VMM_USER: '1000:0' }), /vmm-user 1000:0: gid 0 is root's group/);
    refused({ 'vmm-user': '1000:4294967295' }, /^vmm-user 1000:4294967295: uid and gid must be at most 4294967294/);
    for (const user of ['root', '0:0', '1000:1000', 'matchlock-vmm', 'svc.vmm', '4242']) assert.equal(load({ 'vmm-user': user }, empty).vmmUser, user);
    assert.equal(load({ 'vmm-uid-range': '100000-165535' }, empty).vmmUidRange, '100000-165535');
  });

  it('parses durations and recognises loopback endpoints', () => {
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('10'), undefined);
    assert.equal(isLoopbackEndpoint('127.0.0.1:9090'), true);
    assert.equal(isLoopbackEndpoint('localhost:9090'), true);
    assert.equal(isLoopbackEndpoint('[::1]:9090'), true);
    assert.equal(isLoopbackEndpoint('0.0.0.0:9090'), false);
    assert.equal(isLoopbackEndpoint(':9090'), false);
    assert.equal(isLoopbackEndpoint('unix:/run/matchlock.sock'), true);
    // Registries are named by host with or without a port.
    for (const h of ['localhost', 'localhost:5000', '127.0.0.1', '127.0.0.1:5000', '[::1]:5000']) assert.equal(isLoopbackHost(h), true, h);
    for (const h of ['registry.example', 'registry.example:5000', '127.example.com', '10.0.0.1:5000']) assert.equal(isLoopbackHost(h), false, h);
  });

  it('documents every key in the README configuration reference', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    // Whole rows, so a changed default or meaning cannot drift from the reference either.
    const rows = readme.split('\n').filter((l) => /^\| `[a-z-]+` \|/.test(l));
    assert.deepEqual(rows, KEYS.map((k) => `| \`${k.key}\` | ${k.default === '' ? '(empty)' : `\`${k.default}\``} | ${k.help} |`));
  });
});
