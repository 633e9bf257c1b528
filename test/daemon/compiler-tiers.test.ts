import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateMicroVMRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
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

/** V8's line for a function Sparkplug has compiled (`--trace-baseline`). */
const baselineCompiled = (name: string) => new RegExp(`^\\[completed compiling .*<SharedFunctionInfo ${name}> \\(target BASELINE\\)`);

describe('once matchlockd serves, a request path gets Sparkplug code at its first call', () => {
  const tmp = tempDir('sparkplug');
  const daemons: DaemonHandle[] = [];
  after(async () => {
    for (const d of daemons) await d.stop();
    tmp.remove();
  });

  /** One create (its image on a loopback port nobody answers), then the log lines after "grpc api listening". */
  async function oneCreate(dir: string, nodeFlags: string[]): Promise<string[]> {
    const d = await startDaemon(join(tmp.path, dir), ['--vmm-user', 'root', '--vmm-cgroups=false', '--retry-backoff', '1h'], {}, undefined, [...nodeFlags, DAEMON_BIN]);
    daemons.push(d);
    const listening = d.logs.findIndex((l) => l.includes('"grpc api listening"'));
    assert.ok(listening >= 0, 'the daemon logged that it listens');
    const c = rawClient(d.target);
    try {
      const image = '127.0.0.1:9/tiers/absent:1';
      await c.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec({ kernel: { image, filename: 'boot/vmlinux' }, rootVolume: { id: 'root', source: { containerSource: image } } }) }));
    } finally {
      c.close();
    }
    // The trace is written by V8 as the call runs; the answer came after it.
    await sleep(200);
    return d.logs.slice(listening);
  }

  it('the validation of the first create runs as Sparkplug code, not in the interpreter', async () => {
    const logs = await oneCreate('d', ['--trace-baseline']);
    assert.ok(logs.some((l) => baselineCompiled('validateSpec').test(l)), 'validateSpec was compiled by Sparkplug at its first call');
  });

  it("an operator's own choice of the tier is left alone", async () => {
    const logs = await oneCreate('chosen', ['--trace-baseline', '--no-always-sparkplug']);
    assert.ok(!logs.some((l) => baselineCompiled('validateSpec').test(l)), 'with --no-always-sparkplug, one call leaves validateSpec in the interpreter');
  });
});
