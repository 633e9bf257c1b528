import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mirrorSettings } from './registry.js';

describe('registry-mirrors', () => {
  const none = { plainHttp: [], insecure: [] };

  it('takes a mirror as host[:port], or with http:// or https:// as Docker writes it, each with its own transport', () => {
    const m = mirrorSettings({
      mirrors: ['docker.io=mirror.example:5000', 'docker.io=http://cache.lan:5000/', 'ghcr.io=https://ghcr-mirror.example', 'quay.io=plain.lan', 'quay.io=bad-cert.lan'],
      plainHttp: ['plain.lan'],
      insecure: ['bad-cert.lan'],
    });
    assert.deepEqual(m.get('docker.io'), [
      { host: 'mirror.example:5000', plainHttp: false, insecureTls: false },
      { host: 'cache.lan:5000', plainHttp: true, insecureTls: false },
    ]);
    assert.deepEqual(m.get('ghcr.io'), [{ host: 'ghcr-mirror.example', plainHttp: false, insecureTls: false }]);
    assert.deepEqual(m.get('quay.io'), [
      { host: 'plain.lan', plainHttp: true, insecureTls: false },
      { host: 'bad-cert.lan', plainHttp: false, insecureTls: true },
    ]);
  });

  it("gives a mirror without a scheme its registry's plain-http and insecure settings, as before mirrors had their own", () => {
    const m = mirrorSettings({ mirrors: ['reg.lan=mirror.lan', 'reg.lan=https://tls-mirror.lan'], plainHttp: ['reg.lan'], insecure: ['reg.lan'] });
    assert.deepEqual(m.get('reg.lan'), [
      { host: 'mirror.lan', plainHttp: true, insecureTls: true },
      { host: 'tls-mirror.lan', plainHttp: false, insecureTls: true },
    ]);
  });

  it('refuses any other form, naming the setting and the pair', () => {
    for (const bad of ['docker.io', '=mirror', 'docker.io=', 'docker.io=ftp://mirror', 'docker.io=http://mirror/path', 'docker.io=mirror with space']) {
      assert.throws(() => mirrorSettings({ mirrors: [bad], ...none }), (err: Error) => {
        assert.match(err.message, /^registry-mirrors ".*": must be registry=mirror, the mirror host\[:port\] with http:\/\/ or https:\/\/ or neither$/);
        assert.ok(err.message.includes(JSON.stringify(bad)), err.message);
        return true;
      });
    }
  });
});
