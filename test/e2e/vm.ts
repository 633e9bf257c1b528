import { create } from '@bufbuild/protobuf';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CreateMicroVMRequestSchema,
  DeleteMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  type CreateMicroVMResponse,
  type GetMicroVMResponse,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { MicroVMStatus_MicroVMState, NetworkInterface_IfaceType, type MicroVM } from '../../src/gen/types/microvm_pb.js';
import { run as cli } from '../../src/cli/main.js';
import { rawClient } from '../helpers/client.js';
import { GUEST_REF, type Lab } from '../helpers/lab.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(everyMs);
  }
}

/** Imports the test guest into a lab's store; `init` makes the store when no daemon made it yet. */
export async function importGuest(lab: Pick<Lab, 'stateDir'>, layout: string, opts: { init?: boolean } = {}): Promise<void> {
  let err = '';
  const code = await cli(['image', 'import', layout, '--name', GUEST_REF, '--state-dir', lab.stateDir, ...(opts.init ? ['--init'] : [])], { out: () => undefined, err: (t) => (err += t) }, {});
  if (code !== 0) throw new Error(`image import failed: ${err}`);
}

export interface NicSpec {
  id: string;
  type: 'TAP' | 'MACVTAP';
  mac?: string;
  bridge?: string;
}

/** A thin client for one lab's daemon (re-read after a restart, the port changes). */
export function api(lab: { daemon: { target: string } }) {
  const call = async <T>(method: string, req: unknown): Promise<T> => {
    const c = rawClient(lab.daemon.target);
    try {
      return await c.call<T>(method, req);
    } finally {
      c.close();
    }
  };
  return {
    /** `over` is merged into the MicroVMSpec (provider, cmdline, namespace, …). */
    async create(name: string, nics: NicSpec[], userData?: string, image = GUEST_REF, over: Record<string, unknown> = {}): Promise<string> {
      const metadata: Record<string, string> = {};
      if (userData) metadata['user-data'] = Buffer.from(userData).toString('base64');
      const res = await call<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, {
        microvm: {
          id: name,
          namespace: 'e2e',
          vcpu: 1,
          memoryInMb: 1024,
          kernel: { image, filename: 'boot/vmlinuz', addNetworkConfig: true },
          initrd: { image, filename: 'boot/initrd.img' },
          rootVolume: { id: 'root', source: { containerSource: image } },
          interfaces: nics.map((n) => ({
            deviceId: n.id,
            type: n.type === 'TAP' ? NetworkInterface_IfaceType.TAP : NetworkInterface_IfaceType.MACVTAP,
            guestMac: n.mac,
            overrides: n.bridge ? { bridgeName: n.bridge } : undefined,
          })),
          metadata,
          ...over,
        },
      }));
      return res.microvm?.spec?.uid ?? '';
    },
    async get(uid: string): Promise<MicroVM | undefined> {
      try {
        return (await call<GetMicroVMResponse>('getMicroVM', create(GetMicroVMRequestSchema, { uid }))).microvm;
      } catch (err) {
        if ((err as { code?: number }).code === 5) return undefined;
        throw err;
      }
    },
    async delete(uid: string): Promise<void> {
      await call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid }));
    },
  };
}

export const stateOf = (vm: MicroVM | undefined) => (vm ? MicroVMStatus_MicroVMState[vm.status?.state ?? 0] : 'gone');

export function vmDir(lab: Lab, name: string, uid: string): string {
  return join(lab.stateDir, 'vm', 'e2e', name, uid);
}

export function consoleOf(lab: Lab, name: string, uid: string): string {
  const p = join(vmDir(lab, name, uid), 'console.log');
  return existsSync(p) ? readFileSync(p, 'utf8') : '';
}
