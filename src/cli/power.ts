import { create, toJson } from '@bufbuild/protobuf';
import { durationFromMs, timestampDate } from '@bufbuild/protobuf/wkt';
import type { Command } from 'commander';
import { connectService } from '../adapters/api/client.js';
import { parseDuration } from '../core/duration.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import {
  MicroVMEventSchema,
  MicroVMEvent_Type,
  MicroVMLifecycle,
  PauseMicroVMRequestSchema,
  RestartMicroVMRequestSchema,
  ResumeMicroVMRequestSchema,
  StartMicroVMRequestSchema,
  StopMicroVMRequestSchema,
  WatchEventsRequestSchema,
  type MicroVMEvent,
  type PowerResponse,
} from '../gen/services/matchlock/v1/lifecycle_pb.js';
import { GetServerInfoRequestSchema, GetServerInfoResponseSchema, Server } from '../gen/services/matchlock/v1/server_pb.js';
import { MicroVMStatus_MicroVMState, MicroVMStatus_PowerState, type MicroVM } from '../gen/types/microvm_pb.js';
import { VERSION } from '../version.js';
import { EXIT, cliError, type ConnectOptions } from './client.js';
import { documentText, yamlText, type Format } from './output.js';
import type { Io } from './vm.js';
import { resolveRef } from './resolve.js';

type Globals = () => ConnectOptions & { output: Format };

const stateOf = (vm: MicroVM | undefined) => MicroVMStatus_MicroVMState[vm?.status?.state ?? 0] ?? 'PENDING';
const powerOf = (vm: MicroVM | undefined) => {
  const p = vm?.status?.power ?? MicroVMStatus_PowerState.POWER_STATE_UNSPECIFIED;
  return p === MicroVMStatus_PowerState.POWER_STATE_UNSPECIFIED ? 'UNKNOWN' : MicroVMStatus_PowerState[p];
};
const desiredOf = (vm: MicroVM | undefined) => MicroVMStatus_PowerState[vm?.status?.desiredPower || MicroVMStatus_PowerState.RUNNING];

/** What a watched VM looks like now; `gone` once its record is deleted. */
export interface Observed {
  vm: MicroVM | undefined;
  gone: boolean;
}

/** One `--for` term: key=value over the observed VM. */
export type Condition = (o: Observed) => boolean;

const CONDITION_KEYS = ['state', 'power', 'desired', 'booted', 'delete'] as const;

/**
 * Parses `--for` terms (kubectl wait's form): `state=CREATED`, `power=RUNNING`,
 * `desired=STOPPED`, `booted=true`, `delete`; several terms (repeated flags or joined with ",")
 * must all hold. Errors name the term and the rule.
 */
export function parseConditions(terms: string[]): { test: Condition; text: string } {
  const parts = terms.flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean);
  if (parts.length === 0) throw cliError('--for: give a condition such as state=CREATED or power=RUNNING', EXIT.usage);
  const tests = parts.map((p): Condition => {
    const [key, raw] = p.includes('=') ? [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)] : [p, undefined];
    const value = raw?.toUpperCase();
    const oneOf = (allowed: string[]) => {
      if (value === undefined || !allowed.includes(value)) throw cliError(`--for ${p}: ${key} must be one of ${allowed.join(', ')}`, EXIT.usage);
      return value;
    };
    switch (key) {
      case 'state': {
        const v = oneOf(['PENDING', 'CREATED', 'FAILED', 'DELETING']);
        return (o) => !o.gone && stateOf(o.vm) === v;
      }
      case 'power': {
        const v = oneOf(['RUNNING', 'PAUSED', 'STOPPED']);
        return (o) => !o.gone && powerOf(o.vm) === v;
      }
      case 'desired': {
        const v = oneOf(['RUNNING', 'PAUSED', 'STOPPED']);
        return (o) => !o.gone && desiredOf(o.vm) === v;
      }
      case 'booted': {
        const v = oneOf(['TRUE', 'FALSE']) === 'TRUE';
        return (o) => !o.gone && (o.vm?.status?.guestBooted ?? false) === v;
      }
      case 'delete':
      case 'gone':
        if (raw !== undefined) throw cliError(`--for ${p}: delete takes no value`, EXIT.usage);
        return (o) => o.gone;
      default:
        throw cliError(`--for ${p}: unknown condition ${JSON.stringify(key)}; use ${CONDITION_KEYS.join(', ')}`, EXIT.usage);
    }
  });
  return { test: (o) => tests.every((t) => t(o)), text: parts.join(',') };
}

function eventLine(e: MicroVMEvent): string {
  const time = e.time ? timestampDate(e.time).toISOString() : '-';
  const type = MicroVMEvent_Type[e.type] ?? String(e.type);
  let line = `${e.id} ${time} ${type} ${e.uid} ${e.namespace}/${e.name} state=${MicroVMStatus_MicroVMState[e.state]} power=${powerOf(e.microvm)}`;
  if (e.desiredPower !== (e.power || MicroVMStatus_PowerState.RUNNING)) line += ` desired=${desiredOf(e.microvm)}`;
  if (e.stateChanged && e.type === MicroVMEvent_Type.UPDATED) line += ` (was ${MicroVMStatus_MicroVMState[e.previousState]})`;
  const err = e.microvm?.status?.lastError;
  if (err && e.state !== MicroVMStatus_MicroVMState.CREATED) line += ` error=${JSON.stringify(err)}`;
  return line + '\n';
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });

/**
 * Follows WatchEvents, reconnecting after the daemon goes away (a restart) and resuming after the
 * last event seen, so nothing is lost or repeated. `onEvent` returns true to stop. Errors other
 * than an unreachable daemon (a refused token, an unknown uid, a cursor the daemon no longer
 * has) end it. `deadline` (ms since epoch) ends it with DeadlineExceeded.
 */
export async function followEvents(
  opts: ConnectOptions,
  req: { uid?: string | undefined; namespace?: string | undefined; afterId?: bigint | undefined },
  onEvent: (e: MicroVMEvent) => boolean,
  io: Io,
  deadline?: number,
): Promise<void> {
  let after = req.afterId;
  let delay = 250;
  for (;;) {
    const c = connectService(MicroVMLifecycle, opts);
    let stop = false;
    let timer: NodeJS.Timeout | undefined;
    try {
      const s = c.stream('watchEvents', create(WatchEventsRequestSchema, { uid: req.uid ?? '', namespace: req.namespace ?? '', afterId: after }), (m) => {
        if (stop) return;
        const e = m as MicroVMEvent;
        after = e.id;
        delay = 250;
        if (onEvent(e)) {
          stop = true;
          s.cancel();
        }
      });
      if (deadline !== undefined) timer = setTimeout(() => s.cancel(), Math.max(0, deadline - Date.now()));
      await s.done;
      if (stop) return;
      if (deadline !== undefined && Date.now() >= deadline) throw new MatchlockError(ErrorCode.DeadlineExceeded, 'timed out');
    } catch (err) {
      if (stop) return;
      if (!(err instanceof MatchlockError) || err.code !== ErrorCode.Unavailable) throw err;
      io.err(`matchlock: ${err.message}; reconnecting${after !== undefined ? ` after event ${after}` : ''}\n`);
    } finally {
      if (timer) clearTimeout(timer);
      c.close();
    }
    if (deadline !== undefined && Date.now() >= deadline) throw new MatchlockError(ErrorCode.DeadlineExceeded, 'timed out');
    await sleep(Math.min(delay, deadline === undefined ? delay : Math.max(0, deadline - Date.now())));
    delay = Math.min(delay * 2, 5000);
  }
}

/**
 * Waits until `cond` holds for the VM, printing each change of state and power (with `print`:
 * a line each for `table`, one JSON object a line for `json` as `vm events` prints, a one-item
 * YAML list each for `yaml`).
 * Ends with DeadlineExceeded (exit 7) at the timeout, Aborted (exit 8) when the VM fails or
 * vanishes and the condition can no longer hold.
 */
export async function waitUntil(opts: ConnectOptions, uid: string, cond: { test: Condition; text: string }, timeoutMs: number, io: Io, print: Format | false): Promise<MicroVM | undefined> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  let result: Observed | undefined;
  let failure: MatchlockError | undefined;
  const check = (o: Observed): boolean => {
    const line = o.gone ? 'gone' : `${stateOf(o.vm)} power=${powerOf(o.vm)}${o.vm?.status?.lastError ? ` (${o.vm.status.lastError})` : ''}`;
    if (print && line !== last) {
      const time = new Date().toISOString();
      const change = o.gone ? { time, uid, gone: true } : { time, uid, state: stateOf(o.vm), power: powerOf(o.vm), lastError: o.vm?.status?.lastError ?? '' };
      if (print === 'json') io.out(JSON.stringify(change) + '\n');
      else if (print === 'yaml') io.out(yamlText([change]));
      else io.out(`${time} ${uid} ${line}\n`);
    }
    last = line;
    if (cond.test(o)) {
      result = o;
      return true;
    }
    if (o.gone) {
      failure = cliError(`${uid} is gone; ${cond.text} cannot hold`, EXIT.failed);
      return true;
    }
    if (stateOf(o.vm) === 'FAILED') {
      failure = cliError(`${uid} is FAILED${o.vm?.status?.lastError ? ` (${o.vm.status.lastError})` : ''}; ${cond.text} ${failedUntil(o.vm?.status?.lastError ?? '')}`, EXIT.failed);
      return true;
    }
    return false;
  };
  try {
    await followEvents(opts, { uid }, (e) => check({ vm: e.microvm, gone: e.type === MicroVMEvent_Type.DELETED }), io, deadline);
  } catch (err) {
    if (err instanceof MatchlockError && err.code === ErrorCode.NotFound) {
      if (check({ vm: undefined, gone: true })) {
        if (failure) throw failure;
        return undefined;
      }
    }
    if (err instanceof MatchlockError && err.code === ErrorCode.DeadlineExceeded) throw cliError(`${uid}: ${cond.text} did not hold within ${Math.round(timeoutMs / 1000)}s (now ${last})`, EXIT.timeout);
    throw err;
  }
  if (failure) throw failure;
  return result?.vm;
}

/**
 * Until when a FAILED VM cannot meet a condition, from its last error (the record's
 * missingLink is not on the wire): one that ran out of attempts for want of its bridge or
 * macvtap parent (the create plan's messages, src/core/plan/steps/interface.ts) is retried by
 * matchlockd when that link appears again; a wait still ends here, as nothing says when.
 */
function failedUntil(lastError: string): string {
  const link = /\b(?:bridge|parent interface) (\S+) for (?:interface )?\S+ not found on this host/.exec(lastError)?.[1];
  return link ? `cannot hold until ${link} appears again (matchlockd retries the VM then, if ${link} is still its bridge or macvtap parent; wait again after)` : 'cannot hold until it is deleted and created again';
}

function durationOption(flag: string, value: string, allowZero = false): number {
  const ms = parseDuration(value);
  if (ms === undefined || (!allowZero && ms === 0)) throw cliError(`${flag} ${value}: must be a duration like 30s`, EXIT.usage);
  return ms;
}

/** `vm stop|start|restart|pause|resume`, `vm events` and `vm watch`, on matchlock.v1. */
export function addPowerCommands(vm: Command, globals: Globals, io: Io): void {
  const withLifecycle = async <T>(fn: (c: ReturnType<typeof connectService<typeof MicroVMLifecycle>>) => Promise<T>): Promise<T> => {
    const c = connectService(MicroVMLifecycle, globals());
    try {
      return await fn(c);
    } catch (err) {
      if (err instanceof MatchlockError && (err.cause as { code?: number } | undefined)?.code === 12) {
        throw cliError(`${globals().host} does not serve matchlock.v1.MicroVMLifecycle (flintlockd has no power operations)`, EXIT.precondition);
      }
      throw err;
    } finally {
      c.close();
    }
  };
  type WaitOpts = { wait: boolean; timeout: string };
  const verbs: { name: string; desc: string; grace: boolean; call: (c: ReturnType<typeof connectService<typeof MicroVMLifecycle>>, uid: string, o: { grace?: string; force?: boolean }) => Promise<PowerResponse>; until: (before: MicroVM | undefined) => { test: Condition; text: string }; done: string }[] = [
    {
      name: 'stop',
      desc: 'power the guest down (ACPI / Ctrl+Alt+Del), then stop its VMM after the grace period; it stays stopped across daemon and host restarts',
      grace: true,
      call: (c, uid, o) => c.stopMicroVM(create(StopMicroVMRequestSchema, { uid, force: !!o.force, grace: o.grace === undefined ? undefined : durationFromMs(durationOption('--grace', o.grace, true)) })),
      until: () => parseConditions(['power=STOPPED']),
      done: 'stopped',
    },
    { name: 'start', desc: 'start a stopped VM', grace: false, call: (c, uid) => c.startMicroVM(create(StartMicroVMRequestSchema, { uid })), until: () => parseConditions(['state=CREATED', 'power=RUNNING']), done: 'running' },
    {
      name: 'restart',
      desc: 'stop the VMM (as stop does) and start it again',
      grace: true,
      call: (c, uid, o) => c.restartMicroVM(create(RestartMicroVMRequestSchema, { uid, force: !!o.force, grace: o.grace === undefined ? undefined : durationFromMs(durationOption('--grace', o.grace, true)) })),
      until: (before) => {
        const pid = before?.status?.vmmPid ?? 0;
        const running = parseConditions(['state=CREATED', 'power=RUNNING']);
        return { test: (o) => running.test(o) && (o.vm?.status?.vmmPid ?? 0) !== pid && (o.vm?.status?.vmmPid ?? 0) > 0, text: 'a new VMM running' };
      },
      done: 'restarted',
    },
    { name: 'pause', desc: 'pause the guest\'s vCPUs', grace: false, call: (c, uid) => c.pauseMicroVM(create(PauseMicroVMRequestSchema, { uid })), until: () => parseConditions(['power=PAUSED']), done: 'paused' },
    { name: 'resume', desc: 'let a paused guest run again', grace: false, call: (c, uid) => c.resumeMicroVM(create(ResumeMicroVMRequestSchema, { uid })), until: () => parseConditions(['power=RUNNING']), done: 'running' },
  ];
  for (const v of verbs) {
    const cmd = vm.command(`${v.name} <vm>`)
      .description(`${v.desc}; waits until it is done unless --no-wait`)
      .option('--no-wait', 'return once the request is stored')
      .option('--timeout <duration>', 'how long to wait', '5m');
    if (v.grace) cmd.option('--grace <duration>', 'how long the guest gets to power down (default: the daemon\'s delete-vm-timeout)').option('--force', 'stop the VMM without asking the guest');
    cmd.action(async (ref: string, o: WaitOpts & { grace?: string; force?: boolean }) => {
      const timeoutMs = durationOption('--timeout', o.timeout);
      if (o.grace !== undefined && o.force) throw cliError('give --grace or --force, not both', EXIT.usage);
      const uid = await resolveRef(globals(), ref);
      const res = await withLifecycle((c) => v.call(c, uid, o));
      if (o.wait) await waitUntil(globals(), uid, v.until(res.microvm), timeoutMs, io, false);
      io.out(documentText(globals().output, { uid, action: v.name, result: o.wait ? v.done : 'requested' }) ?? `${uid} ${o.wait ? v.done : `${v.name} requested`}\n`);
    });
  }

  vm.command('events')
    .description('print every change of every VM (or of --uid / --namespace) as it happens; reconnects and resumes after a daemon restart')
    .option('--uid <uid>', 'only this VM')
    .option('--namespace <ns>', 'only this namespace')
    .option('--after-id <id>', 'resume after this event id instead of starting with the current VMs')
    .option('--max-events <n>', 'exit after this many events')
    .action(async (o: { uid?: string; namespace?: string; afterId?: string; maxEvents?: string }) => {
      if (o.afterId !== undefined && !/^[0-9]{1,15}$/.test(o.afterId)) throw cliError(`--after-id ${o.afterId}: must be an event id (a whole number)`, EXIT.usage);
      if (o.maxEvents !== undefined && !/^[1-9][0-9]*$/.test(o.maxEvents)) throw cliError(`--max-events ${o.maxEvents}: must be a positive whole number`, EXIT.usage);
      const max = o.maxEvents === undefined ? Infinity : Number(o.maxEvents);
      const format = globals().output;
      let n = 0;
      await followEvents(globals(), { uid: o.uid, namespace: o.namespace, afterId: o.afterId === undefined ? undefined : BigInt(o.afterId) }, (e) => {
        if (format === 'table') io.out(eventLine(e));
        // Every field, unset ones as their zero value, as `vm get -o json` writes the VM.
        else if (format === 'json') io.out(JSON.stringify(toJson(MicroVMEventSchema, e, { alwaysEmitImplicit: true })) + '\n');
        else io.out(yamlText([toJson(MicroVMEventSchema, e, { alwaysEmitImplicit: true })]));
        return ++n >= max;
      }, io);
    });

  vm.command('watch <vm>')
    .description('print changes of one VM until a condition holds (like kubectl wait), e.g. --for state=CREATED --for power=RUNNING; reconnects after a daemon restart')
    .option('--for <condition>', 'state=PENDING|CREATED|FAILED|DELETING, power=RUNNING|PAUSED|STOPPED, desired=…, booted=true|false, or delete (repeatable or comma-joined: all must hold)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--until <state>', 'the same as --for state=<state> (gone: --for delete)')
    .option('--timeout <duration>', 'give up after this long (e.g. 90s, 5m)', '5m')
    .action(async (ref: string, o: { for?: string[]; until?: string; timeout: string }) => {
      const uid = await resolveRef(globals(), ref);
      const terms = [...(o.for ?? [])];
      if (o.until !== undefined) terms.push(o.until.toLowerCase() === 'gone' ? 'delete' : `state=${o.until}`);
      if (terms.length === 0) terms.push('state=CREATED');
      const cond = parseConditions(terms);
      await waitUntil(globals(), uid, cond, durationOption('--timeout', o.timeout), io, globals().output);
    });
}

/** `matchlock version`: the client's version, then the server's (GetServerInfo). */
export function versionCommand(vm: Command, globals: Globals, io: Io): void {
  vm.command('version')
    .description('print the client version and the server\'s (version, commit, APIs, providers, daemon id)')
    .action(async () => {
      const format = globals().output;
      const c = connectService(Server, globals());
      let server: Record<string, unknown> | undefined;
      let problem: MatchlockError | undefined;
      try {
        server = toJson(GetServerInfoResponseSchema, await c.getServerInfo(create(GetServerInfoRequestSchema)), { alwaysEmitImplicit: true }) as Record<string, unknown>;
      } catch (err) {
        problem = MatchlockError.from(err);
      } finally {
        c.close();
      }
      const notMatchlock = (problem?.cause as { code?: number } | undefined)?.code === 12;
      // A daemon that cannot be reached (or refuses the token) is an error after the client part.
      if (problem && !notMatchlock && format === 'table') {
        io.out(`client: matchlock ${VERSION}\n`);
        throw problem;
      }
      const unknownWhy = problem ? (notMatchlock ? `${globals().host} does not serve matchlock.v1.Server: a flintlockd, or an older matchlockd` : problem.message) : undefined;
      if (format !== 'table') {
        const doc = { client: { version: VERSION }, server: server ?? { version: 'unknown', error: unknownWhy } };
        io.out(format === 'json' ? JSON.stringify(doc, null, 2) + '\n' : yamlText(doc));
        if (problem && !notMatchlock) throw problem;
        return;
      }
      io.out(`client: matchlock ${VERSION}\n`);
      if (!server) {
        io.out(`server: unknown (${unknownWhy})\n`);
        return;
      }
      const providers = (server.providers as { name: string; version: string; available: boolean; isDefault: boolean }[]).map((p) => `${p.name}${p.isDefault ? '*' : ''} (${p.available ? p.version || 'version unknown' : 'not installed'})`);
      io.out(`server: matchlockd ${String(server.version)}${server.commit ? ` (commit ${String(server.commit).slice(0, 12)})` : ''}\n`);
      io.out(`  apis: ${(server.apiVersions as string[]).join(', ')}\n  providers (* default): ${providers.join(', ')}\n  daemon id: ${String(server.daemonId)}  state dir: ${String(server.stateDir)}  uptime: ${String(server.uptime)}\n`);
    });
}
