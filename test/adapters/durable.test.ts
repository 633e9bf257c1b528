import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/daemon.js';

const strace = spawnSync('strace', ['-V']).status === 0;

interface Call {
  name: string;
  /** The paths in the call: strace -y prints each descriptor's path in angle brackets. */
  text: string;
}

/** The calls of `names` in the order they started (an unfinished call counts where it began). */
function calls(trace: string, names: string[]): Call[] {
  const out: Call[] = [];
  for (const line of trace.split('\n')) {
    const m = /^\d+\s+(\w+)\((.*)$/.exec(line);
    if (m?.[1] && names.includes(m[1])) out.push({ name: m[1], text: m[2] ?? '' });
  }
  return out;
}

describe('files renamed into place are on disk before their name is', { skip: strace ? false : 'needs strace' }, () => {
  const tmp = tempDir('durable');
  after(() => tmp.remove());

  it('fsyncs the seed, the guard file and a tree before the rename and the directory after', async () => {
    const worker = fileURLToPath(new URL('./durable-worker.ts', import.meta.url));
    const trace = join(tmp.path, 'trace');
    const p = spawn('strace', ['-f', '-qq', '-y', '-e', 'trace=fsync,fdatasync,syncfs,rename,renameat,renameat2', '-o', trace, process.execPath, '--import', 'tsx', worker, tmp.path], { stdio: 'inherit' });
    assert.equal(await new Promise((resolve) => p.once('exit', resolve)), 0);
    const seen = calls(readFileSync(trace, 'utf8'), ['fsync', 'fdatasync', 'syncfs', 'rename', 'renameat', 'renameat2']);
    const at = (what: string, pred: (c: Call) => boolean) => {
      const i = seen.findIndex(pred);
      assert.ok(i >= 0, `${what} was not made; the trace has: ${seen.map((c) => `${c.name}(${c.text.slice(0, 120)}`).join('\n')}`);
      return i;
    };
    const isSync = (c: Call) => c.name === 'fsync' || c.name === 'fdatasync';
    const isRename = (c: Call) => c.name.startsWith('rename');
    for (const [what, dir, tmpName, final] of [
      ['seed', join(tmp.path, 'vm'), 'cidata.img.tmp', 'cidata.img'],
      ['guard file', join(tmp.path, 'etc'), 'guard.nft.tmp', 'guard.nft'],
    ] as const) {
      const synced = at(`an fsync of the ${what}'s temporary`, (c) => isSync(c) && c.text.includes(`<${join(dir, tmpName)}>`));
      const renamed = at(`the ${what}'s rename`, (c) => isRename(c) && c.text.includes(`"${join(dir, tmpName)}"`) && c.text.includes(`"${join(dir, final)}"`));
      assert.ok(synced < renamed, `the ${what} was renamed before it was fsync'd`);
      const dirSynced = seen.findIndex((c, i) => i > renamed && isSync(c) && c.text.includes(`<${dir}>`));
      assert.ok(dirSynced > renamed, `the ${what}'s directory was not fsync'd after the rename`);
    }
    const rootfs = join(tmp.path, 'rootfs');
    const flushed = at('a syncfs of the tree', (c) => c.name === 'syncfs');
    const moved = at("the tree's rename", (c) => isRename(c) && c.text.includes(`"${join(rootfs, 'tree')}"`));
    assert.ok(flushed < moved, 'the tree was renamed before its filesystem was synced');
    assert.ok(seen.some((c, i) => i > moved && isSync(c) && c.text.includes(`<${rootfs}>`)), 'the tree\'s directory was not fsync\'d after the rename');
  });
});
