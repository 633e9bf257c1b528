import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { basicAuthHeader } from '../../src/adapters/api/auth.js';
import {
  CreateMicroVMRequestSchema,
  DeleteMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { makeCerts, type Certs } from '../helpers/certs.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { daemonFailsToStart, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { rawHttp } from '../helpers/raw-http.js';

const ULID = '01ARZ3NDEKTSV4RRFFQ69G5FAV';

function metadata(token?: string): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', basicAuthHeader(token));
  return md;
}

/** Calls a method by path with raw bytes; resolves the status code. */
function rawCall(port: number, path: string, body: Buffer, md: grpc.Metadata, creds = grpc.credentials.createInsecure(), stream = false): Promise<{ code: grpc.status; data: Buffer[] }> {
  const c = new grpc.Client(`127.0.0.1:${port}`, creds);
  const id = (b: Buffer) => b;
  return new Promise((resolve) => {
    const data: Buffer[] = [];
    const finish = (code: grpc.status) => {
      c.close();
      resolve({ code, data });
    };
    if (!stream) {
      c.makeUnaryRequest(path, id, id, body, md, { deadline: Date.now() + 5000 }, (err, res) => {
        if (res) data.push(res);
        finish(err ? err.code : grpc.status.OK);
      });
      return;
    }
    const call = c.makeBidiStreamRequest(path, id, id, md, { deadline: Date.now() + 5000 });
    call.on('data', (d: Buffer) => data.push(d));
    call.on('error', (e: grpc.ServiceError) => finish(e.code));
    call.on('end', () => finish(grpc.status.OK));
    call.write(body);
    call.end();
  });
}

const METHODS: [string, Buffer, boolean][] = [
  ['/microvm.services.api.v1alpha1.MicroVM/CreateMicroVM', Buffer.alloc(0), false],
  ['/microvm.services.api.v1alpha1.MicroVM/GetMicroVM', Buffer.from([0x0a, 26, ...Buffer.from(ULID)]), false],
  ['/microvm.services.api.v1alpha1.MicroVM/DeleteMicroVM', Buffer.from([0x0a, 26, ...Buffer.from(ULID)]), false],
  ['/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs', Buffer.alloc(0), false],
  ['/microvm.services.api.v1alpha1.MicroVM/ListMicroVMsStream', Buffer.alloc(0), true],
  ['/matchlock.v1.Console/StreamConsole', Buffer.alloc(0), true],
  ['/matchlock.v1.Console/AttachConsole', Buffer.alloc(0), true],
  ['/grpc.health.v1.Health/Check', Buffer.alloc(0), false],
  ['/matchlock.v1.MicroVMLifecycle/StopMicroVM', Buffer.alloc(0), false],
  ['/matchlock.v1.MicroVMLifecycle/WatchEvents', Buffer.alloc(0), true],
  ['/matchlock.v1.MicroVMLifecycle/ListMicroVMEvents', Buffer.alloc(0), false],
  ['/matchlock.v1.Server/GetServerInfo', Buffer.alloc(0), false],
  // list_services (field 7) with an empty string
  ['/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', Buffer.from([0x3a, 0x00]), true],
  ['/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', Buffer.from([0x3a, 0x00]), true],
];

describe('basic-auth token', () => {
  const tmp = tempDir('auth');
  let d: DaemonHandle;
  before(async () => {
    d = await startDaemon(tmp.path, ['--basic-auth-token', 'tok-123', '--enable-http', '--http-endpoint', '127.0.0.1:0']);
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });

  it('refuses every RPC, health and reflection included, without the token or with a wrong one', async () => {
    for (const [path, body, stream] of METHODS) {
      for (const md of [metadata(), metadata('wrong'), metadata('tok-1234')]) {
        const r = await rawCall(d.grpcPort, path, body, md, undefined, stream);
        assert.equal(r.code, grpc.status.UNAUTHENTICATED, path);
      }
    }
  });

  it('serves every RPC with the token', async () => {
    const c = rawClient(d.grpcPort, undefined, metadata('tok-123'));
    const made = (await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec() }))) as { microvm: { spec: { uid: string } } };
    await c.call('getMicroVM', create(GetMicroVMRequestSchema, { uid: made.microvm.spec.uid }));
    await c.call('listMicroVMs', create(ListMicroVMsRequestSchema, {}));
    await c.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: made.microvm.spec.uid }));
    c.close();
    const health = await rawCall(d.grpcPort, '/grpc.health.v1.Health/Check', Buffer.alloc(0), metadata('tok-123'));
    assert.equal(health.code, grpc.status.OK);
    assert.deepEqual([...(health.data[0] ?? [])], [0x08, 0x01], 'SERVING');
    const refl = await rawCall(d.grpcPort, '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', Buffer.from([0x3a, 0x00]), metadata('tok-123'), undefined, true);
    assert.equal(refl.code, grpc.status.OK);
    assert.match(Buffer.concat(refl.data).toString('latin1'), /microvm\.services\.api\.v1alpha1\.MicroVM/);
    assert.match(Buffer.concat(refl.data).toString('latin1'), /matchlock\.v1\.MicroVMLifecycle/);
    assert.match(Buffer.concat(refl.data).toString('latin1'), /matchlock\.v1\.Server/);
    const info = await rawCall(d.grpcPort, '/matchlock.v1.Server/GetServerInfo', Buffer.alloc(0), metadata('tok-123'));
    assert.equal(info.code, grpc.status.OK);
    assert.match(Buffer.concat(refl.data).toString('latin1'), /matchlock\.v1\.Console/);
  });

  it('guards the HTTP API with the same token', async () => {
    const get = (auth?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port: d.httpPort, path: '/v1alpha1/microvm', headers: auth ? { authorization: auth } : {} }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end();
      });
    assert.equal(await get(), 401);
    assert.equal(await get(basicAuthHeader('nope')), 401);
    assert.equal(await get(basicAuthHeader('tok-123')), 200);
    const getInfo = (auth?: string) =>
      new Promise<number>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port: d.httpPort, path: '/v1/server-info', headers: auth ? { authorization: auth } : {} }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end();
      });
    assert.equal(await getInfo(), 401);
    assert.equal(await getInfo(basicAuthHeader('tok-123')), 200);
    // The refusal reaches a client still writing a body (read and dropped first, not held).
    for (let i = 0; i < 5; i++) {
      const r = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', Buffer.alloc(2 << 20, 'x'));
      assert.equal(r.status, 401);
    }
    // Over the size limit too, a client without the token learns only that it lacks it.
    const big = await rawHttp(d.httpPort ?? 0, 'POST', '/nope', Buffer.alloc(6 << 20, 'x'), { authorization: basicAuthHeader('wrong') });
    assert.equal(big.status, 401, big.body);
    const good = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', '{"id":', { authorization: basicAuthHeader('tok-123') });
    assert.equal(good.status, 400, 'with the token the body is read and parsed');
    assert.match(good.body, /body: must be a JSON MicroVMSpec/);
  });
});

describe('TLS and mTLS', () => {
  const tmp = tempDir('tls');
  let certs: Certs;
  before(() => {
    certs = makeCerts(tmp.path);
  });
  after(() => tmp.remove());

  const tlsCreds = (withClient: 'good' | 'rogue' | 'none') =>
    grpc.credentials.createSsl(
      readFileSync(certs.ca),
      withClient === 'none' ? null : readFileSync(withClient === 'good' ? certs.clientKey : certs.rogueKey),
      withClient === 'none' ? null : readFileSync(withClient === 'good' ? certs.clientCert : certs.rogueCert),
    );

  const list = async (port: number, creds: grpc.ChannelCredentials) =>
    (await rawCall(port, '/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs', Buffer.alloc(0), metadata(), creds)).code;

  const handshake = (port: number, max: 'TLSv1.2' | 'TLSv1.3') =>
    new Promise<string>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(certs.ca), maxVersion: max, ALPNProtocols: ['h2'] });
      s.once('secureConnect', () => {
        const v = s.getProtocol() ?? '';
        s.destroy();
        resolve(v);
      });
      s.once('error', (e) => resolve(`error: ${e.message}`));
    });

  it('serves TLS 1.3 only, verified against the CA and the 127.0.0.1 SAN', async () => {
    const d = await startDaemon(join(tmp.path, 's1'), ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey]);
    try {
      assert.equal(await list(d.grpcPort, tlsCreds('none')), grpc.status.OK);
      assert.equal(await list(d.grpcPort, grpc.credentials.createInsecure()), grpc.status.UNAVAILABLE);
      assert.equal(await handshake(d.grpcPort, 'TLSv1.3'), 'TLSv1.3');
      assert.match(await handshake(d.grpcPort, 'TLSv1.2'), /^error: /);
    } finally {
      await d.stop();
    }
  });

  it('with client validation, accepts only client certificates from the configured CA, on gRPC and HTTP', async () => {
    const d = await startDaemon(join(tmp.path, 's2'), [
      '--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-validate', '--tls-client-ca', certs.ca,
      '--enable-http', '--http-endpoint', '127.0.0.1:0',
    ]);
    try {
      assert.equal(await list(d.grpcPort, tlsCreds('good')), grpc.status.OK);
      assert.equal(await list(d.grpcPort, tlsCreds('none')), grpc.status.UNAVAILABLE);
      assert.equal(await list(d.grpcPort, tlsCreds('rogue')), grpc.status.UNAVAILABLE);
      const https = (client: 'good' | 'none') =>
        new Promise<number | string>((resolve) => {
          const req = httpsRequest({
            host: '127.0.0.1', port: d.httpPort, path: '/v1alpha1/microvm', ca: readFileSync(certs.ca),
            ...(client === 'good' ? { cert: readFileSync(certs.clientCert), key: readFileSync(certs.clientKey) } : {}),
          }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', (e) => resolve(`error: ${e.message}`));
          req.end();
        });
      assert.equal(await https('good'), 200);
      assert.match(String(await https('none')), /^error: /);
    } finally {
      await d.stop();
    }
  });

  it('refuses plaintext on a non-loopback address unless --insecure is given', async () => {
    const r = await daemonFailsToStart(['run', '--config', '/dev/null', '--state-dir', join(tmp.path, 's3'), '--grpc-endpoint', '0.0.0.0:0']);
    assert.equal(r.code, 2);
    assert.match(r.output, /grpc-endpoint 0\.0\.0\.0:0 is not a loopback address: give tls-cert and tls-key, or --insecure/);
  });
});
