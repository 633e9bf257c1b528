// The API in process over a store, for tests of what it answers rather than of the daemon.
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { bindGrpc, createGrpcServer } from '../../src/adapters/api/grpc/server.js';
import type { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { MicroVMService } from '../../src/core/microvm/service.js';
import type { ProviderEntry } from '../../src/core/vmm.js';
import { silentLogger } from '../fakes/memory-store.js';

/** One usable provider named qemu, with QEMU's capabilities and a NoCloud seed disk. */
export const qemuOnly: ReadonlyMap<string, ProviderEntry> = new Map([
  ['qemu', { descriptor: { name: 'qemu', defaultBinary: 'qemu', capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false, pause: true }, metadata: { kind: 'nocloud-disk', file: 'cidata.img' }, sockets: [] }, availability: { usable: true } }],
]);

/** The service over `store` with a real clock and randomness; `changed` hears of every change (by default nobody). */
export function serviceOver(store: SqliteStore, changed: (uid: string) => void = () => undefined): MicroVMService {
  return new MicroVMService({ store, clock: { now: () => new Date() }, random: { bytes: (n) => randomBytes(n) }, notifier: { changed }, providers: qemuOnly, defaultProvider: 'qemu' });
}

/**
 * The gRPC API over `store`, without a token, on the unix socket `dir`/api.sock: its target, and
 * a stop that ends its calls at once. `changed` hears of every change, as serviceOver's.
 */
export async function grpcApiOver(store: SqliteStore, dir: string, changed?: (uid: string) => void): Promise<{ target: string; stop(): void }> {
  const server = createGrpcServer({ service: serviceOver(store, changed), logger: silentLogger });
  const target = `unix:${join(dir, 'api.sock')}`;
  await bindGrpc(server, target, grpc.ServerCredentials.createInsecure());
  return { target, stop: () => server.forceShutdown() };
}
