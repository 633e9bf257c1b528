import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { DEFAULT_CONFIG_PATH } from '../daemon/config-path.js';
import type { Check, DaemonAccess } from '../host/inspect.js';
import { EXIT, cliError } from './client.js';
import { documentText, table } from './output.js';
import { HUB_FLAGS, hubFlagValues, hubRecordPath } from './hub.js';
import type { Io } from './vm.js';


/**
 * `matchlock inspect`: every check of the operators' walkthrough as ok / warn / fail with its
 * evidence and, for a failure, the fix. Exits 1 when any check fails.
 */
export function inspectCommand(io: Io, output: () => string, access: () => DaemonAccess): Command {
  const cmd = new Command('inspect')
    .description('check this host (and with --hub the network hub) the way operators do by hand')
    .option('--config <path>', `matchlockd config file (default ${DEFAULT_CONFIG_PATH})`)
    .option('--daemon-state-dir <dir>', "matchlockd's state dir (overrides the config)")
    .option('--grpc-endpoint <endpoint>', "matchlockd's endpoint (overrides the global --host and the config)")
    .option('--bridge-name <name>', "matchlockd's bridge (overrides the config)")
    .option('--hub', 'also check the network hub')
    .option('--hub-only', 'check only the network hub (a machine without matchlockd)')
    .option('--hub-file <hub.yaml>', "hub config for --hub (default: what hub setup recorded)");
  for (const [f, help] of HUB_FLAGS) cmd.option(`--hub-${f} <value>`, `for --hub: ${help}`);
  cmd.action(async (o: Record<string, unknown>) => {
    const flags: Record<string, unknown> = {};
    if (o.daemonStateDir) flags['state-dir'] = o.daemonStateDir;
    if (o.grpcEndpoint) flags['grpc-endpoint'] = o.grpcEndpoint;
    if (o.bridgeName) flags['bridge-name'] = o.bridgeName;
    const { loadConfig } = await import('../daemon/config.js');
    let cfg;
    try {
      cfg = loadConfig({ flags, file: { path: typeof o.config === 'string' ? o.config : DEFAULT_CONFIG_PATH, explicit: typeof o.config === 'string' }, env: process.env });
    } catch (err) {
      throw cliError((err as Error).message, EXIT.usage);
    }
    const checks: Check[] = [];
    let leases;
    const withHub = !!(o.hub || o.hubOnly);
    if (withHub) {
      const hubFlags = hubFlagValues(o, 'hub-');
      const record = hubRecordPath();
      const named = Object.values(hubFlags).some((v) => v !== undefined);
      const file = typeof o.hubFile === 'string' ? o.hubFile : !named && existsSync(record) ? record : undefined;
      // A bad hub setting is InvalidArgument: exit 2.
      const hub = (await import('../hub/config.js')).loadHubConfig(file, hubFlags, 'hub-');
      checks.push(...(await (await import('../host/inspect.js')).inspectHub(hub)));
      // A hub that is not set up has no lease file; its checks above already say it is down.
      leases = await (await import('../hub/hub.js')).hubLeases(hub).catch(() => undefined);
    }
    // With --hub, a machine with neither a store nor a daemon answering is taken as hub-only.
    // inspect's own --grpc-endpoint, then the global --host / MATCHLOCK_HOST, then the config's.
    const daemon = { ...access(), ...(o.grpcEndpoint ? { host: undefined } : {}), configPath: typeof o.config === 'string' ? o.config : DEFAULT_CONFIG_PATH };
    if (!o.hubOnly) checks.unshift(...(await (await import('../host/inspect.js')).inspectHost(cfg, { access: daemon, leases, hubOnlyUnlessDaemon: withHub })));
    const doc = documentText(output(), checks);
    if (doc !== undefined) io.out(doc);
    else {
      io.out(table([['STATUS', 'CHECK', 'EVIDENCE'], ...checks.map((c) => [c.status.toUpperCase(), c.check, c.evidence + (c.fix ? `  -> fix: ${c.fix}` : '')])]));
      const n = (v: string) => checks.filter((c) => c.status === v).length;
      io.out(`\n${n('ok')} ok, ${n('warn')} warn, ${n('fail')} fail\n`);
    }
    if (checks.some((c) => c.status === 'fail')) throw cliError(`${checks.filter((c) => c.status === 'fail').length} check(s) failed`, EXIT.error);
  });
  return cmd;
}
