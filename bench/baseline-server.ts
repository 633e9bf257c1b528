// The baseline of bench/control-plane.ts, part 1: bare grpc-js plus better-sqlite3 (WAL,
// synchronous=FULL) answering flintlock's MicroVM service. Create decodes the request, inserts
// one row and answers; Get and List answer records stored pre-encoded. Its own file, importing
// only what such a server needs, so its memory is that of a bare server.
//   node [--import tsx] bench/baseline-server.ts <db> <unix socket>   (prints "listening")
import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serviceDefinition } from '../src/adapters/api/grpc/service-def.js';
import { MicroVM as MicroVMServiceDesc, type CreateMicroVMRequest } from '../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMSchema, MicroVMSpecSchema, MicroVMStatus_MicroVMState } from '../src/gen/types/microvm_pb.js';

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
  db.exec('CREATE TABLE IF NOT EXISTS vms (uid TEXT PRIMARY KEY, wire BLOB NOT NULL)');
  return db;
}

export function runBaseline(dbPath: string, socket: string): void {
  const db = openBaselineDb(dbPath);
  const insert = db.prepare<[string, Buffer]>('INSERT INTO vms (uid, wire) VALUES (?, ?)');
  const get = db.prepare<[string], Buffer>('SELECT wire FROM vms WHERE uid = ?').pluck();
  const all = db.prepare<[], Buffer>('SELECT wire FROM vms ORDER BY uid').pluck();
  const page = db.prepare<[string, number], { uid: string; wire: Buffer }>('SELECT uid, wire FROM vms WHERE uid > ? ORDER BY uid LIMIT ?');
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
  server.addService(rawServiceDefinition(), {
    createMicroVM: (call: grpc.ServerUnaryCall<CreateMicroVMRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const uid = randomBytes(13).toString('hex').toUpperCase().slice(0, 26);
      const spec = create(MicroVMSpecSchema, call.request.microvm);
      spec.uid = uid;
      const vm = toBinary(MicroVMSchema, create(MicroVMSchema, { version: 1, spec, status: { state: MicroVMStatus_MicroVMState.PENDING } }));
      insert.run(uid, Buffer.from(vm));
      cb(null, Buffer.concat(fieldBytes(1, Buffer.from(vm))));
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
        for (const w of all.iterate()) parts.push(...fieldBytes(1, w));
      } else {
        // The token is the last uid sent: the least a keyset page needs.
        const rows = page.all(pageToken, pageSize + 1);
        for (const r of rows.slice(0, pageSize)) parts.push(...fieldBytes(1, r.wire));
        if (rows.length > pageSize) parts.push(...fieldBytes(1000, Buffer.from(rows[pageSize - 1]?.uid ?? '')));
      }
      cb(null, Buffer.concat(parts));
    },
  });
  server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) throw err;
    process.stdout.write('listening\n');
  });
}

// Run as a program (not imported by the bench for openBaselineDb).
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) runBaseline(process.argv[2] ?? '', process.argv[3] ?? '');
