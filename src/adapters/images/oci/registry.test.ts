import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mirrorSettings } from './registry.js';

describe('registry-mirrors', () => {
  const none = { plainHttp: [], insecure: [] };

  it('takes a mirror as host[:port], or with http:// or https:// as Docker writes it, each with its own transport', () => {
    const m = mirrorSettings({
      mirrors: ['docker.io=mirror.example:5000', 'docker.io=HTTP://Cache.lan:5000/', 'ghcr.io=https://ghcr-mirror.example', 'quay.io=plain.lan', 'quay.io=bad-cert.lan', 'quay.io=[::1]:5000', 'quay.io=https://127.0.0.1:5443'],
      plainHttp: ['plain.lan'],
      insecure: ['bad-cert.lan'],
    });
    assert.deepEqual(m.get('docker.io'), [
      { host: 'mirror.example:5000', scheme: 'https', insecureTls: false },
      { host: 'cache.lan:5000', scheme: 'http', insecureTls: false },
    ]);
    assert.deepEqual(m.get('ghcr.io'), [{ host: 'ghcr-mirror.example', scheme: 'https', insecureTls: false }]);
    assert.deepEqual(m.get('quay.io'), [
      { host: 'plain.lan', scheme: 'http', insecureTls: false },
      { host: 'bad-cert.lan', scheme: 'https', insecureTls: true },
      // Loopback without a scheme is plain HTTP, as a loopback registry is; written with
      // https:// it is reached as written.
      { host: '[::1]:5000', scheme: 'http', insecureTls: false },
      { host: '127.0.0.1:5443', scheme: 'https', insecureTls: false },
    ]);
  });

  it("gives a mirror without a scheme its registry's plain-http and insecure settings; one with a scheme is reached as written", () => {
    const m = mirrorSettings({ mirrors: ['reg.lan=mirror.lan', 'reg.lan=https://tls-mirror.lan'], plainHttp: ['reg.lan'], insecure: ['reg.lan'] });
    assert.deepEqual(m.get('reg.lan'), [
      { host: 'mirror.lan', scheme: 'http', insecureTls: true },
      { host: 'tls-mirror.lan', scheme: 'https', insecureTls: false },
    ]);
  });

  it('refuses any other form, naming the setting and the pair', () => {
    const bad = [
      'docker.io', '=mirror', 'docker.io=', 'docker.io=ftp://mirror', 'docker.io=http://mirror/path', 'docker.io=mirror with space',
      'docker.io=:5000', 'docker.io=cache.lan:notaport', 'docker.io=cache.lan:99999', 'docker.io=cache.lan:0', 'docker.io=http://u:p@host', 'docker.io=http://host#x', 'docker.io=host?x=1',
      'docker.io =mirror', 'docker.io/x=mirror',
    ];
    for (const pair of bad) {
      assert.throws(() => mirrorSettings({ mirrors: [pair], ...none }), (err: Error) => {
        assert.match(err.message, /^registry-mirrors ".*": must be registry=mirror, the mirror host\[:port\] with http:\/\/ or https:\/\/ or neither$/);
        assert.ok(err.message.includes(JSON.stringify(pair)), err.message);
        return true;
      });
    }
  });
});
