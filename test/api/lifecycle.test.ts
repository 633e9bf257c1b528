import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectService } from '../../src/adapters/api/client.js';
import { run as cli } from '../../src/cli/main.js';
import { findBinary } from '../../src/daemon/providers.js';
import { MicroVMEvent_Type, MicroVMLifecycle, StopMicroVMRequestSchema, WatchEventsRequestSchema, type MicroVMEvent } from '../../src/gen/services/matchlock/v1/lifecycle_pb.js';
import { GetServerInfoRequestSchema, Server } from '../../src/gen/services/matchlock/v1/server_pb.js';
import { CreateMicroVMRequestSchema, DeleteMicroVMRequestSchema, GetMicroVMRequestSchema, type CreateMicroVMResponse, type GetMicroVMResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMStatus_PowerState } from '../../src/gen/types/microvm_pb.js';
import { VERSION } from '../../src/version.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(what: string, fn: () => T | undefined | false, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** The CLI as its own process (it has to outlive the daemon it talks to). */
function cliProcess(args: string[]): { proc: ChildProcess; out: () => string; err: () => string; exit: Promise<number | null> } {
  const proc = spawn(process.execPath, [join(ROOT, 'bin/matchlock.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, out: () => out, err: () => err, exit };
}

// Images on a loopback port nothing listens on: pulls fail at once, records stay PENDING and
// keep changing (retries), which is what an event stream has to keep up with.
const spec = (id: string) => validSpec({ id, namespace: 'power', kernel: { image: '127.0.0.1:9/k:1', filename: 'boot/vmlinux' }, rootVolume: { id: 'root', source: { containerSource: '127.0.0.1:9/r:1' } } });

describe('matchlock.v1 through matchlockd', () => {
  const tmp = tempDir('lifecycle');
  const state = join(tmp.path, 'state');
  const sock = join(tmp.path, 'api.sock');
  const target = `unix:${sock}`;
  const flags = ['--grpc-endpoint', target, '--enable-http', '--http-endpoint', '127.0.0.1:0', '--retry-backoff', '300ms', '--maximum-retry', '1000'];
  let d: DaemonHandle;
  const children: ChildProcess[] = [];
  before(async () => {
    d = await startDaemon(state, flags);
  });
  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
    await d?.stop();
    tmp.remove();
  });
  const microvm = async <T>(method: string, req: unknown): Promise<T> => {
    const c = rawClient(target);
    try {
      return await c.call<T>(method, req);
    } finally {
      c.close();
    }
  };
  const lifecycle = () => connectService(MicroVMLifecycle, { host: target });

  it('vm events and vm watch carry on across a daemon restart; no event is lost or repeated', async () => {
    const a = (await microvm<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec('a') }))).microvm?.spec?.uid ?? '';
    const events = cliProcess(['--host', target, '-o', 'json', 'vm', 'events']);
    children.push(events.proc);
    await until('the EXISTING event of a', () => events.out().includes('"EXISTING"'));
    const watch = cliProcess(['--host', target, 'vm', 'watch', a, '--for', 'desired=STOPPED', '--timeout', '3m']);
    children.push(watch.proc);
    await until('watch to print the current state', () => watch.out().includes(a));

    await d.stop();
    d = await startDaemon(state, flags);
    // Events written while no client is connected (the resync at start, this create) must
    // still reach both clients.
    const b = (await microvm<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec('b') }))).microvm?.spec?.uid ?? '';
    const c = lifecycle();
    const stopped = await c.stopMicroVM(create(StopMicroVMRequestSchema, { uid: a }));
    c.close();
    assert.equal(stopped.microvm?.status?.desiredPower, MicroVMStatus_PowerState.STOPPED);
    assert.equal(await watch.exit, 0, `watch: ${watch.err()}`);
    assert.match(watch.err(), /reconnecting/);
    await microvm('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: b }));
    await until('the DELETED event of b', () => events.out().split('\n').some((l) => l.includes('"DELETED"') && l.includes(b)), 60_000);
    events.proc.kill('SIGTERM');
    await events.exit;
    assert.match(events.err(), /reconnecting after event \d+/);

    const seen = events.out().trim().split('\n').map((l) => JSON.parse(l) as { id: string; type: string; uid: string; desiredPower?: string });
    assert.equal(seen[0]?.type, 'EXISTING');
    const head = Number(seen[0]?.id);
    const ids = seen.slice(1).map((e) => Number(e.id));
    assert.ok(ids.length > 3, `${ids.length} changes seen`);
    assert.deepEqual(ids, ids.map((_, i) => head + 1 + i), 'consecutive ids from the snapshot on: none lost, none repeated');
    assert.ok(seen.some((e) => e.type === 'CREATED' && e.uid === b), 'the create after the restart');
    assert.ok(seen.some((e) => e.type === 'UPDATED' && e.uid === a && e.desiredPower === 'STOPPED'), 'the stop');

    // The same changes, read again from the store's log.
    const replay: MicroVMEvent[] = [];
    const r = lifecycle();
    const last = ids.at(-1) ?? 0;
    const s = r.stream('watchEvents', create(WatchEventsRequestSchema, { afterId: BigInt(head) }), (m) => {
      replay.push(m as MicroVMEvent);
      if (Number((m as MicroVMEvent).id) >= last) s.cancel();
    });
    await s.done;
    r.close();
    assert.deepEqual(replay.map((e) => Number(e.id)), ids);
    assert.deepEqual(replay.map((e) => MicroVMEvent_Type[e.type]), seen.slice(1).map((e) => e.type));

    const got = await microvm<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid: a }));
    assert.equal(got.microvm?.status?.desiredPower, MicroVMStatus_PowerState.STOPPED, 'the desired power is on the record');
  });

  it('a cursor the store cannot serve is refused, naming after_id', async () => {
    const r = lifecycle();
    const s = r.stream('watchEvents', create(WatchEventsRequestSchema, { afterId: 10_000_000n }), () => undefined);
    await assert.rejects(s.done, /after_id 10000000 is newer than this store's newest event/);
    r.close();
  });

  it('serves the power calls over HTTP/JSON, and the event stream as JSON lines', async () => {
    const uid = (await microvm<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec('h') }))).microvm?.spec?.uid ?? '';
    const call = (method: string, path: string, body?: string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: d.httpPort, method, path }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
            // The event stream never ends by itself: the first line is enough.
            if (path.startsWith('/v1/events') && text.includes('\n')) res.destroy();
          });
          res.on('close', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('error', reject);
        req.end(body);
      });
    const stop = await call('POST', `/v1/microvm/${uid}/stop`, '{"grace": "5s"}');
    assert.equal(stop.status, 200, stop.text);
    assert.equal(JSON.parse(stop.text).microvm.status.desiredPower, 'STOPPED');
    let shown = '';
    assert.equal(await cli(['--host', target, 'vm', 'get', uid], { out: (t) => void (shown += t), err: () => undefined }, {}), 0);
    assert.match(shown, /^Power:\s+UNKNOWN \(desired STOPPED\)$/m, 'never ran, asked to stop');
    const pause = await call('POST', `/v1/microvm/${uid}/pause`);
    assert.equal(pause.status, 400, 'a stopped VM cannot pause');
    assert.equal(JSON.parse(pause.text).code, grpc.status.FAILED_PRECONDITION);
    assert.match(JSON.parse(pause.text).message, /is stopped; start it before you pause it/);
    assert.equal((await call('POST', `/v1/microvm/${uid}/start`)).status, 200);
    const bad = await call('POST', `/v1/microvm/${uid}/stop`, '{"grace": 5}');
    assert.equal(bad.status, 400);
    assert.match(JSON.parse(bad.text).message, /^body: /);
    const missing = await call('POST', '/v1/microvm/01HZY3NDEKTSV4RRFFQ69G0000/resume');
    assert.equal(missing.status, 404);
    assert.match(JSON.parse(missing.text).message, /not found/);
    const ev = await call('GET', `/v1/events?uid=${uid}`);
    assert.equal(ev.status, 200);
    const first = JSON.parse(ev.text.split('\n')[0] ?? '') as { result: { type: string; uid: string; desiredPower: string } };
    assert.deepEqual([first.result.type, first.result.uid, first.result.desiredPower], ['EXISTING', uid, 'RUNNING']);
    // The stored changes: the create, the stop, the start, in order, the newest last.
    const recent = await call('GET', `/v1/recent-events?uid=${uid}&limit=1000`);
    assert.equal(recent.status, 200, recent.text);
    const kept = (JSON.parse(recent.text) as { events: { id: string; type: string; desiredPower: string }[] }).events;
    assert.equal(kept[0]?.type, 'CREATED');
    assert.deepEqual(kept.map((e) => Number(e.id)), kept.map((e) => Number(e.id)).sort((a, b) => a - b));
    assert.deepEqual(kept.map((e) => e.desiredPower).filter((p, i, all) => p !== all[i - 1]), ['RUNNING', 'STOPPED', 'RUNNING']);
    const two = await call('GET', `/v1/recent-events?uid=${uid}&limit=2`);
    assert.deepEqual((JSON.parse(two.text) as { events: { id: string }[] }).events.map((e) => e.id), kept.slice(-2).map((e) => e.id));
    assert.equal((await call('GET', '/v1/recent-events?limit=1001')).status, 400);
  });

  it('power commands take namespace/name as well as a uid, and ask which when a name is shared', async () => {
    const one = (await microvm<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec('solo') }))).microvm?.spec?.uid ?? '';
    const twins = [];
    for (let i = 0; i < 2; i++) twins.push((await microvm<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec('twin') }))).microvm?.spec?.uid ?? '');
    let out = '';
    let err = '';
    const io = { out: (t: string) => void (out += t), err: (t: string) => void (err += t) };
    assert.equal(await cli(['--host', target, 'vm', 'stop', 'power/solo', '--no-wait'], io, {}), 0, err);
    assert.match(out, new RegExp(`^${one} stop requested`));
    const got = await microvm<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid: one }));
    assert.equal(got.microvm?.status?.desiredPower, MicroVMStatus_PowerState.STOPPED);
    err = '';
    assert.equal(await cli(['--host', target, 'vm', 'start', 'power/twin', '--no-wait'], io, {}), 2);
    for (const uid of twins) assert.match(err, new RegExp(uid), 'the candidates are named');
    err = '';
    assert.equal(await cli(['--host', target, 'vm', 'watch', 'power/nobody', '--timeout', '5s'], io, {}), 3, err);
    for (const uid of [one, ...twins]) await microvm('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid }));
  });

  it('GetServerInfo and matchlock version: client and server, or why the server is unknown', async () => {
    const s = connectService(Server, { host: target });
    const info = await s.getServerInfo(create(GetServerInfoRequestSchema));
    s.close();
    assert.equal(info.version, VERSION);
    assert.deepEqual(info.apiVersions, ['microvm.services.api.v1alpha1', 'matchlock.v1']);
    assert.equal(info.daemonId, readFileSync(join(state, 'daemon-id'), 'utf8').trim());
    assert.equal(info.stateDir, state);
    assert.match(info.commit, /^([0-9a-f]{40})?$/);
    assert.deepEqual(info.providers.map((p) => p.name), ['firecracker', 'cloudhypervisor', 'qemu']);
    const qemu = info.providers.find((p) => p.name === 'qemu');
    if (findBinary('qemu-system-x86_64')) assert.match(qemu?.version ?? '', /^QEMU emulator version \d/);
    assert.ok(Number(info.uptime?.seconds ?? -1n) >= 0);

    let out = '';
    let err = '';
    const io = { out: (t: string) => void (out += t), err: (t: string) => void (err += t) };
    assert.equal(await cli(['--host', target, 'version'], io, {}), 0, err);
    assert.match(out, new RegExp(`^client: matchlock ${VERSION}\\nserver: matchlockd ${VERSION}`));
    assert.match(out, new RegExp(`daemon id: ${info.daemonId}`));

    // A gRPC server without matchlock.v1 (as a flintlockd is): the client part still prints.
    const bare = new grpc.Server();
    const port = await new Promise<number>((resolve, reject) => bare.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    out = '';
    assert.equal(await cli(['--host', `127.0.0.1:${port}`, 'version'], io, {}), 0);
    assert.match(out, /^client: matchlock \S+\nserver: unknown \(127\.0\.0\.1:\d+ does not serve matchlock\.v1\.Server: a flintlockd, or an older matchlockd\)\n$/);
    bare.forceShutdown();
    out = '';
    err = '';
    assert.equal(await cli(['--host', `127.0.0.1:${port}`, '--request-timeout', '2s', 'version'], io, {}), 5, 'nobody listens: unreachable');
    assert.match(out, /^client: matchlock \S+\n$/);
    assert.match(err, /cannot reach matchlockd/);
  });
});
