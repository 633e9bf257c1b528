import { Command } from 'commander';
import { join } from 'node:path';
import { listSetting, registryClient } from '../adapters/images/oci/registry.js';
import { ImageCatalog, LocalImageStore, normalizeRef, type PullProgress } from '../adapters/images/oci/store.js';
import { SqliteStore } from '../adapters/store/sqlite/store.js';
import { parseDuration } from '../core/duration.js';
import type { Logger } from '../core/ports.js';
import { EXIT, cliError } from './client.js';
import { table } from './output.js';
import type { Io } from './vm.js';

const DEFAULT_STATE_DIR = process.env.MATCHLOCK_STATE_DIR ?? '/var/lib/matchlock';

interface ImageOpts {
  stateDir: string;
  registryAuthFile?: string;
  insecureRegistries?: string;
  plainHttpRegistries?: string;
  registryMirrors?: string;
}

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n.toFixed(u === 0 ? 0 : 1)}${units[u]}`;
}

/**
 * Image commands work on the host's image store directly (the daemon reads the same store);
 * "used by" comes from the daemon's record store in the same state dir.
 */
export function imageCommand(io: Io, output: () => string, isTty: () => boolean): Command {
  const image = new Command('image')
    .description("manage the host's image store")
    .option('--state-dir <dir>', 'matchlockd state dir', DEFAULT_STATE_DIR)
    .option('--registry-auth-file <path>', 'Docker-style config.json (default: $DOCKER_CONFIG or ~/.docker)')
    .option('--insecure-registries <list>', 'registries reached over HTTPS without certificate checks')
    .option('--plain-http-registries <list>', 'registries reached over plain HTTP')
    .option('--registry-mirrors <list>', 'registry=mirror pairs');
  const opts = () => image.opts<ImageOpts>();
  const store = () => {
    const o = opts();
    const registry = registryClient(
      { authFile: o.registryAuthFile ?? '', insecure: listSetting(o.insecureRegistries ?? ''), plainHttp: listSetting(o.plainHttpRegistries ?? ''), mirrors: listSetting(o.registryMirrors ?? '') },
      quiet,
    );
    return new LocalImageStore(join(o.stateDir, 'images'), registry);
  };
  /** digest -> the VMs that use it, by the same rule the daemon's garbage collection uses. */
  const usage = async (catalog: ImageCatalog) => {
    const db = new SqliteStore(join(opts().stateDir, 'matchlock.db'));
    try {
      return await catalog.usage(db.list({}));
    } finally {
      db.close();
    }
  };

  image
    .command('pull <ref>')
    .description('pull an image from its registry into the store')
    .action(async (ref: string) => {
      const tty = isTty();
      let lastDone = -1;
      const show = (p: PullProgress) => {
        const pct = p.totalBytes ? Math.floor((100 * p.bytes) / p.totalBytes) : 100;
        const line = `${p.ref}: ${human(p.bytes)}/${human(p.totalBytes)} ${pct}% blobs ${p.blobsDone}/${p.blobs}`;
        if (tty) io.err(`\r${line}\u001b[K`);
        else if (p.blobsDone !== lastDone) {
          // Without a terminal: one plain line each time a blob completes, not one per chunk.
          io.err(line + '\n');
          lastDone = p.blobsDone;
        }
      };
      const digest = await store().pull(ref, quiet, show);
      if (tty) io.err('\n');
      io.out(output() === 'json' ? JSON.stringify({ ref: normalizeRef(ref), digest }) + '\n' : `${normalizeRef(ref)} ${digest}\n`);
    });

  image
    .command('import <source>')
    .description('import an OCI image layout directory or a tar of one')
    .option('--name <ref>', "reference to store it under (default: the layout's full ref.name annotation)")
    .action(async (source: string, o: { name?: string }) => {
      const { ref, digest } = await store().import(source, o.name);
      io.out(output() === 'json' ? JSON.stringify({ ref, digest }) + '\n' : `${ref} ${digest}\n`);
    });

  image
    .command('ls')
    .alias('list')
    .description('list images: reference, digest, size, used by')
    .action(async () => {
      const catalog = new ImageCatalog(store());
      const users = await usage(catalog);
      const images = (await catalog.list()).map((i) => ({ ...i, usedBy: users.get(i.digest) ?? [] }));
      if (output() === 'json') io.out(JSON.stringify(images, null, 2) + '\n');
      else io.out(table([['REFERENCE', 'DIGEST', 'SIZE', 'USED BY'], ...images.map((i) => [i.ref, i.digest.slice(0, 19), human(i.size), i.usedBy.join(',') || '-'])]));
    });

  image
    .command('rm <ref...>')
    .description('remove images no MicroVM uses')
    .action(async (refs: string[]) => {
      const catalog = new ImageCatalog(store());
      const inUse = new Set((await usage(catalog)).keys());
      for (const ref of refs) {
        await catalog.remove(ref, inUse);
        io.out(`${normalizeRef(ref)} removed\n`);
      }
    });

  image
    .command('prune')
    .description('remove every image no MicroVM uses (and blobs nothing references)')
    .option('--grace <duration>', 'keep images imported or pulled more recently than this', '0s')
    .action(async (o: { grace: string }) => {
      const grace = parseDuration(o.grace);
      if (grace === undefined) throw cliError(`--grace ${o.grace}: must be a duration like 1h`, EXIT.usage);
      const catalog = new ImageCatalog(store());
      const removed = await catalog.collect(new Set((await usage(catalog)).keys()), grace);
      io.out(removed.length ? removed.map((r) => `${r} removed\n`).join('') : 'nothing to prune\n');
    });
  return image;
}
