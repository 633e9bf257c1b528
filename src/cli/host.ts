import { Command } from 'commander';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DEFAULT_CONFIG_PATH } from '../daemon/config-path.js';

/** Where host dev keeps its hub's files when --hub-state-dir is not given. */
const DEFAULT_HUB_STATE_DIR = '/var/lib/matchlock/hub';
import { EXIT, cliError } from './client.js';
import { documentText, table } from './output.js';
import type { Io } from './vm.js';

/** `--set key=value` options as settings; the keys are checked by hostSetup. */
function parseSettings(list: string[] | undefined): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const kv of list ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw cliError(`--set ${kv}: must be key=value`, EXIT.usage);
    settings[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return settings;
}

/** The guard file sits beside the config; undefined with --no-guard. */
function guardPath(o: { configOut: string; guard: boolean }): string | undefined {
  return o.guard ? join(dirname(o.configOut), 'guard.nft') : undefined;
}

export function hostCommand(io: Io, output: () => string): Command {
  const host = new Command('host').description('prepare this machine to run matchlockd');
  host
    .command('setup')
    .description("write matchlockd's config and systemd unit, prepare the state dir, check the host")
    .option('--set <key=value>', 'a daemon setting (repeatable), e.g. --set bridge-name=br0', (v: string, p: string[] = []) => [...p, v])
    .option('--config-out <path>', 'where the config goes', DEFAULT_CONFIG_PATH)
    .option('--unit-out <path>', 'where the unit goes', '/etc/systemd/system/matchlockd.service')
    .option('--no-guard', "do not install the nftables guard that keeps guests off this host's own addresses")
    .option('--daemon-bin <path>', 'the matchlockd the unit runs (default: the one on PATH, else this package\'s own)')
    .action(async (o: { set?: string[]; configOut: string; unitOut: string; guard: boolean; daemonBin?: string }) => {
      const settings = parseSettings(o.set);
      const { hostSetup, planHostSetup } = await import('../host/setup.js');
      const options = { settings, configPath: o.configOut, unitPath: o.unitOut, daemonBin: o.daemonBin, guardPath: guardPath(o) };
      // Bad input (a setting, a path that cannot be written) is refused before anything is
      // written: exit 2. What fails after that is the host's (a failing nft, a full disk): exit 1.
      const plan = await planHostSetup(options).catch((err: unknown) => {
        throw cliError((err as Error).message, EXIT.usage);
      });
      let result;
      try {
        // Undoes its writes when one fails.
        result = await hostSetup(options, plan);
      } catch (err) {
        throw cliError((err as Error).message, EXIT.error);
      }
      // The guard is this daemon's now: a dev hub's record that dev mode installed it is cleared,
      // so host dev --down leaves it in place. Under the hub lock, as every change of a hub's state.
      const { hubRecordPath, recordedHub, withHubLock } = await import('./hub.js');
      if (o.guard && existsSync(hubRecordPath())) {
        await withHubLock(async () => {
          const hub = recordedHub();
          if (hub) await (await import('../hub/hub.js')).clearDevGuard(hub);
        }).catch((err: unknown) => {
          throw cliError(`setup written and the guard installed, but the dev hub's record that dev mode installed the guard could not be cleared (host dev --down would remove it): ${(err as Error).message}`, EXIT.error);
        });
      }
      const { checks } = result;
      const doc = documentText(output(), { config: o.configOut, unit: o.unitOut, diff: result.diff, checks });
      if (doc !== undefined) io.out(doc);
      else {
        io.out(result.diff ? result.diff : `${o.configOut} unchanged\n`);
        io.out(`wrote ${o.configOut} and ${o.unitOut}; state dir ${result.config.stateDir}\n`);
        io.out(table([['STATUS', 'CHECK', 'EVIDENCE'], ...checks.map((c) => [c.status.toUpperCase(), c.check, c.evidence + (c.fix ? `  -> fix: ${c.fix}` : '')])]));
        // A daemon that refuses to start would only be restarted in a loop (Restart=always).
        const refusal = checks.find((c) => c.check === 'vm directories' && c.status === 'fail');
        if (refusal) io.out(`do not enable matchlockd yet: it refuses to start on ${result.config.stateDir} until the vm directories check above is fixed (${refusal.fix ?? ''})\n`);
        else io.out('enable it with: systemctl daemon-reload && systemctl enable --now matchlockd\n');
      }
      if (checks.some((c) => c.status === 'fail')) throw cliError('setup written, but some checks failed', EXIT.error);
    });
  host
    .command('dev')
    .description('single-machine mode: a private bridge with DHCP and NAT on this host, and matchlockd pointed at it')
    .option('--interface <name>', 'bridge to make', 'mlbr0')
    .option('--address <cidr>', "the bridge's address, also the guests' router", '192.168.10.2/25')
    .option('--range-start <ip>', 'first DHCP address', '192.168.10.26')
    .option('--range-end <ip>', 'last DHCP address', '192.168.10.126')
    .option('--uplink <link>', "where guests' traffic leaves, masqueraded (default: the default route's link)")
    .option('--dhcp <backend>', 'dnsmasq or isc', 'dnsmasq')
    .option('--hub-state-dir <dir>', "the hub's files (default: /var/lib/matchlock/hub; with --down: the recorded hub's)")
    .option('--set <key=value>', 'another daemon setting (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .option('--config-out <path>', 'where the config goes', DEFAULT_CONFIG_PATH)
    .option('--unit-out <path>', 'where the unit goes', '/etc/systemd/system/matchlockd.service')
    .option('--no-guard', "do not install the nftables guard that keeps guests off this host's own addresses")
    .option('--down', 'remove what dev mode set up (the config and unit stay)')
    .action(async (o: { interface: string; address: string; rangeStart: string; rangeEnd: string; uplink?: string; dhcp: string; hubStateDir?: string; set?: string[]; configOut: string; unitOut: string; down?: boolean; guard: boolean }) => {
      const { loadHubConfig } = await import('../hub/config.js');
      const { recordedHub, refuseSecondHub, setupRecordedHub, forgetHub, withHubLock, hubRecordPath } = await import('./hub.js');
      const hubConfig = (uplink: string | undefined, stateDir = o.hubStateDir ?? DEFAULT_HUB_STATE_DIR) => {
        try {
          return loadHubConfig(undefined, { interface: o.interface, mode: 'bridge', address: o.address, 'range-start': o.rangeStart, 'range-end': o.rangeEnd, uplink, dhcp: o.dhcp, 'state-dir': stateDir }, '', { 'state-dir': 'hub-state-dir' });
        } catch (err) {
          throw cliError((err as Error).message, EXIT.usage);
        }
      };
      // Hub failures are FailedPrecondition errors: exit 6.
      if (o.down) {
        // The hub to remove is the one --hub-state-dir names, else the recorded one (the hub
        // this host has), else the default state dir's. Teardown undoes what that hub's state
        // recorded and never touches the uplink, so none is looked up.
        const recorded = recordedHub();
        const given = o.hubStateDir === undefined ? undefined : hubConfig(o.uplink).stateDir;
        const hub = given === undefined && recorded ? recorded : hubConfig(o.uplink ?? (recorded?.stateDir === given ? recorded?.uplink : undefined));
        // Under the lock setup holds, as hub teardown.
        const removed = await withHubLock(async () => {
          const { hubDevGuard, hubTeardown } = await import('../hub/hub.js');
          // The hub's state is the only record that dev mode installed the guard: removing the hub
          // but not the guard would leave a guard nothing could ever take down again.
          if (!o.guard && (await hubDevGuard(hub))) {
            throw cliError(`host dev --down --no-guard: dev mode installed the guest guard with the hub in ${hub.stateDir}, and that hub's state is the only record of it; run host dev --down without --no-guard to remove both, or host setup to hand the guard to a daemon first`, EXIT.usage);
          }
          const gone = await hubTeardown(hub);
          if (!gone) throw cliError(`host dev --down: no hub state at ${join(hub.stateDir, 'hub-state.json')}: no hub removed${o.hubStateDir === undefined ? ' (give the --hub-state-dir dev mode was set up with)' : ''}`, EXIT.precondition);
          forgetHub(hub);
          return gone;
        });
        // Only a guard dev mode installed: one host setup installed guards a daemon's guests.
        const guard = o.guard && removed.devGuard;
        if (guard) await (await import('../host/guard.js')).removeGuard();
        io.out(documentText(output(), { removed: removed.interface, stateDir: hub.stateDir, guard }) ?? `removed ${removed.interface}, its DHCP server and NAT${guard ? ', and the guest guard' : ''}\n`);
        return;
      }
      let uplink = o.uplink;
      if (!uplink) {
        const { stdout } = await (await import('../adapters/exec.js')).run('ip', ['-json', 'route', 'show', 'default']);
        uplink = (JSON.parse(stdout || '[]') as { dev?: string }[])[0]?.dev;
        if (!uplink) throw cliError('no default route to take the uplink from; give --uplink', EXIT.usage);
      }
      const hub = hubConfig(uplink);
      // Every input is checked before the hub is made: a refused setting leaves nothing up.
      const settings = { 'bridge-name': o.interface, ...parseSettings(o.set) };
      const { hostSetup, planHostSetup } = await import('../host/setup.js');
      const setupOptions = { settings, configPath: o.configOut, unitPath: o.unitOut, guardPath: guardPath(o) };
      // The config, unit and guard paths included: a path that cannot be written is refused
      // before the hub is touched.
      const plan = await planHostSetup(setupOptions).catch((err: unknown) => {
        throw cliError((err as Error).message, EXIT.usage);
      });
      const record = hubRecordPath();
      const { made, previous, recordText } = await withHubLock(async () => {
        refuseSecondHub(hub, 'host dev');
        // What a failed run puts back: the record as it was, and the hub it named when this run
        // re-ran setup on it with other settings.
        const before = { previous: recordedHub(record), recordText: existsSync(record) ? readFileSync(record, 'utf8') : undefined };
        return { ...before, ...(await setupRecordedHub(hub, 'matchlock host dev', { stateDir: '--hub-state-dir' })) };
      }, record);
      const guardBefore = o.guard ? await (await import('../host/guard.js')).guardInstalled() : true;
      let checks;
      try {
        ({ checks } = await hostSetup(setupOptions, plan));
        if (!guardBefore) await (await import('../hub/hub.js')).markDevGuard(hub);
      } catch (err) {
        // A hub this command made goes with the failed setup; one that was up before gets its
        // previous settings back.
        await withHubLock(async () => {
          const { hubSetup, hubTeardown } = await import('../hub/hub.js');
          if (made) await hubTeardown(hub);
          else if (previous?.stateDir === hub.stateDir) await hubSetup(previous, { stateDir: '--hub-state-dir' });
          if (recordText === undefined) rmSync(record, { force: true });
          else writeFileSync(record, recordText);
        }, record).catch(() => undefined);
        throw cliError((err as Error).message, EXIT.error);
      }
      const failures = checks.filter((c) => c.status === 'fail');
      io.out(documentText(output(), { hub: hub.interface, config: o.configOut, checks }) ??
        `${o.interface} ${o.address}: DHCP ${o.rangeStart}-${o.rangeEnd} (${o.dhcp}), NAT out of ${uplink}; matchlockd config ${o.configOut} uses it\n`);
      if (failures.length) throw cliError(`dev mode is up, but: ${failures.map((c) => `${c.check}: ${c.evidence}`).join('; ')}`, EXIT.error);
    });
  return host;
}
