import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { run } from '../../src/cli/main.js';
import { hostDeviceName } from '../../src/core/microvm/host-names.js';
import { initialStatus, type MicroVM } from '../../src/core/microvm/types.js';
import type { Check } from '../../src/host/inspect.js';
import { makeCerts } from '../helpers/certs.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

async function inspect(args: string[]): Promise<{ code: number; checks: Check[]; err: string }> {
  let out = '';
  let err = '';
  const code = await run(['-o', 'json', ...args], { out: (t) => (out += t), err: (t) => (err += t) }, {});
  return { code, checks: JSON.parse(out || '[]') as Check[], err };
}

describe('inspect reaches the daemon as every other command does', () => {
  const tmp = tempDir('inspect-access');
  let plain: DaemonHandle;
  let tls: DaemonHandle;
  let certs: ReturnType<typeof makeCerts>;
  before(async () => {
    certs = makeCerts(tmp.path);
    plain = await startDaemon(join(tmp.path, 'plain'), ['--basic-auth-token', 's3cret']);
    tls = await startDaemon(join(tmp.path, 'tls'), ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey]);
  });
  after(async () => {
    await plain?.stop();
    await tls?.stop();
    tmp.remove();
  });
  const daemonCheck = (checks: Check[]) => checks.find((c) => c.check === 'daemon');
  const at = (d: DaemonHandle, ...rest: string[]) => ['inspect', '--config', '/dev/null', '--daemon-state-dir', d.stateDir, '--grpc-endpoint', d.target, ...rest];

  it('takes --token, and calls a refused token a token problem, not a stopped daemon', async () => {
    const good = await inspect(['--token', 's3cret', ...at(plain)]);
    assert.equal(daemonCheck(good.checks)?.status, 'ok', JSON.stringify(good.checks));
    const wrong = await inspect(['--token', 'wrong', ...at(plain)]);
    const d = daemonCheck(wrong.checks);
    assert.equal(d?.status, 'fail');
    assert.match(d?.evidence ?? '', /is running but refused the token given \(--token or MATCHLOCK_TOKEN\)/);
    assert.match(d?.fix ?? '', /basic-auth-token.*--token/);
    assert.doesNotMatch(d?.fix ?? '', /start/);
    const none = await inspect(at(plain));
    assert.match(daemonCheck(none.checks)?.fix ?? '', /the daemon wants a token/);
  });

  it('takes --tls-ca like every other command, and names a TLS failure as such', async () => {
    const config = join(tmp.path, 'tls.yaml');
    execFileSync('sh', ['-c', `printf 'tls-cert: ${certs.serverCert}\\ntls-key: ${certs.serverKey}\\n' > ${config}`]);
    const withConfig = (ca: string) => inspect(['--tls-ca', ca, 'inspect', '--config', config, '--daemon-state-dir', tls.stateDir, '--grpc-endpoint', tls.target]);
    assert.equal(daemonCheck((await withConfig(certs.ca)).checks)?.status, 'ok');
    const rogue = daemonCheck((await withConfig(certs.rogueCert)).checks);
    assert.equal(rogue?.status, 'fail');
    assert.match(rogue?.evidence ?? '', /^TLS with matchlockd on .* failed/);
  });

  it('reports a TLS file the client refuses as the daemon check failing, naming the flag, with the fix for that flag', async () => {
    const garbage = join(tmp.path, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const dir = join(tmp.path, 'a-dir');
    mkdirSync(dir, { recursive: true });
    const cases: [string, string[], RegExp, RegExp][] = [
      ['a CA that is no PEM', ['--tls-ca', garbage], new RegExp(`--tls-ca ${garbage}: must hold at least one PEM certificate`), /^give --tls-ca a readable PEM file/],
      ['a key as the CA', ['--tls-ca', certs.serverKey], new RegExp(`--tls-ca ${certs.serverKey}: must hold at least one PEM certificate`), /^give --tls-ca/],
      ['a directory as the CA', ['--tls-ca', dir], new RegExp(`--tls-ca ${dir}: is a directory; it must be a file`), /^give --tls-ca/],
      ['a cert as the key', ['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientCert], new RegExp(`--tls-key ${certs.clientCert}: must hold a PEM private key`), /^give --tls-key the readable PEM private key/],
      ['the key of another cert', ['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.rogueKey], new RegExp(`--tls-key ${certs.rogueKey}: must be the private key of the certificate in --tls-cert ${certs.clientCert}`), /^give --tls-key/],
      ['a key as the cert', ['--tls-ca', certs.ca, '--tls-cert', certs.clientKey, '--tls-key', certs.clientKey], new RegExp(`--tls-cert ${certs.clientKey}: must hold a PEM certificate`), /^give --tls-cert a readable PEM client certificate/],
    ];
    for (const [what, flags, evidence, fix] of cases) {
      const r = await inspect(['--host', tls.target, ...flags, 'inspect', '--config', '/dev/null', '--daemon-state-dir', tls.stateDir]);
      assert.equal(r.code, 1, `${what}: ${r.err}`);
      assert.match(r.err, /^matchlock: \d+ check\(s\) failed\n$/, what);
      const d = daemonCheck(r.checks);
      assert.equal(d?.status, 'fail', `${what}: ${JSON.stringify(d)}`);
      assert.match(d?.evidence ?? '', new RegExp(`^matchlockd on ${tls.target} not checked: ${evidence.source}`), what);
      assert.match(d?.fix ?? '', fix, what);
    }
  });

  it('labels the connection by what the client dialled, and points at --tls-ca when a TLS daemon refuses plaintext', async () => {
    const bare = ['inspect', '--config', '/dev/null', '--daemon-state-dir', tls.stateDir];
    const viaCa = daemonCheck((await inspect(['--host', tls.target, '--tls-ca', certs.ca, ...bare])).checks);
    assert.equal(viaCa?.evidence, `matchlockd answers on ${tls.target} (TLS, no auth)`, JSON.stringify(viaCa));
    const plainToTls = daemonCheck((await inspect(['--host', tls.target, ...bare])).checks);
    assert.equal(plainToTls?.status, 'fail');
    assert.match(plainToTls?.evidence ?? '', /answers only over TLS/, JSON.stringify(plainToTls));
    assert.match(plainToTls?.fix ?? '', /--tls-ca/);
    assert.doesNotMatch(plainToTls?.fix ?? '', /systemctl start/);
  });

  it("checks the endpoint named by the global --host or MATCHLOCK_HOST over the config's; its own --grpc-endpoint over both; prints -o yaml", async () => {
    const config = join(tmp.path, 'elsewhere.yaml');
    writeFileSync(config, 'grpc-endpoint: unix:/nonexistent/matchlock.sock\n');
    const base = ['inspect', '--config', config, '--daemon-state-dir', plain.stateDir];
    const configOnly = daemonCheck((await inspect(['--token', 's3cret', ...base])).checks);
    assert.match(configOnly?.evidence ?? '', /no answer from matchlockd on unix:\/nonexistent\/matchlock\.sock/);
    const viaFlag = daemonCheck((await inspect(['--host', plain.target, '--token', 's3cret', ...base])).checks);
    assert.equal(viaFlag?.status, 'ok', JSON.stringify(viaFlag));
    assert.equal(viaFlag?.evidence, `matchlockd answers on ${plain.target} (plaintext, token auth)`);
    let out = '';
    await run(['-o', 'json', '--token', 's3cret', ...base], { out: (t) => (out += t), err: () => undefined }, { MATCHLOCK_HOST: plain.target });
    assert.equal(daemonCheck(JSON.parse(out) as Check[])?.status, 'ok', out);
    const own = daemonCheck((await inspect(['--host', 'unix:/nonexistent/other.sock', '--token', 's3cret', ...base, '--grpc-endpoint', plain.target])).checks);
    assert.equal(own?.status, 'ok', JSON.stringify(own));
    out = '';
    await run(['-o', 'yaml', '--host', plain.target, '--token', 's3cret', ...base], { out: (t) => (out += t), err: () => undefined }, {});
    assert.equal(daemonCheck(parseYaml(out) as Check[])?.status, 'ok', out);
  });

  it('folds what a PENDING VM does not have yet into its one state check', async () => {
    const state = join(tmp.path, 'pending');
    const db = new SqliteStore(join(state, 'matchlock.db'));
    const uid = '01HZY3NDEKTSV4RRFFQ69G5FAV';
    db.insert({
      uid, version: 1, createdAt: '', updatedAt: '',
      spec: { name: 'waiting', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'registry.invalid/k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
        additionalVolumes: [], interfaces: [{ deviceId: 'eth0', type: 'TAP' }], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: { ...initialStatus(), state: 'PENDING', retry: 2, lastError: 'pulling registry.invalid/k:1: getaddrinfo ENOTFOUND registry.invalid' },
    } as unknown as MicroVM);
    db.close();
    const r = await inspect(['inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent/matchlock.sock', '--bridge-name', 'br0']);
    const vm = r.checks.filter((c) => c.check.includes(uid));
    assert.deepEqual(vm.filter((c) => c.status !== 'ok').map((c) => c.check), [`vm ns/waiting (${uid}) state`], JSON.stringify(vm, null, 1));
    const s = vm[0];
    assert.match(s?.evidence ?? '', /^PENDING: pulling registry\.invalid/);
    assert.match(s?.evidence ?? '', /not made yet: files: .* lacks .*; vmm: no VMM process \(none was started for it yet\); interface eth0: \S+ missing/);
  });

  it('tells to bring back the link a FAILED VM ran out of attempts for only when it is still the VM\'s uplink and missing', async () => {
    const state = join(tmp.path, 'failed');
    const db = new SqliteStore(join(state, 'matchlock.db'));
    const uids = { missing: '01HZY3NDEKTSV4RRFFQ69G5FA1', present: '01HZY3NDEKTSV4RRFFQ69G5FA2', moved: '01HZY3NDEKTSV4RRFFQ69G5FA3' };
    const bridges = { missing: 'mlnobr9', present: 'lo', moved: 'mlnobr9' };
    for (const [k, uid] of Object.entries(uids) as [keyof typeof uids, string][]) {
      db.insert({
        uid, version: 1, createdAt: '', updatedAt: '',
        spec: { name: k, namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'registry.invalid/k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
          additionalVolumes: [], interfaces: [{ deviceId: 'eth0', type: 'TAP', overrides: { bridgeName: bridges[k] } }], metadata: {}, provider: 'qemu', allowGuestAgent: false },
        status: { ...initialStatus(), state: 'FAILED', retry: 11, lastError: 'bridge for interface eth0 not found on this host', missingLink: k === 'moved' ? 'mloldbr9' : bridges[k] },
      } as unknown as MicroVM);
    }
    db.close();
    const r = await inspect(['inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent/matchlock.sock', '--bridge-name', 'br0']);
    const fix = (uid: string) => r.checks.find((c) => c.check === `vm ns/${Object.entries(uids).find(([, u]) => u === uid)?.[0] ?? ''} (${uid}) state`)?.fix ?? '';
    assert.match(fix(uids.missing), /^bring back mlnobr9: matchlockd retries the VM when it appears/);
    assert.match(fix(uids.present), /^lo is there again: .*restart matchlockd/);
    assert.match(fix(uids.moved), /^fix the cause, then delete and recreate it/);
  });

  it('never claims a bridge mismatch or prints a fix with an empty bridge when bridge-name is not known to inspect', { skip: process.getuid?.() !== 0 ? 'needs root (network namespace)' : false }, () => {
    const state = join(tmp.path, 'nobridge');
    const db = new SqliteStore(join(state, 'matchlock.db'));
    const uids = { bridged: '01HZY3NDEKTSV4RRFFQ69G5FB1', loose: '01HZY3NDEKTSV4RRFFQ69G5FB2', failed: '01HZY3NDEKTSV4RRFFQ69G5FB3' };
    const vms = Object.entries(uids).map(([k, uid]) => ({
      uid, version: 1, createdAt: '', updatedAt: '',
      spec: { name: k, namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'registry.invalid/k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
        additionalVolumes: [], interfaces: [{ deviceId: 'eth0', type: 'TAP' }], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: k === 'failed'
        ? { ...initialStatus(), state: 'FAILED', retry: 11, lastError: 'bridge for interface eth0 not found on this host', missingLink: 'mlgonebr9' }
        : { ...initialStatus(), state: 'CREATED' },
    }) as unknown as MicroVM);
    for (const vm of vms) db.insert(vm);
    db.close();
    const ns = `mlib-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const ipns = (...a: string[]) => execFileSync('ip', ['netns', 'exec', ns, 'ip', ...a]);
      ipns('link', 'add', 'mlbr9', 'type', 'bridge');
      const [bridged, loose] = [hostDeviceName(vms[0]!, 0), hostDeviceName(vms[1]!, 0)];
      ipns('tuntap', 'add', 'dev', bridged, 'mode', 'tap');
      ipns('link', 'set', bridged, 'master', 'mlbr9');
      ipns('tuntap', 'add', 'dev', loose, 'mode', 'tap');
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent/matchlock.sock'], { encoding: 'utf8' });
      const checks = JSON.parse(r.stdout) as Check[];
      const find = (k: keyof typeof uids, what: string) => checks.find((c) => c.check === `vm ns/${k} (${uids[k]}) ${what}`);
      const on = find('bridged', 'interface eth0');
      assert.equal(on?.status, 'ok', JSON.stringify(on));
      assert.match(on?.evidence ?? '', new RegExp(`^${bridged} on mlbr9, .*not known to inspect`));
      const off = find('loose', 'interface eth0');
      assert.equal(off?.status, 'warn', JSON.stringify(off));
      assert.match(off?.fix ?? '', /--bridge-name/);
      for (const c of checks) assert.doesNotMatch(`${c.evidence} ${c.fix ?? ''}`, /\bnot $|master $|master ,| not \)| {2}/, JSON.stringify(c));
      assert.match(find('failed', 'state')?.fix ?? '', /^bring back mlgonebr9/);
    } finally {
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });

  it('asks for no VMM restart when a stopped VM lacks its TAP: no VMM holds the old one', { skip: process.getuid?.() !== 0 ? 'needs root (network namespace)' : false }, () => {
    const state = join(tmp.path, 'stopped-tap');
    const db = new SqliteStore(join(state, 'matchlock.db'));
    const uid = '01HZY3NDEKTSV4RRFFQ69G5FC1';
    db.insert({
      uid, version: 1, createdAt: '', updatedAt: '',
      spec: { name: 'off', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: 'registry.invalid/k:1', filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false },
        additionalVolumes: [], interfaces: [{ deviceId: 'eth0', type: 'TAP' }], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: { ...initialStatus(), state: 'CREATED', power: 'STOPPED' },
      power: { desired: 'STOPPED', restart: 0 },
    } as unknown as MicroVM);
    db.close();
    const ns = `mlit-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', '--config', '/dev/null', '--daemon-state-dir', state, '--grpc-endpoint', 'unix:/nonexistent/matchlock.sock', '--bridge-name', 'br0'], { encoding: 'utf8' });
      const tap = (JSON.parse(r.stdout) as Check[]).find((c) => c.check === `vm ns/off (${uid}) interface eth0`);
      assert.equal(tap?.status, 'fail', JSON.stringify(tap));
      assert.match(tap?.evidence ?? '', / missing$/);
      assert.equal(tap?.fix, 'matchlockd recreates it on its next reconcile (restart matchlockd to reconcile now)');
    } finally {
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });

  it('runs on a machine with only the hub: --hub-only, or --hub where no matchlockd is', { skip: process.getuid?.() !== 0 ? 'needs root (network namespace)' : false }, () => {
    const ns = `mlio-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const hubFlags = ['--hub-interface', 'mlbr0', '--hub-uplink', 'lo', '--hub-dhcp', 'dnsmasq', '--hub-state-dir', join(tmp.path, 'hub')];
      const ml = (...a: string[]) => spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'inspect', ...a], { encoding: 'utf8', env: { ...process.env, MATCHLOCK_HUB_RECORD: join(tmp.path, 'no-record.yaml') } });
      const only = JSON.parse(ml('--config', '/dev/null', '--hub-only', ...hubFlags).stdout) as Check[];
      assert.deepEqual(only.filter((c) => !c.check.startsWith('hub ') && c.check !== 'vpn subnet router'), []);
      assert.equal(only.find((c) => c.check === 'hub interface')?.status, 'fail', 'the hub checks ran');
      const bare = JSON.parse(ml('--config', '/dev/null', '--daemon-state-dir', join(tmp.path, 'no-daemon'), '--grpc-endpoint', '127.0.0.1:1', '--hub', ...hubFlags).stdout) as Check[];
      const host = bare.filter((c) => !c.check.startsWith('hub ') && c.check !== 'vpn subnet router');
      assert.deepEqual(host.map((c) => [c.check, c.status]), [['daemon', 'ok']]);
      assert.match(host[0]?.evidence ?? '', /no matchlockd on this machine/);

      // hub commands read setup's record only when no hub flag names a hub.
      const record = join(tmp.path, 'record.yaml');
      writeFileSync(record, `interface: mlrec0\nuplink: recorded0\nmode: bridge\nstate-dir: ${join(tmp.path, 'rec')}\n`);
      const status = (...a: string[]) => {
        const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/matchlock.js'), '-o', 'json', 'hub', 'status', ...a], { encoding: 'utf8', env: { ...process.env, MATCHLOCK_HUB_RECORD: record } });
        return Object.fromEntries((JSON.parse(r.stdout) as { piece: string; detail: string }[]).map((p) => [p.piece, p.detail]));
      };
      assert.deepEqual([status().interface, status().uplink], ['mlrec0 missing', 'recorded0 missing']);
      assert.deepEqual([status('--interface', 'mlflag0').interface, status('--interface', 'mlflag0').uplink], ['mlflag0 missing', 'eth0 missing']);
    } finally {
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });
});
