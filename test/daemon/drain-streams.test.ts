import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { create } from '@bufbuild/protobuf';
import { CreateMicroVMRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { ROOT, startDaemon, tempDir } from '../helpers/daemon.js';

/**
 * SIGTERM drains: a `vm logs -f` client left open does not keep matchlockd from stopping (nor
 * waits out shutdown-grace); its stream ends with UNAVAILABLE saying the daemon stops, and the
 * CLI exits 5 (daemon unavailable).
 */
it('SIGTERM ends an open `vm logs -f` at once with UNAVAILABLE; the daemon stops and the CLI exits 5', { timeout: 120_000 }, async () => {
  const tmp = tempDir('drain');
  let cli: ChildProcess | undefined;
  const d = await startDaemon(tmp.path, ['--shutdown-grace', '60s']);
  try {
    const c = rawClient(d.grpcPort);
    // An image no registry serves: the record stays (PENDING, retrying), which is all a console stream needs.
    const spec = validSpec({ id: 'logs', namespace: 'drain', kernel: { image: '127.0.0.1:9/none/kernel:1', filename: 'boot/vmlinux' }, rootVolume: { id: 'root', source: { containerSource: '127.0.0.1:9/none/root:1' } } });
    const created = await c.call<{ microvm?: { spec?: { uid?: string } } }>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec }));
    c.close();
    const uid = created.microvm?.spec?.uid ?? '';
    assert.notEqual(uid, '');
    const vmDir = join(d.stateDir, 'vm', 'drain', 'logs', uid);
    mkdirSync(vmDir, { recursive: true });
    appendFileSync(join(vmDir, 'console.log'), 'MARK-BEFORE\n');

    const child = spawn(process.execPath, [join(ROOT, 'bin/matchlock.js'), '--host', `127.0.0.1:${d.grpcPort}`, 'vm', 'logs', uid, '-f'], { stdio: ['ignore', 'pipe', 'pipe'] });
    cli = child;
    let out = '';
    let err = '';
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    // The stream is open (the tail is printed) and following.
    while (!out.includes('MARK-BEFORE')) {
      assert.equal(child.exitCode, null, err);
      await sleep(50);
    }
    appendFileSync(join(vmDir, 'console.log'), 'MARK-FOLLOWED\n');
    while (!out.includes('MARK-FOLLOWED')) await sleep(50);

    // A bound on a hang, well short of shutdown-grace: the stream must end with the drain.
    const stopped = await Promise.race([d.stop().then(() => true), sleep(40_000).then(() => false)]);
    assert.ok(stopped, `still draining with the logs stream open:\n${d.logs.slice(-5).join('\n')}`);
    assert.equal(d.proc.exitCode, 0);
    const code = await exited;
    assert.match(err, /matchlockd is stopping/);
    assert.equal(code, 5, err);
    // Ended by the drain, not dropped at the end of shutdown-grace.
    assert.equal(d.logs.some((l) => l.includes('calls still open')), false, d.logs.join('\n'));
  } finally {
    cli?.kill('SIGKILL');
    await d.kill();
    tmp.remove();
  }
});
