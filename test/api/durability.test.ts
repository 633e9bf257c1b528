import { create, toJson } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import {
  CreateMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
  type CreateMicroVMResponse,
  type GetMicroVMResponse,
  type ListMicroVMsResponse,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema } from '../../src/gen/types/microvm_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { startDaemon, tempDir } from '../helpers/daemon.js';

describe('durability', () => {
  const tmp = tempDir('durable');
  after(() => tmp.remove());

  it('returns identical records after a clean restart', async () => {
    const dir = `${tmp.path}/clean`;
    let d = await startDaemon(dir);
    let c = rawClient(d.grpcPort);
    const made: CreateMicroVMResponse[] = [];
    for (let i = 0; i < 5; i++) {
      made.push(await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec({ id: `vm${i}`, labels: { i: String(i) } }) })));
    }
    const before = (await c.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, {}))).microvm.map((m) => toJson(MicroVMSchema, m));
    c.close();
    await d.stop();
    d = await startDaemon(dir);
    c = rawClient(d.grpcPort);
    const afterRestart = (await c.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, {}))).microvm.map((m) => toJson(MicroVMSchema, m));
    c.close();
    await d.stop();
    assert.equal(before.length, 5);
    // Status may move on (the reconciler keeps recording its attempts); the specs may not, and
    // versions only grow.
    const specs = (l: unknown[]) => l.map((m) => {
      const { updatedAt: _u, ...spec } = (m as { spec: Record<string, unknown> }).spec;
      return spec;
    });
    assert.deepEqual(specs(afterRestart), specs(before));
    afterRestart.forEach((m, i) => assert.ok((m as { version: number }).version >= (before[i] as { version: number }).version));
    assert.deepEqual(made.map((m) => m.microvm?.spec?.uid), before.map((b) => (b as { spec: { uid: string } }).spec.uid));
  });

  it('keeps every acknowledged create through a kill -9 in the middle of a burst', async () => {
    const dir = `${tmp.path}/kill`;
    const d = await startDaemon(dir);
    const c = rawClient(d.grpcPort);
    const acked: CreateMicroVMResponse[] = [];
    let stop = false;
    const burst = async (w: number) => {
      for (let i = 0; !stop; i++) {
        try {
          acked.push(await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec({ id: `w${w}-${i}` }) })));
        } catch {
          return; // the daemon died under us
        }
      }
    };
    const workers = Array.from({ length: 8 }, (_, w) => burst(w));
    while (acked.length < 150) await new Promise((r) => setTimeout(r, 5));
    await d.kill();
    stop = true;
    await Promise.all(workers);
    c.close();
    assert.equal(d.proc.signalCode, 'SIGKILL');

    const d2 = await startDaemon(dir);
    const c2 = rawClient(d2.grpcPort);
    try {
      for (const a of acked) {
        const got = await c2.call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid: a.microvm?.spec?.uid ?? '' }));
        // updated_at moves with status changes (the reconciler records its attempts); the spec
        // the client was told about must be exactly what is stored.
        const spec = (m: typeof got.microvm) => {
          const { updatedAt: _u, ...rest } = (toJson(MicroVMSchema, m!) as { spec: Record<string, unknown> }).spec;
          return rest;
        };
        assert.deepEqual(spec(got.microvm), spec(a.microvm));
      }
      const all = await c2.call<ListMicroVMsResponse>('listMicroVMs', create(ListMicroVMsRequestSchema, {}));
      assert.ok(all.microvm.length >= acked.length, `${all.microvm.length} stored, ${acked.length} acknowledged`);
    } finally {
      c2.close();
      await d2.stop();
    }
  });
});
