import { Command, CommanderError, Option } from 'commander';
import { parseDuration } from '../core/duration.js';
import { VERSION } from '../version.js';
import { EXIT, cliError, exitFor, type ConnectOptions } from './client.js';
import { MatchlockError } from '../core/errors.js';
import type { Format } from './output.js';
import { vmCommand, type Io } from './vm.js';
import { imageCommand } from './image.js';
import { hubCommand } from './hub.js';
import { inspectCommand } from './inspect.js';
import { hostCommand } from './host.js';
import { versionCommand } from './power.js';
import { addExamples, completionCommand } from './help.js';

const stdio: Io = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

/** The matchlock CLI. Returns the exit code instead of exiting, so tests can drive it in-process. */
export async function run(argv: string[], io: Io = stdio, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  // commander's usage errors ("error: unknown option …") say who speaks as every other error
  // of the CLI does.
  const output = { writeOut: io.out, writeErr: io.err, outputError: (text: string, write: (t: string) => void) => write(text.replace(/^error: /, 'matchlock: ')) };
  const program = new Command('matchlock')
    .description('matchlock: MicroVMs, images, hosts and the network hub')
    .version(VERSION)
    .exitOverride()
    .configureOutput(output)
    .option('--host <host:port>', 'matchlockd (or flintlockd) gRPC endpoint: host:port, [IPv6]:port or unix:/absolute/path (env MATCHLOCK_HOST)', env.MATCHLOCK_HOST ?? '127.0.0.1:9090')
    .option('--token <token>', 'basic-auth token (env MATCHLOCK_TOKEN)', env.MATCHLOCK_TOKEN)
    .option('--tls-ca <path>', 'CA that signed the server certificate; turns on TLS')
    .option('--tls-cert <path>', 'client certificate for mTLS')
    .option('--tls-key <path>', 'client key for mTLS')
    .option('--insecure', 'plaintext even to a non-loopback host')
    .option('--request-timeout <duration>', 'deadline of each API call (e.g. 30s)', '30s')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json', 'yaml']).default('table'));
  const globals = (): ConnectOptions & { output: Format } => {
    const o = program.opts<{ host: string; token?: string; tlsCa?: string; tlsCert?: string; tlsKey?: string; insecure?: boolean; requestTimeout: string; output: Format }>();
    const timeoutMs = parseDuration(o.requestTimeout);
    if (timeoutMs === undefined || timeoutMs === 0) throw cliError(`--request-timeout ${o.requestTimeout}: must be a duration like 30s`, EXIT.usage);
    return { host: o.host, token: o.token, tlsCa: o.tlsCa, tlsCert: o.tlsCert, tlsKey: o.tlsKey, insecure: o.insecure, timeoutMs, output: o.output };
  };
  const vm = vmCommand(globals, io);
  const image = imageCommand(io, () => program.opts<{ output: string }>().output, () => io === stdio && process.stderr.isTTY);
  const hub = hubCommand(io, () => program.opts<{ output: string }>().output, globals);
  program.addCommand(vm);
  program.addCommand(image);
  program.addCommand(hub);
  // inspect checks the config's endpoint unless the endpoint was named: a --host on the command
  // line or MATCHLOCK_HOST (not the default, which would hide the config's).
  const access = () => {
    const o = program.opts<{ host: string; token?: string; tlsCa?: string; tlsCert?: string; tlsKey?: string; insecure?: boolean }>();
    const named = program.getOptionValueSource('host') === 'cli' || !!env.MATCHLOCK_HOST;
    return { ...o, host: named ? o.host : undefined };
  };
  const inspect = inspectCommand(io, () => program.opts<{ output: string }>().output, access);
  program.addCommand(inspect);
  const host = hostCommand(io, () => program.opts<{ output: string }>().output);
  program.addCommand(host);
  versionCommand(program, globals, io);
  const version = program.commands.find((c) => c.name() === 'version');
  for (const c of [program, vm, ...vm.commands, image, ...image.commands, hub, ...hub.commands, inspect, host, ...host.commands, ...(version ? [version] : [])]) c.exitOverride().configureOutput(output);
  program.addCommand(completionCommand(program, io).exitOverride().configureOutput(output));
  // Last, once every command is in the tree.
  addExamples(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof MatchlockError) {
      io.err(`matchlock: ${err.message}\n`);
      return exitFor(err.code);
    }
    io.err(`matchlock: ${(err as Error).message}\n`);
    return EXIT.error;
  }
}

/**
 * The bin's entry. A closed output (`matchlock vm list | head -1`: EPIPE once the reader is gone)
 * ends the CLI at once and quietly with status 141, as SIGPIPE ends other tools (Node ignores
 * SIGPIPE, so without this the write error would end it with a stack trace).
 */
export async function main(argv: string[]): Promise<void> {
  for (const s of [process.stdout, process.stderr]) s.on('error', () => process.exit(128 + 13));
  const done = reportUnfinished('matchlock');
  process.exitCode = await run(argv.slice(2));
  done();
}

/**
 * Makes a command that stops waiting for want of anything to wait on fail loudly: Node ends a
 * process whose event loop is empty while its top-level await is unsettled with status 13 and
 * no message (Node 20), as when a command awaits an event only an unreferenced handle can bring.
 * Until the returned function is called, that end writes `<prog>: internal error: …` to stderr
 * and exits 1 (EXIT.error) instead. `beforeExit` is emitted exactly when the loop is empty.
 */
export function reportUnfinished(prog: string): () => void {
  const unfinished = () => {
    process.stderr.write(`${prog}: internal error: the command ended while still waiting, with nothing left that could finish it\n`);
    process.exit(EXIT.error);
  };
  process.once('beforeExit', unfinished);
  return () => process.off('beforeExit', unfinished);
}
