import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetMicroVMRequestSchema, ListMicroVMsRequestSchema } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { api, importGuest, sleep, stateOf, vmDir, waitFor } from '../e2e/vm.js';
import { rawClient } from '../helpers/client.js';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';

const missing = labMissing();
const skip = missing && !process.env.CI ? missing : false;

interface Sample {
  get: number[];
  list: number[];
  errors: string[];
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
};

/** `n` Get and `n` List calls, one after the other, each timed; failures are collected, not thrown. */
async function sample(lab: Lab, uid: string, n: number): Promise<Sample> {
  const c = rawClient(lab.daemon.target);
  const out: Sample = { get: [], list: [], errors: [] };
  try {
    for (let i = 0; i < n; i++) {
      for (const [kind, method, req] of [
        ['get', 'getMicroVM', create(GetMicroVMRequestSchema, { uid })],
        ['list', 'listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'e2e' })],
      ] as const) {
        const t0 = performance.now();
        try {
          await c.call(method, req);
          out[kind].push(performance.now() - t0);
        } catch (err) {
          out.errors.push(`${method}: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    c.close();
  }
  return out;
}

/** A link's received packets, as the host counts them (what the guest sent into its TAP). */
function txOfGuest(lab: Lab, dev: string): number {
  const [link] = JSON.parse(execFileSync('ip', ['-n', lab.ns, '-s', '-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { stats64: { rx: { packets: number } } }[];
  return link?.stats64.rx.packets ?? 0;
}

/** How long the host takes to start a trivial process: a coarse "is the host still responsive". */
function spawnMs(): number {
  const t0 = performance.now();
  spawnSync('true');
  return performance.now() - t0;
}

/**
 * Hostile guests: one writes to its serial console without end, one floods its network
 * interface with pings to the hub's bridge address. A third, ordinary VM must keep answering
 * and stay CREATED, and the API must answer every request. API latency (p50/p99 of Get and
 * List) and the host's process-start time are printed before and during the abuse; they are
 * figures, not pass/fail thresholds (timings on a shared machine are noise).
 */
describe('hostile guests leave the host, the API and the other VMs responsive', { skip }, () => {
  let lab: Lab;
  before(async () => {
    assert.equal(missing, undefined, `the hostile-guest tests ${missing}`);
    lab = await startLab(['--default-provider', 'qemu']);
    await importGuest(lab, testGuestLayout());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('a console flood and a network flood: every request answered, the other VM answers ping and stays CREATED', { timeout: 6 * 60_000 }, async () => {
    const vms = api(lab);
    const steadyMac = '02:00:00:5e:ad:01';
    const steady = await vms.create('steady', [{ id: 'eth0', type: 'TAP', mac: steadyMac }]);
    // Both hostile scripts run from user-data, detached, so init carries on; `exec` to the
    // serial port directly: the console the VMM writes to the VM's console log.
    const consoleFlood = '#!/bin/sh\nexec >/dev/null 2>&1 </dev/null\n(while :; do echo "MATCHLOCK_FLOOD 0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz"; done >/dev/ttyS0) &\n';
    const netFlood = `#!/bin/sh\nexec >/dev/null 2>&1 </dev/null\nfor i in 1 2 3 4 5 6 7 8; do ping -q -A -s 1400 ${lab.subnet}.1 & done\n`;
    const steadyIp = await waitFor('a lease for the steady VM', () => lab.readLeases().get(steadyMac), 180_000, 500);
    await waitFor(`ping ${steadyIp}`, () => lab.ping(steadyIp), 30_000, 500);

    const spawnBefore = Array.from({ length: 20 }, spawnMs);
    const before = await sample(lab, steady, 100);

    const chatty = await vms.create('chatty', [{ id: 'eth0', type: 'TAP' }], consoleFlood);
    const flooder = await vms.create('flooder', [{ id: 'eth0', type: 'TAP' }], netFlood);
    const flooderVm = await waitFor('the flooder CREATED', async () => { const vm = await vms.get(flooder); return stateOf(vm) === 'CREATED' ? vm : undefined; }, 180_000);
    await waitFor('the chatty VM CREATED', async () => stateOf(await vms.get(chatty)) === 'CREATED', 180_000);
    const consoleLog = join(vmDir(lab, 'chatty', chatty), 'console.log');
    const size = () => (existsSync(consoleLog) ? statSync(consoleLog).size : 0);
    // The abuse has started: the console grows by megabytes and the TAP carries a flood.
    await waitFor('the console flood', () => size() > 2 * 1024 * 1024, 180_000, 1000);
    const tap = flooderVm.status?.networkInterfaces.eth0?.hostDeviceName ?? '';
    const p0 = txOfGuest(lab, tap);
    await waitFor('the network flood', () => txOfGuest(lab, tap) - p0 > 2000, 180_000, 1000);

    const s0 = size();
    const k0 = txOfGuest(lab, tap);
    const t0 = Date.now();
    const spawnDuring = Array.from({ length: 20 }, spawnMs);
    const during = await sample(lab, steady, 100);
    const pingOk = lab.ping(steadyIp);
    const secs = (Date.now() - t0) / 1000;
    const consoleRate = (size() - s0) / secs;
    const packetRate = (txOfGuest(lab, tap) - k0) / secs;

    const fmt = (xs: number[]) => `p50 ${pct(xs, 50).toFixed(1)} ms, p99 ${pct(xs, 99).toFixed(1)} ms`;
    process.stderr.write([
      'hostile guests (figures, not thresholds):',
      `  before: Get ${fmt(before.get)}; List ${fmt(before.list)}; spawn ${fmt(spawnBefore)}`,
      `  during: Get ${fmt(during.get)}; List ${fmt(during.list)}; spawn ${fmt(spawnDuring)}`,
      `  console flood ${(consoleRate / 1024).toFixed(0)} KiB/s (console.log ${(size() / 1024 / 1024).toFixed(1)} MiB), network flood ${packetRate.toFixed(0)} packets/s`,
      '',
    ].join('\n'));

    assert.deepEqual([...before.errors, ...during.errors], [], 'every request answered');
    assert.equal(during.get.length + during.list.length, 200);
    assert.ok(pingOk, 'the steady VM answers ping during the floods');
    for (const uid of [steady, chatty, flooder]) assert.equal(stateOf(await vms.get(uid)), 'CREATED', `${uid} stays CREATED`);
    assert.equal(lab.daemon.proc.exitCode, null, 'matchlockd is still running');

    for (const uid of [steady, chatty, flooder]) await vms.delete(uid);
    await waitFor('all gone', async () => (await Promise.all([steady, chatty, flooder].map((u) => vms.get(u)))).every((v) => v === undefined), 60_000);
    await sleep(200);
    assert.deepEqual(lab.qemuPids(), []);
    assert.deepEqual(lab.ourLinks(), []);
  });
});
