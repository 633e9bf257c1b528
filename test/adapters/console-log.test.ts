import assert from 'node:assert/strict';
import { closeSync, constants, existsSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { boundFile, LogBound, readTail } from '../../src/adapters/vmm/console.js';
import { silentLogger } from '../../src/adapters/silent-logger.js';
import { tempDir } from '../helpers/daemon.js';

const tmp = tempDir('console-log');
after(() => tmp.remove());

it('cuts a log past its bound: the last bytes go to .1, an O_APPEND writer carries on at the start', async () => {
  const log = join(tmp.path, 'a.log');
  // As a VMM holds it: open for the VMM's whole life, O_APPEND.
  const fd = openSync(log, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND);
  try {
    for (let i = 0; i < 100; i++) writeSync(fd, `line ${String(i).padStart(3, '0')}\n`); // 9 bytes each
    assert.equal(await boundFile(log, 1000), false, 'under the bound: untouched');
    for (let i = 100; i < 200; i++) writeSync(fd, `line ${String(i).padStart(3, '0')}\n`);
    assert.equal(await boundFile(log, 1000), true);
    assert.equal(statSync(log).size, 0);
    const kept = readFileSync(`${log}.1`, 'utf8');
    assert.equal(kept.length, 1000);
    assert.ok(kept.endsWith('line 199\n'));
    writeSync(fd, 'after\n');
    assert.equal(readFileSync(log, 'utf8'), 'after\n', 'no hole before the next write');
    // --tail spans the cut.
    assert.equal((await readTail(log, 2)).data.toString(), 'line 199\nafter\n');
  } finally {
    closeSync(fd);
  }
  assert.equal(await boundFile(join(tmp.path, 'missing.log'), 10), false);
});

it('LogBound keeps every file it is given under the bound on its passes', async () => {
  const files = ['x.log', 'y.log'].map((f) => join(tmp.path, f));
  const fds = files.map((f) => openSync(f, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND));
  const bound = new LogBound(async () => files, 4096, silentLogger, 20);
  bound.start();
  try {
    for (let round = 0; round < 30; round++) {
      for (const fd of fds) writeSync(fd, Buffer.alloc(1024, 0x61));
      await new Promise((r) => setTimeout(r, 25));
    }
    await bound.pass();
    for (const f of files) {
      assert.ok(statSync(f).size <= 4096, `${f}: ${statSync(f).size}`);
      assert.ok(existsSync(`${f}.1`) && statSync(`${f}.1`).size <= 4096);
    }
  } finally {
    bound.stop();
    for (const fd of fds) closeSync(fd);
  }
});
