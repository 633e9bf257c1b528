// The control plane against the limit of its own stack, measured in one run.
//
//   node --import tsx bench/control-plane.ts [sizes=100,1000,10000] [creates=100] [bursts=100,500] [idleSeconds=20]
//   (sizes or bursts may be 0 to skip that part; MATCHLOCK_BENCH_ENTRY=<path to bin/matchlockd.js>
//   measures another checkout's daemon with this bench; MATCHLOCK_BENCH_NODE_FLAGS='--cpu-prof
//   --cpu-prof-dir=<dir>' gives the daemon's node these flags; MATCHLOCK_BENCH_DAEMON_FLAGS='--reconcile-workers 16'
//   adds daemon flags to the bursts; MATCHLOCK_BENCH_STRACE=1 counts the programs the daemon runs
//   during each burst with strace, which slows it: time such runs apart; MATCHLOCK_BENCH_BURST=
//   matchlock or baseline runs one side of Part 2 only; MATCHLOCK_BENCH_BASELINE_LAUNCH=node
//   makes the burst baseline start its programs with child_process.spawn instead of /bin/sh;
//   MATCHLOCK_BENCH_WARMUP=20 has each side create 20 VMs to CREATED before its burst, and
//   answer 20 creates before part 1's timed ones, unmeasured)
//
// Part 1 (loopback only). For each record count: a matchlockd and a baseline server, each on its
// own temp store seeded with the same records, answer the same requests from one raw client
// (responses are not decoded, so the client costs both sides the same):
//   - CreateMicroVM p50, sequential (the VM's image is on a registry nobody answers, so its
//     reconcile fails fast and backs off: no boot);
//   - GetMicroVM p50 and ListMicroVMs (all records, median of 7): in one answer (no
//     page_size, as flintlock's clients ask), and a page of 500 at a time (page_size and
//     page_token): time to the first page and to the last; and in one answer again from grpcio
//     (bench/list-grpcio.py under /usr/bin/python3, the tests' python3-grpcio), a client that
//     widens its HTTP/2 receive window as CAPMVM's grpc-go does;
//   - RSS idle (no record), with the records loaded, after the Lists;
//   - CPU of the idle server with the records loaded, over `idleSeconds`, from /proc/<pid>/stat,
//     once matchlockd's start-up work is over (it uses under a fifth of a core over 2 s); the
//     requests are timed after that too.
// The baseline is bare grpc-js plus better-sqlite3 (WAL, synchronous=FULL): Create decodes the
// request, inserts one row and answers; Get and List answer records stored pre-encoded, List a
// page after the last uid of the previous one when asked for pages.
//
// Part 2 (as root, with ip and cc). For each burst size N, matchlockd and then the burst baseline,
// or the other way round (the first side alternates between sizes from a coin per run), each in a
// network namespace of its own with a fresh bridge: N concurrent creates of VMs whose QEMU is
// bench/vmm-standin.c (boots nothing, answers QMP, ~1 MB each) and whose image is already in the
// store; time until all are CREATED (ListMicroVMs polled every 250 ms), the p50 of probe creates
// sent one at a time while the burst is reconciled, and the host CPU spent until then (the server,
// its process spawner or shells, and the programs they reaped). The burst baseline is
// bench/baseline-server.ts given a VMM: the same insert and answer as part 1's, then per VM a TAP
// on the bridge (ip -batch, creates that arrive together grouped), the stand-in started with
// matchlock's QEMU command line, its QMP socket and pid file waited for, and the row's state
// written CREATED (fsync'd). TAPs and stand-ins are counted before each side is cleaned up.
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { buildSync } from 'esbuild';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { toWire, specInput } from '../src/adapters/api/convert.js';
import { serviceDefinition } from '../src/adapters/api/grpc/service-def.js';
import { LocalImageStore } from '../src/adapters/images/oci/store.js';
import { MicroVMService } from '../src/core/microvm/service.js';
import type { MicroVM as DomainVM } from '../src/core/microvm/types.js';
import {
  CreateMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
  ListMicroVMsResponseSchema,
  MicroVM as MicroVMServiceDesc,
} from '../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema, MicroVMSpecSchema, MicroVMStatus_MicroVMState, NetworkInterface_IfaceType, type MicroVMSpec } from '../src/gen/types/microvm_pb.js';
import { MemoryStore } from '../test/fakes/memory-store.js';
import { silentLogger } from '../src/adapters/silent-logger.js';
import { DAEMON_BIN, startDaemon, type DaemonHandle } from '../test/helpers/daemon.js';
import { openBaselineDb } from './baseline-server.js';
import { writeImageLayout } from '../test/helpers/oci.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const nums = (s: string | undefined, d: number[]) => (s === undefined ? d : s.split(',').map(Number).filter((n) => n > 0));

/** next_page_token (field 1000) of a ListMicroVMsResponse left as bytes, without decoding the records. */
function nextPageToken(res: Buffer): string {
  let at = 0;
  const read = () => {
    let n = 0;
    for (let shift = 0; ; shift += 7) {
      const b = res[at++] ?? 0;
      n += (b & 127) * 2 ** shift;
      if (b < 128) return n;
    }
  };
  while (at < res.length) {
    const tag = read();
    if ((tag & 7) !== 2) throw new Error(`unexpected wire type in ListMicroVMsResponse: ${tag & 7}`);
    const len = read();
    if (tag >>> 3 === 1000) return res.subarray(at, at + len).toString('utf8');
    at += len;
  }
  return '';
}

// ---------------------------------------------------------------- helpers

interface Server {
  pid: number;
  target: string;
  stop(): Promise<void>;
}

/** Waits until a process uses under a fifth of a core over 2 s (at most 120 s); returns the seconds waited. */
async function startupWork(pid: number): Promise<number> {
  const t = performance.now();
  for (let before = cpuSeconds(pid); performance.now() - t < 120_000; ) {
    await settle(2000);
    const now = cpuSeconds(pid);
    if (now - before < 0.4) break;
    before = now;
  }
  return (performance.now() - t) / 1000;
}

function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) / 1024;
}

/**
 * How to run the baseline server: through tsx like a checkout's daemon, or, when the daemon runs
 * compiled (MATCHLOCK_COMPILED=1), as one esbuild bundle run by plain Node (its packages stay in
 * node_modules), so neither side carries tsx.
 */
let bundled: string | undefined;
function baselineEntry(): string[] {
  const source = fileURLToPath(new URL('./baseline-server.ts', import.meta.url));
  if (process.env.MATCHLOCK_COMPILED !== '1') return [...process.execArgv, source];
  if (!bundled) {
    const out = join(ROOT, 'node_modules', '.cache', 'matchlock-bench', 'baseline-server.mjs');
    buildSync({ entryPoints: [source], bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', outfile: out, logLevel: 'silent' });
    bundled = out;
  }
  return [bundled];
}

async function startBaseline(dir: string): Promise<Server> {
  const socket = join(dir, 'baseline.sock');
  rmSync(socket, { force: true });
  const proc = spawn(process.execPath, [...baselineEntry(), join(dir, 'baseline.db'), socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    proc.stdout.once('data', () => resolve());
    proc.once('exit', (c) => reject(new Error(`baseline server exited with ${c}`)));
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return { pid: proc.pid ?? 0, target: `unix:${socket}`, stop: async () => void (proc.kill('SIGTERM'), await exited) };
}

function fromDaemon(d: DaemonHandle): Server {
  return { pid: d.proc.pid ?? 0, target: d.target, stop: () => d.stop() };
}

/** A client whose responses stay bytes: decoding is the client's cost, not the server's. */
function rawClient(target: string) {
  const def = serviceDefinition(MicroVMServiceDesc) as Record<string, grpc.MethodDefinition<unknown, unknown>>;
  for (const m of Object.values(def)) m.responseDeserialize = (b: Buffer) => b;
  const Ctor = grpc.makeGenericClientConstructor(def, 'MicroVM');
  const client = new Ctor(target, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 }) as unknown as Record<string, (...a: unknown[]) => void> & grpc.Client;
  const call = (method: string, req: unknown): Promise<Buffer> =>
    new Promise((resolve, reject) => {
      client[method]?.call(client, req, new grpc.Metadata(), { deadline: Date.now() + 120_000 }, (err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res)));
    });
  const timed = async (method: string, req: unknown): Promise<number> => {
    const t = performance.now();
    await call(method, req);
    return performance.now() - t;
  };
  /** Every page of a List of `pageSize`: ms to the first answer and to the last. */
  const paged = async (pageSize: number): Promise<[number, number]> => {
    const t = performance.now();
    let first = 0;
    let pageToken = '';
    do {
      const res = await call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: '', pageSize, pageToken }));
      first ||= performance.now() - t;
      pageToken = nextPageToken(res);
    } while (pageToken);
    return [first, performance.now() - t];
  };
  return { call, timed, paged, close: () => client.close() };
}

/** Debian's Python, whose python3-grpcio the tests use too. */
const PYTHON = '/usr/bin/python3';

/**
 * ListMicroVMs in one answer from grpcio, the client of gRPC's C core (bench/list-grpcio.py),
 * matchlockd and the baseline in turn, `rounds` each: each side's times in ms, or undefined
 * (said once on stderr) where that Python or its grpc module is missing. Run apart from the
 * grpc-js client: that client's receive window stays at 64 KiB, so its large answers are paced
 * by window updates the C core's (and grpc-go's) bandwidth-delay probing avoids. Throws when
 * the script fails otherwise (a List refused or timed out).
 */
let grpcioMissing = false;
function grpcioLists(a: string, b: string, rounds: number): [number[], number[]] | undefined {
  if (grpcioMissing) return undefined;
  const script = fileURLToPath(new URL('./list-grpcio.py', import.meta.url));
  const r = spawnSync(PYTHON, [script, a, b, String(rounds)], { encoding: 'utf8', timeout: 600_000 });
  const why = `${PYTHON} ${script} ${r.error ? `failed: ${r.error.message}` : `exited ${r.status ?? r.signal}`}: ${r.stderr?.trim().split('\n').pop() ?? ''}`;
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' || r.status === 3) {
    grpcioMissing = true;
    process.stderr.write(`# no List by grpcio: ${why}\n`);
    return undefined;
  }
  if (r.status !== 0) throw new Error(`List by grpcio: ${why}`);
  // Each line starts with the answer's size; the sides differ by the records the timed creates
  // added (matchlock's carry their failed pull), so it is not compared.
  const [x = [], y = []] = r.stdout.trim().split('\n').map((line) => line.split(' ').slice(1).map(Number));
  return [x, y];
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
};

export function spec(name: string, namespace: string, image: string, withRoot = true, kernelFile = 'boot/vmlinuz'): MicroVMSpec {
  // CAPMVM's shape: a kernel, a root volume, one TAP, labels and a cloud-init user-data of a few KiB.
  return create(MicroVMSpecSchema, {
    id: name,
    namespace,
    labels: { 'cluster.x-k8s.io/cluster-name': 'bench', role: 'worker' },
    vcpu: 2,
    memoryInMb: 2048,
    kernel: { image, filename: kernelFile, addNetworkConfig: true },
    initrd: withRoot ? undefined : { image, filename: 'boot/initrd.img' },
    rootVolume: withRoot ? { id: 'root', source: { containerSource: image } } : undefined,
    interfaces: [{ deviceId: 'eth1', type: NetworkInterface_IfaceType.TAP }],
    metadata: {
      'user-data': Buffer.from(`#cloud-config\nwrite_files:\n${'  - path: /etc/bench\n    content: ' + 'x'.repeat(60) + '\n'.repeat(1)}`.repeat(30)).toString('base64'),
      'meta-data': Buffer.from(`local_hostname: ${name}\n`).toString('base64'),
    },
  });
}

/** Stored records as matchlock makes them (validated, defaulted), FAILED so nothing reconciles them. */
export function makeRecords(from: number, to: number): DomainVM[] {
  const store = new MemoryStore();
  let t = Date.parse('2026-01-01T00:00:00Z') + from;
  const svc = new MicroVMService({
    store,
    clock: { now: () => new Date(t++) },
    random: { bytes: (n) => randomBytes(n) },
    notifier: { changed: () => undefined },
    providers: new Map([['qemu', { descriptor: { name: 'qemu', defaultBinary: 'x', capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false, pause: true }, metadata: { kind: 'nocloud-disk', file: 'cidata.img' }, sockets: [] }, availability: { usable: true } }]]) as never,
    defaultProvider: 'qemu',
  });
  const out: DomainVM[] = [];
  for (let i = from; i < to; i++) {
    const vm = svc.create(specInput(spec(`vm-${i}`, `ns-${i % 10}`, 'ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5')));
    out.push({ ...vm, status: { ...vm.status, state: 'FAILED', retry: 10, lastError: 'seeded by the benchmark' } });
  }
  return out;
}

/**
 * Writes records straight into both stores: matchlock's in its schema 2 layout (every version
 * since migrates from it), the baseline's pre-encoded.
 */
export function seed(stateDir: string, baseDir: string, vms: DomainVM[]): void {
  mkdirSync(stateDir, { recursive: true, mode: 0o750 });
  const db = new Database(join(stateDir, 'matchlock.db'));
  db.pragma('journal_mode = WAL');
  // Schema 2's tables and indexes the first time only: a daemon has upgraded the store since,
  // dropping two of them, and timed runs are of a store as it is after that.
  const first = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'microvms'").get() === undefined;
  if (first) db.exec(`CREATE TABLE IF NOT EXISTS microvms (uid TEXT PRIMARY KEY, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS microvms_namespace_name ON microvms (namespace, name);
    CREATE INDEX IF NOT EXISTS microvms_name ON microvms (name);
    CREATE TABLE IF NOT EXISTS tombstones (uid TEXT PRIMARY KEY, record TEXT NOT NULL);`);
  if ((db.pragma('user_version', { simple: true }) as number) === 0) db.pragma('user_version = 2');
  const ins = db.prepare('INSERT INTO microvms (uid, namespace, name, version, state, record) VALUES (?, ?, ?, ?, ?, ?)');
  db.transaction(() => {
    for (const vm of vms) ins.run(vm.uid, vm.spec.namespace, vm.spec.name, vm.version, vm.status.state, JSON.stringify(vm));
  })();
  db.close();
  const base = openBaselineDb(join(baseDir, 'baseline.db'));
  const bins = base.prepare<[string, Buffer]>('INSERT INTO vms (uid, wire) VALUES (?, ?)');
  base.transaction(() => {
    for (const vm of vms) bins.run(vm.uid, Buffer.from(toBinary(MicroVMSchema, toWire(vm))));
  })();
  base.close();
}

const settle = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const row = (cols: (string | number)[]) => process.stdout.write(`| ${cols.join(' | ')} |\n`);
const f1 = (n: number) => n.toFixed(1);
const ratio = (a: number, b: number) => (a / b).toFixed(2);
/** page_size of the paged Lists. */
const PAGE = 500;

// ---------------------------------------------------------------- part 1

async function part1(sizes: number[], creates: number, entry: string[], idleSeconds: number): Promise<void> {
  const tmp = join(tmpdir(), `matchlock-bench-cp-${randomBytes(3).toString('hex')}`);
  const stateDir = join(tmp, 'state');
  const baseDir = join(tmp, 'base');
  mkdirSync(baseDir, { recursive: true });
  // A loopback registry nobody answers: the reconcile pass each create starts fails at once.
  const absent = '127.0.0.1:9/bench/absent:1';
  const flags = ['--grpc-endpoint', `unix:${join(tmp, 'grpc.sock')}`, '--qemu-bin', '/bin/true', '--default-provider', 'qemu', '--vmm-user', 'root', '--vmm-cgroups=false', '--retry-backoff', '1h', '--resync-period', '1h', '--log-format', 'json'];
  const all: DomainVM[] = [];
  const warmCreates = Number(process.env.MATCHLOCK_BENCH_WARMUP ?? 0);
  process.stdout.write(`\n## Part 1: API and store, ${creates} sequential creates${warmCreates ? ` (after ${warmCreates} unmeasured)` : ''} and gets per size\n\n`);
  try {
    for (const size of [0, ...sizes]) {
      if (size > all.length) {
        const more = makeRecords(all.length, size);
        seed(stateDir, baseDir, more);
        all.push(...more);
        // The seeded rows are as an old release left them; a daemon's open brings them in line
        // once (their wire bytes made). A start of its own, so the measured daemon opens its
        // store as it finds it after any restart, and RSS loaded is not that one-time work.
        await (await startDaemon(stateDir, flags, {}, undefined, entry)).stop();
      }
      const ml = fromDaemon(await startDaemon(stateDir, flags, {}, undefined, entry));
      const base = await startBaseline(baseDir).catch(async (err: unknown) => {
        await ml.stop();
        throw err;
      });
      await settle(2000);
      const loaded = [rss(ml.pid), rss(base.pid)] as const;
      const mc = rawClient(ml.target);
      const bc = rawClient(base.target);
      try {
        if (size === 0) {
          process.stdout.write(`RSS idle (no record, 2 s after start): matchlockd ${f1(loaded[0])} MB, baseline ${f1(loaded[1])} MB, ratio ${ratio(loaded[0], loaded[1])}\n\n`);
          row(['records', 'create p50 ms (baseline, ratio)', 'get p50 ms (baseline, ratio)', 'list in one answer ms (baseline, ratio)', 'list in one answer, grpcio client, ms (baseline, ratio)', `list by ${PAGE}: first page ms (baseline, ratio)`, `list by ${PAGE}: all pages ms (baseline, ratio)`, 'RSS loaded MB (baseline)', 'RSS after lists MB (baseline)', `idle CPU % of a core over ${idleSeconds} s (baseline)`]);
          row(['---', '---', '---', '---', '---', '---', '---', '---', '---', '---']);
          continue;
        }
        // Idle with the records loaded, before any request, once the start-up work (a reconcile
        // pass of every record, the first log bound pass over every VM) is over.
        const busy = await startupWork(ml.pid);
        const cpu0 = [cpuSeconds(ml.pid), cpuSeconds(base.pid)];
        await settle(idleSeconds * 1000);
        const idle = [cpuSeconds(ml.pid) - (cpu0[0] ?? 0), cpuSeconds(base.pid) - (cpu0[1] ?? 0)].map((c) => (100 * c) / idleSeconds);
        // A server that has run a while: creates it has answered before the timed ones.
        for (let i = 0; i < warmCreates; i++) {
          const req = create(CreateMicroVMRequestSchema, { microvm: spec(`warm-${size}-${i}`, 'bench-warm', absent) });
          await mc.timed('createMicroVM', req);
          await bc.timed('createMicroVM', req);
        }
        const createTimes: [number[], number[]] = [[], []];
        for (let i = 0; i < creates; i++) {
          const req = create(CreateMicroVMRequestSchema, { microvm: spec(`new-${size}-${i}`, 'bench-new', absent) });
          createTimes[0].push(await mc.timed('createMicroVM', req));
          createTimes[1].push(await bc.timed('createMicroVM', req));
        }
        const getTimes: [number[], number[]] = [[], []];
        for (let i = 0; i < creates; i++) {
          const uid = all[Math.floor(Math.random() * all.length)]?.uid ?? '';
          getTimes[0].push(await mc.timed('getMicroVM', create(GetMicroVMRequestSchema, { uid })));
          getTimes[1].push(await bc.timed('getMicroVM', create(GetMicroVMRequestSchema, { uid })));
        }
        const rounds = 7;
        const listTimes: [number[], number[]] = [[], []];
        for (let i = 0; i < rounds; i++) {
          listTimes[0].push(await mc.timed('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: '' })));
          listTimes[1].push(await bc.timed('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: '' })));
        }
        const viaGrpcio = grpcioLists(ml.target, base.target, rounds);
        const firstTimes: [number[], number[]] = [[], []];
        const pagedTimes: [number[], number[]] = [[], []];
        for (let i = 0; i < rounds; i++) {
          for (const [k, c] of [mc, bc].entries()) {
            const [first, last] = await c.paged(PAGE);
            firstTimes[k as 0 | 1].push(first);
            pagedTimes[k as 0 | 1].push(last);
          }
        }
        const after = [rss(ml.pid), rss(base.pid)];
        const [c, g, l, pf, pa, lp] = [createTimes, getTimes, listTimes, firstTimes, pagedTimes, viaGrpcio ?? [[], []]].map(([a, b]) => [median(a), median(b)] as const);
        const cell = (p: readonly [number, number] | undefined) => (p ? `${f1(p[0])} (${f1(p[1])}, ${ratio(p[0], p[1])})` : '');
        row([size, cell(c), cell(g), cell(l), viaGrpcio ? cell(lp) : 'no grpcio', cell(pf), cell(pa), `${f1(loaded[0])} (${f1(loaded[1])})`, `${f1(after[0] ?? 0)} (${f1(after[1] ?? 0)})`, `${(idle[0] ?? 0).toFixed(2)} (${(idle[1] ?? 0).toFixed(2)}), after ${busy.toFixed(0)} s of start-up work`]);
      } finally {
        mc.close();
        bc.close();
        await ml.stop();
        await base.stop();
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- part 2

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'ignore' });
}

/** A tiny OCI image holding a kernel and an initrd that nothing ever boots. */
function guestLayout(dir: string): string {
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'boot'), { recursive: true });
  writeFileSync(join(tree, 'boot', 'vmlinuz'), randomBytes(4096));
  writeFileSync(join(tree, 'boot', 'initrd.img'), randomBytes(4096));
  const layer = gzipSync(execFileSync('tar', ['-C', tree, '-cf', '-', 'boot']));
  const layout = join(dir, 'layout');
  writeImageLayout(layout, [layer], 'localhost/bench/standin:1');
  return layout;
}

function standinPids(stateDir: string): number[] {
  const cmdline = (p: number) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, 'utf8');
    } catch {
      return '';
    }
  };
  const pids: number[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name === 'qemu.pid') pids.push(Number(readFileSync(join(d, e.name), 'utf8').trim()));
    }
  };
  if (existsSync(join(stateDir, 'vm'))) walk(join(stateDir, 'vm'));
  // Only processes that are still this run's stand-ins: pids are reused.
  return pids.filter((p) => p > 0 && cmdline(p).includes(stateDir));
}

/** What one burst measured, on either side. */
interface BurstResult {
  /** Seconds from the first create sent to all N CREATED; seconds until every create was answered. */
  all: number;
  answered: number;
  /** ms of each probe create. */
  probes: number[];
  /** CPU seconds (user + system) to all CREATED: the server's own, and the rest (its reaped children; matchlock: its spawner and the spawner's reaped children too). */
  server: number;
  rest: number;
  /** matchlock: its spawner's CPU s "(its reaped children's)"; the baseline: the `ip` processes and TAPs it made, as it said when stopped. */
  detail: string;
  /** TAPs on the bridge and stand-ins alive once all were CREATED, counted before the cleanup. */
  taps: number;
  standins: number;
  /** Busy share of all the machine's CPUs to all CREATED (/proc/stat), whoever used them. */
  machine: number;
  /** CPU seconds to all CREATED of this bench's own process (the client) and of the burst's stand-ins (their start). */
  client: number;
  standinCpu: number;
}

/**
 * Sends N creates at once and, one at a time every 250 ms, probe creates, then polls
 * ListMicroVMs of the burst's namespace every 250 ms until all N are CREATED (any FAILED ends the
 * run). `cpu` reads [server, rest] CPU seconds. The same for matchlock and the baseline.
 */
async function burstOf(n: number, c: ReturnType<typeof rawClient>, ref: string, cpu: () => [number, number], namespace = 'bench'): Promise<Omit<BurstResult, 'detail' | 'taps' | 'standins' | 'standinCpu'>> {
  const created = new Set<string>();
  const cpu0 = cpu();
  const machine0 = machineJiffies();
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  let answered = 0;
  const burst = Promise.all(Array.from({ length: n }, () => undefined).map(async (_, i) => {
    await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec(`burst-${i}`, namespace, ref, false) }));
  })).then(() => (answered = (performance.now() - t0) / 1000));
  // Probes: one create at a time while the burst is being reconciled. Their kernel file is
  // not in the image, so their one pass fails at once (no retry wait holding a worker) and
  // they add API work but no VMM of their own.
  const probes: number[] = [];
  let done = namespace !== 'bench';
  const probing = (async () => {
    for (let i = 0; !done; i++) {
      probes.push(await c.timed('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec(`probe-${i}`, 'probe', ref, false, 'boot/absent') })));
      await settle(250);
    }
  })().catch(() => undefined); // a probe cut off by a failed run must not hide that run's error
  try {
    await burst;
    while (created.size < n) {
      const states = decodeStates(await c.call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace })));
      for (const [uid, state] of states) if (state === MicroVMStatus_MicroVMState.CREATED) created.add(uid);
      const failed = [...states.values()].filter((s) => s === MicroVMStatus_MicroVMState.FAILED).length;
      if (failed) throw new Error(`${failed} VMs FAILED in the burst of ${n}`);
      if (performance.now() - t0 > 1_800_000) throw new Error(`burst of ${n} not CREATED after 1800 s (${created.size}/${n})`);
      await settle(250);
    }
    const all = (performance.now() - t0) / 1000;
    const [server, rest] = cpu();
    const machine1 = machineJiffies();
    const client1 = process.cpuUsage(client0);
    return {
      all,
      answered,
      probes,
      server: server - cpu0[0],
      rest: rest - cpu0[1],
      machine: (machine1[0] - machine0[0]) / Math.max(1, machine1[1] - machine0[1]),
      client: (client1.user + client1.system) / 1e6,
    };
  } finally {
    done = true;
    await probing;
  }
}

/**
 * [busy, all] jiffies of every CPU together, from /proc/stat's first line: busy is all but idle
 * and iowait. A burst that keeps the machine near 100 % busy is bound by the machine's CPU, not by
 * what waits inside the server.
 */
function machineJiffies(): [number, number] {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const all = f.reduce((a, b) => a + b, 0);
  return [all - (f[3] ?? 0) - (f[4] ?? 0), all];
}

/** CPU seconds (user + system) of the stand-ins of a state dir alive now. */
function standinCpu(stateDir: string): number {
  return standinPids(stateDir).reduce((sum, p) => {
    try {
      return sum + cpuSeconds(p);
    } catch {
      return sum; // gone meanwhile
    }
  }, 0);
}

/** Links on the namespace's bridge (its TAPs). */
function bridgePorts(ns: string): number {
  return execFileSync('ip', ['-n', ns, '-o', 'link', 'show', 'master', 'br0'], { encoding: 'utf8' }).split('\n').filter(Boolean).length;
}

/** Starts the burst baseline (bench/baseline-server.ts with a VMM) inside network namespace `ns`. */
async function startBurstBaseline(ns: string, stateDir: string, vmm: string, imageDir: string, launch: string): Promise<Server & { said: () => string }> {
  mkdirSync(stateDir, { recursive: true });
  const socket = join(stateDir, 'baseline.sock');
  // Its stderr (why a VM failed: every probe does) goes to a file, printed if the burst fails.
  const stderr = openSync(join(stateDir, 'baseline.stderr'), 'w');
  const proc = spawn('nsenter', [`--net=/run/netns/${ns}`, process.execPath, ...baselineEntry(), join(stateDir, 'baseline.db'), socket, stateDir, vmm, 'br0', imageDir, launch], { stdio: ['ignore', 'pipe', stderr] });
  closeSync(stderr);
  let out = '';
  proc.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    proc.stdout?.once('data', () => resolve());
    proc.once('exit', (code) => reject(new Error(`burst baseline exited with ${code}: ${readFileSync(join(stateDir, 'baseline.stderr'), 'utf8')}`)));
  });
  // nsenter execs node in place: the pid is the server's own. On SIGTERM it says what it ran.
  return {
    pid: proc.pid ?? 0,
    target: `unix:${socket}`,
    stop: async () => void (proc.exitCode === null && proc.signalCode === null && proc.kill('SIGTERM'), await exited),
    said: () => out.replace('listening\n', '').trim(),
  };
}

/** Which sides Part 2 runs (MATCHLOCK_BENCH_BURST: matchlock, baseline or both, the default). */
function burstSides(): ('matchlock' | 'baseline')[] {
  const v = process.env.MATCHLOCK_BENCH_BURST ?? 'both';
  if (v === 'both') return ['matchlock', 'baseline'];
  if (v === 'matchlock' || v === 'baseline') return [v];
  throw new Error(`MATCHLOCK_BENCH_BURST must be matchlock, baseline or both, not ${v}`);
}

async function part2(bursts: number[], entry: string[]): Promise<void> {
  const sides = burstSides();
  process.stdout.write('\n## Part 2: bursts of concurrent creates, VMM stand-in, image in the store\n\n');
  const id = randomBytes(3).toString('hex');
  const tmp = join(tmpdir(), `matchlock-bench-burst-${id}`);
  mkdirSync(tmp, { recursive: true });
  const standin = join(tmp, 'vmm-standin');
  execFileSync('cc', ['-O2', '-o', standin, join(ROOT, 'bench', 'vmm-standin.c')]);
  const layout = guestLayout(tmp);
  // Which side goes first alternates between sizes, from a coin per run.
  const coin = randomBytes(1)[0]! & 1;
  const results: { n: number; first: string; got: Partial<Record<'matchlock' | 'baseline', BurstResult>> }[] = [];
  const namespaces: string[] = [];
  const stateDirs: string[] = [];
  let server: Server | undefined;
  let programs = '';
  // VMs each side creates (namespace "warm", to CREATED) before its measured burst, so the
  // burst meets a server that has served creates before, as on a host that has been running:
  // its code compiled and optimized. Not in the burst's times, CPU or counts.
  const warm = Number(process.env.MATCHLOCK_BENCH_WARMUP ?? 0);
  if (warm > 0) programs += `\neach side created ${warm} VMs (namespace "warm") before its burst; they are not in its times, CPU, TAP and stand-in counts or programs, but are in the baseline's own account of its ip processes and TAPs (last column)\n`;
  try {
    for (const [i, n] of bursts.entries()) {
      const order = (i + coin) % 2 ? [...sides].reverse() : sides;
      const got: Partial<Record<'matchlock' | 'baseline', BurstResult>> = {};
      for (const side of order) {
        // Each side in a namespace of its own, with a fresh bridge: neither inherits the other's links.
        const ns = `mlcp-${id}-${namespaces.length}`;
        const stateDir = join(tmp, `${side[0] ?? ''}-${n}`); // short: matchlock bounds its socket paths
        namespaces.push(ns);
        stateDirs.push(stateDir);
        ip('netns', 'add', ns);
        ip('-n', ns, 'link', 'set', 'lo', 'up');
        ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
        ip('-n', ns, 'link', 'set', 'br0', 'up');
        let r: Omit<BurstResult, 'detail' | 'taps' | 'standins' | 'standinCpu'>;
        let detail = '';
        let warmCpu = 0;
        if (side === 'matchlock') {
          const images = new LocalImageStore(join(stateDir, 'images'));
          mkdirSync(stateDir, { recursive: true, mode: 0o750 });
          // Imported and unpacked, as `matchlock image import` leaves it: the image is cached.
          const { ref, digest } = await images.import(layout, 'localhost/bench/standin:1');
          await images.unpacked(digest, silentLogger);
          const flags = ['--grpc-endpoint', `unix:${join(tmp, `grpc-${n}.sock`)}`, '--qemu-bin', standin, '--default-provider', 'qemu', '--vmm-user', 'root', '--vmm-cgroups=false', '--bridge-name', 'br0', '--resync-period', '1h', '--log-format', 'json', '--healthy-after', '1h', '--retry-backoff', '1h', ...daemonFlags()];
          const daemon = fromDaemon(await startDaemon(stateDir, flags, {}, ns, entry));
          server = daemon;
          const c = rawClient(daemon.target);
          const spawner = spawnerOf(daemon.pid);
          const spawnerCpu = (): [number, number] => (spawner === undefined ? [0, 0] : cpuTimes(spawner));
          if (warm > 0) await burstOf(warm, c, ref, () => [0, 0], 'warm');
          warmCpu = standinCpu(stateDir);
          const tracing = process.env.MATCHLOCK_BENCH_STRACE === '1' ? await traceExecs(daemon.pid, join(tmp, `strace-${n}.out`)) : undefined;
          const s0 = spawnerCpu();
          // Everything the daemon made the host run: its own CPU, its reaped children's, its
          // spawner's and the programs the spawner reaped (the VMMs still run: in neither side).
          r = await burstOf(n, c, ref, () => {
            const [d, dc] = cpuTimes(daemon.pid);
            const [s, sc] = spawnerCpu();
            return [d, dc + s + sc];
          });
          const s1 = spawnerCpu();
          detail = spawner === undefined ? 'no spawner' : `${((s1[0] ?? 0) - (s0[0] ?? 0)).toFixed(2)} (${((s1[1] ?? 0) - (s0[1] ?? 0)).toFixed(2)})`;
          if (tracing) {
            const counted = await tracing();
            programs += `\nprograms matchlock ran from the burst of ${n} to all CREATED (strace -f; its times are slowed by it): ${[...counted].sort((a, b) => b[1] - a[1]).map(([p, k]) => `${p} ${k}`).join(', ')}\n`;
          }
          c.close();
        } else {
          const launch = process.env.MATCHLOCK_BENCH_BASELINE_LAUNCH ?? 'sh';
          const base = await startBurstBaseline(ns, stateDir, standin, join(tmp, 'tree'), launch);
          server = base;
          const c = rawClient(base.target);
          const shells = launch === 'sh' ? childrenOf(base.pid, '/bin/sh') : [];
          if (launch === 'sh' && shells.length !== 2) throw new Error(`the burst baseline runs ${shells.length} /bin/sh, not 2`);
          if (warm > 0) await burstOf(warm, c, 'localhost/bench/standin:1', () => [0, 0], 'warm');
          warmCpu = standinCpu(stateDir);
          // The baseline's own CPU, that of the children it reaped, and its shells' with the
          // children they reaped (the `ip` processes; the VMMs still run: in neither side).
          r = await burstOf(n, c, 'localhost/bench/standin:1', () => {
            const [b, bc] = cpuTimes(base.pid);
            return [b, shells.map(cpuTimes).reduce((sum, [s, sc]) => sum + s + sc, bc)];
          }).catch((err: unknown) => {
            const why = readFileSync(join(stateDir, 'baseline.stderr'), 'utf8').split('\n').filter((l) => !l.includes('boot/absent'));
            throw new Error(`${(err as Error).message}; the baseline said: ${why.slice(-5).join('; ')}`);
          });
          c.close();
          await base.stop();
          detail = `${base.said()}, VMMs started by ${launch === 'sh' ? '/bin/sh' : 'node'}`;
        }
        got[side] = { ...r, detail, taps: bridgePorts(ns) - warm, standins: standinPids(stateDir).length - warm, standinCpu: standinCpu(stateDir) - warmCpu };
        await server.stop();
        server = undefined;
        if (side === 'matchlock') programs += `\nmatchlock's burst of ${n}, from its store's events: ${timeline(join(stateDir, 'matchlock.db'))}\n`;
        // Gone before the other side runs, so it does not share the machine with them.
        for (const pid of standinPids(stateDir)) kill(pid);
        spawnSync('ip', ['netns', 'del', ns]);
      }
      results.push({ n, first: order[0] ?? '', got });
    }
  } finally {
    if (server) await server.stop();
    for (const d of stateDirs) for (const pid of standinPids(d)) kill(pid);
    for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    rmSync(tmp, { recursive: true, force: true });
  }
  const pair = (m: number | undefined, b: number | undefined, digits = 1) =>
    m === undefined ? (b === undefined ? '' : `(${b.toFixed(digits)})`) : b === undefined ? m.toFixed(digits) : `${m.toFixed(digits)} (${b.toFixed(digits)}, ${ratio(m, b)})`;
  row(['burst', 'first', 'all CREATED s (baseline, ratio)', 'probe create p50 ms (baseline, ratio)', 'creates answered s (baseline)', 'host CPU s to all CREATED (baseline, ratio)', 'daemon CPU s (baseline server)', 'spawner CPU s (its reaped children)', 'TAPs on the bridge / stand-ins up (baseline)', 'machine busy % (baseline)', 'stand-ins / bench client CPU s (baseline)', 'baseline ran']);
  row(['---', '---', '---', '---', '---', '---', '---', '---', '---', '---', '---', '---']);
  for (const { n, first, got } of results) {
    const m = got.matchlock;
    const b = got.baseline;
    row([
      n,
      first,
      pair(m?.all, b?.all),
      `${pair(m && median(m.probes), b && median(b.probes))}; ${m?.probes.length ?? '-'} / ${b?.probes.length ?? '-'} probes`,
      `${m ? m.answered.toFixed(2) : '-'} (${b ? b.answered.toFixed(2) : '-'})`,
      pair(m && m.server + m.rest, b && b.server + b.rest),
      // Hundredths: /proc counts CPU in 10 ms ticks, and a burst of 100 costs the daemon about 2 s.
      `${m ? m.server.toFixed(2) : '-'} (${b ? b.server.toFixed(2) : '-'})`,
      m?.detail ?? '',
      `${m ? `${m.taps} / ${m.standins}` : '-'} (${b ? `${b.taps} / ${b.standins}` : '-'})`,
      `${m ? (100 * m.machine).toFixed(0) : '-'} (${b ? (100 * b.machine).toFixed(0) : '-'})`,
      `${m ? `${m.standinCpu.toFixed(2)} / ${m.client.toFixed(2)}` : '-'} (${b ? `${b.standinCpu.toFixed(2)} / ${b.client.toFixed(2)}` : '-'})`,
      b?.detail ?? '',
    ]);
  }
  if (programs) process.stdout.write(programs);
}

/**
 * Where a burst's creates waited, from the daemon's event log (the store's `events` rows, ms
 * resolution): when the burst's creates were inserted, how long each waited for a reconcile
 * worker (insert to its pass's first save, made once its image is resolved), how long its pass
 * took from there to CREATED, and when the VMs became CREATED.
 */
function timeline(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true });
  try {
    const rows = db.prepare("SELECT uid, type, time, json_extract(record, '$.status.state') AS state FROM events WHERE namespace = 'bench' ORDER BY id").all() as { uid: string; type: string; time: string; state: string }[];
    const vms = new Map<string, { inserted?: number; firstSave?: number; created?: number }>();
    for (const r of rows) {
      const t = Date.parse(r.time);
      const v = vms.get(r.uid) ?? {};
      vms.set(r.uid, v);
      if (r.type === 'CREATED') v.inserted = t;
      else if (v.firstSave === undefined) v.firstSave = t;
      if (r.state === 'CREATED' && v.created === undefined) v.created = t;
    }
    const all = [...vms.values()].filter((v): v is Required<typeof v> => v.inserted !== undefined && v.firstSave !== undefined && v.created !== undefined);
    if (all.length === 0) return 'no VM went from insert to CREATED';
    const t0 = Math.min(...all.map((v) => v.inserted));
    const q = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? NaN;
    const s = (ms: number) => (ms / 1000).toFixed(2);
    const waits = all.map((v) => v.firstSave - v.inserted);
    const passes = all.map((v) => v.created - v.firstSave);
    const created = all.map((v) => v.created - t0);
    return (
      `inserted from 0 to ${s(Math.max(...all.map((v) => v.inserted)) - t0)} s; waited for a worker p50 ${s(q(waits, 0.5))} s (p90 ${s(q(waits, 0.9))}); ` +
      `pass to CREATED p50 ${q(passes, 0.5).toFixed(0)} ms (p90 ${q(passes, 0.9).toFixed(0)}); CREATED from ${s(Math.min(...created))} to ${s(Math.max(...created))} s ` +
      `(10/50/90 %: ${s(q(created, 0.1))}, ${s(q(created, 0.5))}, ${s(q(created, 0.9))} s)`
    );
  } finally {
    db.close();
  }
}

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/**
 * Follows the daemon and its children (its process spawner) with `strace -f -e trace=execve`
 * into `out`; the function returned stops strace and counts the programs run, by name. -f only
 * follows processes made after strace attached, hence the children by pid too.
 */
async function traceExecs(pid: number, out: string): Promise<() => Promise<Map<string, number>>> {
  const children = readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
  const strace = spawn('strace', ['-f', '-qq', '-e', 'trace=execve', '-e', 'signal=none', '-o', out, ...[String(pid), ...children].flatMap((p) => ['-p', p])], { stdio: 'ignore' });
  // strace reports nothing when it has attached; its attach takes well under this.
  await settle(1500);
  return async () => {
    strace.kill('SIGINT');
    await new Promise((r) => strace.once('exit', r));
    const programs = new Map<string, number>();
    // execvp tries each PATH directory, so only an execve that returned 0 is a program run; with
    // -f a call may be split into "<unfinished ...>" and "<... execve resumed>" lines.
    const pending = new Map<string, string>();
    for (const line of readFileSync(out, 'utf8').split('\n')) {
      const who = line.split(' ')[0] ?? '';
      const m = /execve\("([^"]+)"/.exec(line);
      // An ip's arguments tell a read (-json -details -force) from a change.
      const args = m?.[1]?.endsWith('/ip') ? /\["ip", ([^\]]*)\]/.exec(line)?.[1]?.replaceAll('"', '').replaceAll(',', '') : undefined;
      if (m?.[1]) pending.set(who, `${m[1].split('/').pop() ?? ''}${args ? ` ${args}` : ''}`);
      if (/\) = 0$/.test(line) && (m || line.includes('execve resumed'))) {
        const prog = pending.get(who) ?? '?';
        programs.set(prog, (programs.get(prog) ?? 0) + 1);
      }
    }
    return programs;
  };
}

/** Extra daemon flags for the bursts (MATCHLOCK_BENCH_DAEMON_FLAGS, blank-separated), e.g. `--reconcile-workers 16`. */
function daemonFlags(): string[] {
  return (process.env.MATCHLOCK_BENCH_DAEMON_FLAGS ?? '').split(' ').filter(Boolean);
}

/**
 * User and system CPU of a process (all its threads, not its children), in seconds: steadier
 * than wall time on a shared machine. The daemon runs under nsenter, which execs it: same pid.
 */
function cpuSeconds(pid: number): number {
  return cpuTimes(pid)[0];
}

/** User + system CPU of a process, and of its children it waited for, in seconds. */
function cpuTimes(pid: number): [number, number] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return [(Number(f[11]) + Number(f[12])) / 100, (Number(f[13]) + Number(f[14])) / 100];
}

/**
 * The daemon's process spawner (libexec/spawner.py, its child), if it runs one; also an older
 * daemon's (MATCHLOCK_BENCH_ENTRY), whose spawner was libexec/spawner.pl.
 */
function spawnerOf(daemon: number): number | undefined {
  return childrenOf(daemon, 'libexec/spawner.p')[0];
}

/** A process's children whose command line holds `cmdline`. */
function childrenOf(parent: number, cmdline: string): number[] {
  const found: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent && readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(cmdline)) found.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** CreateMicroVMResponse and ListMicroVMsResponse both carry MicroVMs in field 1, so one decoder reads both. */
function decodeVms(res: Buffer) {
  return fromBinary(ListMicroVMsResponseSchema, res).microvm;
}

function decodeStates(res: Buffer): Map<string, number> {
  return new Map(decodeVms(res).map((v) => [v.spec?.uid ?? '', v.status?.state ?? 0]));
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const sizes = nums(process.argv[2], [100, 1000, 10_000]);
  const creates = Number(process.argv[3] ?? 100);
  const bursts = nums(process.argv[4], [100, 500]);
  const idleSeconds = Number(process.argv[5] ?? 20);
  const entry = [...(process.env.MATCHLOCK_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean), process.env.MATCHLOCK_BENCH_ENTRY || DAEMON_BIN];
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  process.stdout.write(`# control plane: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}, load ${load}\n`);
  process.stdout.write(`# daemon: ${entry.join(' ')}\n`);
  if (sizes.length) await part1(sizes, creates, entry, idleSeconds);
  if (bursts.length) await part2(bursts, entry);
}

// Run as a script; bench/startup-memory.ts imports the record seeding only.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
