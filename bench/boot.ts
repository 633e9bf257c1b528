// Boot latency through matchlock versus bare QEMU, measured in the same run on the same guest.
//   node --import tsx bench/boot.ts [rounds]      (root; builds the test guest on first use)
// For each round: (a) QEMU started by hand with the lab's command line until the console shows
// the guest's init; (b) CreateMicroVM through the API until status.guest_booted. Prints each
// figure and the median ratio b/a, i.e. what the control plane adds on top of QEMU's own boot.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostKhz } from '../src/adapters/vmm/qemu/provider.js';
import { BOOT_PATTERN } from '../src/adapters/vmm/supervisor.js';
import { labMissing, startLab, testGuestLayout } from '../test/helpers/lab.js';
import { api, importGuest, waitFor } from '../test/e2e/vm.js';

const rounds = Number(process.argv[2] ?? 3);
const missing = labMissing();
if (missing) {
  process.stderr.write(`bench/boot: ${missing}\n`);
  process.exit(1);
}

async function bareQemu(root: string): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-qemu-'));
  const consolePath = join(dir, 'console.log');
  const started = performance.now();
  const p = spawn('qemu-system-x86_64', ['-M', 'microvm,x-option-roms=off,isa-serial=on', '-accel', 'tcg', '-cpu', 'qemu64', '-m', '1024', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-serial', `file:${consolePath}`,
    '-kernel', join(root, 'boot/vmlinuz'), '-initrd', join(root, 'boot/initrd.img'),
    '-append', `console=ttyS0 reboot=t panic=-1 tsc_early_khz=${hostKhz() ?? 0}`], { stdio: 'ignore' });
  try {
    await waitFor('bare boot', () => existsSync(consolePath) && BOOT_PATTERN.test(readFileSync(consolePath, 'utf8')), 60_000, 20);
    return performance.now() - started;
  } finally {
    p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const layout = testGuestLayout();
const lab = await startLab();
try {
  await importGuest(lab, layout);
  const vms = api(lab);
  const rootfs = join(lab.stateDir, 'images', 'rootfs', readFileSync(join(layout, 'index.json'), 'utf8').match(/sha256:([0-9a-f]{64})/)?.[1] ?? '');
  // Warm-up: the first create unpacks the image and builds the base volume once.
  const warm = await vms.create('warm', [{ id: 'eth0', type: 'TAP' }]);
  await waitFor('warm boot', async () => (await vms.get(warm))?.status?.guestBooted, 90_000, 20);
  await vms.delete(warm);
  const bare: number[] = [];
  const viaApi: number[] = [];
  for (let i = 0; i < rounds; i++) {
    bare.push(await bareQemu(rootfs));
    const t0 = performance.now();
    const uid = await vms.create(`b${i}`, [{ id: 'eth0', type: 'TAP' }]);
    await waitFor('booted', async () => (await vms.get(uid))?.status?.guestBooted, 90_000, 20);
    viaApi.push(performance.now() - t0);
    await vms.delete(uid);
    await waitFor('gone', async () => (await vms.get(uid)) === undefined, 30_000, 50);
    process.stdout.write(`round ${i + 1}: bare qemu ${bare[i]?.toFixed(0)} ms, matchlock create->booted ${viaApi[i]?.toFixed(0)} ms\n`);
  }
  process.stdout.write(`median: bare ${median(bare).toFixed(0)} ms, matchlock ${median(viaApi).toFixed(0)} ms, ratio ${(median(viaApi) / median(bare)).toFixed(2)}\n`);
} finally {
  await lab.destroy();
}
