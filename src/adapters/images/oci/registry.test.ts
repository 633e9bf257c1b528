import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { registrySettings } from './registry.js';

describe('registry-mirrors', () => {
  const none = { plainHttp: [], insecure: [] };
  const mirrorsOf = async (cfg: Parameters<typeof registrySettings>[0], registry: string) => (await registrySettings(cfg)(registry)).mirrors;

  it('takes a mirror as host[:port], or with http:// or https:// as Docker writes it, each with its own transport', async () => {
    const cfg = {
      mirrors: ['docker.io=mirror.example:5000', 'docker.io=HTTP://Cache.lan:5000/', 'ghcr.io=https://ghcr-mirror.example', 'quay.io=plain.lan', 'quay.io=bad-cert.lan', 'quay.io=[::1]:5000', 'quay.io=https://127.0.0.1:5443'],
      plainHttp: ['plain.lan'],
      insecure: ['bad-cert.lan'],
    };
    assert.deepEqual(await mirrorsOf(cfg, 'docker.io'), [
      { host: 'mirror.example:5000', scheme: 'https', insecureTls: false },
      { host: 'cache.lan:5000', scheme: 'http', insecureTls: false },
    ]);
    assert.deepEqual(await mirrorsOf(cfg, 'ghcr.io'), [{ host: 'ghcr-mirror.example', scheme: 'https', insecureTls: false }]);
    assert.deepEqual(await mirrorsOf(cfg, 'quay.io'), [
      { host: 'plain.lan', scheme: 'http', insecureTls: false },
      { host: 'bad-cert.lan', scheme: 'https', insecureTls: true },
      // Loopback without a scheme is plain HTTP, as a loopback registry is; written with
      // https:// it is reached as written.
      { host: '[::1]:5000', scheme: 'http', insecureTls: false },
      { host: '127.0.0.1:5443', scheme: 'https', insecureTls: false },
    ]);
  });

  it("gives a mirror without a scheme its registry's plain-http and insecure settings; one with a scheme is reached as written", async () => {
    assert.deepEqual(await mirrorsOf({ mirrors: ['reg.lan=mirror.lan', 'reg.lan=https://tls-mirror.lan'], plainHttp: ['reg.lan'], insecure: ['reg.lan'] }, 'reg.lan'), [
      { host: 'mirror.lan', scheme: 'http', insecureTls: true },
      { host: 'tls-mirror.lan', scheme: 'https', insecureTls: false },
    ]);
  });

  it("takes a mirror URL alone as Docker Hub's, as Docker's registry-mirrors lists them", async () => {
    const cfg = { mirrors: ['https://mirror.gcr.io', 'HTTP://cache.lan:5000/'], ...none };
    assert.deepEqual(await mirrorsOf(cfg, 'docker.io'), [
      { host: 'mirror.gcr.io', scheme: 'https', insecureTls: false },
      { host: 'cache.lan:5000', scheme: 'http', insecureTls: false },
    ]);
    assert.deepEqual(await mirrorsOf(cfg, 'ghcr.io'), []);
  });

  it('refuses any other form, naming the setting, the pair and the rule', async () => {
    const bad = [
      'docker.io', 'mirror.lan:5000', 'ftp://mirror.lan', 'https://mirror.lan/path', '=mirror', 'docker.io=', 'docker.io=ftp://mirror', 'docker.io=http://mirror/path', 'docker.io=mirror with space',
      'docker.io=:5000', 'docker.io=cache.lan:notaport', 'docker.io=cache.lan:99999', 'docker.io=cache.lan:0', 'docker.io=http://u:p@host', 'docker.io=http://host#x', 'docker.io=host?x=1',
      'docker.io =mirror', 'docker.io/x=mirror',
      // The registry side as a URL: no reference names a registry so, so it could never match.
      'https://docker.io=mirror', 'http://reg.lan:5000=mirror', 'https://index.docker.io/v1/=mirror', 'reg.lan/=mirror', 'user@reg.lan=mirror',
    ];
    for (const pair of bad) {
      assert.throws(() => registrySettings({ mirrors: [pair], ...none }), (err: Error) => {
        assert.ok(err instanceof MatchlockError && err.code === ErrorCode.InvalidArgument && err.field === 'registry-mirrors', String(err));
        assert.match(err.message, /^registry-mirrors ".*": must be registry=mirror or, for docker\.io, a mirror URL alone, the registry host\[:port\] as image references name it, without a scheme or path \(compared without regard to case; index\.docker\.io and registry-1\.docker\.io mean docker\.io\), the mirror host\[:port\] with http:\/\/ or https:\/\/ or neither$/);
        assert.ok(err.message.includes(JSON.stringify(pair)), err.message);
        return true;
      });
    }
  });
});

describe('per-registry settings name a registry as references do', () => {
  it("knows Docker Hub by each of its names and a host in any case, in every setting and every look-up", async () => {
    const lookup = registrySettings({
      mirrors: ['Docker.io=a.lan', 'index.docker.io=b.lan', 'registry-1.docker.io=c.lan', 'INDEX.DOCKER.IO=d.lan', 'LOCALHOST:5000=e.lan', 'Registry.Example:5000=f.lan', '[::1]:5000=g.lan'],
      insecure: ['Index.Docker.io', 'REGISTRY.example:5000'],
      plainHttp: ['registry-1.docker.io', 'LocalHost:5000', '[::1]:5000'],
    });
    const hub = await lookup('docker.io');
    assert.deepEqual(hub.mirrors.map((m) => m.host), ['a.lan', 'b.lan', 'c.lan', 'd.lan']);
    assert.equal(hub.insecureTls, true);
    assert.equal(hub.plainHttp, true);
    // A mirror without a scheme takes its registry's settings, found by the same rule.
    assert.deepEqual(hub.mirrors[0], { host: 'a.lan', scheme: 'http', insecureTls: true });
    // The name looked up goes by the same rule: a reference keeps its registry as written.
    for (const name of ['Docker.IO', 'index.docker.io', 'Registry-1.Docker.io']) assert.deepEqual(await lookup(name), hub, name);
    assert.deepEqual(await lookup('localhost:5000'), { plainHttp: true, insecureTls: false, mirrors: [{ host: 'e.lan', scheme: 'http', insecureTls: false }] });
    assert.deepEqual(await lookup('LOCALHOST:5000'), await lookup('localhost:5000'));
    assert.deepEqual(await lookup('registry.example:5000'), { plainHttp: false, insecureTls: true, mirrors: [{ host: 'f.lan', scheme: 'https', insecureTls: true }] });
    assert.deepEqual((await lookup('[::1]:5000')).mirrors.map((m) => m.host), ['g.lan']);
    assert.equal((await lookup('[::1]:5000')).plainHttp, true);
    // Another port is another registry.
    assert.deepEqual(await lookup('registry.example'), { plainHttp: false, insecureTls: false, mirrors: [] });
  });

  it("finds a mirror's own entries in the lists by the same rule", async () => {
    const lookup = registrySettings({ mirrors: ['quay.io=Bad-Cert.LAN', 'quay.io=Plain.Lan:5000'], insecure: ['BAD-CERT.lan'], plainHttp: ['plain.LAN:5000'] });
    assert.deepEqual((await lookup('quay.io')).mirrors, [
      { host: 'bad-cert.lan', scheme: 'https', insecureTls: true },
      { host: 'plain.lan:5000', scheme: 'http', insecureTls: false },
    ]);
  });

  it('refuses an insecure-registries or plain-http-registries entry that no reference could name, naming the setting, the entry and the rule', async () => {
    const bad = ['ftp://reg.lan', 'https://index.docker.io/v1/', 'reg.lan/path', 'reg.lan/', '10.0.0.0/33', '10.0.0/8', '::1/129', 'reg lan', ':5000', 'user@reg.lan', '-reg.lan', 'reg.lan:port'];
    for (const field of ['insecure-registries', 'plain-http-registries'] as const) {
      for (const entry of bad) {
        const cfg = { mirrors: [], insecure: field === 'insecure-registries' ? [entry] : [], plainHttp: field === 'plain-http-registries' ? [entry] : [] };
        assert.throws(() => registrySettings(cfg), (err: Error) => {
          assert.ok(err instanceof MatchlockError && err.code === ErrorCode.InvalidArgument && err.field === field, String(err));
          assert.equal(
            err.message,
            `${field} ${JSON.stringify(entry)}: must be a registry, host[:port] as image references name it, without a scheme or path (compared without regard to case; index.docker.io and registry-1.docker.io mean docker.io), or a subnet in CIDR notation (10.0.0.0/8)`,
          );
          return true;
        });
      }
    }
  });
});

describe('insecure-registries and plain-http-registries take subnets, as Docker does', () => {
  // The system resolver is the port here: host names resolve to what this table says.
  const dns: Record<string, string[]> = { 'reg.lan': ['10.9.9.9'], 'v6.lan': ['fd00::5'], 'outside.lan': ['192.0.2.7'], 'cache.lan': ['192.168.10.30'] };
  const resolved: string[] = [];
  const resolve = async (host: string) => {
    resolved.push(host);
    const found = dns[host];
    if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return found;
  };

  it('holds a registry named by an address in a subnet, or a host name that resolves into one; the names in a list still count', async () => {
    const lookup = registrySettings({ insecure: ['10.0.0.0/8', 'fd00::/8', 'named.lan'], plainHttp: ['192.168.10.0/25'], mirrors: ['docker.io=cache.lan:5000'] }, resolve);
    const insecureOnly = { plainHttp: false, insecureTls: true, mirrors: [] };
    assert.deepEqual(await lookup('10.1.2.3:5000'), insecureOnly);
    assert.deepEqual(await lookup('[fd00::1]:5000'), insecureOnly);
    assert.deepEqual(await lookup('reg.lan:5000'), insecureOnly);
    assert.deepEqual(await lookup('v6.lan'), insecureOnly);
    assert.deepEqual(await lookup('named.lan'), insecureOnly);
    assert.deepEqual(await lookup('192.168.10.2:5000'), { plainHttp: true, insecureTls: false, mirrors: [] });
    // Outside every subnet, or not resolved at all: the default, TLS checked.
    assert.deepEqual(await lookup('outside.lan'), { plainHttp: false, insecureTls: false, mirrors: [] });
    assert.deepEqual(await lookup('nowhere.lan'), { plainHttp: false, insecureTls: false, mirrors: [] });
    assert.deepEqual(await lookup('192.168.10.200'), { plainHttp: false, insecureTls: false, mirrors: [] });
    // A mirror is held by its own address too.
    assert.deepEqual((await lookup('docker.io')).mirrors, [{ host: 'cache.lan:5000', scheme: 'http', insecureTls: false }]);
  });

  it('never holds Docker Hub by a subnet, as Docker never does: 0.0.0.0/0 keeps its certificate checks', async () => {
    resolved.length = 0;
    const lookup = registrySettings({ insecure: ['0.0.0.0/0', '::/0'], plainHttp: ['0.0.0.0/0'], mirrors: ['docker.io=cache.lan:5000'] }, resolve);
    for (const hub of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) {
      const s = await lookup(hub);
      assert.deepEqual([s.plainHttp, s.insecureTls], [false, false], hub);
      // Its mirror is held by its own address all the same.
      assert.deepEqual(s.mirrors, [{ host: 'cache.lan:5000', scheme: 'http', insecureTls: true }]);
    }
    assert.ok(!resolved.includes('docker.io') && !resolved.includes('registry-1.docker.io'), resolved.join(' '));
    assert.deepEqual(await lookup('reg.lan'), { plainHttp: true, insecureTls: true, mirrors: [] });
  });

  it('takes a bare IPv6 address as that one address', async () => {
    const lookup = registrySettings({ insecure: ['fd00::1'], plainHttp: [], mirrors: [] }, resolve);
    assert.equal((await lookup('[fd00::1]:5000')).insecureTls, true);
    assert.equal((await lookup('[fd00::2]:5000')).insecureTls, false);
  });

  it('asks again after a failed lookup: a failure is not kept', async () => {
    let calls = 0;
    const flaky = async (host: string) => {
      calls++;
      if (calls === 1) throw Object.assign(new Error(`getaddrinfo EAI_AGAIN ${host}`), { code: 'EAI_AGAIN' });
      return ['10.9.9.9'];
    };
    const lookup = registrySettings({ insecure: ['10.0.0.0/8'], plainHttp: [], mirrors: [] }, flaky);
    assert.equal((await lookup('reg.lan')).insecureTls, false);
    assert.equal((await lookup('reg.lan')).insecureTls, true);
    assert.equal(calls, 2);
  });

  it('resolves a host name once a minute at most, and not at all without a subnet', async () => {
    resolved.length = 0;
    const lookup = registrySettings({ insecure: ['10.0.0.0/8'], plainHttp: [], mirrors: [] }, resolve);
    await lookup('reg.lan');
    await lookup('reg.lan:5000');
    assert.deepEqual(resolved, ['reg.lan']);
    resolved.length = 0;
    await registrySettings({ insecure: ['reg.lan'], plainHttp: [], mirrors: [] }, resolve)('other.lan');
    assert.deepEqual(resolved, []);
  });
});

describe('a scheme before a list entry', () => {
  it('is dropped with a warning, as Docker drops it, in both lists', async () => {
    const warned: string[] = [];
    const lookup = registrySettings({ insecure: ['https://Harbor.lan:5000/', 'HTTP://10.0.0.0/8'], plainHttp: ['http://plain.lan'], mirrors: [] }, async () => [], (m) => warned.push(m));
    assert.deepEqual(await lookup('harbor.lan:5000'), { plainHttp: false, insecureTls: true, mirrors: [] });
    assert.deepEqual(await lookup('10.2.3.4'), { plainHttp: false, insecureTls: true, mirrors: [] });
    assert.deepEqual(await lookup('plain.lan'), { plainHttp: true, insecureTls: false, mirrors: [] });
    assert.deepEqual(warned, [
      'insecure-registries "https://Harbor.lan:5000/": read as "Harbor.lan:5000" (a scheme names no registry; Docker drops it too)',
      'insecure-registries "HTTP://10.0.0.0/8": read as "10.0.0.0/8" (a scheme names no registry; Docker drops it too)',
      'plain-http-registries "http://plain.lan": read as "plain.lan" (a scheme names no registry; Docker drops it too)',
    ]);
  });
});
