import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { basicAuthHeader } from '../../src/adapters/api/auth.js';
import { DaemonMetrics } from '../../src/adapters/metrics/prometheus.js';
import { PROVIDERS } from '../../src/adapters/vmm/registry.js';
import { api, consoleOf, stateOf, waitFor } from '../e2e/vm.js';
import { makeCerts } from '../helpers/certs.js';
import { rawHttp } from '../helpers/raw-http.js';
import { daemonFailsToStart, ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

const promtool = spawnSync('sh', ['-c', 'command -v promtool']).status === 0;
const noPromtool = !promtool && !process.env.CI ? 'promtool is not installed (scripts/install-deps.sh: prometheus)' : false;

/** Every matchlock family the README documents; each must be in every scrape, with HELP and TYPE. */
const FAMILIES: Record<string, 'counter' | 'gauge' | 'histogram'> = {
  matchlock_build_info: 'gauge',
  matchlock_api_requests_total: 'counter',
  matchlock_api_request_duration_seconds: 'histogram',
  matchlock_reconcile_attempts_total: 'counter',
  matchlock_reconcile_duration_seconds: 'histogram',
  matchlock_reconcile_step_duration_seconds: 'histogram',
  matchlock_reconcile_step_failures_total: 'counter',
  matchlock_vmm_exits_total: 'counter',
  matchlock_reconcile_queue_depth: 'gauge',
  matchlock_reconcile_running: 'gauge',
  matchlock_image_pulls_total: 'counter',
  matchlock_image_pull_failures_total: 'counter',
  matchlock_image_pulled_bytes_total: 'counter',
  matchlock_microvms: 'gauge',
  matchlock_vmm_cpu_seconds_total: 'counter',
  matchlock_vmm_resident_memory_bytes: 'gauge',
  matchlock_vm_block_read_bytes_total: 'counter',
  matchlock_vm_block_written_bytes_total: 'counter',
  matchlock_vm_block_reads_total: 'counter',
  matchlock_vm_block_writes_total: 'counter',
  matchlock_vm_network_receive_bytes_total: 'counter',
  matchlock_vm_network_transmit_bytes_total: 'counter',
  matchlock_vm_network_receive_packets_total: 'counter',
  matchlock_vm_network_transmit_packets_total: 'counter',
  // prom-client's process metrics of the daemon itself
  process_cpu_seconds_total: 'counter',
  process_resident_memory_bytes: 'gauge',
};

interface Scrape {
  text: string;
  types: Map<string, string>;
  helps: Set<string>;
  /** `name{a="x",b="y"}` (labels as exposed) -> value. */
  samples: Map<string, number>;
}

function parse(text: string): Scrape {
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t?.[1] && t[2]) types.set(t[1], t[2]);
    const h = /^# HELP (\S+) \S/.exec(line);
    if (h?.[1]) helps.add(h[1]);
    const s = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (\S+)$/.exec(line);
    if (s?.[1] && s[2]) samples.set(s[1], Number(s[2]));
  }
  return { text, types, helps, samples };
}

/** The value of the one series of `name` whose labels include all of `labels`; sums when several match. */
function value(s: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
  let sum: number | undefined;
  for (const [key, v] of s.samples) {
    const brace = key.indexOf('{');
    if ((brace < 0 ? key : key.slice(0, brace)) !== name) continue;
    if (!Object.entries(labels).every(([k, x]) => key.includes(`${k}="${x}"`))) continue;
    sum = (sum ?? 0) + v;
  }
  return sum;
}

function checkExposition(s: Scrape): void {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: s.text, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool check metrics: ${r.stdout}${r.stderr}`);
  for (const [name, type] of Object.entries(FAMILIES)) {
    assert.equal(s.types.get(name), type, `family ${name} is exposed as a ${type}`);
    assert.ok(s.helps.has(name), `family ${name} has HELP text`);
  }
  for (const name of s.types.keys()) assert.match(name, /^[a-zA-Z_:][a-zA-Z0-9_:]*$/);
}

/** Counters never go back between two scrapes of one daemon (series of VMs gone are left out). */
function countersOnlyGrow(a: Scrape, b: Scrape): void {
  for (const [key, v] of a.samples) {
    const base = key.replace(/\{.*$/, '');
    const family = base.replace(/_(bucket|count|sum)$/, '');
    const counter = a.types.get(base) === 'counter' || a.types.get(family) === 'histogram';
    if (!counter || !b.samples.has(key)) continue;
    assert.ok((b.samples.get(key) ?? 0) >= v, `${key} went back from ${v} to ${b.samples.get(key)}`);
  }
}

/** GET over loopback from this process. */
async function get(port: number, path: string, token?: string): Promise<{ status: number; body: string; type: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: token ? { authorization: basicAuthHeader(token) } : {} });
  return { status: res.status, body: await res.text(), type: res.headers.get('content-type') ?? '' };
}

/** GET on 127.0.0.1 inside a network namespace (the lab's daemon listens there). */
function getInNs(ns: string, port: number, path: string): { status: number; body: string } {
  const script = `fetch('http://127.0.0.1:${port}${path}').then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })))`;
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, process.execPath, '-e', script], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { status: number; body: string };
}

/** The port an operator endpoint logged once it listens. */
async function loggedPort(d: Pick<DaemonHandle, 'logs'>, what: 'metrics' | 'debug'): Promise<number> {
  return waitFor(`${what} endpoint listening`, () => {
    for (const l of d.logs) {
      const rec = (() => {
        try {
          return JSON.parse(l) as { msg?: string; port?: number };
        } catch {
          return {};
        }
      })();
      if (rec.msg === `${what} endpoint listening`) return rec.port;
    }
    return undefined;
  }, 30_000);
}

it('counts VMMs that exit on their own in matchlock_vmm_exits_total by provider and reason', async () => {
  const m = new DaemonMetrics({ version: 'test', providers: ['qemu'] });
  m.vmmExited({ provider: 'qemu', reason: 'unexpected' });
  m.vmmExited({ provider: 'qemu', reason: 'unexpected' });
  m.vmmExited({ provider: 'qemu', reason: 'powered_off' });
  const { body } = await m.exposition();
  assert.match(body, /^# TYPE matchlock_vmm_exits_total counter$/m);
  assert.match(body, /^matchlock_vmm_exits_total\{provider="qemu",reason="unexpected"\} 2$/m);
  assert.match(body, /^matchlock_vmm_exits_total\{provider="qemu",reason="powered_off"\} 1$/m);
});

describe('metrics and debug endpoints: auth, TLS and the loopback rule', { skip: noPromtool }, () => {
  const tmp = tempDir('metrics');
  let daemon: DaemonHandle;
  let metricsPort: number;
  let debugPort: number;
  const token = 'metrics-secret';
  before(async () => {
    daemon = await startDaemon(join(tmp.path, 'state'), ['--basic-auth-token', token, '--metrics-endpoint', '127.0.0.1:0', '--debug-endpoint', '127.0.0.1:0', '--vmm-cgroups=false']);
    metricsPort = await loggedPort(daemon, 'metrics');
    debugPort = await loggedPort(daemon, 'debug');
  });
  after(async () => {
    await daemon?.stop();
    tmp.remove();
  });

  it('refuses a scrape without the token or with another, and serves a valid exposition with it', async () => {
    for (const t of [undefined, 'wrong']) {
      const r = await get(metricsPort, '/metrics', t);
      assert.equal(r.status, 401, `token ${String(t)}`);
      assert.match(r.body, /authorization/);
      assert.doesNotMatch(r.body, /matchlock_/);
    }
    const r = await get(metricsPort, '/metrics', token);
    assert.equal(r.status, 200);
    assert.match(r.type, /^text\/plain; version=0\.0\.4/);
    const s = parse(r.body);
    checkExposition(s);
    assert.equal(value(s, 'matchlock_build_info'), 1);
    // The README's table names every matchlock family the daemon exposes, and no other.
    const full = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const at = full.indexOf('### Metrics and debug');
    assert.ok(at >= 0, 'README has a metrics section');
    const readme = full.slice(at, full.indexOf('\n## ', at));
    const documented = new Set([...readme.matchAll(/`(matchlock_[a-z_]+)`/g)].map((m) => m[1]));
    const exposed = new Set([...s.types.keys()].filter((n) => n.startsWith('matchlock_')));
    assert.deepEqual([...exposed].sort(), [...documented].sort());
    assert.deepEqual([...exposed].sort(), Object.keys(FAMILIES).filter((n) => n.startsWith('matchlock_')).sort());
    assert.equal((await get(metricsPort, '/debug/pprof/heap', token)).status, 404, 'the metrics endpoint serves metrics only');
    // A refusal sent while the client still writes a body must not be overtaken by a reset.
    for (let i = 0; i < 10; i++) {
      assert.equal((await rawHttp(metricsPort, 'POST', '/metrics', Buffer.alloc(1 << 20, 'x'))).status, 401, 'no token, a 1 MiB body');
      assert.equal((await rawHttp(metricsPort, 'POST', '/metrics', Buffer.alloc(1 << 20, 'x'), { authorization: basicAuthHeader(token) })).status, 405, 'POST with a 1 MiB body');
    }
    // The refused scrape and the gRPC health check the helper made are counted.
    const again = parse((await get(metricsPort, '/metrics', token)).body);
    assert.ok((value(again, 'process_cpu_seconds_total') ?? 0) > 0);
  });

  it('shows every series whose labels are known in advance at 0 before any event', async () => {
    const s = parse((await get(metricsPort, '/metrics', token)).body);
    // A series first seen at 1 has no increase() to Prometheus: the first exit after a start
    // (one counted at start-up among them) would never fire the README's alert.
    for (const provider of PROVIDERS.keys()) {
      for (const reason of ['unexpected', 'powered_off']) assert.equal(value(s, 'matchlock_vmm_exits_total', { provider, reason }), 0, `vmm exits ${provider} ${reason}`);
    }
    for (const kind of ['ensure', 'teardown']) {
      for (const outcome of ['ok', 'failed', 'canceled']) assert.equal(value(s, 'matchlock_reconcile_attempts_total', { kind, outcome }), 0, `attempts ${kind} ${outcome}`);
      assert.equal(value(s, 'matchlock_reconcile_duration_seconds_count', { kind }), 0, `duration count ${kind}`);
      assert.equal(value(s, 'matchlock_reconcile_duration_seconds_bucket', { kind, le: '+Inf' }), 0, `duration +Inf bucket ${kind}`);
    }
  });

  it('serves a heap snapshot and a CPU profile that parse, behind the token', async () => {
    assert.equal((await get(debugPort, '/debug/pprof/heap')).status, 401);
    assert.equal((await get(debugPort, '/debug/profile?seconds=1')).status, 401);
    const heap = await get(debugPort, '/debug/pprof/heap', token);
    assert.equal(heap.status, 200);
    const snapshot = JSON.parse(heap.body) as { snapshot: { meta: { node_fields: string[] }; node_count: number }; nodes: number[]; strings: string[] };
    assert.ok(snapshot.snapshot.meta.node_fields.includes('self_size'));
    assert.equal(snapshot.nodes.length, snapshot.snapshot.node_count * snapshot.snapshot.meta.node_fields.length);
    assert.ok(snapshot.strings.includes('DaemonMetrics') || snapshot.strings.some((x) => x.includes('matchlock')), 'a snapshot of the daemon itself');

    const prof = await get(debugPort, '/debug/profile?seconds=1', token);
    assert.equal(prof.status, 200);
    const profile = JSON.parse(prof.body) as { nodes: { callFrame: { functionName: string } }[]; startTime: number; endTime: number; samples: number[] };
    assert.ok(profile.nodes.length > 0 && profile.nodes.some((n) => n.callFrame.functionName === '(root)'));
    const micros = profile.endTime - profile.startTime;
    assert.ok(micros >= 900_000 && micros < 30_000_000, `a profile of about one second, not ${micros} us`);

    for (const q of ['seconds=0', 'seconds=301', 'seconds=1.5', 'seconds=x']) {
      const r = await get(debugPort, `/debug/profile?${q}`, token);
      assert.equal(r.status, 400, q);
      assert.match(r.body, /^seconds: must be a whole number from 1 to 300/);
    }
  });

  it('serves metrics over TLS 1.3 with the API certificate, and refuses plaintext off loopback', async () => {
    const pki = tempDir('metrics-pki');
    let tlsDaemon: DaemonHandle | undefined;
    try {
      const certs = makeCerts(pki.path);
      tlsDaemon = await startDaemon(join(pki.path, 'state'), ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--metrics-endpoint', '127.0.0.1:0', '--vmm-cgroups=false']);
      const port = await loggedPort(tlsDaemon, 'metrics');
      const answer = await new Promise<{ status: number; protocol: string; body: string }>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/metrics', ca: readFileSync(certs.ca), servername: 'localhost' }, (res) => {
          let body = '';
          const protocol = (res.socket as import('node:tls').TLSSocket).getProtocol() ?? '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, protocol, body }));
        });
        req.on('error', reject);
        req.end();
      });
      assert.equal(answer.status, 200);
      assert.equal(answer.protocol, 'TLSv1.3');
      assert.match(answer.body, /^# HELP matchlock_build_info/m);
      await assert.rejects(fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text()), 'no plaintext on the TLS endpoint');
    } finally {
      await tlsDaemon?.stop();
      pki.remove();
    }
    for (const key of ['metrics-endpoint', 'debug-endpoint']) {
      const { code, output } = await daemonFailsToStart(['run', '--state-dir', join(tmp.path, 'refused'), '--grpc-endpoint', '127.0.0.1:0', '--config', '/dev/null', `--${key}`, '0.0.0.0:9100']);
      assert.equal(code, 2, output);
      assert.match(output, new RegExp(`${key} 0\\.0\\.0\\.0:9100 is not a loopback address: give tls-cert and tls-key, or --insecure`));
    }
  });
});

const missing = labMissing() ?? (['docker-registry', 'skopeo'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) ? 'docker-registry or skopeo missing' : undefined);
const skipLab = (missing || noPromtool) && !process.env.CI ? (missing ?? noPromtool) : false;

describe('metrics of a daemon at work: a create/delete burst and a real QEMU guest', { skip: skipLab }, () => {
  let lab: Lab;
  let registry: Registry;
  let port: number;
  const scrape = () => {
    const r = getInNs(lab.ns, port, '/metrics');
    assert.equal(r.status, 200);
    const s = parse(r.body);
    checkExposition(s);
    return s;
  };
  before(async () => {
    assert.equal(missing, undefined, `the metrics tests ${missing}`);
    assert.ok(promtool, 'promtool (scripts/install-deps.sh: prometheus)');
    const layout = testGuestLayout();
    // The scratch provider (test/fakes/providers/scratch) boots nothing, so a burst costs little;
    // the one guest that boots is QEMU's.
    lab = await startLab(['--default-provider', 'scratch', '--metrics-endpoint', '127.0.0.1:0', '--enable-http', '--http-endpoint', '127.0.0.1:0', '--retry-backoff', '1s'], {
      entry: ['--import', 'tsx', join(ROOT, 'test/fakes/providers/scratch/matchlockd.ts')],
    });
    port = await loggedPort(lab.daemon, 'metrics');
    registry = await startRegistry(lab.ns);
    // Every VM's image comes from the registry, so the pull counters see real downloads.
    registry.push(`${layout}:latest`, 'matchlock/guest:1');
  });
  after(async () => {
    await lab?.destroy();
    await registry?.stop();
  });

  it('has every family in every scrape, counters that move with the work, and per-VM series of running VMs', async () => {
    const vms = api(lab);
    const s0 = scrape();

    // One QEMU guest pulled from a registry, one VM whose image no registry has.
    const ref = `${registry.host}/matchlock/guest:1`;
    const guest = await vms.create('booted', [{ id: 'eth0', type: 'TAP' }], undefined, ref, { provider: 'qemu' });
    const broken = await vms.create('nopull', [{ id: 'eth0', type: 'TAP' }], undefined, '127.0.0.1:9/matchlock/none:1');

    const burst = await Promise.all(Array.from({ length: 5 }, (_, n) => vms.create(`burst-${n}`, [{ id: 'eth0', type: 'TAP' }], undefined, ref)));
    const s1 = scrape();
    countersOnlyGrow(s0, s1);
    for (const uid of burst) await waitFor(`${uid} CREATED`, async () => stateOf(await vms.get(uid)) === 'CREATED', 120_000);
    const s2 = scrape();
    countersOnlyGrow(s1, s2);
    assert.equal(value(s2, 'matchlock_microvms', { state: 'CREATED', provider: 'scratch' }), 5);
    for (const uid of burst) {
      assert.ok((value(s2, 'matchlock_vmm_resident_memory_bytes', { uid, provider: 'scratch' }) ?? 0) > 1024 * 1024, `RSS of ${uid}'s VMM`);
      assert.notEqual(value(s2, 'matchlock_vmm_cpu_seconds_total', { uid }), undefined);
      assert.equal(value(s2, 'matchlock_vm_block_reads_total', { uid }), undefined, 'no I/O series for a provider without ioCounters');
    }
    // One request over the HTTP API, so both APIs are counted.
    const http = getInNs(lab.ns, lab.daemon.httpPort ?? 0, '/v1alpha1/microvm');
    assert.equal(http.status, 200);
    // matchlock.v1's routes are counted under their RPC's name too.
    assert.equal(getInNs(lab.ns, lab.daemon.httpPort ?? 0, '/v1/server-info').status, 200);
    assert.equal(getInNs(lab.ns, lab.daemon.httpPort ?? 0, '/v1/recent-events?limit=1').status, 200);

    await Promise.all(burst.map((uid) => vms.delete(uid)));
    for (const uid of burst) await waitFor(`${uid} gone`, async () => (await vms.get(uid)) === undefined, 60_000);
    await waitFor('the pull failure counted', () => (value(scrape(), 'matchlock_reconcile_step_failures_total', { plan: 'create', step: 'PullImage' }) ?? 0) > 0, 60_000);
    const s3 = scrape();
    countersOnlyGrow(s2, s3);
    assert.equal(value(s3, 'matchlock_microvms', { state: 'CREATED', provider: 'scratch' }), 0);
    for (const uid of burst) assert.equal(value(s3, 'matchlock_vmm_cpu_seconds_total', { uid }), undefined, `no series for ${uid} once deleted`);

    const grew = (name: string, labels: Record<string, string>, by: number) => {
      const before = value(s0, name, labels) ?? 0;
      const now = value(s3, name, labels) ?? 0;
      assert.ok(now - before >= by, `${name}${JSON.stringify(labels)} grew by ${now - before}, expected at least ${by}`);
    };
    grew('matchlock_api_requests_total', { api: 'grpc', method: 'CreateMicroVM', code: 'OK' }, 7);
    grew('matchlock_api_requests_total', { api: 'grpc', method: 'DeleteMicroVM', code: 'OK' }, 5);
    grew('matchlock_api_requests_total', { api: 'http', method: 'ListMicroVMs', code: '200' }, 1);
    grew('matchlock_api_requests_total', { api: 'http', method: 'GetServerInfo', code: '200' }, 1);
    grew('matchlock_api_requests_total', { api: 'http', method: 'ListMicroVMEvents', code: '200' }, 1);
    grew('matchlock_api_request_duration_seconds_count', { api: 'grpc', method: 'GetMicroVM' }, 5);
    grew('matchlock_reconcile_attempts_total', { kind: 'ensure', outcome: 'ok' }, 5);
    grew('matchlock_reconcile_attempts_total', { kind: 'teardown', outcome: 'ok' }, 5);
    grew('matchlock_reconcile_attempts_total', { kind: 'ensure', outcome: 'failed' }, 1);
    grew('matchlock_reconcile_duration_seconds_count', { kind: 'ensure' }, 6);
    grew('matchlock_reconcile_step_duration_seconds_count', { plan: 'create', step: 'StartVmm' }, 5);
    grew('matchlock_reconcile_step_duration_seconds_count', { plan: 'delete', step: 'StopVmm' }, 5);
    grew('matchlock_image_pulls_total', {}, 2);
    assert.equal(lab.daemon.logs.filter((l) => l.includes('"msg":"image pulled"')).length, 1, 'one download for six VMs');
    grew('matchlock_image_pull_failures_total', {}, 1);
    grew('matchlock_image_pulled_bytes_total', {}, 1_000_000);

    // The QEMU guest: block reads once it booted, packets both ways once it has its DHCP lease.
    await waitFor('the guest has its lease', () => consoleOf(lab, 'booted', guest).includes('MATCHLOCK_LEASE'), 180_000, 500);
    const s4 = scrape();
    countersOnlyGrow(s3, s4);
    const g = { uid: guest, namespace: 'e2e', name: 'booted', provider: 'qemu' };
    assert.equal(value(s4, 'matchlock_microvms', { state: 'CREATED', provider: 'qemu' }), 1);
    assert.ok((value(s4, 'matchlock_vm_block_read_bytes_total', g) ?? 0) > 0, 'block bytes read');
    assert.ok((value(s4, 'matchlock_vm_block_reads_total', g) ?? 0) > 0, 'block reads');
    assert.ok((value(s4, 'matchlock_vmm_cpu_seconds_total', g) ?? 0) > 0.5, 'a TCG boot costs CPU');
    assert.ok((value(s4, 'matchlock_vmm_resident_memory_bytes', g) ?? 0) > 32 * 1024 * 1024, 'RSS of QEMU with a booted guest');
    assert.ok((value(s4, 'matchlock_vm_network_transmit_packets_total', g) ?? 0) > 0, 'the guest sent its DHCP requests');
    assert.ok((value(s4, 'matchlock_vm_network_receive_packets_total', g) ?? 0) > 0, 'the guest received the DHCP answers');
    assert.ok((value(s4, 'matchlock_vm_network_transmit_bytes_total', g) ?? 0) >= 60 * (value(s4, 'matchlock_vm_network_transmit_packets_total', g) ?? 0), 'bytes are bytes (a frame is at least 60), not packets');

    await vms.delete(guest);
    await vms.delete(broken);
    await waitFor('guest gone', async () => (await vms.get(guest)) === undefined && (await vms.get(broken)) === undefined, 60_000);
  });
});
