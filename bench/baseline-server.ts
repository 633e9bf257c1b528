// The baseline of bench/control-plane.ts: bare grpc-js plus better-sqlite3 (WAL,
// synchronous=FULL) answering flintlock's MicroVM service. Create decodes the request, inserts
// one row and answers; Get and List answer records stored pre-encoded (List of one namespace
// when the request names one). Its own file, importing only what such a server needs, so its
// memory is that of a bare server.
//   node [--import tsx] bench/baseline-server.ts <db> <unix socket>   (prints "listening")
//
// With a VMM (part 2's burst baseline), each create is then also brought up on the host with
// the least work a running VM needs, by the tools matchlock uses (see provision()):
//   node [--import tsx] bench/baseline-server.ts <db> <unix socket> <state dir> <vmm> <bridge> <image dir> [sh|node]
import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { realpathSync, watch } from 'node:fs';
import { access, lstat, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FILES, QMP_SOCKET, qemuArgs } from '../src/adapters/vmm/qemu/args.js';
import { serviceDefinition } from '../src/adapters/api/grpc/service-def.js';
import { MicroVM as MicroVMServiceDesc, type CreateMicroVMRequest } from '../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema, MicroVMSpecSchema, MicroVMStatus_MicroVMState, type MicroVMSpec } from '../src/gen/types/microvm_pb.js';

/** Pre-encoded bytes pass through; anything else is a protobuf-es message of the method's output. */
function rawServiceDefinition(): grpc.ServiceDefinition {
  const def = serviceDefinition(MicroVMServiceDesc) as Record<string, grpc.MethodDefinition<unknown, unknown>>;
  for (const m of Object.values(def)) {
    const encode = m.responseSerialize;
    m.responseSerialize = (v: unknown) => (Buffer.isBuffer(v) ? v : encode(v));
  }
  return def;
}

function varint(n: number, out: number[] = []): number[] {
  while (n > 127) {
    out.push((n & 127) | 128);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

function fieldBytes(field: number, payload: Buffer): Buffer[] {
  return [Buffer.from(varint(payload.length, varint((field << 3) | 2))), payload];
}

export function openBaselineDb(path: string): Database.Database {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec("CREATE TABLE IF NOT EXISTS vms (uid TEXT PRIMARY KEY, wire BLOB NOT NULL, namespace TEXT NOT NULL DEFAULT '')");
  return db;
}

/** Where the burst baseline brings VMs up: paths on the host, the bridge in its network namespace. */
export interface BaselineHost {
  /** VM directories go under `<stateDir>/vm/<uid>` (pid file), run directories under `<stateDir>/run/<uid>` (QMP socket). */
  stateDir: string;
  /** The VMM binary, given QEMU's command line. */
  vmm: string;
  bridge: string;
  /** Every image reference resolves to this directory: kernel.filename and initrd.filename are read under it. */
  imageDir: string;
  /**
   * How its programs start: `sh`, by two long-lived /bin/sh, one running the `ip` processes one
   * after the other, one starting each VMM as a background job (a fork of a small process, off
   * this one's thread); `node`, by child_process.spawn from this process, VMMs detached (a fork of
   * a Node process of 100 MB or more on its main thread: 10-40 ms each on a loaded 2-core VM).
   */
  launch: 'sh' | 'node';
}

/** A /bin/sh that starts each command it is given as a background job, its output discarded. */
function shellLauncher(): (bin: string, args: string[]) => void {
  const sh = spawn('/bin/sh', [], { stdio: ['pipe', 'ignore', 'inherit'] });
  const quote = (a: string) => `'${a.replaceAll("'", `'\\''`)}'`;
  return (bin, args) => void sh.stdin.write(`${[bin, ...args].map(quote).join(' ')} </dev/null >/dev/null 2>&1 &\n`);
}

/** A /bin/sh that runs the scripts it is given one after the other and answers each with its exit status. */
function shellRunner(): (script: string) => Promise<number> {
  const sh = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'inherit'] });
  let waiting: ((status: number) => void)[] = [];
  let out = '';
  sh.stdout.on('data', (b: Buffer) => {
    out += b.toString();
    for (let nl; (nl = out.indexOf('\n')) >= 0; out = out.slice(nl + 1)) waiting.shift()?.(Number(out.slice(0, nl)));
  });
  sh.once('exit', () => {
    for (const w of waiting) w(-1);
    waiting = [];
  });
  return (script) =>
    new Promise((resolve) => {
      waiting.push(resolve);
      sh.stdin.write(`${script}\necho $?\n`);
    });
}

/**
 * Runs `ip -batch -` for link changes, grouping the changes asked for while one `ip` runs into
 * the next process (one process for the creates that arrive together, none waiting on a timer).
 * Without -force, ip stops at the first failing line, so a failure fails every change of its group.
 * With a shell (shellRunner) each `ip` is that shell's child, its stderr this process's;
 * otherwise child_process.spawn starts it.
 */
function linkBatcher(shell?: (script: string) => Promise<number>): { change: (lines: string[][]) => Promise<void>; processes: () => number } {
  let started = 0;
  let queue: { lines: string[][]; done: (err?: Error) => void }[] = [];
  let running = false;
  const run = (input: string) =>
    new Promise<void>((resolve, reject) => {
      started++;
      if (shell) {
        void shell(`ip -batch - <<'EOF'\n${input}EOF`).then((code) => (code === 0 ? resolve() : reject(new Error(`ip -batch: exit ${code}`))));
        return;
      }
      const p = spawn('ip', ['-batch', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (b: Buffer) => (err += b.toString()));
      p.once('error', reject);
      p.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`ip -batch: exit ${code}: ${err.trim()}`))));
      p.stdin.end(input);
    });
  const flush = async () => {
    running = true;
    while (queue.length) {
      const group = queue;
      queue = [];
      const input = group.flatMap((g) => g.lines.map((l) => l.join(' ') + '\n')).join('');
      const err = await run(input).then(() => undefined, (e: unknown) => e as Error);
      for (const g of group) g.done(err);
    }
    running = false;
  };
  const change = (lines: string[][]) =>
    new Promise<void>((resolve, reject) => {
      queue.push({ lines, done: (err) => (err ? reject(err) : resolve()) });
      if (!running) void flush();
    });
  return { change, processes: () => started };
}

/**
 * Resolves true once `ready` holds, checking it at the start and whenever a file in one of `dirs`
 * changes (inotify through fs.watch: no polling, which with hundreds of VMs starting at once
 * cost this process more CPU than the rest of its work); false after `ms`.
 */
function whenReady(dirs: string[], ready: () => Promise<boolean>, ms: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    let checking = false;
    let again = false;
    let finished = false;
    const watchers = dirs.map((d) => watch(d, () => void check()));
    const timer = setTimeout(() => finish(false), ms);
    const finish = (ok: boolean, err?: unknown) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      for (const w of watchers) w.close();
      if (err) reject(err as Error);
      else resolve(ok);
    };
    const check = async (): Promise<void> => {
      if (checking) return void (again = true);
      checking = true;
      try {
        do {
          again = false;
          if (await ready()) return finish(true);
        } while (again && !finished);
      } catch (err) {
        finish(false, err);
      } finally {
        checking = false;
      }
    };
    void check();
  });
}

export function runBaseline(dbPath: string, socket: string, host?: BaselineHost): void {
  const db = openBaselineDb(dbPath);
  const insert = db.prepare<[string, Buffer, string]>('INSERT INTO vms (uid, wire, namespace) VALUES (?, ?, ?)');
  const update = db.prepare<[Buffer, string]>('UPDATE vms SET wire = ? WHERE uid = ?');
  const get = db.prepare<[string], Buffer>('SELECT wire FROM vms WHERE uid = ?').pluck();
  const all = db.prepare<[], Buffer>('SELECT wire FROM vms ORDER BY uid').pluck();
  const inNamespace = db.prepare<[string], Buffer>('SELECT wire FROM vms WHERE namespace = ? ORDER BY uid').pluck();
  const page = db.prepare<[string, number], { uid: string; wire: Buffer }>('SELECT uid, wire FROM vms WHERE uid > ? ORDER BY uid LIMIT ?');
  const links = linkBatcher(host?.launch === 'sh' ? shellRunner() : undefined);
  const sh = host?.launch === 'sh' ? shellLauncher() : undefined;
  let taps = 0;
  /**
   * One VM brought up: its kernel (and initrd) found under the image directory, a TAP per
   * interface made, put on the bridge and up (`ip -batch`, grouped by linkBatcher), the VMM
   * started (by the launcher chosen: see BaselineHost.launch) with the command line matchlock's
   * QEMU provider builds (qemuArgs: pid file, QMP and console sockets, kernel, NICs), and its QMP
   * socket and pid file waited for (inotify, see whenReady). Not done:
   * boot files copied or linked into the VM directory, a NoCloud seed disk (no user-data
   * reaches the guest), link aliases, the VMM's stdout and stderr kept, supervision.
   */
  const provision = host
    ? async (uid: string, spec: MicroVMSpec): Promise<void> => {
        const kernelPath = join(host.imageDir, spec.kernel?.filename ?? '');
        const initrdPath = spec.initrd?.filename ? join(host.imageDir, spec.initrd.filename) : undefined;
        await access(kernelPath);
        if (initrdPath) await access(initrdPath);
        const dir = join(host.stateDir, 'vm', uid);
        const runDir = join(host.stateDir, 'run', uid);
        await Promise.all([mkdir(dir, { recursive: true }), mkdir(runDir, { recursive: true })]);
        const nics = spec.interfaces.map((i) => {
          const mac = randomBytes(6);
          mac[0] = ((mac[0] ?? 0) & 0xfe) | 0x02;
          return { deviceId: i.deviceId, type: 'TAP' as const, hostDevice: `bt${(taps++).toString(36)}`, ifindex: 0, mac: [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':') };
        });
        await links.change(nics.flatMap((n) => [['tuntap', 'add', 'dev', n.hostDevice, 'mode', 'tap'], ['link', 'set', 'dev', n.hostDevice, 'master', host.bridge, 'up']]));
        const args = qemuArgs(
          { uid, namespace: spec.namespace, name: spec.id, dir, runDir, vcpu: spec.vcpu, memoryInMb: spec.memoryInMb, kernelPath, initrdPath, cmdline: 'console=ttyS0 reboot=t panic=-1', disks: [], nics, shares: [], metadata: {} },
          { accel: 'tcg' },
        );
        let failed: Error | undefined;
        if (sh) sh(host.vmm, args);
        else {
          const vmm = spawn(host.vmm, args, { detached: true, stdio: 'ignore' });
          vmm.once('error', (e) => (failed = e));
          vmm.once('exit', (code, sig) => (failed ??= new Error(`VMM exited with ${code ?? sig}`)));
        }
        const qmp = join(runDir, QMP_SOCKET);
        const pid = join(dir, FILES.pid);
        const up = await whenReady([dir, runDir], async () => {
          if (failed) throw failed;
          return (await lstat(qmp).then((s) => s.isSocket(), () => false)) && (await access(pid).then(() => true, () => false));
        }, 15_000);
        if (!up) throw new Error('VMM: no QMP socket and pid file within 15 s');
      }
    : undefined;
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
  server.addService(rawServiceDefinition(), {
    createMicroVM: (call: grpc.ServerUnaryCall<CreateMicroVMRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const uid = randomBytes(13).toString('hex').toUpperCase().slice(0, 26);
      const spec = create(MicroVMSpecSchema, call.request.microvm);
      spec.uid = uid;
      const vm = toBinary(MicroVMSchema, create(MicroVMSchema, { version: 1, spec, status: { state: MicroVMStatus_MicroVMState.PENDING } }));
      insert.run(uid, Buffer.from(vm), spec.namespace);
      cb(null, Buffer.concat(fieldBytes(1, Buffer.from(vm))));
      if (provision) {
        // The row's state once the host work is done or failed: one more fsync'd write.
        const settle = (state: MicroVMStatus_MicroVMState) => update.run(Buffer.from(toBinary(MicroVMSchema, create(MicroVMSchema, { version: 2, spec, status: { state } }))), uid);
        provision(uid, spec).then(
          () => settle(MicroVMStatus_MicroVMState.CREATED),
          (err: unknown) => {
            process.stderr.write(`baseline: ${uid}: ${(err as Error).message}\n`);
            settle(MicroVMStatus_MicroVMState.FAILED);
          },
        );
      }
    },
    getMicroVM: (call: grpc.ServerUnaryCall<{ uid: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const w = get.get(call.request.uid);
      if (!w) cb({ code: grpc.status.NOT_FOUND, details: 'not found' });
      else cb(null, Buffer.concat(fieldBytes(1, w)));
    },
    listMicroVMs: (call: grpc.ServerUnaryCall<{ pageSize: number; pageToken: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const parts: Buffer[] = [];
      const { pageSize, pageToken } = call.request;
      if (!pageSize) {
        const { namespace } = call.request as { namespace?: string };
        for (const w of namespace ? inNamespace.iterate(namespace) : all.iterate()) parts.push(...fieldBytes(1, w));
      } else {
        // The token is the last uid sent: the least a keyset page needs.
        const rows = page.all(pageToken, pageSize + 1);
        for (const r of rows.slice(0, pageSize)) parts.push(...fieldBytes(1, r.wire));
        if (rows.length > pageSize) parts.push(...fieldBytes(1000, Buffer.from(rows[pageSize - 1]?.uid ?? '')));
      }
      cb(null, Buffer.concat(parts));
    },
  });
  if (host) {
    // What it ran, for the bench to print: it shows the grouping of TAPs into `ip` processes.
    process.once('SIGTERM', () => {
      process.stdout.write(`ip processes ${links.processes()}, TAPs ${taps}\n`, () => process.exit(0));
    });
  }
  server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) throw err;
    process.stdout.write('listening\n');
  });
}

// Run as a program (not imported by the bench for openBaselineDb).
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [dbPath = '', socket = '', stateDir, vmm = '', bridge = '', imageDir = '', launch = 'sh'] = process.argv.slice(2);
  if (launch !== 'sh' && launch !== 'node') throw new Error(`launch must be sh or node, not ${launch}`);
  runBaseline(dbPath, socket, stateDir ? { stateDir, vmm, bridge, imageDir, launch } : undefined);
}
