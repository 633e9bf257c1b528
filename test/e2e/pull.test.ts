import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { dockerConfigPath } from '../../src/adapters/images/oci/auth.js';
import { registryClient } from '../../src/adapters/images/oci/registry.js';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { silentLogger } from '../fakes/memory-store.js';
import { startDaemon, tempDir } from '../helpers/daemon.js';
import { testGuestLayout } from '../helpers/lab.js';
import { startProxy, startRegistry, type Registry } from '../helpers/registry.js';
import { rawClient } from '../helpers/client.js';
import { create } from '@bufbuild/protobuf';
import { CreateMicroVMRequestSchema, DeleteMicroVMRequestSchema, GetMicroVMRequestSchema, type CreateMicroVMResponse, type GetMicroVMResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { guestDigests, multiArchLayout } from './oci-fixtures.js';
import { waitFor } from './vm.js';

const missing = ['docker-registry', 'skopeo', 'mkfs.ext4'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const skip = missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false;

describe('registry pulls', { skip }, () => {
  const tmp = tempDir('pull');
  let registry: Registry;
  let layout: string;
  let digests: { manifest: string; layer: string };
  before(async () => {
    assert.deepEqual(missing, []);
    layout = testGuestLayout();
    digests = guestDigests(layout);
    registry = await startRegistry();
    registry.push(`${layout}:latest`, 'matchlock/test-guest:1');
    registry.push(`${multiArchLayout(layout, join(tmp.path, 'multi'))}:multi`, 'matchlock/test-guest:multi', true);
  });
  after(async () => {
    await registry?.stop();
    tmp.remove();
  });

  let n = 0;
  const store = (authFile = join(tmp.path, 'no-such-config.json')) =>
    new LocalImageStore(join(tmp.path, `store${n++}`), registryClient({ authFile, insecure: [], plainHttp: [], mirrors: [] }, silentLogger));

  it('pulls a single-arch image and picks linux/amd64 out of a multi-arch index, over plain HTTP on loopback', async () => {
    const s = store();
    assert.equal(await s.pull(`${registry.host}/matchlock/test-guest:1`, silentLogger), digests.manifest);
    assert.equal(await s.pull(`${registry.host}/matchlock/test-guest:multi`, silentLogger), digests.manifest);
    const d = await s.ensure(`${registry.host}/matchlock/test-guest:multi`, silentLogger);
    assert.ok(existsSync(await s.file(d, 'boot/vmlinuz', 'x')));
    // A pinned digest is honoured even when the tag is unknown locally.
    const s2 = store();
    assert.equal(await s2.ensure(`${registry.host}/matchlock/test-guest:1`, silentLogger, digests.manifest), digests.manifest);
    // A reference by the index's digest is its amd64 image, pulled first or not.
    const index = (JSON.parse(readFileSync(join(tmp.path, 'multi', 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]?.digest;
    const byIndex = `${registry.host}/matchlock/test-guest@${index}`;
    const s3 = store();
    assert.equal(await s3.pull(byIndex, silentLogger), digests.manifest);
    assert.equal(await s3.ensure(byIndex, silentLogger), digests.manifest);
    assert.equal(await store().ensure(byIndex, silentLogger), digests.manifest);
    // Pulled by digest, it is listed and kept like a tag; with its index blob gone (the GC
    // removes blobs nothing names), a store with no registry still finds the image.
    assert.deepEqual(await s3.list(), [{ ref: byIndex, digest: digests.manifest }]);
    rmSync(join(s3.root, 'blobs', 'sha256', (index ?? '').slice(7)));
    assert.equal(await new LocalImageStore(s3.root).ensure(byIndex, silentLogger), digests.manifest);
  });

  it('tries a configured mirror first: docker.io references served from a local mirror', async () => {
    const proxy = await startProxy(registry.host, {});
    try {
      const s = new LocalImageStore(join(tmp.path, 'mirror-store'), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [], mirrors: [`docker.io=${proxy.host}`] }, silentLogger));
      assert.equal(await s.pull('matchlock/test-guest:1', silentLogger), digests.manifest);
      assert.equal(proxy.blobGets.get(digests.layer), 1, 'served by the mirror');
      assert.equal(await s.resolve('docker.io/matchlock/test-guest:1'), digests.manifest);
      // Written with a scheme, as in Docker's daemon.json.
      const schemed = new LocalImageStore(join(tmp.path, 'mirror-store-schemed'), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [], mirrors: [`docker.io=http://${proxy.host}/`] }, silentLogger));
      assert.equal(await schemed.pull('matchlock/test-guest:1', silentLogger), digests.manifest);
      assert.equal(proxy.blobGets.get(digests.layer), 2, 'served by the mirror written with http://');
      // Written with https://, a mirror on loopback is asked over TLS, which this plain-HTTP
      // one does not speak: it serves nothing and the registry does.
      const served = proxy.served.length;
      const tls = new LocalImageStore(join(tmp.path, 'mirror-store-tls'), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [], mirrors: [`${registry.host}=https://${proxy.host}`] }, silentLogger));
      assert.equal(await tls.pull(`${registry.host}/matchlock/test-guest:1`, silentLogger), digests.manifest);
      assert.equal(proxy.served.length, served, 'nothing asked over plain HTTP');
    } finally {
      await proxy.stop();
    }
  });

  it("a failed pull names the mirror that was asked, not only the reference's registry", async () => {
    // The mirror serves the manifest and a corrupt layer; the registry itself (port 1 on
    // loopback) is never reached, so only the mirror can have failed.
    const proxy = await startProxy(registry.host, { corrupt: new Set([digests.layer]) });
    try {
      const s = new LocalImageStore(join(tmp.path, 'bad-mirror-store'), registryClient({ authFile: join(tmp.path, 'none.json'), insecure: [], plainHttp: [], mirrors: [`127.0.0.1:1=${proxy.host}`] }, silentLogger));
      await assert.rejects(s.ensure('127.0.0.1:1/matchlock/test-guest:1', silentLogger), (err: Error) => {
        assert.match(err.message, new RegExp(`^not in the image store, and its pull from ${proxy.host.replace(/[.]/g, '\\.')} \\(mirror of 127\\.0\\.0\\.1:1\\) failed: blob ${digests.layer} .*failed verification`), err.message);
        return true;
      });
      assert.equal(proxy.blobGets.get(digests.layer), 3, 'every attempt went to the mirror');
    } finally {
      await proxy.stop();
    }
  });

  it('passes over a mirror that lacks the image or a blob, or refuses access, for the registry, as Docker and containerd do', async () => {
    const mirrored = (proxyHost: string, authFile = join(tmp.path, 'none.json')) =>
      new LocalImageStore(join(tmp.path, `fallback-store${n++}`), registryClient({ authFile, insecure: [], plainHttp: [], mirrors: [`${registry.host}=${proxyHost}`] }, silentLogger));
    const ref = `${registry.host}/matchlock/test-guest:1`;
    // Lacks the image: its manifest is a 404 there.
    const empty = await startProxy(registry.host, { missing: () => true });
    // Holds the manifest but not the layer.
    const partial = await startProxy(registry.host, { missing: (p) => p.endsWith(`/blobs/${digests.layer}`) });
    // Asks for credentials, and only its own are sent to it: the auth file below has them for
    // the registry only.
    const guarded = await startProxy(registry.host, { credentials: 'alice:wonderland' });
    const registryOnly = join(tmp.path, 'registry-only.json');
    writeFileSync(registryOnly, JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from('alice:wonderland').toString('base64') } } }));
    const mirrorsOwn = join(tmp.path, 'mirror-own.json');
    writeFileSync(mirrorsOwn, JSON.stringify({ auths: { [guarded.host]: { auth: Buffer.from('alice:wonderland').toString('base64') } } }));
    try {
      assert.equal(await mirrored(empty.host).pull(ref, silentLogger), digests.manifest);
      assert.ok(empty.served.some((p) => p.includes('/manifests/')), 'the mirror was asked first');
      assert.equal(await mirrored(partial.host).pull(ref, silentLogger), digests.manifest);
      assert.ok(partial.served.some((p) => p.endsWith(`/blobs/${digests.layer}`)), 'the mirror was asked for the layer');
      assert.equal(await mirrored(guarded.host, registryOnly).pull(ref, silentLogger), digests.manifest);
      assert.deepEqual(guarded.served, [], "the registry's credentials are not the mirror's: it served nothing");
      assert.equal(await mirrored(guarded.host, mirrorsOwn).pull(ref, silentLogger), digests.manifest);
      assert.equal(guarded.blobGets.get(digests.layer), 1, 'with its own credentials the mirror served the layer');
    } finally {
      await Promise.all([empty.stop(), partial.stop(), guarded.stop()]);
    }
  });

  it('with a bearer-token registry: a clear auth error without credentials, a pull with a config.json', async () => {
    const proxy = await startProxy(registry.host, { credentials: 'alice:wonderland' });
    try {
      const ref = `${proxy.host}/matchlock/test-guest:1`;
      const noCreds = join(tmp.path, 'absent.json');
      await assert.rejects(store(noCreds).pull(ref, silentLogger), new RegExp(`registry ${proxy.host} refused access to matchlock/test-guest: .*no credentials for ${proxy.host} in ${noCreds}`));
      const wrong = join(tmp.path, 'wrong.json');
      writeFileSync(wrong, JSON.stringify({ auths: { [proxy.host]: { auth: Buffer.from('alice:nope').toString('base64') } } }));
      await assert.rejects(store(wrong).pull(ref, silentLogger), /credentials for .* were rejected/);
      const good = join(tmp.path, 'docker');
      writeFileSync(join(tmp.path, 'good.json'), JSON.stringify({ auths: { [`http://${proxy.host}/v2/`]: { auth: Buffer.from('alice:wonderland').toString('base64') } } }));
      assert.equal(await store(join(tmp.path, 'good.json')).pull(ref, silentLogger), digests.manifest);
      assert.equal(dockerConfigPath({ DOCKER_CONFIG: good }), join(good, 'config.json'));
      assert.equal(dockerConfigPath({ HOME: '/home/u' }), '/home/u/.docker/config.json');
    } finally {
      await proxy.stop();
    }
  });

  it('a public repository behind bearer tokens: every RFC 7235 challenge form, and a refusal that says what the registry answered', async () => {
    const forms: [label: string, challenge: (realm: string) => string[]][] = [
      ['unquoted token values (gcr.io)', (r) => [`Bearer realm="${r}",service=registry.test,scope="repository:matchlock/test-guest:pull"`]],
      ['two challenges in one header', (r) => [`Basic realm="registry", Bearer realm="${r}", service="registry.test"`]],
      ['one challenge per header, Basic first', (r) => ['Basic realm="registry"', `Bearer realm="${r}",service=registry.test`]],
      ['quoted strings with escapes and odd spacing', (r) => [`bearer  service = "registry\\.test" ,realm="${r.replace('token', 't\\oken')}", error="a \\"quoted\\" word, with a comma"`]],
    ];
    for (const [label, challenge] of forms) {
      const proxy = await startProxy(registry.host, { anonymous: { service: 'registry.test' }, challenge });
      try {
        assert.equal(await store().pull(`${proxy.host}/matchlock/test-guest:1`, silentLogger), digests.manifest, label);
      } finally {
        await proxy.stop();
      }
    }
    const refusing = await startProxy(registry.host, { anonymous: { service: 'registry.test' }, challenge: (r) => [`Bearer realm="${r}",service=elsewhere.test`] });
    try {
      await assert.rejects(store().pull(`${refusing.host}/matchlock/test-guest:1`, silentLogger), (err: Error) => {
        assert.match(err.message, new RegExp(`^registry ${refusing.host} refused access to matchlock/test-guest: token endpoint http://${refusing.host}/token answered 401 \\(UNAUTHORIZED: invalid service "elsewhere.test"\\); the request was anonymous`), err.message);
        assert.doesNotMatch(err.message, /were rejected/);
        return true;
      });
    } finally {
      await refusing.stop();
    }
  });

  it('refuses a corrupt blob after retrying, and keeps nothing of it', async () => {
    const proxy = await startProxy(registry.host, { corrupt: new Set([digests.layer]) });
    try {
      const s = store();
      await assert.rejects(s.pull(`${proxy.host}/matchlock/test-guest:1`, silentLogger), new RegExp(`blob ${digests.layer} .*failed verification`));
      assert.equal(proxy.blobGets.get(digests.layer), 3, 'three attempts');
      assert.equal(await s.has(digests.layer), false);
      assert.equal(await s.resolve(`${proxy.host}/matchlock/test-guest:1`), undefined);
      assert.deepEqual(readdirSync(join(s.root, 'blobs', 'sha256')).filter((f) => f.includes('.part')), []);
    } finally {
      await proxy.stop();
    }
  });

  it('retries a download cut off mid-way, and fails cleanly when the registry keeps dying', async () => {
    const once = await startProxy(registry.host, { cut: new Map([[digests.layer, 1]]) });
    try {
      assert.equal(await store().pull(`${once.host}/matchlock/test-guest:1`, silentLogger), digests.manifest);
      assert.equal(once.blobGets.get(digests.layer), 2);
    } finally {
      await once.stop();
    }
    const always = await startProxy(registry.host, { cut: new Map([[digests.layer, 99]]) });
    try {
      const s = store();
      await assert.rejects(s.pull(`${always.host}/matchlock/test-guest:1`, silentLogger));
      assert.equal(await s.has(digests.layer), false);
      assert.equal(await s.resolve(`${always.host}/matchlock/test-guest:1`), undefined);
    } finally {
      await always.stop();
    }
  });

  it('shares one download between concurrent users of one image', async () => {
    const proxy = await startProxy(registry.host, {});
    try {
      const s = store();
      const ref = `${proxy.host}/matchlock/test-guest:1`;
      const got = await Promise.all([s.ensure(ref, silentLogger), s.ensure(ref, silentLogger), s.pull(ref, silentLogger)]);
      assert.deepEqual(got, [digests.manifest, digests.manifest, digests.manifest]);
      assert.equal(proxy.blobGets.get(digests.layer), 1);
    } finally {
      await proxy.stop();
    }
  });

  it('puts a failing pull on the VM status, with retries counted', async () => {
    const proxy = await startProxy(registry.host, { cut: new Map([[digests.layer, 1000]]) });
    const d = await startDaemon(join(tmp.path, 'daemon'), ['--retry-backoff', '100ms', '--registry-auth-file', join(tmp.path, 'none.json')]);
    const c = rawClient(d.grpcPort);
    try {
      const ref = `${proxy.host}/matchlock/test-guest:1`;
      const res = await c.call<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, {
        microvm: { id: 'pullfail', kernel: { image: ref, filename: 'boot/vmlinuz' }, rootVolume: { id: 'root', source: { containerSource: ref } }, interfaces: [{ deviceId: 'eth0', type: 1 }] },
      }));
      const uid = res.microvm?.spec?.uid ?? '';
      const vm = await waitFor('the pull error on status', async () => {
        const g = await c.call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid }));
        return (g.microvm?.status?.retry ?? 0) >= 1 ? g.microvm : undefined;
      }, 30_000);
      assert.match(vm.status?.lastError ?? '', new RegExp(`image ${ref.replace(/[.]/g, '\\.')}: not in the image store, and its pull from ${proxy.host.replace(/[.]/g, '\\.')} failed: .*(socket|aborted|closed|premature|failed verification)`, 'i'));
      await c.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid }));
    } finally {
      c.close();
      await d.stop();
      await proxy.stop();
    }
  });
  it('a VM deleted while its image is still being pulled is gone without waiting for the pull', async () => {
    // A registry that answers the manifest with a body it never finishes, a byte a second, so
    // the pull neither ends nor times out while the test runs.
    const sockets = new Set<Socket>();
    const held: ServerResponse[] = [];
    const slow = createServer((req, res) => {
      if (!req.url?.includes('/manifests/')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': '1000000' });
      res.write('{');
      held.push(res);
    });
    slow.on('connection', (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    const drip = setInterval(() => held.forEach((r) => r.write(' ')), 1000);
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
    const ref = `127.0.0.1:${(slow.address() as AddressInfo).port}/matchlock/slow:1`;
    const d = await startDaemon(join(tmp.path, 'daemon-slow'), ['--registry-auth-file', join(tmp.path, 'none.json')]);
    const c = rawClient(d.grpcPort);
    try {
      const res = await c.call<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, {
        microvm: { id: 'slowpull', kernel: { image: ref, filename: 'boot/vmlinuz' }, rootVolume: { id: 'root', source: { containerSource: ref } }, interfaces: [{ deviceId: 'eth0', type: 1 }] },
      }));
      const uid = res.microvm?.spec?.uid ?? '';
      await waitFor('the manifest request', () => held.length > 0, 30_000);
      await c.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid }));
      await waitFor('the VM to be gone', async () => {
        try {
          await c.call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid }));
          return undefined;
        } catch (err) {
          return (err as grpc.ServiceError).code === grpc.status.NOT_FOUND;
        }
      }, 30_000);
      assert.ok(held.every((r) => !r.writableEnded && !r.destroyed), 'the pull was still running when the VM was gone');
    } finally {
      clearInterval(drip);
      for (const s of sockets) s.destroy();
      c.close();
      await d.stop();
      await new Promise((r) => slow.close(r));
    }
  });
});
