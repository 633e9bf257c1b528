import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig } from '../../src/daemon/config.js';
import { inspectHost } from '../../src/host/inspect.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

describe('inspect against a daemon started with other settings than the config it reads', () => {
  const tmp = tempDir('inspect-running');
  let d: DaemonHandle | undefined;
  after(async () => {
    await d?.stop();
    tmp.remove();
  });

  it("reports the running daemon's VMM binary and state dir, saying where they differ from the config", async () => {
    const sock = join(tmp.path, 'g.sock');
    d = await startDaemon(join(tmp.path, 'state'), ['--grpc-endpoint', `unix:${sock}`, '--qemu-bin', '/bin/true', '--vmm-user', 'root', '--vmm-cgroups=false']);
    // The config inspect reads: the endpoint, but neither the daemon's --qemu-bin nor its state dir.
    const cfg = loadConfig({ flags: { 'state-dir': join(tmp.path, 'other'), 'grpc-endpoint': `unix:${sock}`, 'qemu-bin': 'qemu-system-nosuch' }, file: { path: '/dev/null', explicit: true }, env: {} });
    const checks = await inspectHost(cfg, {});
    const by = (name: string) => checks.find((c) => c.check === name);
    assert.equal(by('daemon')?.status, 'ok');
    assert.equal(by('vmm qemu')?.status, 'ok', JSON.stringify(by('vmm qemu')));
    assert.match(by('vmm qemu')?.evidence ?? '', /^\/bin\/true: .*\(the running matchlockd's qemu-bin; the config read here names qemu-system-nosuch\)$/);
    assert.equal(by('state dir')?.status, 'warn');
    assert.match(by('state dir')?.evidence ?? '', /the running matchlockd keeps its state in .*\/state; this inspect reads .*\/other/);
    // The same dir spelled otherwise is the same dir.
    const same = loadConfig({ flags: { 'state-dir': `${join(tmp.path, 'other', '..', 'state')}/`, 'grpc-endpoint': `unix:${sock}` }, file: { path: '/dev/null', explicit: true }, env: {} });
    assert.equal((await inspectHost(same, {})).find((c) => c.check === 'state dir'), undefined);
  });
});
