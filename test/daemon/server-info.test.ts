import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { buildCommit } from '../../src/daemon/server-info.js';
import { tempDir } from '../helpers/daemon.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);

describe('GetServerInfo commit', () => {
  const tmp = tempDir('commit');
  after(() => tmp.remove());
  const write = (path: string, text: string) => {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text);
  };

  it('reads HEAD as git stores it: loose ref, packed ref, detached, a linked checkout; the environment wins', () => {
    const repo = join(tmp.path, 'repo');
    write(join(repo, '.git', 'HEAD'), 'ref: refs/heads/main\n');
    write(join(repo, '.git', 'refs', 'heads', 'main'), `${A}\n`);
    assert.equal(buildCommit({}, repo), A);
    assert.equal(buildCommit({ MATCHLOCK_COMMIT: 'v1-build' }, repo), 'v1-build');

    write(join(repo, '.git', 'HEAD'), 'ref: refs/heads/packed\n');
    write(join(repo, '.git', 'packed-refs'), `# pack-refs with: peeled\n${B} refs/heads/packed\n`);
    assert.equal(buildCommit({}, repo), B);

    write(join(repo, '.git', 'HEAD'), `${C}\n`);
    assert.equal(buildCommit({}, repo), C);

    // A linked checkout: .git is a file naming its git dir, whose refs live in the common dir.
    const linked = join(tmp.path, 'linked');
    const gitdir = join(repo, '.git', 'worktrees', 'linked');
    write(join(linked, '.git'), `gitdir: ${gitdir}\n`);
    write(join(gitdir, 'HEAD'), 'ref: refs/heads/main\n');
    write(join(gitdir, 'commondir'), '../..\n');
    assert.equal(buildCommit({}, linked), A);

    assert.equal(buildCommit({}, join(tmp.path, 'not-a-checkout')), '');
  });
});
