import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DAEMON_BIN, startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

/** V8's line for a function TurboFan has finished optimizing (`--trace-opt`). */
const OPTIMIZED = /^\[completed optimizing .*\(target TURBOFAN\)/;

/** Sends `n` ListMicroVMs calls, `batch` at a time; the answers do not matter, only the work. */
async function listCalls(target: string, n: number, batch = 50): Promise<void> {
  const c = new grpc.Client(target, grpc.credentials.createInsecure());
  const id = (b: Buffer) => b;
  // ListMicroVMsRequest{namespace: "ns"}
  const body = Buffer.from([0x0a, 0x02, ...Buffer.from('ns')]);
  try {
    for (let sent = 0; sent < n; sent += batch) {
      await Promise.all(
        Array.from({ length: batch }, () => new Promise<void>((resolve) => {
          c.makeUnaryRequest('/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs', id, id, body, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, () => resolve());
        })),
      );
    }
  } finally {
    c.close();
  }
}

describe('the optimizing compiler is off while matchlockd starts and on once it serves', () => {
  const tmp = tempDir('tiers');
  let d: DaemonHandle | undefined;
  after(async () => {
    await d?.stop();
    tmp.remove();
  });

  it('nothing is optimized before "grpc api listening"; a burst of requests afterwards is', async () => {
    d = await startDaemon(join(tmp.path, 'd'), ['--vmm-user', 'root', '--vmm-cgroups=false'], {}, undefined, ['--trace-opt', DAEMON_BIN]);
    const listening = d.logs.findIndex((l) => l.includes('"grpc api listening"'));
    assert.ok(listening >= 0, 'the daemon logged that it listens');
    assert.deepEqual(d.logs.slice(0, listening).filter((l) => OPTIMIZED.test(l)), [], 'no function was optimized while starting');

    const logs = d.logs;
    const optimizedAfter = () => logs.slice(listening).filter((l) => OPTIMIZED.test(l));
    for (let round = 0; round < 20 && optimizedAfter().length === 0; round++) {
      await listCalls(d.target, 500);
      await sleep(100);
    }
    assert.ok(optimizedAfter().length > 0, 'functions are optimized once the daemon serves');
  });
});
