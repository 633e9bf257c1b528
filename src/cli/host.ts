import { Command } from 'commander';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CONFIG_PATH } from '../daemon/config.js';
import { hostSetup } from '../host/setup.js';
import { CliError, EXIT } from './client.js';
import { table } from './output.js';
import type { Io } from './vm.js';

const DAEMON_BIN = fileURLToPath(new URL('../../bin/matchlockd.js', import.meta.url));

export function hostCommand(io: Io, output: () => string): Command {
  const host = new Command('host').description('prepare this machine to run matchlockd');
  host
    .command('setup')
    .description("write matchlockd's config and systemd unit, prepare the state dir, check the host")
    .option('--set <key=value>', 'a daemon setting (repeatable), e.g. --set bridge-name=br0', (v: string, p: string[] = []) => [...p, v])
    .option('--config-out <path>', 'where the config goes', DEFAULT_CONFIG_PATH)
    .option('--unit-out <path>', 'where the unit goes', '/etc/systemd/system/matchlockd.service')
    .action(async (o: { set?: string[]; configOut: string; unitOut: string }) => {
      const settings: Record<string, string> = {};
      for (const kv of o.set ?? []) {
        const i = kv.indexOf('=');
        if (i <= 0) throw new CliError(`--set ${kv}: must be key=value`, EXIT.usage);
        settings[kv.slice(0, i)] = kv.slice(i + 1);
      }
      let result;
      try {
        result = await hostSetup({ settings, configPath: o.configOut, unitPath: o.unitOut, execStart: `${process.execPath} ${DAEMON_BIN}` });
      } catch (err) {
        throw new CliError((err as Error).message, EXIT.usage);
      }
      const { checks } = result;
      if (output() === 'json') io.out(JSON.stringify({ config: o.configOut, unit: o.unitOut, checks }, null, 2) + '\n');
      else {
        io.out(`wrote ${o.configOut} and ${o.unitOut}; state dir ${result.config.stateDir}\n`);
        io.out(table([['STATUS', 'CHECK', 'EVIDENCE'], ...checks.map((c) => [c.status.toUpperCase(), c.check, c.evidence + (c.fix ? `  -> fix: ${c.fix}` : '')])]));
        io.out('enable it with: systemctl daemon-reload && systemctl enable --now matchlockd\n');
      }
      if (checks.some((c) => c.status === 'fail')) throw new CliError('setup written, but some checks failed', EXIT.error);
    });
  return host;
}
