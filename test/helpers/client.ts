import { create, type MessageInitShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { serviceDefinition } from '../../src/adapters/api/grpc/service-def.js';
import { MicroVM } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSpecSchema, NetworkInterface_IfaceType } from '../../src/gen/types/microvm_pb.js';

/**
 * A raw grpc-js client for tests: callbacks turned into promises that reject with ServiceError.
 * Each call has a deadline of `deadlineMs` (a bound on a hang, not a timing to assert).
 */
export function rawClient(target: number | string, creds = grpc.credentials.createInsecure(), md?: grpc.Metadata, deadlineMs = 10_000) {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(MicroVM), 'MicroVM');
  const client = new Ctor(typeof target === 'number' ? `127.0.0.1:${target}` : target, creds) as unknown as Record<string, (...a: unknown[]) => void> & grpc.Client;
  const call = <T>(method: string, req: unknown): Promise<T> =>
    new Promise((resolve, reject) => {
      const fn = client[method];
      if (!fn) throw new Error(`no method ${method}`);
      fn.call(client, req, md ?? new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
    });
  return { client, call, close: () => client.close() };
}

/** A valid spec in CAPMVM's shape; tests break one field at a time. */
export function validSpec(overrides: Omit<Exclude<MessageInitShape<typeof MicroVMSpecSchema>, { $typeName: string }>, '$typeName'> = {}) {
  return create(MicroVMSpecSchema, {
    id: 'vm1',
    namespace: 'ns1',
    kernel: { image: 'ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77', filename: 'boot/vmlinux', addNetworkConfig: true },
    rootVolume: { id: 'root', source: { containerSource: 'ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5' } },
    interfaces: [{ deviceId: 'eth1', type: NetworkInterface_IfaceType.TAP }],
    ...overrides,
  });
}
