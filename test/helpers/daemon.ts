import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { detectCgroups, VmCgroups } from '../../src/adapters/vmm/confine/cgroup.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Test daemons put VM cgroups under this test process's own cgroups (a relative parent), never
 * under the host-wide default, and whatever a test leaves there is removed when it exits.
 */
export const TEST_CGROUP_PARENT = `matchlock-test-${process.pid}`;
let cgroupCleanup = false;

/** Removes a cgroup parent and the VM cgroups in it, where no task is left in them. */
export function removeCgroupParent(parent: string): void {
  for (const dir of new VmCgroups(detectCgroups(), parent).dirs('')) {
    const children = existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(dir, e.name)) : [];
    for (const d of [...children, dir]) {
      try {
        rmdirSync(d);
      } catch {
        // not made, already gone, or a task still inside (then it is not ours to force)
      }
    }
  }
}
export const DAEMON_BIN = join(ROOT, 'bin/matchlockd.js');

export interface DaemonHandle {
  proc: ChildProcess;
  grpcPort: number;
  /** What a gRPC client dials: 127.0.0.1:<port>, or the unix: endpoint when one was given. */
  target: string;
  httpPort: number | undefined;
  stateDir: string;
  logs: string[];
  /** SIGTERM and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

/** A temp state dir removed by the returned function. */
export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `matchlock-${prefix}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Starts the real matchlockd binary on ephemeral loopback ports and resolves once its APIs
 * listen. Extra flags are appended; the state dir is the caller's.
 */
export async function startDaemon(stateDir: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}, netns?: string, entry: string[] = [DAEMON_BIN]): Promise<DaemonHandle> {
  const args = [...entry, 'run', '--state-dir', stateDir, '--grpc-endpoint', '127.0.0.1:0', '--log-format', 'json', '--config', '/dev/null', '--vmm-cgroup-parent', TEST_CGROUP_PARENT, ...extra];
  if (!cgroupCleanup) {
    cgroupCleanup = true;
    process.once('exit', () => removeCgroupParent(TEST_CGROUP_PARENT));
  }
  const endpointAt = extra.lastIndexOf('--grpc-endpoint');
  const unixEndpoint = endpointAt >= 0 && extra[endpointAt + 1]?.startsWith('unix:') ? extra[endpointAt + 1] : undefined;
  // nsenter execs the daemon in place, so the pid is the daemon's own. It enters only the
  // network namespace: `ip netns exec` would also mount a fresh /sys, hiding /sys/fs/cgroup.
  const [cmd, argv] = netns ? ['nsenter', [`--net=/run/netns/${netns}`, process.execPath, ...args]] : [process.execPath, args];
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const logs: string[] = [];
  // Each stream has its own partial line: V8's traces (stdout) and the log (stderr) interleave.
  const partial = { stdout: '', stderr: '' };
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const ready = new Promise<{ grpcPort: number; httpPort: number | undefined }>((resolve, reject) => {
    let grpcPort: number | undefined;
    const wantHttp = extra.includes('--enable-http');
    const reader = (stream: keyof typeof partial) => (chunk: Buffer) => {
      let buffered = partial[stream] + chunk.toString('utf8');
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        logs.push(line);
        try {
          const rec = JSON.parse(line) as { msg?: string; port?: number };
          if (rec.msg === 'grpc api listening') grpcPort = rec.port ?? 0;
          if (grpcPort !== undefined && (!wantHttp || rec.msg === 'http api listening')) {
            resolve({ grpcPort, httpPort: wantHttp ? rec.port : undefined });
          }
        } catch {
          // not a JSON log line
        }
      }
      partial[stream] = buffered;
    };
    proc.stdout?.on('data', reader('stdout'));
    proc.stderr?.on('data', reader('stderr'));
    proc.once('exit', (code) => reject(new Error(`matchlockd exited with ${code} before listening:\n${logs.join('\n')}${partial.stdout}${partial.stderr}`)));
    // Generous: on a loaded machine loading the TypeScript sources alone can take many seconds.
    setTimeout(() => reject(new Error(`matchlockd did not start within 60s:\n${logs.join('\n')}`)), 60_000).unref();
  });
  let grpcPort: number;
  let httpPort: number | undefined;
  try {
    ({ grpcPort, httpPort } = await ready);
  } catch (err) {
    // Never leave a daemon behind that started too late.
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
    throw err;
  }
  const signal = async (sig: NodeJS.Signals) => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
    await exited;
  };
  const target = unixEndpoint ?? `127.0.0.1:${grpcPort}`;
  return { proc, grpcPort, target, httpPort, stateDir, logs, stop: () => signal('SIGTERM'), kill: () => signal('SIGKILL') };
}

/** Runs matchlockd expecting it to refuse to start; resolves with its exit code and output. */
export async function daemonFailsToStart(args: string[], env: NodeJS.ProcessEnv = {}, netns?: string): Promise<{ code: number | null; output: string }> {
  const [cmd, argv] = netns ? ['ip', ['netns', 'exec', netns, process.execPath, DAEMON_BIN, ...args]] : [process.execPath, [DAEMON_BIN, ...args]];
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let output = '';
  proc.stdout.on('data', (c: Buffer) => (output += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, output };
}
