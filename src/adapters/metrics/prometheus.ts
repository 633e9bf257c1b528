import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { VmmIoCounters } from '../../core/vmm.js';
import type { PassOutcome, ReconcileObserver } from '../../core/reconcile/reconciler.js';

/** Which API served a request. */
export type ApiKind = 'grpc' | 'http';

/** One VM as the per-state and per-provider gauges count it. */
export interface VmTally {
  state: string;
  provider: string;
}

/** The labels every per-VM series carries. */
export interface VmLabels {
  uid: string;
  namespace: string;
  name: string;
  provider: string;
}

/** What a scrape learns about one running VM; a part that could not be read is absent. */
export interface VmSample {
  labels: VmLabels;
  cpuSeconds?: number | undefined;
  rssBytes?: number | undefined;
  io?: VmmIoCounters | undefined;
}

/** What the gauges are computed from, at scrape time. */
export interface MetricsSources {
  /** Every stored VM's state and provider. */
  vms(): readonly VmTally[];
  /** uids queued, running or waiting for a retry in the reconcile queue. */
  queueDepth(): number;
  /** Reconcile passes running now. */
  reconcilesRunning(): number;
  /** One sample per VM whose VMM runs; must not reject and should answer within seconds. */
  vmSamples(): Promise<VmSample[]>;
}

/** Kinds and outcomes of a reconcile pass (the Reconciler's PassOutcome), each series made at 0. */
export const PASS_KINDS = ['ensure', 'teardown'] as const satisfies readonly Parameters<ReconcileObserver['pass']>[0]['kind'][];
export const PASS_OUTCOMES = ['ok', 'failed', 'canceled'] as const satisfies readonly PassOutcome[];
/** Reasons of matchlock_vmm_exits_total (the ReconcileObserver's vmmExited). */
export const VMM_EXIT_REASONS = ['unexpected', 'powered_off'] as const satisfies readonly Parameters<NonNullable<ReconcileObserver['vmmExited']>>[0]['reason'][];

/** States every VM is in at any time, so each state's series exists even when it counts 0. */
export const VM_STATES = ['PENDING', 'CREATED', 'FAILED', 'DELETING'] as const;

const VM_LABELS = ['uid', 'namespace', 'name', 'provider'] as const;

/** Seconds: API calls take milliseconds; reconcile passes and steps up to minutes (pulls, boots under TCG). */
const API_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const WORK_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/**
 * matchlockd's Prometheus metrics (prom-client): every family named `matchlock_…` with its unit
 * in the name and HELP text, plus prom-client's process and Node.js metrics. Event counters are
 * fed by the observers below; gauges and per-VM series are computed from `sources` at scrape
 * time, so nothing loops over every VM when one changes. Names are a contract (dashboards and
 * alerts use them): change them only with a new name.
 */
export class DaemonMetrics {
  readonly registry = new Registry();
  private sources: MetricsSources | undefined;
  private sampling: { at: number; samples: Promise<VmSample[]> } | undefined;

  private readonly apiRequests: Counter<'api' | 'method' | 'code'>;
  private readonly apiDuration: Histogram<'api' | 'method'>;
  private readonly passes: Counter<'kind' | 'outcome'>;
  private readonly passDuration: Histogram<'kind'>;
  private readonly stepDuration: Histogram<'plan' | 'step'>;
  private readonly stepFailures: Counter<'plan' | 'step'>;
  private readonly vmmExits: Counter<'provider' | 'reason'>;
  private readonly pulls: Counter;
  private readonly pullFailures: Counter;
  private readonly pulledBytes: Counter;

  constructor(opts: { version: string; providers: readonly string[] }) {
    const registers = [this.registry];
    const self = () => this;
    collectDefaultMetrics({ register: this.registry });
    // prom-client names three gauges `nodejs_active_*_total`, which Prometheus reserves for
    // counters (promtool's lint refuses them): those are left out.
    for (const m of this.registry.getMetricsAsArray()) {
      if (String(m.type) === 'gauge' && m.name.endsWith('_total')) this.registry.removeSingleMetric(m.name);
    }
    new Gauge({ name: 'matchlock_build_info', help: 'Always 1; the version label is matchlockd\'s version.', labelNames: ['version'], registers }).set({ version: opts.version }, 1);

    this.apiRequests = new Counter({ name: 'matchlock_api_requests_total', help: 'API requests answered, by API (grpc, http), method (the RPC name: CreateMicroVM, Check, ServerReflectionInfo, ...; unknown for an HTTP request refused before routing or matching no route) and code (the gRPC status name, or the HTTP status code).', labelNames: ['api', 'method', 'code'], registers });
    this.apiDuration = new Histogram({ name: 'matchlock_api_request_duration_seconds', help: 'Time from receiving an API request to sending its status, by API and method.', labelNames: ['api', 'method'], buckets: API_BUCKETS, registers });

    this.passes = new Counter({ name: 'matchlock_reconcile_attempts_total', help: 'Reconcile passes that did work, by kind (ensure creates or repairs, teardown deletes) and outcome (ok, failed, canceled).', labelNames: ['kind', 'outcome'], registers });
    this.passDuration = new Histogram({ name: 'matchlock_reconcile_duration_seconds', help: 'Duration of reconcile passes that did work, by kind.', labelNames: ['kind'], buckets: WORK_BUCKETS, registers });
    this.stepDuration = new Histogram({ name: 'matchlock_reconcile_step_duration_seconds', help: 'Duration of plan steps that ran (run and verify), by plan (create, delete) and step kind (PullImage, StartVmm, ...).', labelNames: ['plan', 'step'], buckets: WORK_BUCKETS, registers });
    this.stepFailures = new Counter({ name: 'matchlock_reconcile_step_failures_total', help: 'Plan steps whose run or verify failed, by plan and step kind.', labelNames: ['plan', 'step'], registers });
    // Its own family, not an outcome of matchlock_reconcile_attempts_total: an exit is no pass
    // (it has no duration to go with matchlock_reconcile_duration_seconds), and Prometheus's
    // naming rule is one family per kind of event counted (prometheus.io, Metric and label naming).
    this.vmmExits = new Counter({ name: 'matchlock_vmm_exits_total', help: 'VMMs of stored MicroVMs that exited on their own (not stopped by matchlockd), by provider and reason: unexpected (desired power RUNNING: a crash or a guest that powered off; counted as a failed attempt towards maximum-retry) or powered_off (desired power STOPPED).', labelNames: ['provider', 'reason'], registers });
    // Every label set known in advance starts at 0 ("Avoid missing metrics", prometheus.io,
    // Instrumentation): a series first seen at 1 has no increase() to Prometheus, so an alert on
    // the first crash after a start (one counted at start-up, before the first scrape) would
    // never fire. Step kinds come from the providers' plans and API codes from the answers:
    // those series appear with their first event.
    for (const kind of PASS_KINDS) {
      this.passDuration.zero({ kind });
      for (const outcome of PASS_OUTCOMES) this.passes.inc({ kind, outcome }, 0);
    }
    for (const provider of opts.providers) for (const reason of VMM_EXIT_REASONS) this.vmmExits.inc({ provider, reason }, 0);
    new Gauge({
      name: 'matchlock_reconcile_queue_depth',
      help: 'MicroVMs in the reconcile queue: waiting, being reconciled, or waiting for a retry.',
      registers,
      collect() {
        this.set(self().sources?.queueDepth() ?? 0);
      },
    });
    new Gauge({
      name: 'matchlock_reconcile_running',
      help: 'Reconcile passes running now.',
      registers,
      collect() {
        this.set(self().sources?.reconcilesRunning() ?? 0);
      },
    });

    this.pulls = new Counter({ name: 'matchlock_image_pulls_total', help: 'Image pulls from registries started (concurrent pulls of one reference count once).', registers });
    this.pullFailures = new Counter({ name: 'matchlock_image_pull_failures_total', help: 'Image pulls from registries that failed.', registers });
    this.pulledBytes = new Counter({ name: 'matchlock_image_pulled_bytes_total', help: 'Bytes of blobs downloaded from registries, including attempts that failed and were retried.', registers });

    const providers = opts.providers;
    new Gauge({
      name: 'matchlock_microvms',
      help: 'Stored MicroVMs by state (PENDING, CREATED, FAILED, DELETING) and provider.',
      labelNames: ['state', 'provider'],
      registers,
      collect() {
        const counts = new Map<string, number>();
        for (const p of providers) for (const s of VM_STATES) counts.set(`${s}\0${p}`, 0);
        for (const vm of self().sources?.vms() ?? []) counts.set(`${vm.state}\0${vm.provider}`, (counts.get(`${vm.state}\0${vm.provider}`) ?? 0) + 1);
        this.reset();
        for (const [key, n] of counts) {
          const [state = '', provider = ''] = key.split('\0');
          this.set({ state, provider }, n);
        }
      },
    });

    // Per VM: absolute values read from /proc and the VMM, so each scrape starts over.
    type VmLabel = (typeof VM_LABELS)[number];
    const perVm = (kind: 'counter' | 'gauge', name: string, help: string, value: (s: VmSample) => number | undefined) => {
      const each = async (put: (labels: VmLabels, v: number) => void) => {
        for (const s of await self().samples()) {
          const v = value(s);
          if (v !== undefined) put(s.labels, v);
        }
      };
      const cfg = { name, help, labelNames: VM_LABELS, registers };
      if (kind === 'counter') {
        new Counter<VmLabel>({
          ...cfg,
          async collect() {
            // Collected before the reset, so a slow VMM never leaves the family empty in between.
            const rows: [VmLabels, number][] = [];
            await each((l, v) => rows.push([l, v]));
            this.reset();
            for (const [l, v] of rows) this.inc({ ...l }, v);
          },
        });
      } else {
        new Gauge<VmLabel>({
          ...cfg,
          async collect() {
            const rows: [VmLabels, number][] = [];
            await each((l, v) => rows.push([l, v]));
            this.reset();
            for (const [l, v] of rows) this.set({ ...l }, v);
          },
        });
      }
    };
    perVm('counter', 'matchlock_vmm_cpu_seconds_total', 'CPU time (user and system) of the VM\'s VMM process, which runs its vCPUs; from /proc/<pid>/stat.', (s) => s.cpuSeconds);
    perVm('gauge', 'matchlock_vmm_resident_memory_bytes', 'Resident set size of the VM\'s VMM process (guest memory it touched plus its own); from /proc/<pid>/status.', (s) => s.rssBytes);
    perVm('counter', 'matchlock_vm_block_read_bytes_total', 'Bytes the guest read from its block devices, as the VMM counts them.', (s) => s.io?.block?.readBytes);
    perVm('counter', 'matchlock_vm_block_written_bytes_total', 'Bytes the guest wrote to its block devices, as the VMM counts them.', (s) => s.io?.block?.writeBytes);
    perVm('counter', 'matchlock_vm_block_reads_total', 'Read requests of the guest to its block devices, as the VMM counts them.', (s) => s.io?.block?.readOps);
    perVm('counter', 'matchlock_vm_block_writes_total', 'Write requests of the guest to its block devices, as the VMM counts them.', (s) => s.io?.block?.writeOps);
    perVm('counter', 'matchlock_vm_network_receive_bytes_total', 'Bytes the guest received on its network interfaces.', (s) => s.io?.net?.rxBytes);
    perVm('counter', 'matchlock_vm_network_transmit_bytes_total', 'Bytes the guest sent on its network interfaces.', (s) => s.io?.net?.txBytes);
    perVm('counter', 'matchlock_vm_network_receive_packets_total', 'Packets the guest received on its network interfaces.', (s) => s.io?.net?.rxPackets);
    perVm('counter', 'matchlock_vm_network_transmit_packets_total', 'Packets the guest sent on its network interfaces.', (s) => s.io?.net?.txPackets);
  }

  /** Where the gauges read from; set once the daemon's parts exist. */
  setSources(sources: MetricsSources): void {
    this.sources = sources;
  }

  /** One sampling of every running VM per scrape: the ten per-VM families share it. */
  private samples(): Promise<VmSample[]> {
    const now = Date.now();
    if (!this.sampling || now - this.sampling.at > 1000) {
      this.sampling = { at: now, samples: this.sources?.vmSamples().catch(() => []) ?? Promise.resolve([]) };
    }
    return this.sampling.samples;
  }

  /** An API request was answered. */
  request(api: ApiKind, method: string, code: string, seconds: number): void {
    this.apiRequests.inc({ api, method, code });
    this.apiDuration.observe({ api, method }, seconds);
  }

  /** A reconcile pass ended (the Reconciler's observer). */
  pass(e: { kind: 'ensure' | 'teardown'; outcome: string; seconds: number }): void {
    this.passes.inc({ kind: e.kind, outcome: e.outcome });
    this.passDuration.observe({ kind: e.kind }, e.seconds);
  }

  /** A VMM exited on its own (the Reconciler's observer). */
  vmmExited(e: { provider: string; reason: string }): void {
    this.vmmExits.inc({ provider: e.provider, reason: e.reason });
  }

  /** A plan step ran (the runtime's observer). */
  step(plan: 'create' | 'delete', o: { kind: string; seconds: number; failed: boolean }): void {
    this.stepDuration.observe({ plan, step: o.kind }, o.seconds);
    if (o.failed) this.stepFailures.inc({ plan, step: o.kind });
  }

  /** The image store's observer. */
  readonly images = {
    pullStarted: () => this.pulls.inc(),
    pullFailed: () => this.pullFailures.inc(),
    bytes: (n: number) => this.pulledBytes.inc(n),
  };

  /** The exposition in Prometheus text format 0.0.4, and its content type. */
  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
