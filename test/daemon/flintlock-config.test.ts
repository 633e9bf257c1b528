import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../src/daemon/config.js';
import { DAEMON_BIN, ROOT, TEST_CGROUP_PARENT, tempDir } from '../helpers/daemon.js';

/** The config file flintlock's provisioning script writes, taken from the contract (section 6). */
function contractSample(): string | undefined {
  let text: string;
  try {
    text = readFileSync(join(ROOT, '../shared/guide/contract.md'), 'utf8');
  } catch {
    return undefined;
  }
  const section = text.slice(text.indexOf('## 6.'), text.indexOf('## 7.'));
  return /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
}

describe("flintlockd's config file", () => {
  const tmp = tempDir('flintlock-config');
  after(() => tmp.remove());
  const file = (name: string, text: string) => {
    const p = join(tmp.path, name);
    writeFileSync(p, text);
    return p;
  };

  it('accepts keys only containerd or flintlock used, warning about each with the reason', () => {
    const path = file('containerd.yaml', [
      'containerd-socket: /run/containerd-dev/containerd.sock', 'containerd-ns: flintlock', 'containerd-kernel-ss: native',
      'containerd-volume-ss: devmapper', 'containerd-kernel-ns: x', 'containerd-volume-ns: y', 'volume-snapshotter: devmapper',
      'log-output: /var/log/flintlockd.log', 'disable-reconcile: false', 'disable-api: false', 'firecracker-api: true',
      'parent-iface: bond0.1000', '',
    ].join('\n'));
    const warnings: string[] = [];
    const cfg = loadConfig({ flags: {}, file: { path, explicit: true }, env: {} }, undefined, warnings);
    assert.equal(cfg.parentIface, 'bond0.1000');
    for (const key of ['containerd-socket', 'containerd-ns', 'containerd-kernel-ss', 'containerd-volume-ss', 'containerd-kernel-ns', 'containerd-volume-ns', 'volume-snapshotter']) {
      const w = warnings.find((l) => l.includes(`"${key}" ignored`));
      assert.ok(w, `no warning for ${key}: ${warnings.join('\n')}`);
      assert.match(w, /does not use containerd/);
    }
    assert.match(warnings.find((l) => l.includes('"volume-snapshotter"')) ?? '', /set thinpool/);
    assert.match(warnings.find((l) => l.includes('"log-output"')) ?? '', /logs to stderr/);
    assert.ok(warnings.some((l) => l.includes('"disable-api" ignored')));
    assert.equal(warnings.length, 11, warnings.join('\n'));
  });

  it('reads keys matchlock spells differently under their matchlock names, in any case as viper does', () => {
    const path = file('renamed.yaml', 'deleteMicroVM-timeout: 45s\nVirtiofs-Bin: /usr/libexec/virtiofsd\nlog-output: stderr\n');
    const warnings: string[] = [];
    const cfg = loadConfig({ flags: {}, file: { path, explicit: true }, env: {} }, undefined, warnings);
    assert.equal(cfg.deleteVmTimeoutMs, 45_000);
    assert.equal(cfg.providerSettings['virtiofsd-bin'], '/usr/libexec/virtiofsd');
    assert.deepEqual(warnings.map((w) => w.replace(`${path}: `, '')), [
      'flintlockd key "deleteMicroVM-timeout" read as "delete-vm-timeout", its matchlock name',
      'flintlockd key "Virtiofs-Bin" read as "virtiofsd-bin", its matchlock name',
    ]);
    // matchlock's own key wins when both are there.
    const both = file('both.yaml', 'deleteMicroVM-timeout: 45s\ndelete-vm-timeout: 5s\n');
    const w2: string[] = [];
    assert.equal(loadConfig({ flags: {}, file: { path: both, explicit: true }, env: {} }, undefined, w2).deleteVmTimeoutMs, 5_000);
    assert.match(w2.join('\n'), /"deleteMicroVM-timeout" ignored: "delete-vm-timeout" is set too/);
    // Every key matches in any case, matchlock's own too (flintlockd's files are written that way).
    const cased = loadConfig({ flags: {}, file: { path: file('cased.yaml', 'Parent-Iface: bond0.1000\nVERBOSITY: 2\n'), explicit: true }, env: {} });
    assert.equal(cased.parentIface, 'bond0.1000');
    assert.throws(() => loadConfig({ flags: {}, file: { path: file('twice.yaml', 'parent-iface: a\nParent-Iface: b\n'), explicit: true }, env: {} }), /key "Parent-Iface" is given twice/);
    // A bad value under the flintlock name is still named.
    assert.throws(() => loadConfig({ flags: {}, file: { path: file('bad.yaml', 'deleteMicroVM-timeout: soon\n'), explicit: true }, env: {} }), /delete-vm-timeout must be a duration/);
  });

  it('refuses switches matchlockd cannot honour, and still refuses keys of nobody', () => {
    assert.throws(() => loadConfig({ flags: {}, file: { path: file('d.yaml', 'disable-reconcile: true\n'), explicit: true }, env: {} }), /disable-reconcile: matchlockd cannot run without reconciling/);
    assert.throws(() => loadConfig({ flags: {}, file: { path: file('e.yaml', 'disable-api: "true"\n'), explicit: true }, env: {} }), /disable-api: matchlockd cannot run without its API/);
    assert.throws(() => loadConfig({ flags: {}, file: { path: file('u.yaml', 'containerd_socket: /x\n'), explicit: true }, env: {} }), /unknown key "containerd_socket"/);
  });

  it("starts the daemon with the sample from flintlock's provisioning script, as it is", { skip: process.getuid?.() !== 0 ? 'needs root (network namespace)' : false, timeout: 120_000 }, async () => {
    const sample = contractSample();
    if (!sample) {
      if (process.env.CI) assert.fail('the contract (../shared/guide/contract.md) is missing');
      return;
    }
    assert.match(sample, /containerd-socket/);
    const config = file('flintlockd-config.yaml', sample);
    // The sample's addresses exist in a namespace of the test's own: 192.168.10.3 and bond0.1000.
    const ns = `mlt-fl-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    const state = join(tmp.path, 'state');
    let daemon: ReturnType<typeof spawn> | undefined;
    try {
      execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      // A veth end stands in for the bond's VLAN link (this kernel has no dummy or 802.1Q).
      execFileSync('ip', ['-n', ns, 'link', 'add', 'bond0.1000', 'type', 'veth', 'peer', 'name', 'bondpeer']);
      execFileSync('ip', ['-n', ns, 'link', 'set', 'bondpeer', 'up']);
      execFileSync('ip', ['-n', ns, 'addr', 'add', '192.168.10.3/24', 'dev', 'bond0.1000']);
      execFileSync('ip', ['-n', ns, 'link', 'set', 'bond0.1000', 'up']);
      daemon = spawn('nsenter', [`--net=/run/netns/${ns}`, process.execPath, DAEMON_BIN, 'run', '--config', config, '--state-dir', state, '--vmm-cgroup-parent', TEST_CGROUP_PARENT], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      daemon.stdout?.on('data', (c: Buffer) => (out += c.toString()));
      daemon.stderr?.on('data', (c: Buffer) => (out += c.toString()));
      const proc = daemon;
      await new Promise<void>((resolve, reject) => {
        const t = setInterval(() => {
          if (/grpc api listening/.test(out)) {
            clearInterval(t);
            resolve();
          }
        }, 100);
        proc.once('exit', (code) => {
          clearInterval(t);
          reject(new Error(`matchlockd exited with ${code}:\n${out}`));
        });
      });
      assert.match(out, /WARN .*"containerd-socket" ignored: .*does not use containerd/);
      assert.match(out, /192\.168\.10\.3/);
      // The real consumer: the CLI inside the namespace, with the sample's token, and without it.
      const cli = (...args: string[]) => spawnSync('nsenter', [`--net=/run/netns/${ns}`, process.execPath, join(ROOT, 'bin/matchlock.js'), '--host', '192.168.10.3:9090', '--insecure', ...args], { encoding: 'utf8' });
      const ok = cli('--token', 's3cret-token', 'vm', 'list', '-o', 'json');
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(cli('--token', 'wrong', 'vm', 'list').status, 4);
    } finally {
      if (daemon && daemon.exitCode === null) {
        const gone = new Promise((r) => daemon?.once('exit', r));
        daemon.kill('SIGTERM');
        await gone;
      }
      spawnSync('ip', ['netns', 'del', ns]);
    }
  });
});
