import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { basicAuthHeader } from '../../src/adapters/api/auth.js';
import { jsonEntryLimits, jsonValueCount, wireEntryLimits } from '../../src/adapters/api/entry-limits.js';
import { CreateMicroVMRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSpecSchema } from '../../src/gen/types/microvm_pb.js';
import { validSpec } from '../helpers/client.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { rawHttp } from '../helpers/raw-http.js';

const many = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']));
const request = (spec: Parameters<typeof validSpec>[0]) => toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, { microvm: validSpec(spec) }));

describe('entry limits checked before decoding', () => {
  it('counts map entries, list elements and nested lists on the wire, naming the field as validation does', () => {
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ labels: many(64) })), undefined);
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ labels: many(65) }))?.message, 'microvm.labels: must have at most 64 entries');
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ metadata: many(17) }))?.message, 'microvm.metadata: must have at most 16 entries');
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ kernel: { image: 'k:1', filename: 'vmlinux', cmdline: many(65) } }))?.message, 'microvm.kernel.cmdline: must have at most 64 entries');
    const nics = Array.from({ length: 9 }, (_, i) => ({ deviceId: `eth${i}` }));
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ interfaces: nics }))?.message, 'microvm.interfaces: must have at most 8 entries');
    const dns = [{ deviceId: 'eth0' }, { deviceId: 'eth1', address: { address: '10.0.0.2/24', nameservers: ['1.1.1.1', '1.0.0.1', '8.8.8.8', '8.8.4.4'] } }];
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, request({ interfaces: dns }))?.message, 'microvm.interfaces[1].address.nameservers: must have at most 3 entries');
  });

  it('counts a singular message sent twice together, as decoders merge it', () => {
    const half = toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, { microvm: { labels: many(40) } }));
    const other = toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, { microvm: { labels: Object.fromEntries(Object.entries(many(80)).slice(40)) } }));
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, half), undefined);
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, Buffer.concat([half, other]))?.message, 'microvm.labels: must have at most 64 entries');
  });

  it('leaves malformed bytes to the decoder', () => {
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, Uint8Array.of(0x0a, 0xff)), undefined);
    assert.equal(wireEntryLimits(CreateMicroVMRequestSchema, Uint8Array.of(0x0b)), undefined);
  });

  it('checks the JSON form by either field name, and counts a crowded body before parsing it', () => {
    assert.equal(jsonEntryLimits(MicroVMSpecSchema, { labels: many(65) }, 'microvm.')?.message, 'microvm.labels: must have at most 64 entries');
    assert.equal(jsonEntryLimits(MicroVMSpecSchema, { additionalVolumes: Array.from({ length: 17 }, () => ({})) }, 'microvm.')?.message, 'microvm.additional_volumes: must have at most 16 entries');
    assert.equal(jsonEntryLimits(MicroVMSpecSchema, { interfaces: [{ address: { nameservers: ['a', 'b', 'c', 'd'] } }] }, 'microvm.')?.message, 'microvm.interfaces[0].address.nameservers: must have at most 3 entries');
    assert.equal(jsonEntryLimits(MicroVMSpecSchema, { labels: many(64), interfaces: 'not a list' }, 'microvm.'), undefined);
    // Commas and colons inside strings are not members.
    assert.equal(jsonValueCount(Buffer.from(JSON.stringify({ metadata: { 'user-data': ',:'.repeat(100_000) + '\\",' } }))), undefined);
    assert.match(jsonValueCount(Buffer.from(JSON.stringify({ labels: many(9000) })))?.message ?? '', /^body: must hold at most 8192 JSON members/);
  });
});

describe('a request over its limits, through the daemon', () => {
  const tmp = tempDir('entry-limits');
  let d: DaemonHandle;
  before(async () => {
    d = await startDaemon(tmp.path, ['--enable-http', '--http-endpoint', '127.0.0.1:0', '--basic-auth-token', 'tok']);
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });
  const rawCreate = (bytes: Buffer, token?: string) =>
    new Promise<grpc.ServiceError | null>((resolve) => {
      const client = new grpc.Client(`127.0.0.1:${d.grpcPort}`, grpc.credentials.createInsecure());
      const md = new grpc.Metadata();
      if (token) md.set('authorization', basicAuthHeader(token));
      client.makeUnaryRequest('/microvm.services.api.v1alpha1.MicroVM/CreateMicroVM', (b: Buffer) => b, (b: Buffer) => b, bytes, md, (err) => {
        client.close();
        resolve(err);
      });
    });

  it('is refused over gRPC naming the field before it is decoded, and after the token check', async () => {
    // 65 labels, then bytes no decoder accepts: only a check that stops at the 65th label
    // answers INVALID_ARGUMENT; decoding first answers INTERNAL.
    const bytes = Buffer.concat([Buffer.from(request({ labels: many(65) })), Buffer.of(0x0a, 0xff, 0xff)]);
    const err = await rawCreate(bytes, 'tok');
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, err?.message);
    assert.equal(err?.details, 'microvm.labels: must have at most 64 entries');
    assert.equal((await rawCreate(bytes))?.code, grpc.status.UNAUTHENTICATED);
    // Within the limits, a create still works.
    assert.equal(await rawCreate(Buffer.from(request({ labels: many(64) })), 'tok'), null);
  });

  it('is refused over HTTP naming the field, or the body when it holds too many values to parse', async () => {
    const auth = { authorization: basicAuthHeader('tok') };
    const some = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', JSON.stringify({ id: 'h', labels: many(65) }), auth);
    assert.equal(some.status, 400);
    assert.match(some.body, /microvm\.labels: must have at most 64 entries/);
    const crowd = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', JSON.stringify({ id: 'h', labels: many(200_000) }), auth);
    assert.equal(crowd.status, 400);
    assert.match(crowd.body, /body: must hold at most 8192 JSON members/);
  });
});
