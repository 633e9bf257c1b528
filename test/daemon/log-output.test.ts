import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createLogger, fdSink } from '../../src/daemon/logger.js';
import { CreateMicroVMRequestSchema, ListMicroVMsRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { DAEMON_BIN, TEST_CGROUP_PARENT, tempDir } from '../helpers/daemon.js';

describe('log output that goes away', () => {
  const tmp = tempDir('log-output');
  after(() => tmp.remove());

  it('a sink whose reader closed goes quiet instead of throwing, in both formats', () => {
    for (const format of ['json', 'text'] as const) {
      const fifo = join(tmp.path, `fifo-${format}`);
      execFileSync('mkfifo', [fifo]);
      const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
      const writer = openSync(fifo, constants.O_WRONLY);
      const sink = fdSink(writer);
      const logger = createLogger(format, 0, sink);
      logger.info({ n: 1 }, 'before');
      assert.equal(sink.broken, false);
      closeSync(reader);
      for (let i = 0; i < 100; i++) logger.error({ i }, 'after the reader left');
      assert.equal(sink.broken, true, format);
      closeSync(writer);
    }
  });

  for (const format of ['text', 'json'] as const) {
    it(`the daemon (${format} log) keeps serving and stops on SIGTERM after its stderr reader exits`, { timeout: 120_000 }, async () => {
      const dir = join(tmp.path, format);
      const sock = join(dir, 'grpc.sock');
      const proc = spawn(process.execPath, [DAEMON_BIN, 'run', '--config', '/dev/null', '--state-dir', join(dir, 'state'), '--grpc-endpoint', `unix:${sock}`, '--log-format', format, '--vmm-cgroups=false', '--vmm-cgroup-parent', TEST_CGROUP_PARENT], { stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      try {
        // The reader takes the first line and goes, as `| head -1` does: every later log line
        // meets EPIPE, the first of them while the daemon is still starting.
        await new Promise((resolve) => proc.stderr.once('data', resolve));
        proc.stderr.destroy();
        const c = rawClient(`unix:${sock}`);
        try {
          const list = () => c.call<{ microvm: unknown[] }>('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'ns1' }));
          const until = Date.now() + 60_000;
          for (;;) {
            try {
              await list();
              break;
            } catch (err) {
              if (Date.now() > until) throw new Error(`the daemon never answered: ${(err as Error).message}`);
              await new Promise((r) => setTimeout(r, 200));
            }
          }
          // Each create logs a line; each list must still be answered.
          for (let i = 0; i < 3; i++) {
            await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec({ id: `vm${i}` }) }));
            assert.equal((await list()).microvm.length, i + 1);
          }
        } finally {
          c.close();
        }
        proc.kill('SIGTERM');
        const stopped = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 30_000))]);
        assert.ok(stopped, 'no exit within 30 s of SIGTERM');
        assert.equal(proc.signalCode, null, 'exited by itself on SIGTERM');
        assert.equal(proc.exitCode, 0);
      } finally {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        await exited;
      }
    });
  }
});
