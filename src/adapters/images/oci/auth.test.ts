import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseChallenges } from './auth.js';

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
