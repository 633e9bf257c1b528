import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { run } from '../../src/cli/main.js';
import { EXIT } from '../../src/cli/client.js';
import { initialStatus } from '../../src/core/microvm/types.js';
import { tempDir } from '../helpers/daemon.js';
import { testGuestLayout } from '../helpers/lab.js';
import { writeImageLayout } from '../helpers/oci.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { guestDigests } from '../e2e/oci-fixtures.js';

async function cli(args: string[]) {
  let out = '';
  let err = '';
  const code = await run(args, { out: (t) => (out += t), err: (t) => (err += t) }, {});
  return { code, out, err };
}

const missing = ['docker-registry', 'skopeo'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);

describe('matchlock image', { skip: missing.length && !process.env.CI ? `missing: ${missing.join(', ')}` : false }, () => {
  const tmp = tempDir('cli-image');
  let registry: Registry;
  let layout: string;
  before(async () => {
    layout = testGuestLayout();
    registry = await startRegistry();
    registry.push(`${layout}:latest`, 'matchlock/guest:1');
  });
  after(async () => {
    await registry?.stop();
    tmp.remove();
  });

  it('pulls with plain progress lines, lists size and users, refuses to remove an image in use, prunes the rest', async () => {
    const state = ['--state-dir', join(tmp.path, 'state'), '--config', '/dev/null'];
    const ref = `${registry.host}/matchlock/guest:1`;
    const pulled = await cli(['image', 'pull', ref, ...state, '--init', '--registry-auth-file', join(tmp.path, 'none.json')]);
    assert.equal(pulled.code, EXIT.ok, pulled.err);
    const { manifest } = guestDigests(layout);
    assert.equal(pulled.out, `${ref} ${manifest}\n`);
    const lines = pulled.err.trim().split('\n');
    assert.match(lines.at(-1) ?? '', new RegExp(`^${ref.replace(/[.]/g, '\\.')}: \\S+/\\S+ 100% blobs 2/2$`));
    assert.ok(lines.length <= 4, 'one line per finished blob without a terminal');
    // Ready for VMs: a burst of creates of a pulled image does not all wait on its first unpack.
    const rootfs = join(tmp.path, 'state', 'images', 'rootfs');
    assert.deepEqual(readdirSync(rootfs), [manifest.slice(7)]);
    assert.ok(existsSync(join(rootfs, manifest.slice(7), 'boot', 'vmlinuz')));
    const imported = await cli(['image', 'import', layout, '--name', 'localhost/spare:1', ...state]);
    assert.equal(imported.code, EXIT.ok, imported.err);
    assert.equal(imported.out, `localhost/spare:1 ${manifest}\n`);

    // A VM record that pinned the pulled image.
    const db = new SqliteStore(join(tmp.path, 'state', 'matchlock.db'));
    db.insert({
      uid: '01HZY3NDEKTSV4RRFFQ69G5FAV', version: 1, createdAt: '', updatedAt: '',
      spec: { name: 'user', namespace: 'ns', labels: {}, vcpu: 1, memoryInMb: 1024, kernel: { image: ref, filename: 'boot/vmlinuz', cmdline: {}, addNetworkConfig: false }, additionalVolumes: [], interfaces: [], metadata: {}, provider: 'qemu', allowGuestAgent: false },
      status: { ...initialStatus(), imageDigests: { [ref]: manifest } },
    });
    db.close();
    const ls = await cli(['-o', 'json', 'image', 'ls', ...state]);
    const images = JSON.parse(ls.out) as { ref: string; size: number; usedBy: string[] }[];
    assert.deepEqual(images.map((i) => [i.ref, i.usedBy]), [[ref, ['ns/user']], ['localhost/spare:1', ['ns/user']]]);
    assert.ok((images[0]?.size ?? 0) > 1_000_000);

    const rm = await cli(['image', 'rm', ref, ...state]);
    assert.equal(rm.code, EXIT.precondition);
    assert.match(rm.err, /is used by a MicroVM; delete the VM first/);
    const missingRm = await cli(['image', 'rm', 'localhost/nope:1', ...state]);
    assert.equal(missingRm.code, EXIT.notFound);

    const db2 = new SqliteStore(join(tmp.path, 'state', 'matchlock.db'));
    db2.remove('01HZY3NDEKTSV4RRFFQ69G5FAV');
    db2.close();
    const young = await cli(['image', 'prune', '--grace', '1h', ...state]);
    assert.equal(young.out, 'nothing to prune\n', 'images younger than the grace period stay');
    const prune = await cli(['image', 'prune', ...state]);
    assert.equal(prune.code, EXIT.ok, prune.err);
    assert.equal(prune.out.split('\n').filter(Boolean).length, 2);
    assert.deepEqual(readdirSync(join(tmp.path, 'state', 'images', 'refs')), []);
    assert.deepEqual(readdirSync(rootfs), [], 'the unpacked tree goes with the last reference');
    assert.equal((await cli(['image', 'ls', ...state])).out, 'REFERENCE  DIGEST  SIZE  USED BY\n');
    // Blobs of a minute ago may belong to a pull in flight: they stay until they are old.
    assert.ok(existsSync(join(tmp.path, 'state', 'images', 'blobs', 'sha256', manifest.slice(7))));
  });

  it('an import whose unpack fails because of the host (no gzip) says the image is stored and why it is not ready, and fails', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-unpack'), '--config', '/dev/null', '--init'];
    const layout = join(tmp.path, 'gzip-layout');
    mkdirSync(layout);
    const manifest = writeImageLayout(layout, [gzipSync(Buffer.alloc(1024))]);
    // A host without gzip: the unpack's shell and mkfifo are found, gzip is not.
    const bin = join(tmp.path, 'no-gzip-bin');
    mkdirSync(bin);
    for (const tool of ['sh', 'mkfifo']) symlinkSync(spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim(), join(bin, tool));
    const path = process.env.PATH;
    process.env.PATH = bin;
    let r;
    try {
      r = await cli(['image', 'import', layout, '--name', 'localhost/bad:1', ...state]);
    } finally {
      process.env.PATH = path;
    }
    assert.equal(r.code, EXIT.precondition, r.err);
    assert.match(r.err, new RegExp(`localhost/bad:1 ${manifest.digest} is in the image store, but unpacking it failed: .*layer 0 \\(sha256:[0-9a-f]{64}\\): gzip is not installed`));
    assert.equal(r.out, '');
    // Stored whole, as before this command unpacked: listed, and no tree is left behind.
    const ls = await cli(['-o', 'json', 'image', 'ls', ...state]);
    assert.deepEqual((JSON.parse(ls.out) as { ref: string }[]).map((i) => i.ref), ['localhost/bad:1']);
    assert.equal(existsSync(join(tmp.path, 'state-unpack', 'images', 'rootfs', manifest.digest.slice(7))), false);
  });

  it('an import of a layer media type that cannot be unpacked fails naming it and records no image', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-media-type'), '--config', '/dev/null', '--init'];
    const bad = join(tmp.path, 'bad-layout');
    mkdirSync(bad);
    const manifest = writeImageLayout(bad, [{ data: Buffer.from('not a tar'), mediaType: 'application/vnd.example.layer.v1' }]);
    const r = await cli(['image', 'import', bad, '--name', 'localhost/bad:1', ...state]);
    assert.equal(r.code, EXIT.precondition);
    assert.match(r.err, new RegExp(`image ${manifest.digest}: layer 0 \\(sha256:[0-9a-f]{64}\\) has media type "application/vnd\\.example\\.layer\\.v1", which cannot be unpacked`));
    assert.equal((await cli(['image', 'ls', ...state])).out, 'REFERENCE  DIGEST  SIZE  USED BY\n', 'no image recorded');
  });

  it('an import whose layer does not match its diff_id fails naming the layer and records no image', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-diff-id'), '--config', '/dev/null', '--init'];
    const bad = join(tmp.path, 'diff-id-layout');
    mkdirSync(bad);
    const wrong = `sha256:${'0'.repeat(64)}`;
    const manifest = writeImageLayout(bad, [gzipSync(Buffer.alloc(1024))], undefined, { rootfs: { type: 'layers', diff_ids: [wrong] } });
    const r = await cli(['image', 'import', bad, '--name', 'localhost/diff:1', ...state]);
    assert.equal(r.code, EXIT.precondition, r.err);
    assert.match(r.err, new RegExp(`image ${manifest.digest}: layer 0 \\(sha256:[0-9a-f]{64}\\): its uncompressed content hashes to sha256:[0-9a-f]{64}, but the image config's rootfs\\.diff_ids\\[0\\] is ${wrong}`));
    assert.equal((await cli(['image', 'ls', ...state])).out, 'REFERENCE  DIGEST  SIZE  USED BY\n', 'no image recorded');
    assert.deepEqual(readdirSync(join(tmp.path, 'state-diff-id', 'images', 'rootfs')), [], 'no tree and no temporary left');
  });

  it('a pull that cannot reach its registry names the image and the registry, not only the network error', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-unreachable'), '--config', '/dev/null', '--init', '--registry-auth-file', join(tmp.path, 'none.json')];
    // Port 1 on loopback: nothing listens there.
    const r = await cli(['image', 'pull', '127.0.0.1:1/matchlock/guest:1', ...state]);
    assert.equal(r.code, EXIT.error);
    assert.match(r.err, /^matchlock: pull of 127\.0\.0\.1:1\/matchlock\/guest:1 from 127\.0\.0\.1:1 failed: .*ECONNREFUSED/);
  });

  it('a mirror without the image is passed over for its registry, and the failure names the host asked last', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-mirror'), '--config', '/dev/null', '--init', '--registry-auth-file', join(tmp.path, 'none.json')];
    // The mirror answers 404 for a repository it does not hold; the registry (port 1) is then asked.
    const r = await cli(['image', 'pull', '127.0.0.1:1/matchlock/absent:1', ...state, '--registry-mirrors', `127.0.0.1:1=${registry.host}`]);
    assert.equal(r.code, EXIT.error, r.err);
    assert.match(r.err, /^matchlock: pull of 127\.0\.0\.1:1\/matchlock\/absent:1 from 127\.0\.0\.1:1 failed: .*ECONNREFUSED/);
  });

  it('a registry setting names its registry as references do: any case on either side', async () => {
    const state = ['--state-dir', join(tmp.path, 'state-case'), '--config', '/dev/null', '--init', '--registry-auth-file', join(tmp.path, 'none.json')];
    // Only the mirror can serve: nothing listens on the registry's port 1.
    for (const [mirrors, ref] of [
      [`LOCALHOST:1=${registry.host}`, 'localhost:1/matchlock/guest:1'],
      [`localhost:1=${registry.host}`, 'LOCALHOST:1/matchlock/guest:1'],
    ] as const) {
      const r = await cli(['image', 'pull', ref, ...state, '--registry-mirrors', mirrors]);
      assert.equal(r.code, EXIT.ok, `${mirrors} ${ref}: ${r.err}`);
    }
  });

  it('a refused registry setting fails only the commands that reach a registry: import, ls, rm and prune work, pull makes nothing', async () => {
    const state = join(tmp.path, 'state-bad-setting');
    const config = join(tmp.path, 'bad-setting.yaml');
    writeFileSync(config, `state-dir: ${state}\nregistry-mirrors: https://docker.io=mirror.lan\n`);
    const refused = /^matchlock: registry-mirrors "https:\/\/docker\.io=mirror\.lan": must be registry=mirror or, for docker\.io, a mirror URL alone, /;
    const pull = await cli(['image', 'pull', `${registry.host}/matchlock/guest:1`, '--config', config, '--init']);
    assert.equal(pull.code, EXIT.usage, pull.err);
    assert.match(pull.err, refused);
    assert.equal(existsSync(state), false, 'a refused pull makes no store, even with --init');
    const imported = await cli(['image', 'import', layout, '--name', 'localhost/kept:1', '--config', config, '--init']);
    assert.equal(imported.code, EXIT.ok, imported.err);
    const ls = await cli(['-o', 'json', 'image', 'ls', '--config', config]);
    assert.equal(ls.code, EXIT.ok, ls.err);
    assert.deepEqual((JSON.parse(ls.out) as { ref: string }[]).map((i) => i.ref), ['localhost/kept:1']);
    const rm = await cli(['image', 'rm', 'localhost/kept:1', '--config', config]);
    assert.equal(rm.code, EXIT.ok, rm.err);
    assert.equal(rm.out, 'localhost/kept:1 removed\n');
    assert.equal((await cli(['image', 'import', layout, '--name', 'localhost/pruned:1', '--config', config])).code, EXIT.ok);
    const prune = await cli(['image', 'prune', '--config', config]);
    assert.equal(prune.code, EXIT.ok, prune.err);
    assert.match(prune.out, /^localhost\/pruned:1 removed$/m);
    // The store exists now; a pull is still refused for the setting.
    const again = await cli(['image', 'pull', `${registry.host}/matchlock/guest:1`, '--config', config]);
    assert.equal(again.code, EXIT.usage, again.err);
    assert.match(again.err, refused);
  });

  it("finds the store and the registry settings in matchlockd's config, and refuses a state dir without a store", async () => {
    const state = join(tmp.path, 'cfg-state');
    // Only the config's mirror can serve this reference: the pull shows the config was read.
    const config = join(tmp.path, 'matchlockd.yaml');
    writeFileSync(config, `# the daemon's file\nstate-dir: ${state}\nregistry-mirrors: mirror-only.invalid=${registry.host}\ncontainerd-socket: /run/containerd/containerd.sock\n`);
    const ref = 'mirror-only.invalid/matchlock/guest:1';
    const typo = await cli(['image', 'pull', ref, '--config', config]);
    assert.equal(typo.code, EXIT.usage);
    assert.match(typo.err, new RegExp(`state-dir \\(from ${config.replace(/[.]/g, '\\.')} or its default\\) ${state}: holds no matchlock store \\(matchlock\\.db\\).*--init`));
    assert.equal(existsSync(state), false, 'nothing is made in a state dir that holds no store');
    const pulled = await cli(['image', 'pull', ref, '--config', config, '--init']);
    assert.equal(pulled.code, EXIT.ok, pulled.err);
    assert.ok(existsSync(join(state, 'matchlock.db')));
    const ls = await cli(['-o', 'json', 'image', 'ls', '--config', config]);
    assert.deepEqual((JSON.parse(ls.out) as { ref: string }[]).map((i) => i.ref), [ref]);
    // A mistyped --state-dir is an error, not a new, empty store.
    const mistyped = join(tmp.path, 'cfg-stat');
    const wrong = await cli(['image', 'ls', '--config', config, '--state-dir', mistyped]);
    assert.equal(wrong.code, EXIT.usage);
    assert.match(wrong.err, /--state-dir .*cfg-stat: holds no matchlock store/);
    assert.equal(existsSync(mistyped), false);
  });
});
