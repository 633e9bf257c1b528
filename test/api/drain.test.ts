import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { serviceDefinition } from '../../src/adapters/api/grpc/service-def.js';
import { bindGrpc, createGrpcServer } from '../../src/adapters/api/grpc/server.js';
import type { MicroVMService } from '../../src/core/microvm/service.js';
import { ListMicroVMsRequestSchema, MicroVM } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';

const tmp = tempDir('api-drain');
after(() => tmp.remove());

it('a drain ends ListMicroVMsStream with UNAVAILABLE, where a client would otherwise be sent pages without end', { timeout: 30_000 }, async () => {
  // A store that never runs out of records: only the drain can end the stream.
  let n = 0;
  const service = {
    encodedList: (_ns: string, _name: string, p: { limit: number }) =>
      Array.from({ length: p.limit }, () => ({ uid: `uid-${String(n++).padStart(12, '0')}`, encoded: new Uint8Array(0) })),
  } as unknown as MicroVMService;
  const shutdown = new AbortController();
  const server = createGrpcServer({ service, logger: silentLogger, shutdown: shutdown.signal });
  const target = `unix:${join(tmp.path, 'api.sock')}`;
  await bindGrpc(server, target, grpc.ServerCredentials.createInsecure());
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(MicroVM), 'MicroVM');
  const client = new Ctor(target, grpc.credentials.createInsecure()) as unknown as grpc.Client & { listMicroVMsStream(req: unknown): grpc.ClientReadableStream<unknown> };
  try {
    const call = client.listMicroVMsStream(create(ListMicroVMsRequestSchema, {}));
    let got = 0;
    const status = new Promise<grpc.ServiceError | 'end'>((resolve) => {
      call.on('error', (e: grpc.ServiceError) => resolve(e));
      call.on('end', () => resolve('end'));
    });
    await new Promise<void>((resolve) => {
      call.on('data', () => {
        if (++got === 1000) {
          // Stop reading: the server's buffer fills and its next page waits for 'drain'.
          call.pause();
          resolve();
        }
      });
    });
    shutdown.abort();
    call.resume();
    const end = await status;
    assert.notEqual(end, 'end');
    assert.equal((end as grpc.ServiceError).code, grpc.status.UNAVAILABLE);
    assert.match((end as grpc.ServiceError).details, /matchlockd is stopping/);
  } finally {
    client.close();
    server.forceShutdown();
  }
});
