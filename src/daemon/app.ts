import type { Server as GrpcServer } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { join } from 'node:path';
import { bindGrpc, createGrpcServer, routeGrpcLog, serverCredentials, type GrpcTls } from '../adapters/api/grpc/server.js';
import { checkCaFile, checkKeyPair, readTlsFile } from '../adapters/api/tls-files.js';
import { SqliteStore } from '../adapters/store/sqlite/store.js';
import { MicroVMService } from '../core/microvm/service.js';
import type { Logger } from '../core/ports.js';
import { longestSocketPath, UNIX_SOCKET_PATH_MAX } from '../core/vmm.js';
import { HostRuntime } from '../core/plan/host-runtime.js';
import { NodeHostFiles } from '../adapters/system/files.js';
import { ImageCatalog, LocalImageStore } from '../adapters/images/oci/store.js';
import { registryClient, registryConfigOf } from '../adapters/images/oci/registry.js';
import { VfatCloudInitDisk } from '../adapters/metadata/cidata.js';
import { Iproute2Network } from '../adapters/network/iproute2/network.js';
import { LinkMonitor } from '../adapters/network/iproute2/link-monitor.js';
import { LinkWatch } from '../core/reconcile/link-watch.js';
import { Ext4Volumes } from '../adapters/volumes/ext4.js';
import { ThinPoolVolumes } from '../adapters/volumes/thin.js';
import { PROVIDERS, type ProviderModule } from '../adapters/vmm/registry.js';
import { createConfinement, vmmUserIsRoot, type VmmConfinement } from '../adapters/vmm/confine/vmm.js';
import { parseUidRange } from '../adapters/vmm/confine/uids.js';
import { lookupGroup, lookupUser, rootIds } from '../adapters/system/accounts.js';
import { lockStateDir, makeStateDir, removeMadeStateDir, restoreStateDir, snapshotStateDir, StateDirInUse, tightenStateDir } from './state-dir.js';
import { EventSupervisor } from '../adapters/vmm/supervisor.js';
import { LogBound } from '../adapters/vmm/console.js';
import { GrowingFiles, RECORDS_PAGE } from './growing-files.js';
import type { ConsoleLocator } from '../adapters/api/grpc/console.js';
import { sweepOrphans } from './sweep.js';
import { findUnrecorded, unrecordedRefusal, vmDirs } from './unrecorded.js';
import { daemonIdentity } from './identity.js';
import { checkSocket, clearStaleSocket, restrictSocket, socketPath } from './unix-socket.js';
import { WorkerMetaDataReader } from '../adapters/metadata/worker-reader.js';
import { Lifecycle, type Drainable } from './lifecycle.js';
import { ReconcileQueue } from '../core/reconcile/queue.js';
import { Reconciler } from '../core/reconcile/reconciler.js';
import { endpointOf, isLocalEndpoint } from '../core/endpoint.js';
import { ErrorCode, MatchlockError } from '../core/errors.js';
import { configError, type DaemonConfig } from './config.js';
import { buildProviders, chooseDefaultProvider, providerEntries } from './providers.js';
import { PowerService } from '../core/microvm/power.js';
import { serverInfoSource } from './server-info.js';
import { VERSION } from '../version.js';
import { startSpawner, stopSpawner } from '../adapters/spawner.js';

export interface RunningDaemon {
  grpcPort: number;
  httpPort: number | undefined;
  /** Ports of the metrics and debug endpoints, by setting key, when configured. */
  opsPorts: Record<string, number>;
  /** Drains (see Lifecycle) and stops; VMs keep running. */
  stop(): Promise<void>;
  /** Cuts the drain short: running reconciles are called off at once. */
  force(): void;
}

/**
 * The TLS files, read and checked before anything is made (tls-files: the rules the CLI holds
 * its own to): what Node's TLS (under grpc-js and the HTTP servers) would refuse only at the
 * bind, or accept and then fail every handshake with, is refused here naming the setting
 * (InvalidArgument, exit code 2).
 */
function readTls(cfg: DaemonConfig): GrpcTls | undefined {
  if (cfg.tlsCert === '') return undefined;
  const certFile = { name: 'tls-cert', path: cfg.tlsCert };
  const keyFile = { name: 'tls-key', path: cfg.tlsKey };
  const caFile = { name: 'tls-client-ca', path: cfg.tlsClientCa };
  const tls = {
    cert: readTlsFile(certFile),
    key: readTlsFile(keyFile),
    clientCa: cfg.tlsClientValidate ? readTlsFile(caFile) : undefined,
  };
  checkKeyPair(certFile, tls.cert, keyFile, tls.key);
  if (tls.clientCa) checkCaFile(caFile, tls.clientCa);
  return tls;
}

export interface DaemonOptions {
  /** The providers this daemon knows; the registry unless a test adds one. */
  registry?: ReadonlyMap<string, ProviderModule>;
}

/** Wires the daemon together and starts it. What it starts, `stop()` ends, in reverse order. */
export async function startDaemon(cfg: DaemonConfig, logger: Logger, opts: DaemonOptions = {}): Promise<RunningDaemon> {
  const providerRegistry = opts.registry ?? PROVIDERS;
  const lifecycle = new Lifecycle(logger);
  const tls = readTls(cfg);
  routeGrpcLog(logger);
  for (const [key, endpoint, on] of [['grpc-endpoint', cfg.grpcEndpoint, true], ['http-endpoint', cfg.httpEndpoint, cfg.enableHttp], ['metrics-endpoint', cfg.metricsEndpoint, cfg.metricsEndpoint !== ''], ['debug-endpoint', cfg.debugEndpoint, cfg.debugEndpoint !== '']] as const) {
    if (on && !tls && !cfg.insecure && !isLocalEndpoint(endpoint)) {
      throw configError(`${key} ${endpoint} is not a loopback address: give tls-cert and tls-key, or --insecure to serve plaintext`);
    }
  }
  // Built with the other checks, before the state dir is made, locked or written: a refused
  // registry setting or auth file leaves no state behind.
  let registry;
  try {
    registry = registryClient(registryConfigOf(cfg), logger);
  } catch (err) {
    throw err instanceof MatchlockError ? err : configError((err as Error).message);
  }
  const sockets = longestSocketPath(cfg.stateDir, [...providerRegistry.values()].map((m) => m.descriptor));
  if (sockets.bytes > UNIX_SOCKET_PATH_MAX) {
    const room = UNIX_SOCKET_PATH_MAX - (sockets.bytes - Buffer.byteLength(cfg.stateDir));
    throw configError(`state-dir ${cfg.stateDir} is too long: VM sockets such as ${sockets.example} would be ${sockets.bytes} bytes, over the ${UNIX_SOCKET_PATH_MAX}-byte unix socket limit; use a state dir of at most ${room} bytes`);
  }
  // A damaged store, one of a newer schema, and VM directories no record stands for (flintlock's,
  // or a lost store's) are refused before anything is made or changed in the state dir or on
  // the host (the VMM user): a store that exists is read read-only, whatever its schema. One
  // that cannot be read so is checked again when it is opened, before it is upgraded.
  const unrecorded = findUnrecorded(cfg.stateDir);
  if (unrecorded?.dirs.length) throw unrecordedRefusal(cfg.stateDir, unrecorded.dirs, unrecorded.storeExisted, true);
  // First, while this process is small: from here on programs are started by the spawner, and
  // the daemon's own address space is not forked again.
  await startSpawner(logger);
  const providers = providerEntries(cfg, providerRegistry);
  const chosen = chooseDefaultProvider(cfg, providers);
  const defaultProvider = chosen ?? [...providerRegistry.keys()].at(-1) ?? '';
  if (chosen) logger.info({ provider: chosen, configured: cfg.defaultProvider !== '' }, 'default provider chosen');
  const defaultEntry = providers.get(chosen ?? '');
  // A configured default whose VMM is missing is kept (the binary may be installed later), but
  // every create that names no provider would be refused: say so now, not at the first create.
  if (chosen && defaultEntry && !defaultEntry.availability.usable) logger.warn({ provider: chosen, reason: defaultEntry.availability.reason }, 'the default provider cannot run VMs: creates that name no provider will be refused');
  else if (!chosen) logger.warn({ provider: defaultProvider }, 'no VMM binary found; creates will be refused until one is installed');

  const socketGroup = cfg.grpcSocketGroup === '' ? undefined : lookupGroup(cfg.grpcSocketGroup);
  if (cfg.grpcSocketGroup !== '' && socketGroup === undefined) throw configError(`grpc-socket-group ${cfg.grpcSocketGroup}: no such group`);

  // What can be refused without making anything is refused before the state dir is made or
  // changed, the VMM user created or the orphans swept: endpoints that cannot be bound, and a
  // VMM user that is root under another name.
  await checkEndpoints(cfg);
  const confined = [...providers.values()].some((e) => e.availability.usable);
  const existing = confined && !parseUidRange(cfg.vmmUidRange) && !vmmUserIsRoot(cfg.vmmUser, cfg.vmmUidRange) ? lookupUser(cfg.vmmUser) : undefined;
  const rootUser = existing && rootIds(existing);
  if (rootUser) throw configError(`vmm-user ${cfg.vmmUser}: vmm-user ${cfg.vmmUser} has ${rootUser}; name an unprivileged user, or root to run VMMs as root`);

  // In this order: nothing is read or written before the state dir is known to be writable and
  // ours alone, and nothing (no VM, no sweep) is touched when the store is damaged.
  const before = snapshotStateDir(cfg.stateDir);
  const { created } = makeStateDir(cfg.stateDir);
  // What this start opened, closed in reverse when it fails before it drains (the drain closes
  // them itself).
  const opened: (() => void)[] = [];
  let drained = false;
  let failing = false;
  let undone = false;
  // A start that fails leaves the state dir as it found it: the state dir it made goes with
  // what is in it (ancestors it made only when empty: another start may have made its own
  // state dir beside it); one that was there gets back what the start changed in it. Done with
  // the store closed and the lock still held, so no other daemon can have started there
  // meanwhile.
  const undo = () => {
    undone = true;
    if (created) removeMadeStateDir(cfg.stateDir, created, true);
    else if (before) restoreStateDir(cfg.stateDir, before);
  };
  try {
    const lock = lockStateDir(cfg.stateDir);
    opened.push(() => lock.release());
    opened.push(() => failing && undo());
    // Only now that it is ours: a state dir another daemon holds is refused above unchanged.
    const { full } = tightenStateDir(cfg.stateDir);
    const daemonId = daemonIdentity(cfg.stateDir);
    logger.info({ daemonId, stateDir: cfg.stateDir }, 'daemon identity');
    // The VMM user and the cgroups are made only where a VMM can run at all.
    let confinement: VmmConfinement | undefined;
    try {
      if (confined) {
        confinement = await createConfinement(
          { user: cfg.vmmUser, uidRange: cfg.vmmUidRange, claimsDir: join(cfg.stateDir, 'vmm-uids'), sandbox: cfg.qemuSandbox, cgroups: cfg.vmmCgroups, cgroupParent: cfg.vmmCgroupParent },
          logger,
        );
      }
    } catch (err) {
      throw configError(`${cfg.vmmUidRange ? `vmm-uid-range ${cfg.vmmUidRange}` : `vmm-user ${cfg.vmmUser}`}: ${(err as Error).message}`);
    }
    const vmms = buildProviders(cfg, providerRegistry, logger, confinement);
    // Opened (an older store upgraded) only after what can still refuse without it: a refused
    // start leaves a store the matchlock it came from can open again.
    const storePath = join(cfg.stateDir, 'matchlock.db');
    const storeExisted = existsSync(storePath);
    const store = new SqliteStore(storePath, {
      exclusiveWhenFull: true,
      beforeUpgrade: (recorded) => {
        const left = vmDirs(cfg.stateDir).filter((d) => !recorded.has(d.uid));
        if (left.length) throw unrecordedRefusal(cfg.stateDir, left, storeExisted, false);
      },
    });
    opened.push(() => store.close());
    // A full state dir does not stop the daemon: the API is what an operator needs to list and
    // delete VMs and free space. Reads are served; every write is answered RESOURCE_EXHAUSTED
    // naming ENOSPC until there is room.
    if (full || store.exclusive || !lock.pidWritten) {
      logger.error(
        { stateDir: cfg.stateDir, err: 'ENOSPC', pidFile: lock.pidWritten, store: store.exclusive ? `exclusive locking mode (${store.exclusive})` : 'shared' },
        'the state dir is on a FULL file system: List and Get are served, creates, deletes and reconciles fail with RESOURCE_EXHAUSTED (ENOSPC) until space is freed there',
      );
    }
    const files = new NodeHostFiles();
    const network = new Iproute2Network();
    // prom-client, the metrics and debug endpoints and the HTTP gateway are loaded only when
    // configured: an idle daemon without them is about 2 MB smaller (bench/README.md).
    const ops = cfg.metricsEndpoint || cfg.debugEndpoint ? await import('./metrics.js') : undefined;
    const metrics = cfg.metricsEndpoint ? new (await import('../adapters/metrics/prometheus.js')).DaemonMetrics({ version: VERSION, providers: [...providerRegistry.keys()] }) : undefined;
    const images = new LocalImageStore(join(cfg.stateDir, 'images'), registry, metrics?.images);
    // Supervisor events need the reconciler and queue, which need the runtime that owns the
    // supervisor: the handlers are bound once all three exist.
    const events = { exited: (_uid: string, _pid: number) => undefined as void, booted: (_uid: string, _pid: number) => undefined as void, healthy: (_uid: string) => undefined as void };
    const supervisor = new EventSupervisor(
      { exited: (u, p) => events.exited(u, p), booted: (u, p) => events.booted(u, p), healthy: (u) => events.healthy(u) },
      logger,
      { healthyAfterMs: cfg.healthyAfterMs },
    );
    const ext4 = new Ext4Volumes(images, join(cfg.stateDir, 'images', 'base'));
    const thin = cfg.thinpool
      ? new ThinPoolVolumes({ pool: cfg.thinpool, dmsetup: cfg.dmsetupBin, devDir: cfg.thinpoolDevDir, idsFile: join(cfg.stateDir, 'images', 'thin-ids.json'), ext4 })
      : undefined;
    const volumes = thin ?? ext4;
    if (cfg.thinpool) logger.info({ pool: cfg.thinpool }, 'volumes on a device-mapper thin pool');
    const runtime = new HostRuntime({
      stateDir: cfg.stateDir,
      images,
      volumes,
      files,
      network,
      cloudInit: new VfatCloudInitDisk(),
      providers: vmms,
      supervisor,
      bridgeName: cfg.bridgeName,
      parentIface: cfg.parentIface,
      deleteVmTimeoutMs: cfg.deleteVmTimeoutMs,
      daemonId,
      onStep: metrics && ((plan, o) => metrics.step(plan, o)),
    });
    const reconciler = new Reconciler({
      store,
      runtime,
      clock: { now: () => new Date() },
      logger,
      maxRetries: cfg.maximumRetry,
      backoffBaseMs: cfg.retryBackoffMs,
      backoffMaxMs: 5 * 60_000,
      random01: Math.random,
      observer: metrics,
      passEnded: (uid, vm, missingLink, stored) => linkWatch.track(uid, vm, missingLink, stored),
    });
    // Host link changes that cut a VM off (its TAP or macvtap deleted, detached, set down, its
    // bridge or macvtap parent made again) are repaired as they happen rather than at the next
    // resync: after each pass the VM's links are tracked, and `ip monitor link` events of tracked
    // links enqueue the VM.
    const linkWatch = new LinkWatch({
      store,
      network,
      bridgeName: cfg.bridgeName,
      parentIface: cfg.parentIface,
      busy: (uid) => reconciler.busy(uid),
      repair: (uid, returned) => {
        if (returned !== undefined) reconciler.retryNow(uid, returned);
        queue.enqueue(uid);
      },
      logger,
    });
    const queue = new ReconcileQueue({ workers: cfg.reconcileWorkers, handler: (uid) => reconciler.reconcile(uid), logger });
    events.exited = (uid, pid) => {
      // Once draining, the metrics endpoint is closed: an exit counted here would be counted where
      // nobody can scrape it, and saving it would clear the pid the next start looks for. The
      // record keeps its pid, so the next start finds the VMM gone and counts the exit then
      // (Reconciler.exitedWhileDown), as it does for one that died while no daemon ran.
      if (lifecycle.state === 'draining' || lifecycle.state === 'stopped') {
        logger.warn({ uid, pid }, 'vmm exited while matchlockd stops; the next start counts it');
        return;
      }
      const delay = reconciler.vmmExited(uid, pid);
      if (delay !== undefined) queue.enqueue(uid, delay);
    };
    if (ops) metrics?.setSources(ops.metricsSources({ store, queue, reconciler, runtime, vmms }));
    events.booted = (uid, pid) => reconciler.guestBooted(uid, pid);
    events.healthy = (uid) => reconciler.vmmHealthy(uid);
    // A create's large meta-data is read on a thread of its own (cloud-init's YAML rules cost
    // a 0.5 MiB document seconds), so one such create does not hold every other request.
    const metaData = new WorkerMetaDataReader();
    const service = new MicroVMService({
      store,
      clock: { now: () => new Date() },
      random: { bytes: (n) => randomBytes(n) },
      notifier: {
        changed: (uid) => {
          reconciler.changed(uid);
          queue.enqueue(uid);
        },
      },
      providers,
      defaultProvider,
      metaData,
    });

    const catalog = new ImageCatalog(images, logger);
    // Every record, a page at a time with a turn of the event loop between pages, so a large
    // store is never read at once and requests are served meanwhile.
    async function* allRecords() {
      for (let page = store.page({}, { limit: RECORDS_PAGE }); page.length > 0; page = store.page({}, { after: page.at(-1)?.uid, limit: RECORDS_PAGE })) {
        yield* page;
        await new Promise((r) => setImmediate(r));
      }
    }
    const collectImages = async () => {
      if (cfg.imageGcGraceMs <= 0) return;
      const inUse = new Set((await catalog.usage(allRecords())).keys());
      const removed = await catalog.collect(inUse, cfg.imageGcGraceMs);
      if (removed.length) logger.info({ removed }, 'unused images removed');
      if (thin) await thin.collectBases(new Set([...inUse, ...(await catalog.list()).map((i) => i.digest)]), logger);
    };
    // uids only: a page of them is small whatever its length.
    const UIDS_PAGE = 500;
    const enqueueAll = async () => {
      for (let uids = store.uids({}, { limit: UIDS_PAGE }); uids.length > 0; uids = store.uids({}, { after: uids.at(-1), limit: UIDS_PAGE })) {
        for (const uid of uids) queue.enqueue(uid);
        await new Promise((r) => setImmediate(r));
      }
    };
    const resyncAll = () => {
      enqueueAll()
        .catch((err: unknown) => logger.error({ err: (err as Error).message }, 'resync failed'))
        .then(() => collectImages())
        .catch((err: unknown) => logger.error({ err: (err as Error).message }, 'image garbage collection failed'));
    };
    const token = cfg.basicAuthToken || undefined;
    // matchlock.v1: power operations, the event stream and server info. Event streams end when
    // the daemon stops serving, so they never hold up the drain.
    const streamsEnd = new AbortController();
    const matchlock = {
      power: new PowerService({ store, clock: { now: () => new Date() }, notifier: { changed: (uid) => queue.enqueue(uid) }, providers }),
      service,
      events: store,
      info: serverInfoSource(cfg, providerRegistry, providers, defaultProvider, daemonId),
      shutdown: streamsEnd.signal,
    };
    const instanceOf = (vm: ReturnType<MicroVMService['get']>) => vmms.get(vm.spec.provider)?.instance(runtime.ref(vm));
    const consoleOf: ConsoleLocator = (uid) => {
      const vm = service.get(uid);
      const inst = instanceOf(vm);
      if (!inst) throw new MatchlockError(ErrorCode.FailedPrecondition, `provider ${vm.spec.provider} is not known to this matchlock`);
      return { log: inst.consolePath, provider: vm.spec.provider, input: inst.consoleInput };
    };
    // Every file a VMM keeps growing is held under console-log-max-bytes.
    const growing = new GrowingFiles(store, (vm) => {
      const inst = instanceOf(vm);
      return inst ? (inst.growingFiles ?? [inst.consolePath]) : [];
    });
    const logBound = new LogBound(async () => growing.files(), cfg.consoleLogMaxBytes, logger);
    const grpcServer: GrpcServer = createGrpcServer({ service, logger, token, tls, matchlock, console: consoleOf, observe: metrics && ((rpc, code, s) => metrics.request('grpc', rpc, code, s)) });
    let httpServer: HttpServer | undefined;
    const opsEndpoints = ops?.opsServers({ metricsEndpoint: cfg.metricsEndpoint, debugEndpoint: cfg.debugEndpoint, metrics, token, tls, logger }) ?? [];
    let resync: NodeJS.Timeout | undefined;
    // Events missed (no monitor ran for a while, or the kernel dropped some) are made up by
    // reading the uplinks known missing again (a return among the missed events) and reconciling
    // every VM once; the image collection of a periodic resync is not repeated.
    const linkMonitor = new LinkMonitor({
      wants: (name) => linkWatch.wants(name),
      onEvent: (e) => linkWatch.seen(e),
      onMissed: () => {
        linkWatch.eventsMissed();
        void enqueueAll().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'resync after link events were missed failed'));
      },
      logger,
    });
    const drainable: Drainable = {
      stopServing: async (force) => {
        if (resync) clearInterval(resync);
        streamsEnd.abort();
        if (force) {
          grpcServer.forceShutdown();
          httpServer?.closeAllConnections();
        }
        for (const o of opsEndpoints) o.server.closeAllConnections();
        await Promise.all([
          ...opsEndpoints.map((o) => new Promise<void>((resolve) => o.server.close(() => resolve()))),
          new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve())),
          httpServer ? new Promise<void>((resolve) => httpServer?.close(() => resolve())) : undefined,
        ]);
      },
      stopWork: () => queue.stop(),
      abortWork: () => reconciler.abortAll(),
      close: () => {
        void metaData.close();
        linkMonitor.close();
        linkWatch.close();
        logBound.stop();
        supervisor.stop();
        store.close();
        if (failing) undo();
        lock.release();
        network.close();
        stopSpawner();
      },
    };
    const stop = () => lifecycle.shutdown(drainable, cfg.shutdownGraceMs);
    try {
      // Before serving: a state dir whose records were lost refuses to start here, and nothing
      // is reconciled or created while leftovers are removed.
      const removed = await sweepOrphans({ daemonId, stateDir: cfg.stateDir, store, network, files, providers: vmms, volumes: thin, stopTimeoutMs: cfg.deleteVmTimeoutMs, log: logger }).catch((err: unknown) => {
        if (err instanceof MatchlockError && err.code === ErrorCode.FailedPrecondition) throw err;
        logger.error({ err: (err as Error).message }, 'orphan sweep failed; continuing');
        return 0;
      });
      if (removed) logger.info({ removed }, 'orphans removed');
      // Blobs, trees and volumes a killed daemon left half-written (images/base included).
      await images.sweepTemporaries().then(
        (gone) => void (gone.length && logger.info({ removed: gone }, 'unfinished image temporaries removed')),
        (err: unknown) => logger.error({ err: (err as Error).message }, 'temporary sweep failed; continuing'),
      );
      await clearStaleSocket('grpc-endpoint', cfg.grpcEndpoint);
      const grpcPort = await bindGrpc(grpcServer, cfg.grpcEndpoint, serverCredentials(tls));
      await restrictSocket(cfg.grpcEndpoint, socketGroup);
      // A unix socket has no port (grpc-js answers its bind with 1): the log names the path.
      const where = cfg.grpcEndpoint.startsWith('unix:') ? { socket: socketPath(cfg.grpcEndpoint) } : { port: grpcPort };
      logger.info({ endpoint: cfg.grpcEndpoint, ...where, tls: !!tls, mtls: !!tls?.clientCa, auth: !!token }, 'grpc api listening');
      let httpPort: number | undefined;
      if (cfg.enableHttp) {
        httpServer = (await import('../adapters/api/http/server.js')).createHttpApi({ service, logger, token, tls, matchlock, observe: metrics && ((rpc, status, s) => metrics.request('http', rpc, String(status), s)) });
        httpPort = await listen(httpServer, cfg.httpEndpoint);
        logger.info({ endpoint: cfg.httpEndpoint, port: httpPort }, 'http api listening');
      }
      const opsPorts: Record<string, number> = {};
      for (const o of opsEndpoints) {
        opsPorts[o.key] = await listen(o.server, o.endpoint, o.key);
        logger.info({ endpoint: o.endpoint, port: opsPorts[o.key], tls: !!tls, auth: !!token }, `${o.key.replace(/-endpoint$/, '')} endpoint listening`);
      }
      // VMMs that died while no daemon watched them are exits like those the supervisor sees
      // (logged, counted, a retry), reported before the first pass restarts them.
      for await (const vm of allRecords()) {
        try {
          const inst = vm.status.vmmPid ? instanceOf(vm) : undefined;
          const delay = inst && (await reconciler.exitedWhileDown(vm, () => inst.running()));
          if (delay !== undefined) queue.enqueue(vm.uid, delay);
        } catch (err) {
          // The first pass looks at this VM anyway; its check must not keep the daemon down.
          logger.error({ uid: vm.uid, err: (err as Error).message }, 'checking for a vmm that exited while matchlockd was down failed');
        }
      }
      // Before the first resync, so that no change after a VM's first pass goes unseen.
      linkMonitor.start();
      resyncAll();
      logBound.start();
      resync = setInterval(resyncAll, cfg.resyncPeriodMs);
      resync.unref();
      lifecycle.to('serving');
      return { grpcPort, httpPort, opsPorts, stop, force: () => lifecycle.force() };
    } catch (err) {
      drained = true;
      failing = true;
      await stop();
      throw err;
    }
  } catch (err) {
    failing = true;
    if (!drained) {
      for (const close of opened.reverse()) {
        try {
          close();
        } catch {
          // the start's own failure is the one to report
        }
      }
    }
    // The lock was not taken. Another daemon holding it found the directory this start made
    // and uses it: nothing there is this start's to remove. Otherwise (the lock file could not
    // be made) what this start made goes only if it is empty: another start may be about to
    // take its lock.
    if (!undone && created && !(err instanceof StateDirInUse)) removeMadeStateDir(cfg.stateDir, created, false);
    throw err;
  }
}

/**
 * Refuses, before anything is made, an endpoint this start could not listen on, as the bind
 * itself would (an Error naming the setting, `<key> <endpoint>: cannot listen: <why>`): a
 * `unix:` socket another process serves, a path that is no socket or whose directory does not
 * exist (checkSocket); a TCP address in use or not this host's, found by binding it and letting
 * go. All TCP endpoints are held until each is bound, so two settings naming one port are
 * refused too. Port 0 (any free port) cannot be in use and is not bound here.
 */
async function checkEndpoints(cfg: DaemonConfig): Promise<void> {
  const tcp: [string, string][] = [];
  // The socket may go in the state dir, made (with its missing parents) after this check.
  if (cfg.grpcEndpoint.startsWith('unix:')) await checkSocket('grpc-endpoint', cfg.grpcEndpoint, cfg.stateDir);
  else tcp.push(['grpc-endpoint', cfg.grpcEndpoint]);
  if (cfg.enableHttp) tcp.push(['http-endpoint', cfg.httpEndpoint]);
  if (cfg.metricsEndpoint !== '') tcp.push(['metrics-endpoint', cfg.metricsEndpoint]);
  if (cfg.debugEndpoint !== '') tcp.push(['debug-endpoint', cfg.debugEndpoint]);
  const held: NetServer[] = [];
  try {
    for (const [key, endpoint] of tcp) {
      const e = endpointOf(endpoint, {});
      if (e.kind !== 'tcp') throw configError(`${key} ${endpoint}: must be host:port`);
      if (e.port === 0) continue;
      const probe = createNetServer();
      held.push(probe);
      await new Promise<void>((resolve, reject) => {
        probe.once('error', (err) => reject(new Error(`${key} ${endpoint}: cannot listen: ${err.message}`, { cause: err })));
        probe.listen(e.port, e.host === '' ? undefined : e.host, () => resolve());
      });
    }
  } finally {
    await Promise.all(held.map((probe) => new Promise<void>((resolve) => probe.close(() => resolve()))));
  }
}

/**
 * Listens on `endpoint`, validated with the config (host:port, or `:port`: Node's default host,
 * every interface of both families as in Go). A failure names the setting.
 */
async function listen(server: HttpServer, endpoint: string, key = 'http-endpoint'): Promise<number> {
  const e = endpointOf(endpoint, {});
  if (e.kind !== 'tcp') throw configError(`${key} ${endpoint}: must be host:port`);
  return await new Promise<number>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`${key} ${endpoint}: cannot listen: ${err.message}`, { cause: err })));
    server.listen(e.port, e.host === '' ? undefined : e.host, () => {
      const addr = server.address();
      resolve(typeof addr === 'object' && addr ? addr.port : e.port);
    });
  });
}
