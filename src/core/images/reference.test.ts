import assert from 'node:assert/strict';
import { it } from 'node:test';
import { formatReference, parseReference, registryName } from './reference.js';

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

it('names a registry in the one form settings and credentials are compared in: any case, Docker Hub by each of its names', () => {
  for (const hub of ['docker.io', 'Docker.io', 'index.docker.io', 'INDEX.DOCKER.IO', 'registry-1.docker.io']) assert.equal(registryName(hub), 'docker.io', hub);
  assert.equal(registryName('LOCALHOST:5000'), 'localhost:5000');
  assert.equal(registryName('Registry.Example:5000'), 'registry.example:5000');
  assert.equal(registryName('[::1]:5000'), '[::1]:5000');
  // Docker Hub's other hosts are not Docker Hub's registry name; another port is another registry.
  assert.equal(registryName('hub.docker.com'), 'hub.docker.com');
  assert.equal(registryName('docker.io:443'), 'docker.io:443');
  // No reference names a registry so.
  for (const bad of ['', 'https://docker.io', 'https://index.docker.io/v1/', 'reg.lan/path', '10.0.0.0/8', 'reg lan', ':5000', 'user@reg.lan', '-reg.lan', 'reg.lan:0', 'reg.lan:65536', 'reg.lan:99999']) assert.equal(registryName(bad), undefined, bad);
});
