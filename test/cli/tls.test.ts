import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeCerts, type Certs } from '../helpers/certs.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

/** The CLI as users run it, in its own process: Node's warnings go to its stderr. */
function matchlock(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/matchlock.js'), ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
  return { status: r.status, stderr: r.stderr };
}

/**
 * The same, without blocking this process's event loop (so a listener here can take connections);
 * killed after 30 s (a command that keeps redialling: status null).
 */
function matchlockAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(ROOT, 'bin/matchlock.js'), ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' }, timeout: 30_000 }, (_err, stdout, stderr) =>
      resolve({ status: child.exitCode, stdout, stderr }),
    );
  });
}

/**
 * The jobs' results in order, `width` running at a time: dozens of CLI processes at once on a
 * loaded two-core machine outlast matchlockAsync's timeout.
 */
async function inBatches<T>(jobs: (() => Promise<T>)[], width: number): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < jobs.length; i += width) out.push(...(await Promise.all(jobs.slice(i, i + width).map((job) => job()))));
  return out;
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

describe('unusable TLS files are refused before anything is dialled, naming the flag (exit 2)', () => {
  const tmp = tempDir('cli-tls-files');
  let certs: Certs;
  let mtls: DaemonHandle;
  // A listener that counts the connections made to it: a refused command makes none.
  let listener: Server;
  let dialled = 0;
  let target = '';
  const files: Record<string, string> = {};
  before(async () => {
    certs = makeCerts(tmp.path);
    mtls = await startDaemon(join(tmp.path, 'mtls'), ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-validate', '--tls-client-ca', certs.ca]);
    listener = createServer((s) => {
      dialled++;
      s.destroy();
    });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    target = `127.0.0.1:${(listener.address() as AddressInfo).port}`;
    files.garbage = join(tmp.path, 'garbage.pem');
    writeFileSync(files.garbage, 'not a certificate\n');
    files.empty = join(tmp.path, 'empty.pem');
    writeFileSync(files.empty, '');
    files.dir = join(tmp.path, 'a-dir');
    mkdirSync(files.dir);
    files.brokenCa = join(tmp.path, 'broken-ca.pem');
    writeFileSync(files.brokenCa, `${readFileSync(certs.ca, 'utf8')}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`);
    files.fifo = join(tmp.path, 'fifo.pem');
    execFileSync('mkfifo', [files.fifo]);
    files.rsaKey = join(tmp.path, 'rsa.key');
    execFileSync('openssl', ['genrsa', '-out', files.rsaKey, '2048'], { stdio: 'pipe' });
    files.hubState = join(tmp.path, 'hub');
    mkdirSync(files.hubState);
    writeFileSync(join(files.hubState, 'dnsmasq.leases'), '');
  });
  after(async () => {
    await mtls?.stop();
    await new Promise((resolve) => (listener ? listener.close(resolve) : resolve(undefined)));
    tmp.remove();
  });

  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const cases = (): [string, string[], RegExp][] => {
    const pair = (cert: string, key: string) => ['--tls-ca', certs.ca, '--tls-cert', cert, '--tls-key', key];
    return [
      ['a CA that is no PEM', ['--tls-ca', files.garbage!], new RegExp(`--tls-ca ${esc(files.garbage!)}: must hold at least one PEM certificate \\(-----BEGIN CERTIFICATE-----\\); it holds none`)],
      ['an empty CA file', ['--tls-ca', files.empty!], new RegExp(`--tls-ca ${esc(files.empty!)}: must hold at least one PEM certificate`)],
      ['a key given as the CA', ['--tls-ca', certs.clientKey], new RegExp(`--tls-ca ${esc(certs.clientKey)}: must hold at least one PEM certificate`)],
      ['a CA with a certificate that does not parse', ['--tls-ca', files.brokenCa!], new RegExp(`--tls-ca ${esc(files.brokenCa!)}: certificate 2 of 2 does not parse`)],
      ['a directory as the CA', ['--tls-ca', files.dir!], new RegExp(`--tls-ca ${esc(files.dir!)}: is a directory; it must be a file`)],
      ['a missing CA', ['--tls-ca', join(tmp.path, 'nothing.pem')], new RegExp(`--tls-ca ${esc(join(tmp.path, 'nothing.pem'))}: ENOENT`)],
      ['a cert that is no PEM', pair(files.garbage!, certs.clientKey), new RegExp(`--tls-cert ${esc(files.garbage!)}: must hold a PEM certificate \\(.*no start line`)],
      ['an empty cert file', pair(files.empty!, certs.clientKey), new RegExp(`--tls-cert ${esc(files.empty!)}: must hold a PEM certificate`)],
      ['a key given as the cert', pair(certs.clientKey, certs.clientKey), new RegExp(`--tls-cert ${esc(certs.clientKey)}: must hold a PEM certificate`)],
      ['a directory as the cert', pair(files.dir!, certs.clientKey), new RegExp(`--tls-cert ${esc(files.dir!)}: is a directory`)],
      ['a key that is no PEM', pair(certs.clientCert, files.garbage!), new RegExp(`--tls-key ${esc(files.garbage!)}: must hold a PEM private key \\(`)],
      ['an empty key file', pair(certs.clientCert, files.empty!), new RegExp(`--tls-key ${esc(files.empty!)}: must hold a PEM private key`)],
      ['a cert given as the key', pair(certs.clientCert, certs.clientCert), new RegExp(`--tls-key ${esc(certs.clientCert)}: must hold a PEM private key`)],
      ['a FIFO as the CA', ['--tls-ca', files.fifo!], new RegExp(`--tls-ca ${esc(files.fifo!)}: is a FIFO; it must be a regular file`)],
      ['a character device as the key', pair(certs.clientCert, '/dev/zero'), /--tls-key \/dev\/zero: is a character device; it must be a regular file/],
      ['a key of another type than the cert\'s', pair(certs.clientCert, files.rsaKey!), new RegExp(`--tls-key ${esc(files.rsaKey!)}: must be the private key of the certificate in --tls-cert ${esc(certs.clientCert)} \\(it is a key of another type or pair\\)`)],
      ['the key of another cert', pair(certs.clientCert, certs.rogueKey), new RegExp(`--tls-key ${esc(certs.rogueKey)}: must be the private key of the certificate in --tls-cert ${esc(certs.clientCert)} \\(.*key values mismatch`)],
    ];
  };

  it('every rule, for an IP and a DNS host alike; the same files in their places make a real mTLS call', async () => {
    const jobs = cases().flatMap(([what, flags, message]) =>
      [target, target.replace('127.0.0.1', 'localhost')].map((host) => async () => ({ what: `${what} (${host})`, message, r: await matchlockAsync(['--host', host, ...flags, 'vm', 'list']) })),
    );
    for (const { what, message, r } of await inBatches(jobs, 4)) {
      assert.equal(r.status, 2, `${what}: ${r.stderr}`);
      assert.match(r.stderr, message, what);
      assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, `${what}: one line, no stack: ${r.stderr}`);
    }
    assert.equal(dialled, 0, 'nothing was dialled');
    // The checks refuse only what is unusable: a daemon that wants client certificates answers.
    const ok = await matchlockAsync(['--host', `127.0.0.1:${mtls.grpcPort}`, '--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey, 'vm', 'list']);
    assert.equal(ok.status, 0, ok.stderr);
    const byName = await matchlockAsync(['--host', `localhost:${mtls.grpcPort}`, '--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey, '-o', 'json', 'version']);
    assert.equal(byName.status, 0, byName.stderr);
  });

  it('by every command that dials', async () => {
    const hub = ['--interface', 'mlbr9', '--mode', 'bridge', '--address', '192.168.49.2/25', '--range-start', '192.168.49.26', '--range-end', '192.168.49.126', '--uplink', 'up0', '--dhcp', 'dnsmasq', '--state-dir', files.hubState!];
    const commands = [
      ['vm', 'get', 'u1'],
      ['vm', 'describe', 'u1'],
      ['vm', 'delete', 'u1'],
      ['vm', 'stop', 'u1'],
      ['vm', 'stop', 'ns/name'],
      ['vm', 'events'],
      ['vm', 'watch', 'u1'],
      ['vm', 'logs', 'u1'],
      ['version'],
      ['-o', 'json', 'version'],
      ['hub', 'leases', ...hub],
    ];
    const jobs = commands.map((command) => async () => ({ command, r: await matchlockAsync(['--host', target, '--tls-ca', files.garbage!, ...command]) }));
    for (const { command, r } of await inBatches(jobs, 4)) {
      assert.equal(r.status, 2, `${command.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /--tls-ca .*garbage\.pem: must hold at least one PEM certificate/, command.join(' '));
    }
    assert.equal(dialled, 0, 'nothing was dialled');
  });
});
