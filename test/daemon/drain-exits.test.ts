import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { api, stateOf, vmDir, waitFor, importGuest } from '../e2e/vm.js';
import { ROOT, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { labMissing, pidsNaming, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;
const STANDIN = join(ROOT, 'test/fakes/qemu-standin.pl');

/** The port the daemon's metrics endpoint logged. */
function metricsPort(d: DaemonHandle): Promise<number> {
  return waitFor('metrics endpoint listening', () => {
    for (const l of d.logs) {
      try {
        const rec = JSON.parse(l) as { msg?: string; port?: number };
        if (rec.msg === 'metrics endpoint listening') return rec.port;
      } catch {
        // not a JSON log line
      }
    }
    return undefined;
  }, 30_000);
}

/** The value of one sample of a scrape inside the lab's network namespace. */
function scrapeValue(ns: string, port: number, series: string): number | undefined {
  const script = `fetch('http://127.0.0.1:${port}/metrics').then(async (r) => process.stdout.write(await r.text()))`;
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, process.execPath, '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('a VMM that exits while matchlockd drains', { skip }, () => {
  let lab: Lab;
  const hold = tempDir('drain-hold');
  const holdFile = join(hold.path, 'go');
  const saved = process.env.QEMU_STANDIN_HOLD;
  before(async () => {
    assert.equal(missing, undefined, `the drain tests ${missing}`);
    // The stand-in waits for this file before its pid file: with it missing, a create pass is
    // caught in its VMM's start and holds the drain open. The daemon passes its environment to
    // the VMMs it starts.
    writeFileSync(holdFile, '');
    process.env.QEMU_STANDIN_HOLD = holdFile;
    lab = await startLab(['--qemu-bin', STANDIN, '--default-provider', 'qemu', '--vmm-user', 'root', '--qemu-sandbox=false', '--vmm-cgroups=false', '--retry-backoff', '60s', '--shutdown-grace', '5m', '--metrics-endpoint', '127.0.0.1:0']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    if (saved === undefined) delete process.env.QEMU_STANDIN_HOLD;
    else process.env.QEMU_STANDIN_HOLD = saved;
    await lab?.destroy();
    hold.remove();
  });

  it('is counted in matchlock_vmm_exits_total by the next daemon', async () => {
    const vms = api(lab);
    const uid = await vms.create('running', [{ id: 'eth0', type: 'TAP' }]);
    const created = await waitFor('CREATED', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' && vm?.status?.vmmPid ? vm : undefined; }, 90_000);
    const pid = created.status?.vmmPid ?? 0;
    const series = 'matchlock_vmm_exits_total{provider="qemu",reason="unexpected"}';
    assert.equal(scrapeValue(lab.ns, await metricsPort(lab.daemon), series), 0);

    // A second VM's create pass waits in its VMM's start: the drain waits for it.
    rmSync(holdFile);
    const slow = await vms.create('starting', [{ id: 'eth0', type: 'TAP' }]);
    await waitFor('the second VMM spawned', () => pidsNaming(vmDir(lab, 'starting', slow)).some((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(STANDIN)), 90_000, 50);
    const old = lab.daemon;
    old.proc.kill('SIGTERM');
    await waitFor('draining', async () => old.logs.some((l) => /"msg":"daemon state"/.test(l) && /"state":"draining"/.test(l)), 30_000, 50);
    process.kill(pid, 'SIGKILL');
    // The draining daemon's supervisor saw the exit (so this is an exit during the drain, not
    // one after it).
    await waitFor('the exit seen while draining', async () => old.logs.some((l) => /"msg":"vmm exited/.test(l) && l.includes(`"pid":${pid}`)), 30_000, 50);
    assert.equal(old.proc.exitCode, null, 'the drain is still held open');
    writeFileSync(holdFile, '');
    await lab.restartDaemon(false);

    const next = lab.daemon;
    await waitFor('serving', async () => next.logs.some((l) => /"state":"serving"/.test(l)), 30_000);
    assert.ok(next.logs.some((l) => /"msg":"vmm exited"/.test(l) && l.includes(`"pid":${pid}`) && /"seen":"at start"/.test(l)), 'the next start finds and logs the exit');
    assert.equal(scrapeValue(lab.ns, await metricsPort(next), series), 1);
    await waitFor('CREATED again', async () => { const vm = await vms.get(uid); return stateOf(vm) === 'CREATED' && vm?.status?.vmmPid && vm.status.vmmPid !== pid ? vm : undefined; }, 90_000);
    for (const u of [uid, slow]) await vms.delete(u);
    for (const u of [uid, slow]) await waitFor('gone', async () => (await vms.get(u)) === undefined, 30_000);
  });
});
