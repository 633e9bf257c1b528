import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { labMissing, startLab, testGuestLayout, type Lab } from '../helpers/lab.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { multiArchLayout } from './oci-fixtures.js';
import { api, consoleOf, stateOf, vmDir, waitFor } from './vm.js';
import { tempDir } from '../helpers/daemon.js';

const missing = labMissing() ?? (['docker-registry', 'skopeo', 'debugfs'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) ? 'docker-registry, skopeo or debugfs missing' : undefined);
const skip = missing && !process.env.CI ? missing : false;

/**
 * Reads a file out of an ext4 image without mounting it; undefined when it is not there. The
 * image of a running guest may hold what its sync wrote only in the journal (debugfs does not
 * replay it), so a copy with its journal replayed is read.
 */
function readFromVolume(image: string, path: string): string | undefined {
  const copy = `${image}.read-${process.pid}`;
  try {
    execFileSync('cp', ['--sparse=always', image, copy]);
    spawnSync('e2fsck', ['-y', '-E', 'journal_only', copy], { stdio: 'ignore' });
    const r = spawnSync('debugfs', ['-R', `cat ${path}`, copy], { encoding: 'utf8' });
    return r.status === 0 && !/File not found/.test(r.stderr) ? r.stdout : undefined;
  } finally {
    rmSync(copy, { force: true });
  }
}

describe('runtime: MicroVMs from images in a registry', { skip }, () => {
  let lab: Lab;
  let registry: Registry;
  const tmp = tempDir('regboot');
  before(async () => {
    assert.equal(missing, undefined);
    const layout = testGuestLayout();
    lab = await startLab();
    registry = await startRegistry(lab.ns);
    registry.push(`${layout}:latest`, 'matchlock/guest:1');
    registry.push(`${multiArchLayout(layout, join(tmp.path, 'multi'))}:multi`, 'matchlock/guest:multi', true);
  });
  after(async () => {
    await lab?.destroy();
    await registry?.stop();
    tmp.remove();
  });

  it('pulls on create, boots two VMs from one download and one base volume, and keeps their writes apart', async () => {
    const vms = api(lab);
    const ref = `${registry.host}/matchlock/guest:multi`;
    const write = (who: string) => `#!/bin/sh\necho "${who} was here" > /root/${who}.txt\nsync\necho wrote-${who}\n`;
    const [a, b] = await Promise.all([
      vms.create('vm-a', [{ id: 'eth0', type: 'TAP' }], write('a'), ref),
      vms.create('vm-b', [{ id: 'eth0', type: 'TAP' }], write('b'), ref),
    ]);
    for (const [uid, name] of [[a, 'vm-a'], [b, 'vm-b']] as const) {
      await waitFor(`${name} CREATED`, async () => stateOf(await vms.get(uid)) === 'CREATED', 120_000);
      await waitFor(`${name} ran its user-data`, () => consoleOf(lab, name, uid).includes(`MATCHLOCK_USERDATA wrote-${name.slice(3)}`), 90_000);
    }
    const vmA = await vms.get(a);
    const digest = vmA?.status?.imageDigests[ref];
    assert.match(digest ?? '', /^sha256:[0-9a-f]{64}$/, 'the resolved digest is pinned on the status');
    assert.equal((await vms.get(b))?.status?.imageDigests[ref], digest);
    const pulls = lab.daemon.logs.filter((l) => l.includes('"msg":"image pulled"'));
    assert.equal(pulls.length, 1, `one download for both VMs: ${pulls.join('\n')}`);
    assert.equal(readdirSync(join(lab.stateDir, 'images', 'base')).length, 1, 'one base volume');
    const volA = join(vmDir(lab, 'vm-a', a), 'volume-root.img');
    const volB = join(vmDir(lab, 'vm-b', b), 'volume-root.img');
    assert.equal(readFromVolume(volA, '/root/a.txt'), 'a was here\n');
    assert.equal(readFromVolume(volA, '/root/b.txt'), undefined);
    assert.equal(readFromVolume(volB, '/root/b.txt'), 'b was here\n');
    assert.equal(readFromVolume(volB, '/root/a.txt'), undefined);
    const base = join(lab.stateDir, 'images', 'base', readdirSync(join(lab.stateDir, 'images', 'base'))[0] ?? '');
    assert.equal(readFromVolume(base, '/root/a.txt'), undefined, 'the shared base is untouched');

    // The tag moves to another image; a VM made before keeps its digest.
    execFileSync('ip', ['netns', 'exec', lab.ns, 'skopeo', 'copy', '--quiet', '--all', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${registry.host}/matchlock/guest:1`, `docker://${registry.host}/matchlock/guest:multi`], { stdio: 'ignore' });
    // A restart reconciles everything again; the pinned digest is used, nothing is pulled.
    await lab.restartDaemon(false);
    const again = api(lab);
    await waitFor('still CREATED after the restart', async () => stateOf(await again.get(a)) === 'CREATED' && stateOf(await again.get(b)) === 'CREATED', 60_000);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await again.get(a))?.status?.imageDigests[ref], digest);
    assert.deepEqual(lab.daemon.logs.filter((l) => l.includes('"msg":"image pulled"')), []);
    for (const uid of [a, b]) await again.delete(uid);
    await waitFor('both gone', async () => (await again.get(a)) === undefined && (await again.get(b)) === undefined, 30_000);
  });
});
