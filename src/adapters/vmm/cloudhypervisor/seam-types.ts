/**
 * The provider seam's shapes this provider implements (VmRef, Launch, VmmInstance, Step), declared
 * here until the seam's own core module is on this line; they match it field for field, so the
 * swap is an import change.
 */
import type { Logger } from '../../../core/ports.js';
import type { ChLaunch } from './args.js';

export interface VmRef {
  uid: string;
  namespace: string;
  name: string;
  dir: string;
  runDir: string;
}

export interface Launch extends VmRef, Omit<ChLaunch, 'uid' | 'dir' | 'runDir'> {
  metadata: Readonly<Record<string, Buffer>>;
}

export interface CmdlineInput {
  hasRoot: boolean;
  metadata: Readonly<Record<string, Buffer>>;
}

export interface Step {
  readonly name: string;
  needed(): Promise<boolean>;
  run(signal: AbortSignal): Promise<void>;
  verify(): Promise<void>;
}

export type VmmPowerState = 'running' | 'paused' | 'stopped';

export interface VmmInstance {
  readonly ref: VmRef;
  readonly files: Readonly<Record<string, string>> & { readonly pid: string; readonly console: string };
  readonly consolePath: string;
  defaultCmdline(input: CmdlineInput): [string, string][];
  createSteps(launch: () => Launch): Step[];
  deleteSteps(): Step[];
  running(): Promise<number | undefined>;
  start(launch: Launch, signal: AbortSignal, log: Logger): Promise<number>;
  stop(opts: { timeoutMs: number; signal: AbortSignal }, log: Logger): Promise<void>;
  setPaused?(paused: boolean, signal: AbortSignal): Promise<void>;
  powerState?(signal: AbortSignal): Promise<VmmPowerState | undefined>;
}
