import type * as grpc from '@grpc/grpc-js';
import { createRequire } from 'node:module';

/**
 * gRPC health (grpc.health.v1) and server reflection (grpc.reflection.v1 and v1alpha), served
 * by grpc-health-check and @grpc/reflection, which parse .proto files with protobufjs when they
 * load: about 8 MB of an idle daemon's RSS that no client may ever ask for. Each service is
 * registered with its methods' paths and kinds only; the library, its descriptors and its
 * handlers are loaded by the first call (synchronously, so the call's own message is decoded
 * by them) and serve every call from then on, as if they had been added at start.
 */

const require = createRequire(import.meta.url);

interface MethodShape {
  name: string;
  requestStream: boolean;
  responseStream: boolean;
}

interface Loaded {
  def: grpc.ServiceDefinition;
  impl: grpc.UntypedServiceImplementation;
}

type Door = Pick<grpc.Server, 'addService'>;

/** The services `add` passes to addService, by service name (the part of a path between its slashes). */
function captured(add: (server: Door) => void): Map<string, Loaded> {
  const out = new Map<string, Loaded>();
  add({
    addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) {
      const path = Object.values(def)[0]?.path ?? '';
      out.set(path.split('/')[1] ?? '', { def, impl });
    },
  });
  return out;
}

/**
 * Adds `service` with `methods` to `door`; `load` builds the real services (by name) on the
 * first call to any of them. Throws at that call, inside grpc-js (an INTERNAL status), if the
 * library cannot be loaded; the daemon goes on.
 */
function addLazy(door: Door, service: string, methods: MethodShape[], load: () => Map<string, Loaded>): void {
  const real = () => {
    const s = load().get(service);
    if (!s) throw new Error(`${service} was not built by its library`);
    return s;
  };
  const method = (name: string) => {
    const m = real().def[name];
    if (!m) throw new Error(`${service}/${name} is not in its library's definition`);
    return m;
  };
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const impl: grpc.UntypedServiceImplementation = {};
  for (const m of methods) {
    def[m.name] = {
      path: `/${service}/${m.name}`,
      requestStream: m.requestStream,
      responseStream: m.responseStream,
      requestSerialize: (v: unknown) => method(m.name).requestSerialize(v),
      requestDeserialize: (b: Buffer) => method(m.name).requestDeserialize(b),
      responseSerialize: (v: unknown) => method(m.name).responseSerialize(v),
      responseDeserialize: (b: Buffer) => method(m.name).responseDeserialize(b),
    };
    impl[m.name] = ((call: unknown, callback: unknown) => {
      const { impl: loaded } = real();
      const fn = (loaded[m.name] ?? loaded[method(m.name).originalName ?? '']) as unknown as (call: unknown, callback: unknown) => void;
      fn.call(loaded, call, callback);
    }) as grpc.UntypedHandleCall;
  }
  door.addService(def, impl);
}

function once<T>(build: () => T): () => T {
  let value: { v: T } | undefined;
  return () => (value ??= { v: build() }).v;
}

/** grpc.health.v1.Health with every name in `serving` (the empty name: the server) SERVING. */
export function addLazyHealth(door: Door, serving: string[]): void {
  const load = once(() =>
    captured((server) => {
      const { HealthImplementation } = require('grpc-health-check') as typeof import('grpc-health-check');
      new HealthImplementation(Object.fromEntries(serving.map((s) => [s, 'SERVING' as const]))).addToServer(server as grpc.Server);
    }),
  );
  addLazy(door, 'grpc.health.v1.Health', [
    { name: 'Check', requestStream: false, responseStream: false },
    { name: 'Watch', requestStream: false, responseStream: true },
    { name: 'List', requestStream: false, responseStream: false },
  ], load);
}

/** Server reflection, v1 and v1alpha, over the services of the .proto files `protos` (under `includeDir`). */
export function addLazyReflection(door: Door, protos: string[], includeDir: string): void {
  const load = once(() =>
    captured((server) => {
      const { loadSync } = require('@grpc/proto-loader') as typeof import('@grpc/proto-loader');
      const { ReflectionService } = require('@grpc/reflection') as typeof import('@grpc/reflection');
      new ReflectionService(loadSync(protos, { includeDirs: [includeDir] })).addToServer(server as grpc.Server);
    }),
  );
  for (const version of ['v1', 'v1alpha']) {
    addLazy(door, `grpc.reflection.${version}.ServerReflection`, [{ name: 'ServerReflectionInfo', requestStream: true, responseStream: true }], load);
  }
}
