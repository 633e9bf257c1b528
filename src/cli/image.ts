import { Command } from 'commander';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_CONFIG_PATH } from '../daemon/config-path.js';
import type { DaemonConfig } from '../daemon/config.js';
import type { ImageCatalog, PullProgress, RecordOptions, UnpackFailedError } from '../adapters/images/oci/store.js';
import { parseDuration } from '../core/duration.js';
import { MatchlockError } from '../core/errors.js';
import type { Logger } from '../core/ports.js';
import { EXIT, cliError } from './client.js';
import { documentText, table } from './output.js';
import type { Io } from './vm.js';

interface ImageOpts {
  config?: string;
  init?: boolean;
  stateDir?: string;
  registryAuthFile?: string;
  insecureRegistries?: string;
  plainHttpRegistries?: string;
  registryMirrors?: string;
}

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

/** The image store, its registry client and the record store (better-sqlite3), loaded by the image commands only. */
async function stores() {
  const [registry, oci, sqlite] = await Promise.all([import('../adapters/images/oci/registry.js'), import('../adapters/images/oci/store.js'), import('../adapters/store/sqlite/store.js')]);
  return { ...registry, ...oci, ...sqlite };
}

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
 * The daemon's settings as matchlockd would load them (its config file, MATCHLOCK_* variables),
 * with the image command's flags over them: the state dir and the registry settings.
 */
async function daemonSettings(o: ImageOpts): Promise<DaemonConfig> {
  const { loadConfig } = await import('../daemon/config.js');
  const flags: Record<string, unknown> = {};
  const given: [string, string | undefined][] = [
    ['state-dir', o.stateDir], ['registry-auth-file', o.registryAuthFile], ['insecure-registries', o.insecureRegistries],
    ['plain-http-registries', o.plainHttpRegistries], ['registry-mirrors', o.registryMirrors],
  ];
  for (const [key, value] of given) if (value !== undefined) flags[key] = value;
  try {
    return loadConfig({ flags, file: { path: o.config ?? DEFAULT_CONFIG_PATH, explicit: o.config !== undefined }, env: process.env });
  } catch (err) {
    throw cliError((err as Error).message, EXIT.usage);
  }
}

/**
 * pull's and import's unpack (RecordOptions.unpack): the image is unpacked the way the daemon's
 * first create of it would, so that create (and a burst of creates, which would all wait on the
 * one unpack) finds it ready; as containerd's pull unpacks by default. An image refused for
 * what it is (another platform, a layer that does not match its diff_id) is not recorded; any
 * other failed unpack keeps the stored image (its blobs are whole; a create unpacks again) and
 * fails the command with the unpack's error and exit status.
 */
function unpackOptions(say?: (line: string) => void): RecordOptions {
  return { unpack: { log: quiet, starting: (ref) => say?.(`${ref}: unpacking\n`) } };
}

/** An UnpackFailedError as the command reports it: stored, but not ready. */
function notReady(err: UnpackFailedError): MatchlockError {
  // Not retried here (the daemon retries a VM's create that failed for room): the operator
  // frees room and runs the command again, or lets the first create unpack.
  return new MatchlockError(err.code, `${err.ref} ${err.digest} is in the image store, but unpacking it failed: ${err.message}`, { cause: err });
}

/**
 * Image commands work on the daemon's image store directly (no RPC: they work while the daemon
 * is down, and the daemon reads the same store), found through the daemon's own config file,
 * with its registry settings; "used by" comes from the record store in the same state dir.
 * A state dir without a record store (matchlock.db) is refused, so a mistyped one is not
 * taken for a new, empty store; `--init` makes one there on purpose.
 */
export function imageCommand(io: Io, output: () => string, isTty: () => boolean): Command {
  const image = new Command('image')
    .description("manage the host's image store")
    .option('--config <path>', `matchlockd's config file, read for state-dir and the registry settings (default ${DEFAULT_CONFIG_PATH})`)
    .option('--state-dir <dir>', "matchlockd's state dir (default: the config's state-dir)")
    .option('--init', 'make a new store in a state dir that has none (a host whose daemon has not run yet)')
    .option('--registry-auth-file <path>', "Docker-style config.json (default: the config's, else $DOCKER_CONFIG or ~/.docker)")
    .option('--insecure-registries <list>', 'registries (host[:port] or a CIDR subnet) reached over HTTPS without certificate checks (default: the config\'s)')
    .option('--plain-http-registries <list>', 'registries (host[:port] or a CIDR subnet) reached over plain HTTP (default: the config\'s)')
    .option('--registry-mirrors <list>', 'registry=mirror pairs, or docker.io mirror URLs alone (default: the config\'s)');
  let loaded: Promise<DaemonConfig> | undefined;
  /** The daemon's settings, read once per command. */
  const daemonCfg = () => (loaded ??= daemonSettings(image.opts<ImageOpts>()));
  let settings: DaemonConfig | undefined;
  /** The daemon's settings, checked once per command: the state dir must hold a store. */
  const cfg = async (): Promise<DaemonConfig> => {
    if (settings) return settings;
    const { SqliteStore } = await stores();
    const o = image.opts<ImageOpts>();
    const c = await daemonCfg();
    if (!existsSync(join(c.stateDir, 'matchlock.db'))) {
      if (!o.init) {
        const from = o.stateDir !== undefined ? '--state-dir' : `state-dir (from ${o.config ?? DEFAULT_CONFIG_PATH} or its default)`;
        throw cliError(`${from} ${c.stateDir}: holds no matchlock store (matchlock.db); name matchlockd's state dir, or give --init to make a new store there`, EXIT.usage);
      }
      // A new store would stand for none of the VM directories already there (flintlock's, or
      // those of a lost store), and matchlockd refuses such a state dir: refuse it the same way,
      // before anything is made.
      const { describeUnrecorded, vmDirs } = await import('../daemon/unrecorded.js');
      const dirs = vmDirs(c.stateDir);
      if (dirs.length) {
        const f = describeUnrecorded(c.stateDir, dirs, false);
        throw cliError(`--init: ${f.evidence}; a store made here would stand for none of them. Fix: ${f.fix}; nothing in ${c.stateDir} was changed`, EXIT.precondition);
      }
      mkdirSync(c.stateDir, { recursive: true, mode: 0o750 });
      new SqliteStore(join(c.stateDir, 'matchlock.db')).close();
    }
    settings = c;
    return c;
  };
  /**
   * The image store; with a registry client only for a command that pulls, so a registry setting
   * the client refuses fails only the commands that would reach a registry. The client is built
   * before the store is checked or made (--init): a refused pull leaves nothing behind.
   */
  const store = async ({ pulls }: { pulls: boolean }) => {
    const { registryClient, registryConfigOf, LocalImageStore } = await stores();
    const registry = pulls ? registryClient(registryConfigOf(await daemonCfg()), quiet) : undefined;
    return new LocalImageStore(join((await cfg()).stateDir, 'images'), registry);
  };
  /** digest -> the VMs that use it, by the same rule the daemon's garbage collection uses. */
  /** What the store could not remove (it goes on past it), as a warning on stderr. */
  const warner = { warn: (_o: object, m?: string) => io.err(`matchlock: warning: ${m ?? ''}\n`) };
  const usage = async (catalog: ImageCatalog) => {
    const { SqliteStore } = await stores();
    const db = new SqliteStore(join((await cfg()).stateDir, 'matchlock.db'), { recordsOnly: true });
    try {
      return await catalog.usage(db.list({}));
    } finally {
      db.close();
    }
  };

  image
    .command('pull <ref>')
    .description('pull an image from its registry into the store and unpack it, ready for VMs')
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
      const { normalizeRef, pullSource, UnpackFailedError } = await stores();
      const images = await store({ pulls: true });
      let digest: string;
      // On a terminal the progress line is ended before anything else is said.
      let line = tty;
      const endLine = () => {
        if (line) io.err('\n');
        line = false;
      };
      try {
        digest = await images.pull(ref, quiet, show, unpackOptions(tty ? (t) => (endLine(), io.err(t)) : undefined));
      } catch (err) {
        endLine();
        if (err instanceof UnpackFailedError) throw notReady(err);
        // A network error alone ("getaddrinfo ENOTFOUND ...") names neither the image nor where
        // it was pulled from; the code, and so the exit status, stays the error's.
        const e = MatchlockError.from(err);
        throw new MatchlockError(e.code, `pull of ${normalizeRef(ref)} from ${pullSource(ref, err)} failed: ${e.message}`, { cause: err });
      }
      endLine();
      io.out(documentText(output(), { ref: normalizeRef(ref), digest }) ?? `${normalizeRef(ref)} ${digest}\n`);
    });

  image
    .command('import <source>')
    .description('import an OCI image layout directory or a tar of one, and unpack it, ready for VMs')
    .option('--name <ref>', "reference to store it under (default: the layout's full ref.name annotation); its tag also chooses the image of a layout that holds several")
    .option('--ref <ref.name>', "the image to import from a layout that holds several: its org.opencontainers.image.ref.name in index.json")
    .action(async (source: string, o: { name?: string; ref?: string }) => {
      const images = await store({ pulls: false });
      const { UnpackFailedError } = await stores();
      const { ref, digest } = await images.import(source, o.name, o.ref, unpackOptions(isTty() ? io.err : undefined)).catch((err: unknown) => {
        throw err instanceof UnpackFailedError ? notReady(err) : err;
      });
      io.out(documentText(output(), { ref, digest }) ?? `${ref} ${digest}\n`);
    });

  image
    .command('ls')
    .alias('list')
    .description('list images: reference, digest, size, used by')
    .action(async () => {
      const catalog = new (await stores()).ImageCatalog(await store({ pulls: false }));
      const users = await usage(catalog);
      const images = (await catalog.list()).map((i) => ({ ...i, usedBy: users.get(i.digest) ?? [] }));
      io.out(documentText(output(), images) ?? table([['REFERENCE', 'DIGEST', 'SIZE', 'USED BY'], ...images.map((i) => [i.ref, i.digest.slice(0, 19), human(i.size), i.usedBy.join(',') || '-'])]));
    });

  image
    .command('rm <ref...>')
    .description('remove images no MicroVM uses')
    .action(async (refs: string[]) => {
      const { ImageCatalog, normalizeRef } = await stores();
      const catalog = new ImageCatalog(await store({ pulls: false }), warner);
      const inUse = new Set((await usage(catalog)).keys());
      const removed: string[] = [];
      try {
        for (const ref of refs) {
          await catalog.remove(ref, inUse);
          removed.push(normalizeRef(ref));
          if (output() === 'table') io.out(`${normalizeRef(ref)} removed\n`);
        }
      } finally {
        // What was removed before a refusal is said in every format.
        const doc = documentText(output(), { removed });
        if (doc !== undefined) io.out(doc);
      }
    });

  image
    .command('prune')
    .description('remove every image no MicroVM uses (and blobs nothing references)')
    .option('--grace <duration>', 'keep images imported or pulled more recently than this', '0s')
    .action(async (o: { grace: string }) => {
      const grace = parseDuration(o.grace);
      if (grace === undefined) throw cliError(`--grace ${o.grace}: must be a duration like 1h`, EXIT.usage);
      const catalog = new (await stores()).ImageCatalog(await store({ pulls: false }), warner);
      const removed = await catalog.collect(new Set((await usage(catalog)).keys()), grace);
      io.out(documentText(output(), { removed }) ?? (removed.length ? removed.map((r) => `${r} removed\n`).join('') : 'nothing to prune\n'));
    });
  return image;
}
