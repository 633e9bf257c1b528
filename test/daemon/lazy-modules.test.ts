import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DAEMON_BIN, ROOT, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

/**
 * What an idle daemon must not load, by what it is needed for; each name matches a path of a
 * loaded module (a package under node_modules, or the daemon's own module with any extension).
 */
const NOT_AT_IDLE: Record<string, RegExp> = {
  'metrics (metrics-endpoint)': /\/node_modules\/prom-client\/|\/adapters\/metrics\/prometheus\.|\/daemon\/metrics\./,
  'the debug endpoint (debug-endpoint)': /\/adapters\/api\/http\/ops\./,
  'the HTTP gateway (enable-http)': /\/adapters\/api\/http\/server\./,
  'gRPC health (its first call)': /\/node_modules\/grpc-health-check\//,
  'gRPC reflection (its first call)': /\/node_modules\/@grpc\/reflection\//,
  'protobufjs (health and reflection)': /\/node_modules\/(protobufjs|@grpc\/proto-loader)\//,
  'node-tar (importing an image tar)': /\/node_modules\/tar\//,
};

/** Starts matchlockd with the module trace preload; `loaded()` asks it for every module loaded so far. */
async function tracedDaemon(state: string, extra: string[] = []): Promise<{ d: DaemonHandle; loaded: () => Promise<string[]> }> {
  const trace = join(state, '..', `${state.split('/').at(-1) ?? 'd'}-modules.txt`);
  const d = await startDaemon(state, ['--vmm-user', 'root', '--vmm-cgroups=false', ...extra], { MATCHLOCK_MODULE_TRACE: trace }, undefined, ['--import', join(ROOT, 'test/helpers/module-trace.mjs'), DAEMON_BIN]);
  const loaded = async () => {
    const cjs = `${trace}.cjs`;
    const before = existsSync(cjs) ? readFileSync(cjs, 'utf8') : undefined;
    d.proc.kill('SIGUSR2');
    for (let i = 0; i < 600 && (!existsSync(cjs) || readFileSync(cjs, 'utf8') === before); i++) await sleep(50);
    const esm = readFileSync(trace, 'utf8').split('\n').map((u) => (u.startsWith('file://') ? decodeURIComponent(new URL(u).pathname) : u));
    return [...esm, ...readFileSync(cjs, 'utf8').split('\n')].filter(Boolean);
  };
  return { d, loaded };
}

function matching(modules: string[], re: RegExp): string[] {
  return modules.filter((m) => re.test(m));
}

/** Calls a method by path with raw bytes (unary, or a stream that sends one message); resolves the status and answers. */
function rawCall(target: string, path: string, body: Buffer, stream = false): Promise<{ code: grpc.status; data: Buffer[] }> {
  const c = new grpc.Client(target, grpc.credentials.createInsecure());
  const id = (b: Buffer) => b;
  return new Promise((resolve) => {
    const data: Buffer[] = [];
    const finish = (code: grpc.status) => {
      c.close();
      resolve({ code, data });
    };
    if (!stream) {
      c.makeUnaryRequest(path, id, id, body, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => {
        if (res) data.push(res);
        finish(err ? err.code : grpc.status.OK);
      });
      return;
    }
    const call = c.makeBidiStreamRequest(path, id, id, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
    call.on('data', (d: Buffer) => data.push(d));
    call.on('error', (e: grpc.ServiceError) => finish(e.code));
    call.on('end', () => finish(grpc.status.OK));
    call.write(body);
    call.end();
  });
}

describe('an idle daemon loads only what it serves', () => {
  const tmp = tempDir('lazy');
  const daemons: DaemonHandle[] = [];
  after(async () => {
    for (const d of daemons) await d.stop();
    tmp.remove();
  });

  it('default settings: no metrics, debug endpoint, HTTP gateway, health, reflection or tar until asked; health and reflection then load and answer', async () => {
    const { d, loaded } = await tracedDaemon(join(tmp.path, 'idle'));
    daemons.push(d);
    const idle = await loaded();
    assert.ok(matching(idle, /\/node_modules\/@grpc\/grpc-js\//).length > 0, 'the trace sees CommonJS packages');
    assert.ok(matching(idle, /\/daemon\/app\./).length > 0, 'the trace sees the daemon\'s own modules');
    for (const [what, re] of Object.entries(NOT_AT_IDLE)) assert.deepEqual(matching(idle, re), [], `${what} is not loaded by an idle daemon`);

    const health = await rawCall(d.target, '/grpc.health.v1.Health/Check', Buffer.alloc(0));
    assert.equal(health.code, grpc.status.OK);
    assert.deepEqual([...(health.data[0] ?? [])], [0x08, 0x01], 'SERVING');
    const unknown = await rawCall(d.target, '/grpc.health.v1.Health/Check', Buffer.from([0x0a, 0x03, ...Buffer.from('nop')]));
    assert.equal(unknown.code, grpc.status.NOT_FOUND, 'an unknown service, as grpc-health-check answers it');
    // list_services (field 7), empty: the answer names the services the daemon serves.
    for (const version of ['v1', 'v1alpha']) {
      const refl = await rawCall(d.target, `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`, Buffer.from([0x3a, 0x00]), true);
      assert.equal(refl.code, grpc.status.OK, version);
      const text = Buffer.concat(refl.data).toString('latin1');
      for (const s of ['microvm.services.api.v1alpha1.MicroVM', 'matchlock.v1.MicroVMLifecycle', 'matchlock.v1.Server', 'matchlock.v1.Console']) assert.ok(text.includes(s), `${version} lists ${s}`);
    }
    const asked = await loaded();
    assert.ok(matching(asked, NOT_AT_IDLE['gRPC health (its first call)'] ?? /^$/).length > 0, 'health was loaded by its call');
    assert.ok(matching(asked, NOT_AT_IDLE['gRPC reflection (its first call)'] ?? /^$/).length > 0, 'reflection was loaded by its call');
    assert.deepEqual(matching(asked, /\/node_modules\/prom-client\//), []);
  });

  it('metrics, debug endpoint and HTTP gateway configured: they load and answer', async () => {
    const { d, loaded } = await tracedDaemon(join(tmp.path, 'ops'), ['--metrics-endpoint', '127.0.0.1:0', '--debug-endpoint', '127.0.0.1:0', '--enable-http', '--http-endpoint', '127.0.0.1:0']);
    daemons.push(d);
    // The ops endpoints listen right after the APIs the helper waits for.
    const port = async (key: string) => {
      for (let i = 0; i < 200; i++) {
        const line = d.logs.map((l) => JSON.parse(l) as { msg?: string; port?: number }).find((r) => r.msg === `${key} endpoint listening`);
        if (line?.port) return line.port;
        await sleep(50);
      }
      assert.fail(`no "${key} endpoint listening" in ${d.logs.join('\n')}`);
    };
    const metrics = await fetch(`http://127.0.0.1:${await port('metrics')}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /^matchlock_build_info\{/m);
    await port('debug');
    const http = await fetch(`http://127.0.0.1:${d.httpPort ?? 0}/v1alpha1/microvm`);
    assert.equal(http.status, 200);
    const modules = await loaded();
    for (const what of ['metrics (metrics-endpoint)', 'the debug endpoint (debug-endpoint)', 'the HTTP gateway (enable-http)']) {
      assert.ok(matching(modules, NOT_AT_IDLE[what] ?? /^$/).length > 0, `${what} is loaded when configured`);
    }
  });
});
