import { Command } from 'commander';
import { join } from 'node:path';
import { LocalImageStore } from '../adapters/images/oci/store.js';
import { MatchlockError } from '../core/errors.js';
import { CliError, EXIT } from './client.js';
import { table } from './output.js';
import type { Io } from './vm.js';

const DEFAULT_STATE_DIR = process.env.MATCHLOCK_STATE_DIR ?? '/var/lib/matchlock';

/** Image commands work on the host's image store directly (the daemon reads the same store). */
export function imageCommand(io: Io, output: () => string): Command {
  const image = new Command('image').description("manage the host's image store").option('--state-dir <dir>', 'matchlockd state dir', DEFAULT_STATE_DIR);
  const store = () => new LocalImageStore(join(image.opts<{ stateDir: string }>().stateDir, 'images'));
  const wrap = async (fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof MatchlockError) throw new CliError(err.message, err.code === 'InvalidArgument' ? EXIT.usage : err.code === 'NotFound' ? EXIT.notFound : EXIT.error);
      throw err;
    }
  };
  image
    .command('import <source>')
    .description('import an OCI image layout directory or a tar of one')
    .option('--name <ref>', 'reference to store it under (default: the layout\'s full ref.name annotation)')
    .action((source: string, opts: { name?: string }) =>
      wrap(async () => {
        const { ref, digest } = await store().import(source, opts.name);
        io.out(output() === 'json' ? JSON.stringify({ ref, digest }) + '\n' : `${ref} ${digest}\n`);
      }),
    );
  image
    .command('ls')
    .alias('list')
    .description('list imported images')
    .action(() =>
      wrap(async () => {
        const images = await store().list();
        if (output() === 'json') io.out(JSON.stringify(images, null, 2) + '\n');
        else io.out(table([['REFERENCE', 'DIGEST'], ...images.map((i) => [i.ref, i.digest])]));
      }),
    );
  return image;
}
