import assert from 'node:assert/strict';
import { appendFileSync, closeSync, constants, existsSync, openSync, readFileSync, renameSync, statSync, unlinkSync, watch, writeFileSync, writeSync, type PathLike } from 'node:fs';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { boundFile, followFile, LogBound, readTail, rotateForStart } from '../../src/adapters/vmm/console.js';
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
  // Every stat and open of a log, counted where the bound makes them: node:fs/promises and
  // node:fs (its stats are made in place), whose ESM exports follow the CommonJS objects after
  // syncBuiltinESMExports.
  const opened: string[] = [];
  const looked: string[] = [];
  const realOpen = fsp.open;
  const realStat = fsp.stat;
  // statSync is declared a const of node:fs; its CommonJS object takes the assignment.
  const cjs = fs as { statSync: typeof fs.statSync };
  const realStatSync = fs.statSync;
  cjs.statSync = ((path: PathLike, ...rest: []) => {
    looked.push(String(path));
    return realStatSync(path, ...rest);
  }) as typeof fs.statSync;
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
    // Twice: the inode before the watch is placed, the size after it (see LogBound.lookFirst).
    assert.equal(looks(a), 2, 'the first pass looks at every file');
    assert.equal(opens(a), 0, 'a file under its bound is not opened: its size is all the bound needs');
    for (let i = 0; i < 3; i++) await bound.pass();
    assert.equal(looks(a), 2, 'an unchanged file is not looked at again');
    assert.equal(looks(b), 4, 'a file not made yet cannot be watched: it is tried on every pass');
    writeFileSync(b, 'made\n');
    await bound.pass();
    await bound.pass();
    assert.equal(looks(b), 6, 'once made and looked at, it is watched too');
    appendFileSync(a, Buffer.alloc(8192, 0x61));
    const deadline = Date.now() + 10_000;
    while (looks(a) === 2 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      await bound.pass();
    }
    assert.equal(looks(a), 3, 'a file that grew is looked at again, with one stat');
    assert.equal(opens(a), 1, 'and, over its bound, opened');
    assert.ok(statSync(a).size <= 4096, 'and cut at its bound');
  } finally {
    bound.stop();
    fsp.open = realOpen;
    fsp.stat = realStat;
    cjs.statSync = realStatSync;
    syncBuiltinESMExports();
  }
});

it('a writer without O_APPEND goes on past a hole after a cut: the bound counts its data, .1 keeps the real last bytes, no zeros', async () => {
  const log = join(tmp.path, 'own-offset.log');
  // As Firecracker holds its log and metrics files: written at the writer's own offset.
  const fd = openSync(log, 'w');
  const lines = (from: number, n: number) => Array.from({ length: n }, (_, i) => `line ${String(from + i).padStart(5, '0')}\n`).join(''); // 11 bytes each
  try {
    writeSync(fd, lines(0, 455)); // 5,005 bytes
    assert.equal(await boundFile(log, 4096), true);
    assert.ok(readFileSync(`${log}.1`, 'utf8').endsWith('line 00454\n'));
    writeSync(fd, 'after\n'); // lands at offset 5,005, after a hole
    assert.equal(statSync(log).size, 5011, 'the size counts the hole');
    assert.equal(await boundFile(log, 4096), false, 'one line of data is under the bound, whatever the size');
    assert.ok(readFileSync(`${log}.1`, 'utf8').endsWith('line 00454\n'), 'the kept history is not replaced by the hole');
    assert.equal((await readTail(log, 2)).data.toString(), 'line 00454\nafter\n', '--tail skips the hole');
    const more = lines(1000, 300); // 3,300 bytes: data in two blocks, less than the bound of real bytes
    writeSync(fd, more);
    assert.equal(await boundFile(log, 4096), true);
    const kept = readFileSync(`${log}.1`);
    assert.equal(kept.indexOf(0), -1, '.1 holds no NUL byte of the hole');
    assert.equal(kept.toString(), `after\n${more}`, '.1 holds the bytes written since the last cut');
    assert.equal((await readTail(log, undefined)).data.toString(), `after\n${more}`);
    writeSync(fd, lines(2000, 500));
    assert.equal(await boundFile(log, 4096), true);
    const last = readFileSync(`${log}.1`);
    assert.equal(last.length, 4096);
    assert.equal(last.indexOf(0), -1);
    assert.equal(last.toString(), lines(2000, 500).slice(-4096));
  } finally {
    closeSync(fd);
  }
});

it('LogBound follows a path whose file is replaced (renamed over, removed and made again, moved to .1): the new file is cut too', async () => {
  for (const replace of ['rename over', 'remove and make', 'move to .1'] as const) {
    const log = join(tmp.path, `replaced-${replace.replaceAll(' ', '-')}.log`);
    // The old writer keeps its file open, with O_APPEND, as a VMM does.
    const old = openSync(log, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND);
    const bound = new LogBound(async () => [log], 4096, silentLogger);
    try {
      writeSync(old, 'booted\n');
      await bound.pass(); // looked at, and watched
      // The old file's event (its link count, or its move) reaches every watch of it at once:
      // seen here, it was seen by the bound, and the pass after it looks at the path before
      // the new file grows.
      const seen = new Promise<void>((resolve) => {
        const w = watch(log, () => {
          w.close();
          resolve();
        });
      });
      if (replace === 'rename over') {
        writeFileSync(`${log}.new`, Buffer.alloc(100, 0x62));
        renameSync(`${log}.new`, log);
      } else if (replace === 'remove and make') {
        unlinkSync(log);
        writeFileSync(log, Buffer.alloc(100, 0x62));
      } else {
        renameSync(log, `${log}.1`);
        writeFileSync(log, Buffer.alloc(100, 0x62));
      }
      await seen;
      await bound.pass();
      assert.ok(statSync(log).size <= 4096);
      const tail = 'the new writer, last\n';
      appendFileSync(log, Buffer.concat([Buffer.alloc(20_000, 0x63), Buffer.from(tail)]));
      const deadline = Date.now() + 10_000;
      while (statSync(log).size > 4096 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        await bound.pass();
      }
      assert.ok(statSync(log).size <= 4096, `${replace}: the new file is still ${statSync(log).size} bytes`);
      const kept = readFileSync(`${log}.1`);
      assert.equal(kept.length, 4096);
      assert.ok(kept.toString().endsWith(tail), `${replace}: .1 holds the new file's last bytes`);
      assert.equal(kept.indexOf(0), -1);
    } finally {
      bound.stop();
      closeSync(old);
    }
  }
});

it('following a file cut under a writer without O_APPEND starts over past the hole: no zeros are sent', async () => {
  const log = join(tmp.path, 'follow-hole.log');
  const fd = openSync(log, 'w');
  try {
    writeSync(fd, Buffer.alloc(200_000, 0x61));
    const { offset } = await readTail(log, 0);
    assert.equal(await boundFile(log, 4096), true);
    const got: Buffer[] = [];
    const stop = new AbortController();
    const following = followFile(log, offset, stop.signal, (d) => void got.push(d), 10);
    // The follower finds the file shorter than its offset (cut, nothing written since) and
    // starts over at 0; the writer then goes on at its own offset, past a 200,000-byte hole.
    await new Promise((r) => setTimeout(r, 100));
    writeSync(fd, 'after the cut\n');
    writeSync(fd, 'and on\n');
    const deadline = Date.now() + 10_000;
    while (!Buffer.concat(got).toString().includes('and on\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    stop.abort();
    await following;
    const sent = Buffer.concat(got);
    assert.equal(sent.indexOf(0), -1, `${sent.length} bytes sent, zeros among them`);
    assert.equal(sent.toString(), 'after the cut\nand on\n');
  } finally {
    closeSync(fd);
  }
});

it('before a VMM start, each run file with output moves to .1; an empty one stays and keeps the older .1; a missing one is skipped', async () => {
  const [used, empty, missing] = ['used.log', 'empty.log', 'missing.log'].map((f) => join(tmp.path, f)) as [string, string, string];
  writeFileSync(used, 'last run\n');
  writeFileSync(`${used}.1`, 'run before\n');
  writeFileSync(empty, '');
  writeFileSync(`${empty}.1`, 'crash of the run before\n');
  await rotateForStart([used, empty, missing]);
  assert.equal(existsSync(used), false, 'the next run starts its file afresh');
  assert.equal(readFileSync(`${used}.1`, 'utf8'), 'last run\n');
  assert.equal(readFileSync(empty, 'utf8'), '');
  assert.equal(readFileSync(`${empty}.1`, 'utf8'), 'crash of the run before\n');
  assert.equal(existsSync(`${missing}.1`), false);
});
