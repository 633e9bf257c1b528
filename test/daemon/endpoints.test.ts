import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { connect } from '../../src/adapters/api/client.js';
import { ListMicroVMsRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { daemonFailsToStart, startDaemon, tempDir } from '../helpers/daemon.js';

const base = (state: string) => ['run', '--state-dir', state, '--config', '/dev/null', '--log-format', 'json'];

async function answers(host: string): Promise<void> {
  const c = connect({ host, timeoutMs: 10_000 });
  try {
    await c.listMicroVMs(create(ListMicroVMsRequestSchema, {}));
  } finally {
    c.close();
  }
}

describe('matchlockd endpoints: one rule when the config is read, the listener bound with it', () => {
  const tmp = tempDir('endpoints');
  after(() => tmp.remove());

  it("`:port` (Go's every-interface form, as in flintlock's tutorials) listens on every interface, IPv4 and IPv6", async () => {
    const d = await startDaemon(join(tmp.path, 'all'), ['--grpc-endpoint', ':0', '--insecure', '--enable-http', '--http-endpoint', ':0']);
    try {
      assert.ok(d.grpcPort > 0);
      await answers(`127.0.0.1:${d.grpcPort}`);
      await answers(`[::1]:${d.grpcPort}`);
      // A client given the daemon's own `:port` (or 0.0.0.0) dials loopback, as Go's net.Dial does.
      await answers(`:${d.grpcPort}`);
      await answers(`0.0.0.0:${d.grpcPort}`);
      assert.ok(d.httpPort && d.httpPort > 0);
      const r = await fetch(`http://127.0.0.1:${d.httpPort}/v1alpha1/microvm/default`);
      assert.equal(r.status, 200);
    } finally {
      await d.stop();
    }
  });

  it('`:port` without TLS is not loopback: refused without --insecure, exit 2', async () => {
    const { code, output } = await daemonFailsToStart([...base(join(tmp.path, 'plain')), '--grpc-endpoint', ':0']);
    assert.equal(code, 2, output);
    assert.match(output, /grpc-endpoint :0 is not a loopback address: give tls-cert and tls-key, or --insecure/);
  });

  it('a bad endpoint exits 2 naming the key and the rule, before anything is written', async () => {
    const cases: [string[], RegExp][] = [
      [['--grpc-endpoint', '127.0.0.1:99999'], /grpc-endpoint must be host:port with a port from 0 to 65535.*port "99999" is not a number/],
      [['--grpc-endpoint', 'localhost:abc'], /grpc-endpoint must be host:port.*port "abc" is not a number/],
      [['--http-endpoint', '::1:8090'], /http-endpoint must be host:port.*IPv6 address goes in brackets/],
      [['--metrics-endpoint', 'metrics'], /metrics-endpoint must be host:port.*or empty for off.*the port is missing/],
      [['--debug-endpoint', 'unix:/run/debug.sock'], /debug-endpoint must be host:port.*a unix: socket is not served here/],
      [['--grpc-endpoint', 'unix://tmp/x.sock'], /grpc-endpoint must be host:port.*unix:\/absolute\/path.*"tmp" where a host goes.*write unix:\/absolute\/path or unix:\/\/\/absolute\/path/],
      [['--grpc-endpoint', 'unix:run/x.sock'], /grpc-endpoint must be host:port.*the socket path "run\/x\.sock" must be absolute/],
      [['--grpc-endpoint', 'http://127.0.0.1:9090'], /grpc-endpoint must be host:port.*a scheme \(http:\/\/\) is not part of the endpoint: write host:port/],
    ];
    for (const [args, message] of cases) {
      const state = join(tmp.path, 'never');
      const { code, output } = await daemonFailsToStart([...base(state), ...args]);
      assert.equal(code, 2, output);
      assert.match(output, message);
      assert.doesNotMatch(output, /is not a loopback address|options\.port/);
      assert.equal(existsSync(state), false, 'no state dir made');
    }
  });

  it('a unix: socket in a missing directory fails naming the directory, not EACCES', async () => {
    const missing = join(tmp.path, 'no-such-dir');
    const { code, output } = await daemonFailsToStart([...base(join(tmp.path, 'nodir')), '--grpc-endpoint', `unix:${missing}/x.sock`]);
    assert.equal(code, 1, output);
    assert.match(output, new RegExp(`grpc-endpoint unix:${missing}/x\\.sock: cannot listen: directory ${missing} does not exist`));
  });

  it('a unix: socket another process serves fails as a port in use does: exit 1 naming the setting; a served socket is logged by its path, not a port', async () => {
    const sock = join(tmp.path, 'in-use.sock');
    const d = await startDaemon(join(tmp.path, 'owner'), ['--grpc-endpoint', `unix:${sock}`]);
    try {
      const line = d.logs.map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return {}; } }).find((r) => r.msg === 'grpc api listening');
      assert.equal(line?.socket, sock);
      assert.equal(line?.port, undefined);
      const { code, output } = await daemonFailsToStart([...base(join(tmp.path, 'second')), '--grpc-endpoint', `unix:${sock}`]);
      assert.equal(code, 1, output);
      assert.match(output, new RegExp(`grpc-endpoint unix:${sock}: cannot listen: another process is serving on ${sock}`));
    } finally {
      await d.stop();
    }
  });

  it('a gRPC port in use fails naming the key, with every line of output in the log format', async () => {
    const busy: Server = createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', () => resolve()));
    try {
      const port = (busy.address() as { port: number }).port;
      const { code, output } = await daemonFailsToStart([...base(join(tmp.path, 'busy')), '--grpc-endpoint', `127.0.0.1:${port}`]);
      assert.equal(code, 1, output);
      assert.match(output, new RegExp(`grpc-endpoint 127\\.0\\.0\\.1:${port}: cannot listen`));
      for (const line of output.split('\n').filter((l) => l.trim() !== '')) assert.doesNotThrow(() => JSON.parse(line), `not a log line: ${line}`);
    } finally {
      busy.close();
    }
  });
});
