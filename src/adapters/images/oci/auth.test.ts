import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import { loadCredentials, parseChallenges } from './auth.js';

describe('loadCredentials', () => {
  it("keys each entry by its registry as references name it: Docker's URL keys, Docker Hub's names and any case", (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'matchlock-auth-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const auth = (user: string) => ({ auth: Buffer.from(`${user}:pw`).toString('base64') });
    const path = join(dir, 'config.json');
    writeFileSync(path, JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': auth('hub'),
        'Registry.Example:5000': auth('example'),
        'HTTPS://Other.Example/v2/': auth('other'),
        'http://LOCALHOST:5000': auth('local'),
        '[::1]:5001': auth('v6'),
      },
    }));
    const creds = loadCredentials(path);
    assert.deepEqual(Object.fromEntries([...creds].map(([k, v]) => [k, v.username])), {
      'docker.io': 'hub', 'registry.example:5000': 'example', 'other.example': 'other', 'localhost:5000': 'local', '[::1]:5001': 'v6',
    });
  });
});

describe('loadCredentials of a file that is not a Docker config', () => {
  it('is InvalidArgument naming the file and registry-auth-file, for any JSON that is not an object of auths; odd entries are passed over', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'matchlock-auth-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'config.json');
    for (const [text, why] of [['null', 'must be a JSON object'], ['[]', 'must be a JSON object'], ['"x"', 'must be a JSON object'], ['{"auths": []}', '"auths" must be an object'], ['{"auths": 3}', '"auths" must be an object'], ['{', 'not JSON']] as const) {
      writeFileSync(path, text);
      assert.throws(() => loadCredentials(path), (err: Error) => {
        assert.ok(err instanceof MatchlockError && err.code === ErrorCode.InvalidArgument && err.field === 'registry-auth-file', `${text}: ${String(err)}`);
        assert.ok(err.message.startsWith(`registry credentials ${path}: ${why}`), err.message);
        return true;
      });
    }
    writeFileSync(path, JSON.stringify({ auths: { 'a.lan': null, 'b.lan': { auth: 5 }, 'c.lan': { username: 'u', password: 'p' } }, credsStore: 'desktop' }));
    assert.deepEqual([...loadCredentials(path).keys()], ['c.lan']);
  });
});

describe('parseChallenges (RFC 7235)', () => {
  it('reads token and quoted-string values alike', () => {
    assert.deepEqual(parseChallenges('Bearer realm="https://gcr.io/v2/token",service=gcr.io,scope="repository:p/i:pull"'), [
      { scheme: 'bearer', params: { realm: 'https://gcr.io/v2/token', service: 'gcr.io', scope: 'repository:p/i:pull' } },
    ]);
  });

  it('splits several challenges in one value, and several values', () => {
    assert.deepEqual(parseChallenges('Basic realm="r", Bearer realm="https://a/t", service="s", Negotiate'), [
      { scheme: 'basic', params: { realm: 'r' } },
      { scheme: 'bearer', params: { realm: 'https://a/t', service: 's' } },
      { scheme: 'negotiate', params: {} },
    ]);
    assert.deepEqual(parseChallenges(['Basic realm="r"', 'Bearer realm="x"']).map((c) => c.scheme), ['basic', 'bearer']);
  });

  it('unescapes quoted pairs and keeps commas and "=" inside quotes', () => {
    assert.deepEqual(parseChallenges('Bearer realm="a\\"b\\\\c", error="x, y=z"')[0]?.params, { realm: 'a"b\\c', error: 'x, y=z' });
  });

  it('takes token68 forms, spaces around "=", case-insensitive names; the first of a repeated name wins', () => {
    assert.deepEqual(parseChallenges('Negotiate YWxhZGRpbjpvcGVuc2VzYW1l==, BEARER Realm = "u" , REALM="v"'), [
      { scheme: 'negotiate', params: {}, token68: 'YWxhZGRpbjpvcGVuc2VzYW1l==' },
      { scheme: 'bearer', params: { realm: 'u' } },
    ]);
    assert.deepEqual(parseChallenges(undefined), []);
    assert.deepEqual(parseChallenges(''), []);
  });

  it('says where a value is malformed', () => {
    assert.throws(() => parseChallenges('Bearer realm="unterminated'), /unterminated quoted string/);
    assert.throws(() => parseChallenges('Bearer realm="a" service="b"'), /expected "," between parameters/);
    assert.throws(() => parseChallenges('"quoted"'), /expected an auth scheme/);
  });
});
