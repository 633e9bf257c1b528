/**
 * The API fuzzer's run: starts a real matchlockd and sends it generated requests over gRPC and
 * HTTP, then checks what a request must never do. Run by fuzz.test.ts inside a network
 * namespace of its own (only loopback), so image references the fuzzer makes up never leave
 * the machine. Prints figures on stderr and one JSON summary line on stdout.
 *
 * Env: MATCHLOCK_FUZZ_SEED (replay a run), MATCHLOCK_FUZZ_REQUESTS (default 2000).
 */
import { create, fromBinary, toBinary, toJson } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import {
  CreateMicroVMRequestSchema,
  CreateMicroVMResponseSchema,
  DeleteMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSpecSchema, NetworkInterface_IfaceType, type MicroVMSpec } from '../../src/gen/types/microvm_pb.js';
import { rawClient } from '../helpers/client.js';
import { startDaemon, tempDir } from '../helpers/daemon.js';
import { rawHttp } from '../helpers/raw-http.js';

const seed = process.env.MATCHLOCK_FUZZ_SEED ? Number(process.env.MATCHLOCK_FUZZ_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const total = Number(process.env.MATCHLOCK_FUZZ_REQUESTS ?? 2000);
/**
 * How long a request may go unanswered before it counts as a hang. Not a timing: on a loaded
 * host (load 13 to 15 on 2 cores) requests carrying 1 MiB fields were still unanswered after
 * 10 s, while the daemon spends at most about 0.5 s of CPU on one.
 */
const HANG_MS = 60_000;

// mulberry32: small, seedable, good enough to pick cases.
let state = seed;
function rand(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
}
const int = (n: number) => Math.floor(rand() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
const chance = (p: number) => rand() < p;
const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
function oddString(): string {
  switch (int(12)) {
    case 0: return pick(['', ' ', '.', '..', '/', '//', '\\', '~', '-', '_', '*', '?']);
    case 1: return pick(['../../etc/passwd', '/etc/passwd', 'a/../../b', '..%2f..%2fetc', '%2e%2e/x', 'C:\\Windows', 'x/./y', '/proc/self/root/etc', '\\\\server\\share', 'file:///etc/shadow', './.', '-rf']);
    case 2: return pick(['\u0000', 'a\u0000b', '\n', 'a\r\nb', '\t', '\u001b[31m', '\u007f', '\u0085', '\u2028', '\u202eevil', '\ufeff', '\ud800', '\udfff\ud800']);
    case 3: return pick(['CON', 'nul.txt', 'user-DATA', 'META-DATA', 'a.', 'a ', 'COM1', 'Network-Config', 'user-data.', 'LPT9']);
    case 4: return 'a'.repeat(pick([63, 64, 65, 253, 254, 255, 256, 1024, 4096, 8193, 65536]));
    case 5: return pick(['é', '😀', 'ＡＢＣ', 'ß', 'İ', 'ǅ', 'ﬀ', '\u0301', 'Ω']).repeat(1 + int(300));
    case 6: return Array.from({ length: 1 + int(40) }, () => String.fromCharCode(int(0x10000))).join('');
    case 7: return randomBytes(1 + int(64)).toString('latin1');
    case 8: return pick(["'; DROP TABLE microvms; --", '${jndi:ldap://x}', '%s%s%n', '{{7*7}}', '$(reboot)', '`id`', '<script>', '"quoted"', "it's", 'a"b\'c']);
    case 9: return pick(['127.0.0.1:1/k:1', 'k:1', 'docker.io/library/alpine:latest', 'UPPER/case:1', 'a@sha256:' + '0'.repeat(64), 'a:b:c', ':', '@', 'localhost:99999/x']);
    case 10: return Array.from({ length: 26 }, () => CROCKFORD[int(32)]).join('');
    default: return chance(0.05) ? 'x'.repeat(1 << 20) : Array.from({ length: int(30) }, () => String.fromCharCode(32 + int(95))).join('');
  }
}
const oddNumber = () => pick([0, 1, -1, 2, 63, 64, 65, 1023, 1024, 32768, 32769, 2 ** 31 - 1, -(2 ** 31), 2 ** 53, 1e9, 0.5, Number.NaN, 7, 99]);

function uidShape(known: string[]): string {
  switch (int(9)) {
    case 0: return '';
    case 1: return Array.from({ length: 26 }, () => CROCKFORD[int(32)]).join('');
    case 2: return Array.from({ length: 26 }, () => pick([...'ILOU'] as string[])).join('');
    case 3: return Array.from({ length: 26 }, () => CROCKFORD[int(32)]).join('').toLowerCase();
    case 4: return Array.from({ length: pick([1, 25, 27, 100]) }, () => CROCKFORD[int(32)]).join('');
    case 5: return known.length ? pick(known) : '';
    case 6: return (known.length ? pick(known) : 'x') + pick(['/', '/..', '%00', '\u0000', ' ']);
    default: return oddString();
  }
}

/** A spec that the daemon accepts; its images are on a loopback port where nothing listens. */
function validSpec(): MicroVMSpec {
  return create(MicroVMSpecSchema, {
    id: `vm${int(5)}`,
    namespace: `ns${int(3)}`,
    labels: { role: 'worker' },
    kernel: { image: '127.0.0.1:1/kernel:1', filename: 'boot/vmlinux', addNetworkConfig: true, cmdline: { quiet: '' } },
    rootVolume: { id: 'root', source: { containerSource: '127.0.0.1:1/root:1' } },
    additionalVolumes: [{ id: 'data', mountPoint: '/data', source: { containerSource: '127.0.0.1:1/data:1' } }],
    interfaces: [{ deviceId: 'eth1', type: NetworkInterface_IfaceType.TAP, guestMac: '02:00:00:00:00:01', address: { address: '10.0.0.5/24', gateway: '10.0.0.1', nameservers: ['1.1.1.1'] } }],
    metadata: { 'user-data': Buffer.from('#cloud-config\n').toString('base64'), 'meta-data': Buffer.from('vm_host: h\n').toString('base64') },
  });
}

type Mutation = (s: MicroVMSpec) => void;
const str = (set: (s: MicroVMSpec, v: string) => void): Mutation => (s) => set(s, oddString());
const MUTATIONS: Mutation[] = [
  str((s, v) => (s.id = v)),
  str((s, v) => (s.namespace = v)),
  str((s, v) => (s.provider = v)),
  str((s, v) => (s.uid = v)),
  str((s, v) => s.kernel && (s.kernel.image = v)),
  str((s, v) => s.kernel && (s.kernel.filename = v)),
  str((s, v) => s.kernel && (s.kernel.cmdline[v] = oddString())),
  str((s, v) => s.kernel && (s.kernel.cmdline.console = v)),
  str((s, v) => (s.initrd = { $typeName: 'flintlock.types.Initrd', image: v, filename: oddString() })),
  str((s, v) => s.rootVolume && (s.rootVolume.id = v)),
  str((s, v) => s.rootVolume?.source && (s.rootVolume.source.containerSource = v)),
  str((s, v) => s.rootVolume && (s.rootVolume.mountPoint = v)),
  str((s, v) => s.rootVolume && (s.rootVolume.partitionId = v)),
  str((s, v) => s.additionalVolumes[0] && (s.additionalVolumes[0].id = v)),
  str((s, v) => s.additionalVolumes[0] && (s.additionalVolumes[0].mountPoint = v)),
  str((s, v) => s.additionalVolumes[0]?.source && (s.additionalVolumes[0].source.virtiofsSource = v)),
  str((s, v) => s.interfaces[0] && (s.interfaces[0].deviceId = v)),
  str((s, v) => s.interfaces[0] && (s.interfaces[0].guestMac = v)),
  str((s, v) => s.interfaces[0]?.address && (s.interfaces[0].address.address = v)),
  str((s, v) => s.interfaces[0]?.address && (s.interfaces[0].address.gateway = v)),
  str((s, v) => s.interfaces[0]?.address && s.interfaces[0].address.nameservers.push(v)),
  str((s, v) => s.interfaces[0] && (s.interfaces[0].overrides = { $typeName: 'flintlock.types.NetworkOverrides', bridgeName: v })),
  str((s, v) => (s.labels[v] = oddString())),
  str((s, v) => (s.labels.role = v)),
  str((s, v) => (s.metadata[v] = Buffer.from(oddString()).toString('base64'))),
  str((s, v) => (s.metadata['user-data'] = v)),
  str((s, v) => (s.metadata['meta-data'] = chance(0.5) ? v : Buffer.from(v).toString('base64'))),
  (s) => (s.vcpu = oddNumber() | 0),
  (s) => (s.memoryInMb = oddNumber() | 0),
  (s) => s.rootVolume && (s.rootVolume.sizeInMb = oddNumber() | 0),
  (s) => s.interfaces[0] && (s.interfaces[0].type = (oddNumber() | 0) as NetworkInterface_IfaceType),
  (s) => (s.kernel = undefined),
  (s) => (s.rootVolume = undefined),
  (s) => (s.interfaces = []),
  (s) => (s.interfaces = Array.from({ length: int(40) }, (_, n) => ({ ...(s.interfaces[0] ?? validSpec().interfaces[0]!), deviceId: `eth${n}`, guestMac: undefined }))),
  (s) => (s.additionalVolumes = Array.from({ length: int(40) }, (_, n) => ({ ...(s.additionalVolumes[0] ?? validSpec().additionalVolumes[0]!), id: `v${n}`, mountPoint: `/m${n}` }))),
  (s) => { for (let n = 0; n < int(100); n++) s.labels[`k${n}`] = 'v'; },
  (s) => { for (let n = 0; n < int(30); n++) s.metadata[`m${n}`] = 'eA=='; },
  (s) => (s.allowGuestAgent = true),
];

function mutatedSpec(): MicroVMSpec {
  const s = validSpec();
  const n = chance(0.15) ? 0 : 1 + int(3);
  for (let i = 0; i < n; i++) pick(MUTATIONS)(s);
  return s;
}

/** JSON-level changes the typed message cannot express: wrong types, nesting, unknown keys. */
function mutatedJson(): string {
  if (chance(0.1)) return randomBytes(int(300)).toString('latin1');
  if (chance(0.05)) return pick(['', 'null', '[]', '"x"', '1', '{', '{"id":', 'true', '{"id":"a"}{"id":"b"}']);
  let spec: MicroVMSpec;
  try {
    spec = mutatedSpec();
  } catch {
    spec = validSpec();
  }
  let obj: Record<string, unknown>;
  try {
    obj = toJson(MicroVMSpecSchema, spec, { useProtoFieldName: chance(0.5) }) as Record<string, unknown>;
  } catch {
    obj = toJson(MicroVMSpecSchema, validSpec()) as Record<string, unknown>;
  }
  if (chance(0.5)) {
    const keys = Object.keys(obj);
    const key = chance(0.8) && keys.length ? pick(keys) : oddString();
    const value: unknown = pick<() => unknown>([
      () => oddNumber(),
      () => oddString(),
      () => null,
      () => [oddString()],
      () => ({ [oddString()]: oddString() }),
      () => true,
      () => `__DEEP_${pick([10, 100, 1000, 5000, 100_000])}__`,
      () => '9'.repeat(400),
      () => -0,
      () => 1e308,
    ])();
    obj[key] = value;
  }
  // Deep nesting is spliced in as text: JSON.stringify itself recurses.
  let text = JSON.stringify(obj).replace(/"__DEEP_(\d+)__"/, (_m, d: string) => `${'['.repeat(Number(d))}1${']'.repeat(Number(d))}`);
  if (chance(0.05)) text = '['.repeat(100_000) + ']'.repeat(100_000);
  if (chance(0.05)) text = text.slice(0, int(text.length));
  return text;
}

/** Encoded request bytes that protobuf may or may not decode: flipped, cut, wrong wire types, nested groups. */
function mutatedBytes(): Buffer {
  const valid = Buffer.from(toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, { microvm: validSpec() })));
  switch (int(6)) {
    case 0: return randomBytes(int(512));
    case 1: {
      const b = Buffer.from(valid);
      for (let i = 0; i < 1 + int(8); i++) b[int(b.length)] = int(256);
      return b;
    }
    case 2: return valid.subarray(0, int(valid.length));
    case 3: {
      // field 1 (microvm) with each wire type in turn
      const b = Buffer.from(valid);
      b[0] = (1 << 3) | pick([0, 1, 3, 4, 5, 6, 7]);
      return b;
    }
    case 4: {
      // deeply nested start-groups of an unknown field
      const depth = pick([10, 1000, 100_000]);
      return Buffer.concat([Buffer.alloc(depth, (999 << 3) | 3 & 0xff), valid]);
    }
    default: {
      // microvm nested as length-delimited inside itself, many levels deep
      let inner = valid;
      for (let i = 0; i < pick([5, 50, 500]); i++) {
        const len: number[] = [];
        let n = inner.length;
        do {
          len.push((n & 0x7f) | (n >= 0x80 ? 0x80 : 0));
          n >>>= 7;
        } while (n > 0);
        inner = Buffer.concat([Buffer.from([(1 << 3) | 2, ...len]), inner]);
      }
      return inner;
    }
  }
}

function describeSpec(spec: MicroVMSpec): string {
  try {
    return JSON.stringify(toJson(MicroVMSpecSchema, spec));
  } catch (err) {
    return `(spec not printable: ${(err as Error).message})`;
  }
}

function httpPath(known: string[]): { method: string; path: string } {
  const pct = (c: string) => [...Buffer.from(c, 'utf8')].map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`).join('');
  // Fully encoded, or only what HTTP/1.1 cannot carry raw (so "/", "%", "?" and "#" stay tricks).
  // eslint-disable-next-line no-control-regex
  const enc = (s: string) => s.replace(chance(0.7) ? /[^A-Za-z0-9_.~-]/g : /[\s\u0000-\u001f\u007f-\uffff]/g, pct);
  switch (int(7)) {
    case 0: return { method: 'GET', path: `/v1alpha1/microvm/uid/${enc(uidShape(known))}` };
    case 1: return { method: 'DELETE', path: `/v1alpha1/microvm/${enc(uidShape(known))}` };
    case 2: return { method: 'GET', path: `/v1alpha1/microvm/${enc(oddString())}${chance(0.5) ? `?name=${enc(oddString())}` : ''}` };
    case 3: return { method: pick(['GET', 'DELETE', 'POST', 'PUT', 'PATCH', 'OPTIONS', 'HEAD']), path: pick(['//', '/%', '/%ZZ', '/v1alpha1/microvm/uid/%ZZ', '/v1alpha1/microvm/%E0%A4%A', '/v1alpha1//microvm', '/v1alpha1/microvm/uid/', '/v1alpha1/microvm/uid/a/b', '*', 'http://x/v1alpha1/microvm', '/v1alpha1/microvm?name=%', '/v1alpha1/microvm/..%2F..%2F', '/v1alpha1/microvm/%2e%2e', '/../../etc/passwd', '/v1alpha1/microvm/a#frag', '/?', '/v1alpha1/microvm/ns?name=a&name=b&x=%zz']) };
    case 4: return { method: 'GET', path: `/${'a/'.repeat(int(3000))}` };
    default: return { method: 'POST', path: '/v1alpha1/microvm' };
  }
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory() && !e.isSymbolicLink()) out.push(...walk(p));
  }
  return out;
}

async function main(): Promise<void> {
  const tmp = tempDir('fuzz');
  const stateDir = join(tmp.path, 'state');
  const home = join(tmp.path, 'home');
  const scratch = join(tmp.path, 'tmp');
  const cwd = join(tmp.path, 'cwd');
  for (const d of [stateDir, home, scratch, cwd]) mkdirSync(d);
  // The daemon inherits this working directory, so relative writes land there too.
  process.chdir(cwd);
  process.stderr.write(`fuzz seed ${seed} (replay with MATCHLOCK_FUZZ_SEED=${seed}), ${total} requests\n`);
  // The daemon's HOME, TMPDIR and working directory are in the run's own directory, so any
  // write outside the state dir shows up there.
  const daemon = await startDaemon(stateDir, ['--enable-http', '--http-endpoint', '127.0.0.1:0', '--resync-period', '1h', '--image-gc-grace', '0s'], { HOME: home, TMPDIR: scratch });
  // Whatever happens to this run, the daemon it started goes with it.
  process.once('exit', () => {
    if (daemon.proc.exitCode === null && daemon.proc.signalCode === null) daemon.proc.kill('SIGKILL');
    tmp.remove();
  });
  const client = rawClient(daemon.grpcPort, undefined, undefined, HANG_MS);
  const raw = new grpc.Client(`127.0.0.1:${daemon.grpcPort}`, grpc.credentials.createInsecure());
  const started = Date.now();
  const counts = new Map<string, number>();
  const violations: string[] = [];
  const created = new Set<string>();
  const known: string[] = [];
  const count = (k: string) => counts.set(k, (counts.get(k) ?? 0) + 1);
  const grpcName = (code: number) => grpc.status[code] ?? String(code);
  const ALLOWED_GRPC = new Set([grpc.status.OK, grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.FAILED_PRECONDITION, grpc.status.RESOURCE_EXHAUSTED]);
  const describe = (kind: string, detail: string) => `${kind} ${detail.length > 300 ? `${detail.slice(0, 300)}… (${detail.length})` : detail}`;

  const grpcCall = async (method: string, req: unknown, what: () => string) => {
    try {
      const res = await client.call<{ microvm?: { spec?: { uid?: string } } }>(method, req);
      count(`grpc OK`);
      const uid = res?.microvm?.spec?.uid;
      if (method === 'createMicroVM' && uid) {
        created.add(uid);
        known.push(uid);
      }
    } catch (err) {
      const e = err as grpc.ServiceError;
      count(`grpc ${grpcName(e.code)}`);
      if (!ALLOWED_GRPC.has(e.code)) violations.push(describe(`grpc ${method} answered ${grpcName(e.code)} "${e.details}" to`, what()));
    }
  };
  const rawCall = async (bytes: Buffer) => {
    let decodable = true;
    try {
      fromBinary(CreateMicroVMRequestSchema, bytes);
    } catch {
      decodable = false;
    }
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      raw.makeUnaryRequest('/microvm.services.api.v1alpha1.MicroVM/CreateMicroVM', (b: Buffer) => b, (b: Buffer) => b, bytes, new grpc.Metadata(), { deadline: Date.now() + HANG_MS }, (e, res) => {
        const uid = !e && res ? fromBinary(CreateMicroVMResponseSchema, res).microvm?.spec?.uid : undefined;
        if (uid) created.add(uid);
        resolve(e);
      });
    });
    const code = err?.code ?? grpc.status.OK;
    count(`grpc ${grpcName(code)}`);
    if (!(ALLOWED_GRPC.has(code) || (code === grpc.status.INTERNAL && !decodable))) {
      violations.push(describe(`grpc raw CreateMicroVM answered ${grpcName(code)} "${err?.details}" (decodable: ${decodable}) to bytes`, bytes.subarray(0, 100).toString('hex')));
    }
  };
  const streamCall = async (bytes: Buffer, what: () => string) => {
    const code = await new Promise<number>((resolve) => {
      const call = raw.makeServerStreamRequest('/microvm.services.api.v1alpha1.MicroVM/ListMicroVMsStream', (b: Buffer) => b, (b: Buffer) => b, bytes, new grpc.Metadata(), { deadline: Date.now() + HANG_MS });
      call.on('data', () => undefined);
      call.on('error', (e: grpc.ServiceError) => resolve(e.code));
      call.on('end', () => resolve(grpc.status.OK));
    });
    count(`grpc ${grpcName(code)}`);
    if (!ALLOWED_GRPC.has(code)) violations.push(describe(`grpc ListMicroVMsStream answered ${grpcName(code)} to`, what()));
  };
  const httpCall = async (method: string, path: string, body: string | undefined) => {
    const { status, body: answer } = await rawHttp(daemon.httpPort ?? 0, method, path, body, {}, HANG_MS);
    count(`http ${status}`);
    if (method === 'POST' && status === 200) {
      // The body may come chunked: the JSON lies between the first "{" and the last "}".
      const text = Buffer.from(answer, 'latin1').toString('utf8');
      const uid = (JSON.parse(text.slice(text.indexOf('{'), text.lastIndexOf('}') + 1)) as { microvm?: { spec?: { uid?: string } } }).microvm?.spec?.uid;
      if (uid) {
        created.add(uid);
        known.push(uid);
      }
    }
    // A request line past Node's header limit (16 KiB) is refused with 431 and the connection
    // closed, which can reach a client still writing it as a reset: a refusal, not a fault.
    const oversized = Buffer.byteLength(path) > 16 * 1024 && status === -2;
    // 501 is grpc-gateway's Method Not Allowed (UNIMPLEMENTED): a path served with other methods.
    const notAllowed = status === 501 && /"code":12,"message":"Method Not Allowed: /.test(answer);
    if ((status >= 500 && !notAllowed) || (status < 0 && !oversized)) violations.push(describe(`http ${method} answered ${status} to`, `${path} ${body ?? ''}`));
  };

  const one = async () => {
    const r = rand();
    if (r < 0.3) {
      const spec = mutatedSpec();
      await grpcCall('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec }), () => `create ${describeSpec(spec)}`);
    } else if (r < 0.4) {
      const uid = uidShape(known);
      const get = chance(0.5);
      await grpcCall(get ? 'getMicroVM' : 'deleteMicroVM', get ? create(GetMicroVMRequestSchema, { uid }) : create(DeleteMicroVMRequestSchema, { uid }), () => `uid ${JSON.stringify(uid)}`);
    } else if (r < 0.45) {
      const req = create(ListMicroVMsRequestSchema, { namespace: chance(0.5) ? oddString() : '', name: chance(0.5) ? oddString() : undefined });
      if (chance(0.7)) await grpcCall('listMicroVMs', req, () => `list ${JSON.stringify(req)}`);
      else await streamCall(Buffer.from(toBinary(ListMicroVMsRequestSchema, req)), () => `list stream ${JSON.stringify(req)}`);
    } else if (r < 0.55) {
      await rawCall(mutatedBytes());
    } else {
      const { method, path } = httpPath(known);
      await httpCall(method, path, method === 'POST' ? mutatedJson() : undefined);
    }
  };

  let sent = 0;
  const worker = async () => {
    while (sent < total) {
      sent++;
      await one();
      if (daemon.proc.exitCode !== null || daemon.proc.signalCode !== null) break;
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  const elapsed = Date.now() - started;
  const alive = daemon.proc.exitCode === null && daemon.proc.signalCode === null;

  // Every stored uid was handed out by an accepted create, over gRPC or HTTP.
  const db = new Database(join(stateDir, 'matchlock.db'), { readonly: true });
  const integrity = (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join(', ');
  const stored = (db.prepare('SELECT uid, record FROM microvms').all() as { uid: string; record: string }[]);
  db.close();
  const unexplained = stored.filter((r) => !created.has(r.uid));
  if (unexplained.length) violations.push(`${unexplained.length} stored records came from no accepted create: ${unexplained.slice(0, 3).map((r) => r.record.slice(0, 300)).join(' | ')}`);
  if (integrity !== 'ok') violations.push(`sqlite integrity_check: ${integrity}`);
  if (!alive) violations.push(`the daemon exited (${daemon.proc.exitCode ?? daemon.proc.signalCode}):\n${daemon.logs.slice(-20).join('\n')}`);
  // Everything the daemon wrote is under its state dir: HOME and TMPDIR stay empty, and the
  // run's directory holds nothing else; inside the state dir, VM directories follow the layout.
  // (tsx, the TypeScript loader bin/matchlockd.js runs under, keeps its compile cache in TMPDIR.)
  const outside = [...walk(home), ...walk(cwd), ...walk(scratch).filter((p) => !/^tsx-\d+$/.test(relative(scratch, p).split('/')[0] ?? '')), ...readdirSync(tmp.path).filter((e) => !['state', 'home', 'tmp', 'cwd'].includes(e)).map((e) => join(tmp.path, e))];
  if (outside.length) violations.push(`written outside the state dir: ${outside.join(', ')}`);
  for (const p of walk(stateDir)) {
    const rel = relative(stateDir, p);
    const parts = rel.split('/');
    // The store, the state dir's lock and pid file, the daemon's identity, images, VM
    // directories, their run directories and the per-VM uid claims.
    const ok = /^(matchlock\.db(-wal|-shm|-journal)?|matchlockd\.lock(-journal)?|matchlockd\.pid|daemon-id)$/.test(rel) || ['images', 'vm', 'run', 'locks', 'vmm-uids'].includes(parts[0] ?? '');
    if (!ok) violations.push(`unexpected path in the state dir: ${JSON.stringify(rel)}`);
    if (parts[0] === 'vm' && parts.length >= 4 && !created.has(parts[3] ?? '') && !stored.some((r) => r.uid === parts[3])) {
      violations.push(`VM directory of an unknown uid: ${JSON.stringify(rel)}`);
    }
    if (lstatSync(p).isSymbolicLink()) violations.push(`symlink in the state dir: ${rel}`);
  }

  client.close();
  raw.close();
  await daemon.stop();
  process.chdir(tmp.path);
  const byCode = Object.fromEntries([...counts.entries()].sort());
  process.stderr.write(`fuzz: ${sent} requests in ${(elapsed / 1000).toFixed(1)} s (${Math.round(sent / (elapsed / 1000))}/s), ${stored.length} VMs stored, integrity ${integrity}\n`);
  for (const [k, v] of Object.entries(byCode)) process.stderr.write(`  ${k.padEnd(28)} ${v}\n`);
  for (const v of violations.slice(0, 20)) process.stderr.write(`VIOLATION ${v}\n`);
  process.stdout.write(`${JSON.stringify({ seed, sent, elapsedMs: elapsed, byCode, stored: stored.length, integrity, alive, violations })}\n`);
  tmp.remove();
}

await main();
