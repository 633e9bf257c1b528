import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/daemon.js';

describe('the shared ip process and the bound on its waiting input', () => {
  const tmp = tempDir('ip-bound');
  after(() => tmp.remove());

  for (const through of ['the process spawner', 'a direct child'] as const)
  it(`a change whose ip was killed for input it did not take says so, not only "killed by SIGKILL" (${through})`, () => {
    // An `ip` that never reads its stdin: the link changes written to it pile up past the
    // bound of a streamed program's input (64 MiB), and it is killed.
    const bin = join(tmp.path, through === 'a direct child' ? 'bin-direct' : 'bin-spawner');
    mkdirSync(bin);
    writeFileSync(join(bin, 'ip'), '#!/bin/sh\nexec sleep 60\n');
    chmodSync(join(bin, 'ip'), 0o755);
    const network = fileURLToPath(new URL('../../src/adapters/network/iproute2/network.ts', import.meta.url));
    const spawner = fileURLToPath(new URL('../../src/adapters/spawner.ts', import.meta.url));
    const script = `
      const { Iproute2Network } = await import(${JSON.stringify(network)});
      const { startSpawner } = await import(${JSON.stringify(spawner)});
      const log = { debug() {}, info() {}, warn() {}, error() {}, child() { return log; } };
      if (${JSON.stringify(through === 'the process spawner')} && !(await startSpawner(log))) throw new Error('the spawner did not start');
      const net = new Iproute2Network({ useSysfs: true });
      const alias = 'a'.repeat(1 << 20);
      const results = await Promise.allSettled(Array.from({ length: 70 }, (_, i) => net.adopt('mlt' + i, { alias })));
      const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message.slice(-300));
      process.stdout.write(JSON.stringify(failed));
      process.exit(0);`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` }, encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    const failed = JSON.parse(r.stdout) as string[];
    assert.equal(failed.length, 70, 'every change waiting on the killed ip fails');
    for (const m of failed) assert.match(m, /: ip: more than \d+ bytes waited to be written to its stdin/);
  });
});
