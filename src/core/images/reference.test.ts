import assert from 'node:assert/strict';
import { it } from 'node:test';
import { formatReference, parseReference } from './reference.js';

const norm = (s: string) => {
  const r = parseReference(s);
  return typeof r === 'string' ? `error: ${r}` : formatReference(r);
};

it('normalises short references the way Docker does', () => {
  assert.equal(norm('alpine'), 'docker.io/library/alpine:latest');
  assert.equal(norm('alpine:3.20'), 'docker.io/library/alpine:3.20');
  assert.equal(norm('weaveworks/ignite-kernel:5.10'), 'docker.io/weaveworks/ignite-kernel:5.10');
  assert.equal(norm('ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77'), 'ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77');
  assert.equal(norm('127.0.0.1:5000/k:1'), '127.0.0.1:5000/k:1');
  assert.equal(norm('localhost/k'), 'localhost/k:latest');
  const digest = 'sha256:' + 'a'.repeat(64);
  assert.equal(norm(`alpine@${digest}`), `docker.io/library/alpine@${digest}`);
  assert.equal(norm(`index.docker.io/library/alpine:1`), 'docker.io/library/alpine:1');
});

it('refuses what is not a reference', () => {
  for (const bad of ['', 'Alpine', 'a b', '../etc/passwd', '/abs', 'alpine:', 'alpine@sha256:zz', 'a//b', 'a:tag:tag']) {
    assert.match(norm(bad), /^error: /, bad);
  }
});
