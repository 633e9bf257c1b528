import { create } from '@bufbuild/protobuf';
import { accessSync, constants, existsSync, openSync, closeSync, readFileSync, readdirSync, realpathSync, statfsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { run } from '../adapters/exec.js';
import { Iproute2Network } from '../adapters/network/iproute2/network.js';
import { SqliteStore } from '../adapters/store/sqlite/store.js';
import { PROVIDERS, type ProviderModule } from '../adapters/vmm/registry.js';
import { runDirOf, vmDirOf, type VmmPresence, type VmmProvider } from '../core/vmm.js';
import { silentLogger } from '../adapters/silent-logger.js';
import { guestMac, hostDeviceName } from '../core/microvm/host-names.js';
import { desiredPower, type MicroVM } from '../core/microvm/types.js';
import { ListMicroVMsRequestSchema } from '../gen/services/microvm/v1alpha1/microvms_pb.js';
import { connect, connectService } from '../adapters/api/client.js';
import { GetServerInfoRequestSchema, Server, type GetServerInfoResponse } from '../gen/services/matchlock/v1/server_pb.js';
import type { DaemonConfig } from '../daemon/config.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import { binaryFor, buildProviders, findBinary } from '../daemon/providers.js';
import { describeUnrecorded, vmDirs } from '../daemon/unrecorded.js';
import { ipToInt, type HubConfig } from '../hub/config.js';
import { hubLeases, hubStatus, type Lease } from '../hub/hub.js';
import { connect as tlsConnect } from 'node:tls';
import { dialAddress, parseEndpoint } from '../core/endpoint.js';
import { vmmUserIsRoot } from '../adapters/vmm/confine/vmm.js';

export type Verdict = 'ok' | 'warn' | 'fail';

export interface Check {
  check: string;
  status: Verdict;
  evidence: string;
  fix?: string | undefined;
}

const ok = (check: string, evidence: string): Check => ({ check, status: 'ok', evidence });
const warn = (check: string, evidence: string, fix?: string): Check => ({ check, status: 'warn', evidence, fix });
const fail = (check: string, evidence: string, fix: string): Check => ({ check, status: 'fail', evidence, fix });

const links = new Iproute2Network();

/**
 * How inspect reaches the daemon: the CLI's global token and TLS flags, and its endpoint when
 * named (`--host`, MATCHLOCK_HOST); the config's grpc-endpoint otherwise.
 */
export interface DaemonAccess {
  /** The endpoint to check instead of the config's grpc-endpoint. */
  host?: string | undefined;
  /** --token / MATCHLOCK_TOKEN; the config's basic-auth-token when absent. */
  token?: string | undefined;
  tlsCa?: string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  insecure?: boolean | undefined;
  /** The config file the daemon is started with, for the fix text; /etc/matchlock/config.yaml when absent. */
  configPath?: string | undefined;
}

/** The fix for a TLS flag whose file the client refuses, by the flag its refusal names. */
const TLS_FILE_FIX: Record<string, string> = {
  '--tls-ca': "give --tls-ca a readable PEM file holding the certificate of the CA that signed matchlockd's tls-cert",
  '--tls-cert': "give --tls-cert a readable PEM client certificate (signed by matchlockd's tls-client-ca) together with --tls-key, its private key",
  '--tls-key': 'give --tls-key the readable PEM private key of the client certificate in --tls-cert',
};

/**
 * Whether matchlockd answers on its endpoint, and when not, which of the three it is: a refused
 * token (UNAUTHENTICATED), TLS (handshake or certificates), or nothing listening.
 */
async function daemonCheck(cfg: DaemonConfig, access: DaemonAccess): Promise<{ check: Check; running?: GetServerInfoResponse | undefined }> {
  const check = await reach(cfg, access);
  if (check.status !== 'ok') return { check };
  // What the daemon that answers runs with (matchlock.v1.Server), which its command line may
  // have set apart from the config read here; a flintlockd has no such service.
  const host = access.host ?? dialAddress(cfg.grpcEndpoint);
  const c = connectService(Server, { host, token: access.token ?? cfg.basicAuthToken, tlsCa: access.tlsCa, tlsCert: access.tlsCert, tlsKey: access.tlsKey, insecure: access.insecure, timeoutMs: 3000 });
  try {
    return { check, running: await c.getServerInfo(create(GetServerInfoRequestSchema)) };
  } catch {
    return { check };
  } finally {
    c.close();
  }
}

async function reach(cfg: DaemonConfig, access: DaemonAccess): Promise<Check> {
  const host = access.host ?? dialAddress(cfg.grpcEndpoint);
  // The client dials TLS whenever a TLS flag is given (as connect() decides), whatever the config says.
  const cliTls = !!(access.tlsCa || access.tlsCert || access.tlsKey);
  const tls = cfg.tlsCert !== '' || cliTls;
  const token = access.token ?? cfg.basicAuthToken;
  const how = `${tls ? 'TLS' : 'plaintext'}, ${cfg.basicAuthToken || access.token ? 'token auth' : 'no auth'}`;
  if (tls && !cliTls) return warn('daemon', `matchlockd serves TLS on ${host}; not checked without the CA`, 'give --tls-ca (and --tls-cert/--tls-key for mTLS), as for any other command');
  try {
    const c = connect({ host, token, tlsCa: access.tlsCa, tlsCert: access.tlsCert, tlsKey: access.tlsKey, insecure: access.insecure, timeoutMs: 3000 });
    try {
      await c.listMicroVMs(create(ListMicroVMsRequestSchema, {}));
    } finally {
      c.close();
    }
    return ok('daemon', `matchlockd answers on ${host} (${how})`);
  } catch (err) {
    const e = err as Error & { code?: unknown };
    const first = e.message.split('\n')[0] ?? '';
    if (e instanceof MatchlockError && e.code === ErrorCode.Unauthenticated) {
      const source = access.token !== undefined ? 'the token given (--token or MATCHLOCK_TOKEN)' : cfg.basicAuthToken ? "the config's basic-auth-token" : 'no token';
      return fail('daemon', `matchlockd on ${host} is running but refused ${source}: ${first}`, token ? "pass the daemon's basic-auth-token with --token or MATCHLOCK_TOKEN" : 'the daemon wants a token: --token or MATCHLOCK_TOKEN');
    }
    // A TLS file the client refuses before dialling (tls-files): nothing was asked of the daemon.
    const tlsFix = e instanceof MatchlockError && e.code === ErrorCode.InvalidArgument && e.field !== undefined ? TLS_FILE_FIX[e.field] : undefined;
    if (tlsFix) return fail('daemon', `matchlockd on ${host} not checked: ${first}`, tlsFix);
    if (e instanceof MatchlockError && e.code === ErrorCode.InvalidArgument) return fail('daemon', `${host}: ${first}`, 'give --tls-ca for TLS, or --insecure for plaintext to a non-loopback address');
    if (/SSL|TLS|certificate|handshake/i.test(first)) return fail('daemon', `TLS with matchlockd on ${host} failed: ${first}`, '--tls-ca must be the CA that signed tls-cert; with tls-client-validate, give --tls-cert and --tls-key signed by tls-client-ca');
    // Plaintext gRPC to a TLS server fails like a stopped daemon; a TLS handshake tells them apart.
    const listening = cliTls ? 'closed' : await speaksTls(host);
    if (listening === 'tls') return fail('daemon', `matchlockd on ${host} answers only over TLS; plaintext failed: ${first}`, 'give --tls-ca (and --tls-cert/--tls-key for mTLS), as for any other command');
    if (listening === 'open') return fail('daemon', `something listens on ${host} but does not answer as matchlockd: ${first}`, 'check that --host or grpc-endpoint names matchlockd; if it serves TLS, give --tls-ca');
    return fail('daemon', `no answer from matchlockd on ${host}: ${first}`, `start it: systemctl start matchlockd (or matchlockd run --config ${access.configPath ?? '/etc/matchlock/config.yaml'})`);
  }
}

/** A directory as compared: absolute, without trailing slashes or symbolic links where it exists. */
function samePath(dir: string): string {
  try {
    return realpathSync(dir);
  } catch {
    return resolve(dir);
  }
}

/**
 * Whether `host` (an endpoint in dial form) completes a TLS handshake ('tls'), accepts a
 * connection but no handshake ('open'), or takes no connection ('closed'). The certificate is
 * not checked: this only says which protocol answers, within 3 s.
 */
function speaksTls(host: string): Promise<'tls' | 'open' | 'closed'> {
  const parsed = parseEndpoint(host, { unix: true });
  if ('error' in parsed) return Promise.resolve('closed');
  const e = parsed.endpoint;
  return new Promise((resolve) => {
    let connected = false;
    const sock = tlsConnect({ ...(e.kind === 'unix' ? { path: e.path } : { host: e.host || '127.0.0.1', port: e.port, servername: '' }), rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    const done = (v: 'tls' | 'open' | 'closed') => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(3000, () => done(connected ? 'open' : 'closed'));
    sock.on('connect', () => (connected = true));
    sock.on('secureConnect', () => done('tls'));
    sock.on('error', () => done(connected ? 'open' : 'closed'));
    sock.on('close', () => done(connected ? 'open' : 'closed'));
  });
}

/** The host as operators check it by hand: daemon, VMMs, /dev/kvm, stores, and every MicroVM. */
export async function inspectHost(
  cfg: DaemonConfig,
  opts: { token?: string | undefined; access?: DaemonAccess; leases?: Lease[] | undefined; registry?: ReadonlyMap<string, ProviderModule>; hubOnlyUnlessDaemon?: boolean },
): Promise<Check[]> {
  const checks: Check[] = [];
  const registry = opts.registry ?? PROVIDERS;

  // Daemon reachable on its endpoint, with the auth and TLS it is configured for.
  const { check: daemon, running } = await daemonCheck(cfg, { ...opts.access, token: opts.access?.token ?? opts.token });
  // A machine that only runs the hub: nothing answers and there is no store. Host checks would
  // only say that matchlockd is absent, over and over.
  if (opts.hubOnlyUnlessDaemon && daemon.status === 'fail' && /no answer/.test(daemon.evidence) && !existsSync(join(cfg.stateDir, 'matchlock.db'))) {
    return [ok('daemon', `no matchlockd on this machine (nothing on ${opts.access?.host ?? cfg.grpcEndpoint}, no store in ${cfg.stateDir}): hub checks only`)];
  }
  checks.push(daemon);
  if (running?.stateDir && samePath(running.stateDir) !== samePath(cfg.stateDir)) {
    checks.push(warn('state dir', `the running matchlockd keeps its state in ${running.stateDir}; this inspect reads ${cfg.stateDir}`, `give inspect --daemon-state-dir ${running.stateDir}, or --config with the file the daemon runs with`));
  }

  for (const [p, m] of registry) {
    // The binary the running daemon uses, where it says (its flags may differ from the config).
    const configured = binaryFor(cfg, m);
    const theirs = running?.providers.find((x) => x.name === p)?.binary;
    const bin = theirs || configured;
    const whose = theirs && theirs !== configured ? ` (the running matchlockd's ${m.binarySetting}; the config read here names ${configured})` : '';
    const found = findBinary(bin);
    if (!found) {
      const isDefault = (running?.providers.find((x) => x.isDefault)?.name ?? cfg.defaultProvider) === p;
      checks.push((isDefault ? fail : warn)(`vmm ${p}`, `"${bin}" not found${whose}`, `install ${p} or set --${m.binarySetting}`));
      continue;
    }
    const version = await run(found, ['--version']).then((r) => r.stdout.split('\n')[0] ?? '', () => 'version unknown');
    checks.push(ok(`vmm ${p}`, `${found}: ${version || 'no version printed'}${whose}`));
  }

  try {
    closeSync(openSync('/dev/kvm', 'r+'));
    checks.push(cfg.providerSettings['qemu-accel'] === 'kvm' ? ok('kvm', '/dev/kvm opens read-write; qemu-accel is kvm') : warn('kvm', '/dev/kvm opens, but qemu-accel is tcg', 'if guests run under KVM here, set qemu-accel: kvm (it is never guessed)'));
  } catch (err) {
    const msg = `/dev/kvm: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    checks.push(cfg.providerSettings['qemu-accel'] === 'kvm' ? fail('kvm', msg, 'load kvm (modprobe kvm_intel or kvm_amd) or set qemu-accel: tcg') : ok('kvm', `${msg}; qemu-accel is tcg, so not needed`));
  }

  const images = join(cfg.stateDir, 'images');
  try {
    accessSync(cfg.stateDir, constants.W_OK);
    const refs = existsSync(join(images, 'refs')) ? readdirSync(join(images, 'refs')).length : 0;
    checks.push(ok('image store', `${images}: ${refs} image reference(s)`));
  } catch {
    checks.push(fail('image store', `${cfg.stateDir} is missing or not writable`, `mkdir -p -m 0750 ${cfg.stateDir}`));
  }
  try {
    // No free block even for root (bfree, not bavail): matchlockd runs as root, and every write
    // it takes (store, images, VM directories) fails with ENOSPC.
    const fs = statfsSync(cfg.stateDir);
    if (fs.bfree === 0) checks.push(fail('state dir space', `${cfg.stateDir}: its file system is full (ENOSPC: no free blocks of ${fs.blocks}); matchlockd answers writes RESOURCE_EXHAUSTED`, 'free space in the state dir'));
  } catch {
    // a missing state dir is the image store check's finding
  }
  if (cfg.thinpool) {
    const info = await run(cfg.dmsetupBin, ['info', cfg.thinpool]).then(() => true, () => false);
    checks.push(info ? ok('thin pool', `${cfg.thinpool} is active`) : fail('thin pool', `dmsetup info ${cfg.thinpool} failed`, `create the pool (flintlock's provision script) or unset thinpool`));
  }

  // Every MicroVM, from the store itself, so this works when the daemon is down.
  let vms: MicroVM[] = [];
  const dbPath = join(cfg.stateDir, 'matchlock.db');
  const storeExists = existsSync(dbPath);
  // The uids the store knows (records and tombstones); undefined when it cannot be read.
  let known: Set<string> | undefined = storeExists ? undefined : new Set();
  if (storeExists) {
    let db: SqliteStore | undefined;
    try {
      // Records only: inspect serves no wire bytes, and does not write a store of the current
      // schema that a daemon may be serving (perhaps of the release before, until restarted).
      db = new SqliteStore(dbPath, { recordsOnly: true });
      vms = db.list({});
      known = new Set([...vms.map((v) => v.uid), ...db.tombstones().map((t) => t.uid)]);
    } catch (err) {
      // A damaged store is a finding like any other; its message carries the fix. A store a
      // daemon holds alone (started on a full state dir) is not damaged.
      if (err instanceof MatchlockError && err.code === ErrorCode.Unavailable) {
        // The daemon opened the store in EXCLUSIVE locking mode and keeps it so until it stops,
        // also once space is freed (it takes writes again without a restart).
        checks.push(warn(
          'store',
          `${dbPath}: the running matchlockd holds the store for itself since it started on a full state dir; inspect cannot read its records (so no VM checks) until that daemon restarts; nothing is wrong with the store`,
          'to have inspect check the VMs, restart matchlockd when the state dir has free space; meanwhile its API answers List and Get',
        ));
      } else {
        checks.push(fail('store', (err as Error).message.split('; nothing was changed')[0] ?? '', `with matchlockd stopped, restore ${dbPath} from a backup, or move it aside`));
      }
    } finally {
      db?.close();
    }
  }
  // The start-up check of matchlockd (daemon/unrecorded.ts), made here first: VM directories no
  // record stands for stop the daemon from starting, and an operator should learn it before.
  if (known) {
    const unrecorded = vmDirs(cfg.stateDir).filter((d) => !known.has(d.uid));
    if (unrecorded.length) {
      const f = describeUnrecorded(cfg.stateDir, unrecorded, storeExists);
      checks.push(fail('vm directories', `${f.evidence}; matchlockd refuses to start until this is fixed`, f.fix));
    }
  }
  const providers = buildProviders(cfg, registry, silentLogger);
  for (const vm of vms) checks.push(...(await inspectVm(cfg, vm, opts.leases, providers, registry)));
  return checks;
}

/**
 * What to do about a VM's VMM found running as root, by provider. matchlock confines only QEMU
 * itself (vmm-user or vmm-uid-range, chroot, seccomp, vmm-cgroups) and Firecracker through the
 * jailer (firecracker-jailer-bin: its own uid/gid, chroot, cgroup v2); Firecracker without the
 * jailer and Cloud Hypervisor run as matchlockd's own user (root) outside any per-VM cgroup.
 */
function rootVmmFix(cfg: DaemonConfig, provider: string): string {
  if (provider === 'qemu') {
    // With vmm-user root a restarted QEMU is root again: the setting is what must change.
    return vmmUserIsRoot(cfg.vmmUser, cfg.vmmUidRange)
      ? 'vmm-user is root, so matchlockd runs QEMU without dropping privileges: set vmm-user to an unprivileged user (or set vmm-uid-range), restart matchlockd, then stop and start the VM'
      : 'kill that VMM (matchlockd starts it again as vmm-user, confined)';
  }
  if (provider === 'firecracker') {
    return cfg.providerSettings['firecracker-jailer-bin']
      ? 'stop and start the VM: matchlockd starts it again under the jailer, as the VM\'s own uid/gid'
      : 'matchlockd runs Firecracker unconfined without the jailer (vmm-user and vmm-cgroups apply to QEMU only): set firecracker-jailer-bin, then stop and start the VM';
  }
  return `matchlockd does not confine ${provider} (vmm-user and vmm-cgroups apply to QEMU only): a guest that escapes it owns the host; use provider qemu, or firecracker with firecracker-jailer-bin, where that matters`;
}

/**
 * A VM not yet CREATED lacks files, a VMM or links because it is not made yet: those are the
 * consequences of its state, so they go into its one state check instead of standing as
 * faults of their own.
 */
async function inspectVm(
  cfg: DaemonConfig,
  vm: MicroVM,
  leases: Lease[] | undefined,
  providers: ReadonlyMap<string, VmmProvider>,
  registry: ReadonlyMap<string, ProviderModule>,
): Promise<Check[]> {
  const checks = await vmChecks(cfg, vm, leases, providers, registry);
  const [state, ...rest] = checks;
  if (!state || vm.status.state === 'CREATED') return checks;
  const consequences = rest.filter((c) => c.status !== 'ok');
  if (consequences.length === 0) return checks;
  const prefix = state.check.slice(0, -'state'.length);
  const so = consequences.map((c) => `${c.check.slice(prefix.length)}: ${c.evidence}`).join('; ');
  return [{ ...state, evidence: `${state.evidence} (so, not made yet: ${so})` }, ...rest.filter((c) => c.status === 'ok')];
}

async function vmChecks(
  cfg: DaemonConfig,
  vm: MicroVM,
  leases: Lease[] | undefined,
  providers: ReadonlyMap<string, VmmProvider>,
  registry: ReadonlyMap<string, ProviderModule>,
): Promise<Check[]> {
  const id = `vm ${vm.spec.namespace}/${vm.spec.name} (${vm.uid})`;
  const out: Check[] = [];
  const s = vm.status;
  if (s.state === 'CREATED') out.push(ok(`${id} state`, `CREATED${s.guestBooted ? ', guest booted' : ''}`));
  else if (s.state === 'FAILED') {
    // A VM that failed for want of its bridge or macvtap parent is revived when that link
    // appears again (the link watch), or is found there when matchlockd starts; any other
    // FAILED VM stays so until it is deleted, and so does one whose missing link is no longer
    // one of its uplinks (bridge-name, parent-iface or its bridge override changed since).
    const uplinks = new Set(vm.spec.interfaces.map((i) => (i.type === 'MACVTAP' ? cfg.parentIface : (i.overrides?.bridgeName || cfg.bridgeName))));
    // An uplink inspect does not know (bridge-name or parent-iface given to the daemon only) may
    // be the missing link: that is not evidence that the link is no longer the VM's uplink.
    const awaited = s.missingLink !== undefined && s.missingLink !== '' && (uplinks.has(s.missingLink) || uplinks.has('')) ? s.missingLink : undefined;
    const present = awaited !== undefined && (await links.get(awaited)) !== undefined;
    const hint = awaited === undefined
      ? `fix the cause, then delete and recreate it (matchlock vm delete ${vm.uid})`
      : present
        ? `${awaited} is there again: matchlockd retries the VM when it sees it appear, and on its start (restart matchlockd to retry now), or delete it (matchlock vm delete ${vm.uid})`
        : `bring back ${awaited}: matchlockd retries the VM when it appears (or delete it: matchlock vm delete ${vm.uid})`;
    out.push(fail(`${id} state`, `FAILED after ${s.retry} attempts: ${s.lastError}`, hint));
  }
  else out.push(warn(`${id} state`, `${s.state}${s.lastError ? `: ${s.lastError}` : ''}`, s.lastError ? 'see last error; matchlockd retries with back-off' : undefined));
  if (s.state === 'DELETING' || s.state === 'FAILED') return out;

  const dir = vmDirOf(cfg.stateDir, vm);
  const provider = providers.get(vm.spec.provider);
  if (!provider) {
    out.push(fail(`${id} vmm`, `provider ${vm.spec.provider} is not known to this matchlock`, `delete the VM (matchlock vm delete ${vm.uid}) or run a matchlock that has the provider`));
    return out;
  }
  const vmm = provider.instance({ uid: vm.uid, namespace: vm.spec.namespace, name: vm.spec.name, dir, runDir: runDirOf(cfg.stateDir, vm.uid) });
  const meta = registry.get(vm.spec.provider)?.descriptor.metadata;
  const stopped = desiredPower(vm) === 'STOPPED';
  const pid = await vmm.running();
  // Whether a VMM ever ran for this VM: its console and logs exist only from its first start
  // (and stay, as flintlock keeps them, until the VM is deleted). The record says so; one stored
  // before it kept that is taken as started when a VMM runs, its status names one, or what a run
  // leaves is in its directory.
  const beforeStart = new Set(vmm.expectedFiles(vm.spec, 'never-started'));
  const leftovers = vmm.expectedFiles(vm.spec, 'stopped').filter((f) => !beforeStart.has(f));
  const started = s.vmmStarted === true || pid !== undefined || s.vmmPid > 0 || s.guestBooted || leftovers.some((f) => existsSync(f));
  // The files the provider makes for this spec: before any VMM only those of the create plan;
  // those of a live VMM (pid file, sockets) only when the VMM should run: a VM stopped on
  // request keeps everything but its VMM.
  const presence: VmmPresence = !started ? 'never-started' : stopped ? 'stopped' : 'running';
  const files = [...new Set([...vmm.expectedFiles(vm.spec, presence), ...(meta?.kind === 'nocloud-disk' ? [join(dir, meta.file)] : [])])];
  const missing = files.filter((f) => !existsSync(f)).map((f) => basename(f));
  const names = files.map((f) => basename(f));
  const notYet = started ? '' : `${names.length ? ' ' : ''}(no ${vm.spec.provider} started for it yet, so no console or VMM files)`;
  out.push(missing.length ? fail(`${id} files`, `${dir} lacks ${missing.join(', ')}`, 'matchlockd recreates them on its next reconcile; restart it to reconcile now') : ok(`${id} files`, `${dir}: ${names.join(', ')}${notYet}`));

  const recorded = Number((existsSync(vmm.files.pid) ? readFileSync(vmm.files.pid, 'utf8') : '').trim()) || 0;
  // A VMM running as root makes a guest escape a host compromise (matchlockd starts them as vmm-user).
  let uid: string | undefined;
  try {
    uid = pid !== undefined ? /^Uid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] : undefined;
  } catch {
    uid = undefined; // it exited just now; the next inspect says so
  }
  // A VM the operator stopped (matchlock.v1 StopMicroVM) is right to have no VMM.
  if (stopped) out.push(pid === undefined ? ok(`${id} vmm`, `stopped by request${started ? '' : ', never started'} (matchlock vm start ${vm.uid} starts it)`) : warn(`${id} vmm`, `${vm.spec.provider} pid ${pid} runs, but the VM was asked to stop`, 'matchlockd stops it on its next reconcile; restart it to reconcile now'));
  else if (pid !== undefined && uid === '0') out.push(warn(`${id} vmm`, `${vm.spec.provider} pid ${pid} running as root`, rootVmmFix(cfg, vm.spec.provider)));
  else if (pid !== undefined) out.push(ok(`${id} vmm`, `${vm.spec.provider} pid ${pid} running as uid ${uid ?? '?'}`));
  else if (!started) out.push(fail(`${id} vmm`, 'no VMM process (none was started for it yet)', 'matchlockd starts it on its next reconcile; restart it to reconcile now'));
  else out.push(fail(`${id} vmm`, `no VMM process${recorded ? ` (pid ${recorded} is gone)` : ''}`, `matchlockd restarts it when it is running; check the ${vm.spec.provider} log files and ${basename(vmm.files.console)} in ${dir}`));
  if (pid !== undefined && vmm.powerState) {
    // The VMM's control API (QMP, Cloud Hypervisor's REST socket): a live process that does not
    // answer cannot be paused, inspected or stopped gracefully.
    const power = await vmm.powerState(AbortSignal.timeout(5000)).catch(() => undefined);
    out.push(power ? ok(`${id} api`, `answers: guest ${power}`) : warn(`${id} api`, `${vm.spec.provider} pid ${pid} does not answer on its control socket in ${runDirOf(cfg.stateDir, vm.uid)}`, `check ${vm.spec.provider}'s log in ${dir}; deleting the VM stops it with signals`));
  }

  for (const [n, iface] of vm.spec.interfaces.entries()) {
    const name = hostDeviceName(vm, n);
    const link = await links.get(name);
    // The bridge the TAP belongs on: its override, else bridge-name as inspect was given it. When
    // neither is known (the daemon took --bridge-name as a flag, inspect ran without it) there is
    // nothing to compare with: the bridge the TAP is on is reported, not called a mismatch.
    const bridge = iface.overrides?.bridgeName || cfg.bridgeName || undefined;
    const check = `${id} interface ${iface.deviceId}`;
    const state = link?.up ? ', up' : ', down';
    // The TAP or macvtap is made before the VMM and kept while it is stopped; only a running
    // VMM holds the old one and must be restarted to use a new one.
    if (!link) out.push(fail(check, `${name} missing`, `matchlockd recreates it on its next reconcile (restart matchlockd to reconcile now)${pid !== undefined ? '; the VMM must be restarted to use it' : ''}`));
    else if (iface.type !== 'TAP') out.push(ok(check, `${name} (macvtap)${state}`));
    else if (bridge === undefined) {
      out.push(link.master
        ? ok(check, `${name} on ${link.master}${state} (bridge-name not known to inspect, so not compared)`)
        : warn(check, `${name} is attached to no bridge, and the bridge it belongs on is not known to inspect`, "give inspect the daemon's --bridge-name (or its --config) to name the bridge"));
    } else if (link.master !== bridge) out.push(fail(check, `${name} is attached to ${link.master ?? 'nothing'}, not ${bridge}`, `ip link set ${name} master ${bridge}`));
    else out.push(ok(check, `${name} on ${bridge}${state}`));
    if (leases) {
      // The macvtap carries the guest MAC too, so one rule finds both kinds.
      const mac = guestMac(vm, n);
      const lease = leases.find((l) => l.mac === mac);
      // Only a running guest asks for a lease: without a VMM none is due (the vmm check says
      // whether one should run).
      if (!iface.address) {
        out.push(lease
          ? ok(`${id} lease ${iface.deviceId}`, `${lease.ip} until ${lease.expires}`)
          : pid === undefined
            ? ok(`${id} lease ${iface.deviceId}`, `no lease for ${mac}, and none is due: no VMM runs for it`)
            : warn(`${id} lease ${iface.deviceId}`, `no lease for ${mac}`, 'check the guest runs DHCP and the hub DHCP server is up'));
      }
    }
  }
  return out;
}

/** The hub as operators check it: each piece, the leases, and whether a VPN subnet router runs. */
export async function inspectHub(c: HubConfig): Promise<Check[]> {
  const fixes: Record<string, string> = {
    interface: 'matchlock hub setup',
    address: 'matchlock hub setup',
    uplink: `bring ${c.uplink} up, or set uplink to the interface that leads out`,
    'ip-forward': 'matchlock hub setup (sets net.ipv4.ip_forward=1)',
    nat: 'matchlock hub setup (rewrites the matchlock_hub nft table)',
    dhcp: 'matchlock hub setup (restarts the DHCP server)',
  };
  const checks: Check[] = (await hubStatus(c)).map((p) => (p.ok ? ok(`hub ${p.piece}`, p.detail) : fail(`hub ${p.piece}`, p.detail, p.fix ?? fixes[p.piece] ?? 'matchlock hub setup')));
  const leases = await hubLeases(c).catch(() => []);
  const size = ipToInt(c.rangeEnd) - ipToInt(c.rangeStart) + 1;
  const used = leases.length / size;
  const usage = `${leases.length} of ${size} addresses leased in ${c.rangeStart}-${c.rangeEnd} (${Math.round(used * 100)}%)`;
  checks.push(used >= 0.9 ? warn('hub pool', usage, 'widen the range or shorten lease times') : ok('hub pool', usage));
  const { stdout } = await run('ip', ['-json', '-details', 'link', 'show']);
  const vpn = (JSON.parse(stdout) as { ifname: string; linkinfo?: { info_kind?: string } }[]).find((l) => l.linkinfo?.info_kind === 'wireguard' || /^(tailscale|wg|zt)/.test(l.ifname));
  checks.push(vpn ? ok('vpn subnet router', `${vpn.ifname} present`) : warn('vpn subnet router', 'no wireguard/tailscale interface found', 'operators reach the VLAN through a VPN subnet router; matchlock does not run one'));
  return checks;
}
