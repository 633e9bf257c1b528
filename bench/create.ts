// CPU of the CreateMicroVM request path in process: the request decoded from its wire bytes,
// converted, validated, stored (SQLite on /dev/shm, so the fsync is free and the figure is
// CPU) and answered with the record's bytes, as the gRPC handler does it.
//   node --import tsx bench/create.ts [creates=100] [warm-up=0] [runs=10] [other checkout]
// Each run is a fresh node process on the compiled code (dist/; `npm run build` first) with the
// checkout's own protobuf-es, as in the daemon. creates=100 with no warm-up is a burst's cold
// code; a warm-up of a few hundred gives the steady state. With another checkout (its dist/
// built, node_modules beside it), both run alternately and the ratio is this one's over it.
// Prints the median and lowest CPU (user + system, all threads) per create.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

async function child(root: string, creates: number, warm: number): Promise<void> {
  const load = (path: string) => import(pathToFileURL(join(root, path)).href);
  const { create, toBinary, fromBinary } = await load('node_modules/@bufbuild/protobuf/dist/esm/index.js');
  const { specInput } = await load('dist/adapters/api/convert.js');
  const { SqliteStore } = await load('dist/adapters/store/sqlite/store.js');
  const { MicroVMService } = await load('dist/core/microvm/service.js');
  const { MicroVMSpecSchema, NetworkInterface_IfaceType } = await load('dist/gen/types/microvm_pb.js');
  const { CreateMicroVMRequestSchema } = await load('dist/gen/services/microvm/v1alpha1/microvms_pb.js');
  const dir = mkdtempSync('/dev/shm/matchlock-create-bench-');
  const store = new SqliteStore(join(dir, 'matchlock.db'));
  try {
    const svc = new MicroVMService({
      store,
      clock: { now: () => new Date() },
      random: { bytes: (n: number) => randomBytes(n) },
      notifier: { changed: () => undefined },
      providers: new Map([['qemu', {
        descriptor: { name: 'qemu', defaultBinary: 'qemu', capabilities: { macvtap: true, virtiofs: false, vsock: false, metadataInterface: false, pause: true }, metadata: { kind: 'nocloud-disk', file: 'cidata.img' }, sockets: [] },
        availability: { usable: true },
      }]]),
      defaultProvider: 'qemu',
    });
    // What a CAPMVM-made VM sends: labels, kernel and initrd from an image, one TAP, a few KiB
    // of user-data and a one-line meta-data.
    const image = 'localhost/bench/standin:1';
    const request = (name: string) => toBinary(CreateMicroVMRequestSchema, create(CreateMicroVMRequestSchema, {
      microvm: create(MicroVMSpecSchema, {
        id: name, namespace: 'bench', labels: { 'cluster.x-k8s.io/cluster-name': 'bench', role: 'worker' }, vcpu: 2, memoryInMb: 2048,
        kernel: { image, filename: 'boot/vmlinuz', addNetworkConfig: true }, initrd: { image, filename: 'boot/initrd.img' },
        interfaces: [{ deviceId: 'eth1', type: NetworkInterface_IfaceType.TAP }],
        metadata: {
          'user-data': Buffer.from(`#cloud-config\nwrite_files:\n${`  - path: /etc/bench\n    content: ${'x'.repeat(60)}\n`.repeat(30)}`).toString('base64'),
          'meta-data': Buffer.from(`local_hostname: ${name}\n`).toString('base64'),
        },
      }),
    }));
    // The handler's work; a checkout without createEncoded reads the bytes back as it did.
    const handle = (bytes: Uint8Array): Uint8Array => {
      const spec = specInput(fromBinary(CreateMicroVMRequestSchema, bytes).microvm);
      if (svc.createEncoded) return svc.createEncoded(spec).encoded;
      return svc.encoded(svc.create(spec).uid);
    };
    const requests = Array.from({ length: warm + creates }, (_, n) => request(`vm-${n}`));
    for (let n = 0; n < warm; n++) handle(requests[n]);
    const before = process.cpuUsage();
    for (let n = warm; n < warm + creates; n++) handle(requests[n]);
    const used = process.cpuUsage(before);
    process.stdout.write(`${(used.user + used.system) / 1000 / creates}\n`);
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const say = (line: string) => process.stdout.write(`${line}\n`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
}

function main(): void {
  const creates = Number(process.argv[2] ?? 100);
  const warm = Number(process.argv[3] ?? 0);
  const runs = Number(process.argv[4] ?? 10);
  const roots = [ROOT, ...(process.argv[5] ? [resolve(process.argv[5])] : [])];
  const cpu = roots.map((): number[] => []);
  const load = () => execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ').slice(0, 3).join(' ');
  say(`# create path: ${creates} creates after ${warm} unmeasured, ${runs} runs each, load ${load()}`);
  for (let r = 0; r < runs; r++) {
    roots.forEach((root, k) => {
      const out = execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', root, String(creates), String(warm)], { encoding: 'utf8' });
      cpu[k]?.push(Number(out.trim()));
    });
  }
  roots.forEach((root, k) => {
    const xs = cpu[k] ?? [];
    const ratio = k === 0 || roots.length === 1 ? '' : ` (this checkout / it: ${(median(cpu[0] ?? []) / median(xs)).toFixed(2)})`;
    say(`${root}: CPU per create median ${median(xs).toFixed(3)} ms, lowest ${Math.min(...xs).toFixed(3)} ms${ratio}`);
  });
  say(`# load at the end ${load()}`);
}

if (process.argv[2] === '--child') await child(process.argv[3] ?? ROOT, Number(process.argv[4]), Number(process.argv[5]));
else main();
