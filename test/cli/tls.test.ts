import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeCerts, type Certs } from '../helpers/certs.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

/** The CLI as users run it, in its own process: Node's warnings go to its stderr. */
function matchlock(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
  return { status: r.status, stderr: r.stderr };
}

describe('TLS to a daemon named by IP address', () => {
  const tmp = tempDir('cli-tls');
  let certs: Certs;
  let withIp: DaemonHandle;
  let dnsOnly: DaemonHandle;
  before(async () => {
    certs = makeCerts(tmp.path);
    withIp = await startDaemon(join(tmp.path, 'ip'), ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey]);
    dnsOnly = await startDaemon(join(tmp.path, 'dns'), ['--tls-cert', certs.dnsOnlyCert, '--tls-key', certs.dnsOnlyKey]);
  });
  after(async () => {
    await withIp?.stop();
    await dnsOnly?.stop();
    tmp.remove();
  });

  it('sends no IP as the SNI server name (no DEP0123 warning), and still checks the IP against the certificate', () => {
    const ok = matchlock(['--host', `127.0.0.1:${withIp.grpcPort}`, '--tls-ca', certs.ca, 'vm', 'list']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.doesNotMatch(ok.stderr, /DEP0123|ServerName/);
    const wrongName = matchlock(['--host', `127.0.0.1:${dnsOnly.grpcPort}`, '--tls-ca', certs.ca, 'vm', 'list']);
    assert.notEqual(wrongName.status, 0, 'a certificate without IP:127.0.0.1 is refused for 127.0.0.1');
    assert.match(wrongName.stderr, /IP: 127\.0\.0\.1 is not in the cert's list/);
    const byName = matchlock(['--host', `localhost:${dnsOnly.grpcPort}`, '--tls-ca', certs.ca, 'vm', 'list']);
    assert.equal(byName.status, 0, byName.stderr);
  });
});
