import type { Server } from 'node:http';
import { createOpsServer, debugRoutes, metricsRoute, type OpsHandler } from '../adapters/api/http/ops.js';
import type { GrpcTls } from '../adapters/api/grpc/server.js';
import type { DaemonMetrics, VmSample } from '../adapters/metrics/prometheus.js';
import { processUsage } from '../adapters/vmm/io-counters.js';
import type { HostRuntime } from '../core/plan/host-runtime.js';
import type { Logger, Store } from '../core/ports.js';
import type { ReconcileQueue } from '../core/reconcile/queue.js';
import type { Reconciler } from '../core/reconcile/reconciler.js';
import type { VmmProvider } from '../core/vmm.js';

/** How long one VM's VMM gets to answer a scrape before its I/O series are left out of it. */
const VMM_ANSWER_MS = 2000;

/** The gauges' sources: the store, the queue, and each running VM's VMM process and counters. */
export function metricsSources(d: { store: Store; queue: ReconcileQueue; reconciler: Reconciler; runtime: HostRuntime; vmms: ReadonlyMap<string, VmmProvider> }) {
  return {
    vms: () => d.store.list({}).map((vm) => ({ state: vm.status.state, provider: vm.spec.provider })),
    queueDepth: () => d.queue.size,
    reconcilesRunning: () => d.reconciler.running,
    vmSamples: async (): Promise<VmSample[]> => {
      const vms = d.store.list({}).filter((vm) => vm.status.vmmPid > 0);
      const samples = await Promise.all(
        vms.map(async (vm): Promise<VmSample | undefined> => {
          const instance = d.vmms.get(vm.spec.provider)?.instance(d.runtime.ref(vm));
          const pid = await instance?.running().catch(() => undefined);
          if (!instance || pid === undefined) return undefined;
          const labels = { uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name, provider: vm.spec.provider };
          const usage = await processUsage(pid).catch(() => undefined);
          const nics = vm.spec.interfaces.flatMap((iface) => {
            const st = vm.status.networkInterfaces[iface.deviceId];
            return st ? [{ deviceId: iface.deviceId, type: iface.type, hostDevice: st.hostDeviceName }] : [];
          });
          const signal = AbortSignal.timeout(VMM_ANSWER_MS);
          const io = instance.ioCounters
            ? await Promise.race([
                instance.ioCounters({ pid, nics }, signal).catch(() => undefined),
                new Promise<undefined>((resolve) => signal.addEventListener('abort', () => resolve(undefined), { once: true })),
              ])
            : undefined;
          return { labels, cpuSeconds: usage?.cpuSeconds, rssBytes: usage?.rssBytes, io };
        }),
      );
      return samples.filter((s): s is VmSample => s !== undefined);
    },
  };
}

/**
 * The metrics and debug endpoints, each on its own address when configured, under the API's
 * token and TLS. Returned servers are not listening yet.
 */
export function opsServers(o: { metricsEndpoint: string; debugEndpoint: string; metrics: DaemonMetrics | undefined; token: string | undefined; tls: GrpcTls | undefined; logger: Logger }): { key: string; endpoint: string; server: Server }[] {
  const out: { key: string; endpoint: string; server: Server }[] = [];
  const add = (key: string, endpoint: string, routes: Map<string, OpsHandler>) => out.push({ key, endpoint, server: createOpsServer({ routes, logger: o.logger, token: o.token, tls: o.tls }) });
  if (o.metricsEndpoint && o.metrics) {
    const metrics = o.metrics;
    add('metrics-endpoint', o.metricsEndpoint, new Map([['/metrics', metricsRoute(() => metrics.exposition())]]));
  }
  if (o.debugEndpoint) add('debug-endpoint', o.debugEndpoint, debugRoutes());
  return out;
}
