import { Command, Option } from 'commander';
import { DEFAULT_CONFIG_PATH, configKeys, envName, flintlockdEnvFor, loadConfig } from './config.js';
import { PROVIDERS, type ProviderModule } from '../adapters/vmm/registry.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import { createLogger, ignoreBrokenStdio } from './logger.js';
import { startDaemon, type RunningDaemon } from './app.js';
import { installProcessGuards } from './guard.js';
import { VERSION } from '../version.js';

/** matchlockd, in flintlockd's form: `matchlockd run [flags]` and `matchlockd version`. */
export async function main(argv: string[], opts: { registry?: ReadonlyMap<string, ProviderModule> } = {}): Promise<void> {
  const registry = opts.registry ?? PROVIDERS;
  const keys = configKeys(registry);
  // A usage error (an unknown flag, a missing value) exits 2 like every other refused setting;
  // commander's own default is 1.
  const usage = (err: { exitCode: number }) => process.exit(err.exitCode === 0 ? 0 : 2);
  const program = new Command('matchlockd').description('flintlock-compatible MicroVM host daemon').showHelpAfterError().exitOverride(usage);
  program.command('version').description('print the version').action(() => {
    process.stdout.write(`matchlockd ${VERSION}\n`);
  });
  const run = program.command('run').description('run the daemon').exitOverride(usage);
  run.addOption(new Option('--config <path>', `YAML config file (default ${DEFAULT_CONFIG_PATH}; flintlock's keys accepted)`));
  for (const def of keys) {
    const flag = def.kind === 'bool' ? `--${def.key} [bool]` : `--${def.key} <value>`;
    const fl = flintlockdEnvFor(def.key);
    run.addOption(new Option(flag, `${def.help} (default ${def.default || '""'}, env ${envName(def.key)}${fl ? ` or ${fl}` : ''})`));
  }
  run.action(async (opts: Record<string, unknown>) => {
    const flags: Record<string, unknown> = {};
    for (const def of keys) {
      const v = opts[camel(def.key)];
      if (v !== undefined) flags[def.key] = v === true ? 'true' : v;
    }
    const configPath = typeof opts.config === 'string' ? opts.config : undefined;
    let cfg;
    const warnings: string[] = [];
    try {
      cfg = loadConfig({ flags, file: { path: configPath ?? DEFAULT_CONFIG_PATH, explicit: configPath !== undefined }, env: process.env }, registry, warnings);
    } catch (err) {
      process.stderr.write(`matchlockd: ${(err as Error).message}\n`);
      process.exit(2);
    }
    // Nothing matchlockd creates (store, VM directories holding user-data, sockets) is for other users.
    process.umask(0o027);
    ignoreBrokenStdio();
    const logger = createLogger(cfg.logFormat, cfg.verbosity);
    installProcessGuards(logger);
    for (const w of warnings) logger.warn({}, w);
    // Signals are handled from the start: one that arrives while starting stops the daemon as
    // soon as it is up. The first signal drains (shutdown-grace), a second cuts the drain short.
    let daemon: RunningDaemon | undefined;
    let stopping: string | undefined;
    const drain = (d: RunningDaemon) =>
      d.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err: (err as Error).message }, 'shutdown failed');
          process.exit(1);
        },
      );
    const shutdown = (signal: string) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal');
        if (daemon) daemon.force();
        else process.exit(1);
        return;
      }
      stopping = signal;
      logger.info({ signal, graceMs: cfg.shutdownGraceMs }, 'stopping; VMs keep running');
      if (daemon) void drain(daemon);
    };
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => shutdown('SIGINT'));
    // SIGHUP asks a daemon to reload (systemctl reload) or says its terminal hung up. Node's
    // default would end the daemon without a log line; flintlockd (internal/command/run/run.go)
    // listens only for os.Interrupt, so it dies of SIGHUP the same way. Nothing here is
    // reloadable and neither meaning is a request to stop: it is logged and ignored.
    process.on('SIGHUP', () => logger.warn({ signal: 'SIGHUP' }, 'SIGHUP ignored: matchlockd does not reload its configuration; restart it (SIGTERM, then start) to apply changes'));
    try {
      daemon = await startDaemon(cfg, logger, { registry });
    } catch (err) {
      logger.error({ err: (err as Error).message }, 'matchlockd failed to start');
      process.exit(err instanceof MatchlockError && err.code === ErrorCode.InvalidArgument ? 2 : 1);
    }
    if (stopping) void drain(daemon);
  });
  await program.parseAsync(argv);
}

function camel(key: string): string {
  return key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
