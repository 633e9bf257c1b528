import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdirSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import { LocalImageStore } from '../../src/adapters/images/oci/store.js';
import { Ext4Volumes } from '../../src/adapters/volumes/ext4.js';
import { silentLogger } from '../fakes/memory-store.js';
import { tempDir } from '../helpers/daemon.js';

describe('a VM volume called off while it is being copied', () => {
  const tmp = tempDir('volume-cancel');
  after(() => tmp.remove());

  it('stops the copy, rejects with Canceled and leaves nothing under the volume\'s name', { timeout: 60_000 }, async () => {
    const digest = `sha256:${'ab'.repeat(32)}`;
    const baseDir = join(tmp.path, 'base');
    const vmDir = join(tmp.path, 'vm');
    mkdirSync(baseDir);
    mkdirSync(vmDir);
    // A base that never ends: a FIFO with a writer that writes nothing. It cannot be reflinked,
    // so the copy falls to `cp`, which reads it until it is stopped.
    const base = join(baseDir, `${digest.slice(7)}.ext4`);
    execFileSync('mkfifo', [base]);
    const writer = openSync(base, constants.O_RDWR);
    try {
      const volumes = new Ext4Volumes(new LocalImageStore(join(tmp.path, 'images')), baseDir);
      const key = { uid: 'uid-1', volumeId: 'root', dir: vmDir };
      const pass = new AbortController();
      const creating = volumes.create(key, digest, undefined, silentLogger, pass.signal);
      // Until the copy has begun its temporary is there.
      const end = Date.now() + 10_000;
      while (readdirSync(vmDir).length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      assert.equal(readdirSync(vmDir).length, 1, 'the copy did not begin');
      pass.abort(new MatchlockError(ErrorCode.Canceled, 'microvm uid-1: create pass called off by a delete'));
      await assert.rejects(creating, (e: MatchlockError) => e.code === ErrorCode.Canceled && /^cp --sparse=always .*: called off: microvm uid-1: create pass called off by a delete$/.test(e.message));
      assert.deepEqual(readdirSync(vmDir), []);
      assert.equal(existsSync(volumes.path(key)), false);
    } finally {
      closeSync(writer);
    }
  });
});
