import assert from 'node:assert/strict';
import { appendFileSync, closeSync, constants, existsSync, openSync, readFileSync, statSync, writeFileSync, writeSync, type PathLike } from 'node:fs';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
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

it('LogBound: a pass asked for while one runs is a pass of its own, after it, not the running one', async () => {
  const f = join(tmp.path, 'busy.log');
  writeFileSync(f, '');
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let calls = 0;
  // The first pass is held in its listing of files, as a slow pass on a loaded host would be.
  const bound = new LogBound(async () => (++calls === 1 ? gate.then(() => [f]) : [f]), 4096, silentLogger);
  const first = bound.pass();
  appendFileSync(f, Buffer.alloc(8192, 0x61));
  const second = bound.pass();
  release();
  await second;
  assert.ok(statSync(f).size <= 4096, `written before the second pass was asked for, still ${statSync(f).size} bytes after it`);
  await first;
  assert.equal(calls, 2);
});

it('LogBound looks at a file again only after it changed, and opens only one over its bound: idle VMs cost no file system call', async () => {
  const [a, b] = ['idle-a.log', 'idle-b.log'].map((f) => join(tmp.path, f)) as [string, string];
  writeFileSync(a, 'booted\n');
  // Every stat and open of a log, counted where the bound makes them: node:fs/promises, whose
  // ESM exports follow the CommonJS object after syncBuiltinESMExports.
  const opened: string[] = [];
  const looked: string[] = [];
  const realOpen = fsp.open;
  const realStat = fsp.stat;
  fsp.open = ((path: PathLike, ...rest: [string?]) => {
    opened.push(String(path));
    return realOpen(path, ...rest);
  }) as typeof fsp.open;
  fsp.stat = ((path: PathLike, ...rest: []) => {
    looked.push(String(path));
    return realStat(path, ...rest);
  }) as typeof fsp.stat;
  syncBuiltinESMExports();
  const bound = new LogBound(async () => [a, b], 4096, silentLogger);
  const opens = (f: string) => opened.filter((p) => p === f).length;
  const looks = (f: string) => looked.filter((p) => p === f).length;
  try {
    await bound.pass();
    assert.equal(looks(a), 1, 'the first pass looks at every file');
    assert.equal(opens(a), 0, 'a file under its bound is not opened: its size is all the bound needs');
    for (let i = 0; i < 3; i++) await bound.pass();
    assert.equal(looks(a), 1, 'an unchanged file is not looked at again');
    assert.equal(looks(b), 4, 'a file not made yet cannot be watched: it is tried on every pass');
    writeFileSync(b, 'made\n');
    await bound.pass();
    await bound.pass();
    assert.equal(looks(b), 5, 'once made and looked at, it is watched too');
    appendFileSync(a, Buffer.alloc(8192, 0x61));
    const deadline = Date.now() + 10_000;
    while (looks(a) === 1 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      await bound.pass();
    }
    assert.equal(looks(a), 2, 'a file that grew is looked at again');
    assert.equal(opens(a), 1, 'and, over its bound, opened');
    assert.ok(statSync(a).size <= 4096, 'and cut at its bound');
  } finally {
    bound.stop();
    fsp.open = realOpen;
    fsp.stat = realStat;
    syncBuiltinESMExports();
  }
});
