import { failedPrecondition } from '../errors.js';
import { mergeCmdline, noCloudSeed, type GuestInterface } from '../microvm/cloudinit.js';
import { deviceAlias, guestMac, hostDeviceName } from '../microvm/host-names.js';
import { imageRefs, specVolumes, type MicroVM, type MicroVMStatus, type NetworkInterfaceStatus } from '../microvm/types.js';
import type {
  CloudInitDisk,
  HostFiles,
  HostNetwork,
  ImageStore,
  LaunchDisk,
  LaunchNic,
  Logger,
  Runtime,
  RuntimeStatus,
  Supervisor,
  Volumes,
  VmmProvider,
} from '../ports.js';
import { runPlan, type Step } from './steps.js';

export interface HostRuntimeOptions {
  stateDir: string;
  images: ImageStore;
  volumes: Volumes;
  files: HostFiles;
  network: HostNetwork;
  cloudInit: CloudInitDisk;
  providers: ReadonlyMap<string, VmmProvider>;
  supervisor: Supervisor;
  /** Bridge for TAP interfaces without overrides.bridge_name. */
  bridgeName: string;
  /** Parent for MACVTAP interfaces. */
  parentIface: string;
  deleteVmTimeoutMs: number;
}

/** `<state-dir>/vm/<namespace>/<name>/<uid>`, flintlock's layout. */
export function vmDir(stateDir: string, vm: MicroVM): string {
  return `${stateDir}/vm/${vm.spec.namespace}/${vm.spec.name}/${vm.uid}`;
}

/** The cloud-init seed's file name in the VM directory. */
export const CIDATA_FILE = 'cidata.img';
const cidataFile = (dir: string) => `${dir}/${CIDATA_FILE}`;

/**
 * Turns a MicroVM record into host objects with a create plan (images, volumes, interfaces,
 * cloud-init seed, VMM, supervision) and removes them with a delete plan. Both are idempotent
 * step lists over the host ports, so the core decides what happens and the adapters only do it.
 */
export class HostRuntime implements Runtime {
  constructor(private readonly o: HostRuntimeOptions) {}

  private provider(vm: MicroVM): VmmProvider {
    const p = this.o.providers.get(vm.spec.provider);
    if (!p) throw failedPrecondition(`provider ${vm.spec.provider} is not available on this host`);
    return p;
  }

  async ensure(vm: MicroVM, log: Logger, progress?: (s: RuntimeStatus) => void): Promise<RuntimeStatus> {
    const { o } = this;
    const provider = this.provider(vm);
    const dir = vmDir(o.stateDir, vm);
    const status: Omit<MicroVMStatus, 'state' | 'retry' | 'lastError' | 'nextAttemptAt'> = {
      volumes: { ...vm.status.volumes },
      networkInterfaces: { ...vm.status.networkInterfaces },
      vsockPath: '',
      vmmPid: vm.status.vmmPid,
      guestBooted: vm.status.guestBooted,
    };
    // Pinned on first resolution and reused afterwards: a moving tag never changes this VM.
    const digests: Record<string, string> = { ...(vm.status.imageDigests ?? {}) };
    status.imageDigests = digests;
    if (vm.status.kernelMount) status.kernelMount = vm.status.kernelMount;
    if (vm.status.initrdMount) status.initrdMount = vm.status.initrdMount;
    const report = () => progress?.({ ...status, ready: false });

    const refs = imageRefs(vm.spec);
    const volumes = specVolumes(vm.spec);

    const steps: Step[] = [];
    const resolved = new Set<string>();
    const digestOf = (ref: string) => {
      const d = digests[ref];
      if (!d) throw failedPrecondition(`image ${ref} has not been resolved`);
      return d;
    };
    for (const ref of refs) {
      steps.push({
        name: `image ${ref}`,
        needed: async () => !resolved.has(ref),
        run: async () => {
          digests[ref] = await o.images.ensure(ref, log, digests[ref]);
          resolved.add(ref);
        },
      });
    }
    steps.push({
      name: 'kernel',
      needed: async () => !status.kernelMount || !(await o.files.exists(status.kernelMount.source)),
      run: async () => {
        status.kernelMount = { type: 'HOSTPATH', source: await o.images.file(digestOf(vm.spec.kernel.image), vm.spec.kernel.filename, vm.spec.kernel.image) };
      },
    });
    const initrd = vm.spec.initrd;
    if (initrd) {
      steps.push({
        name: 'initrd',
        needed: async () => !status.initrdMount || !(await o.files.exists(status.initrdMount.source)),
        run: async () => {
          status.initrdMount = { type: 'HOSTPATH', source: await o.images.file(digestOf(initrd.image), initrd.filename, initrd.image) };
        },
      });
    }
    steps.push({ name: 'vm directory', needed: async () => !(await o.files.exists(dir)), run: () => o.files.mkdirp(dir) });
    // The volume and interface steps record what their needed() check observed (paths, ifindex,
    // MACs) so the VMM step can launch with it even when nothing had to be created this pass.
    const disks: LaunchDisk[] = [];
    volumes.forEach((v, n) => {
      const key = { uid: vm.uid, volumeId: v.id, dir };
      const source = v.source.containerSource;
      if (!source) throw failedPrecondition(`volume ${v.id}: provider ${provider.name} supports only container_source volumes`);
      steps.push({
        name: `volume ${v.id}`,
        needed: async () => {
          const path = await o.volumes.find(key);
          if (path) disks[n] = { id: v.id, path, readOnly: v.isReadOnly };
          return !path || status.volumes[v.id]?.mount.source !== path;
        },
        run: async () => {
          const path = (await o.volumes.find(key)) ?? (await o.volumes.create(key, digestOf(source), v.sizeInMb, log));
          disks[n] = { id: v.id, path, readOnly: v.isReadOnly };
          status.volumes[v.id] = { mount: { type: 'DEV', source: path } };
        },
      });
    });
    const nics: LaunchNic[] = [];
    vm.spec.interfaces.forEach((iface, n) => {
      const name = hostDeviceName(vm, n);
      const alias = deviceAlias(vm.uid, iface.deviceId);
      const record = (info: { ifindex: number; mac: string }) => {
        const st: NetworkInterfaceStatus = { hostDeviceName: name, index: info.ifindex, macAddress: info.mac };
        status.networkInterfaces[iface.deviceId] = st;
        nics[n] = { deviceId: iface.deviceId, type: iface.type, hostDevice: name, ifindex: info.ifindex, mac: iface.type === 'MACVTAP' ? info.mac : guestMac(vm, n) };
      };
      if (iface.type === 'TAP') {
        const bridge = iface.overrides?.bridgeName ?? o.bridgeName;
        steps.push({
          name: `interface ${iface.deviceId} (tap ${name})`,
          needed: async () => {
            const link = await o.network.get(name);
            if (link && link.master === bridge && link.up) record(link);
            return !link || link.master !== bridge || !link.up;
          },
          run: async () => {
            if (!bridge) throw failedPrecondition(`TAP interface ${iface.deviceId} has no bridge: set overrides.bridge_name or matchlockd --bridge-name`);
            const br = await o.network.get(bridge);
            if (!br) throw failedPrecondition(`bridge ${bridge} for interface ${iface.deviceId} not found on this host`);
            const link = (await o.network.get(name)) ?? (await o.network.createTap(name, { bridge, alias }));
            if (link.master !== bridge || !link.up) await o.network.attach(name, bridge);
            record(link);
          },
        });
      } else {
        steps.push({
          name: `interface ${iface.deviceId} (macvtap ${name})`,
          needed: async () => {
            const link = await o.network.get(name);
            if (link) record(link);
            return !link;
          },
          run: async () => {
            if (!o.parentIface) throw failedPrecondition(`MACVTAP interface ${iface.deviceId} needs matchlockd --parent-iface`);
            const parent = await o.network.get(o.parentIface);
            if (!parent) throw failedPrecondition(`parent interface ${o.parentIface} for ${iface.deviceId} not found on this host`);
            record(await o.network.createMacvtap(name, { parent: o.parentIface, alias, mac: guestMac(vm, n) }));
          },
        });
      }
    });
    const seed = () => this.seedFiles(vm, nics);
    steps.push({
      name: 'cloud-init seed',
      needed: async () => !(await o.files.exists(cidataFile(dir))),
      run: () => o.cloudInit.write(cidataFile(dir), seed()),
    });
    const running = async () => provider.running(vm.uid, dir);
    steps.push({
      name: `vmm ${provider.name}`,
      needed: async () => (await running()) === undefined,
      run: async () => {
        const all: LaunchDisk[] = [...disks, { id: 'cidata', path: cidataFile(dir), readOnly: true }];
        status.guestBooted = false;
        status.vmmPid = await provider.start(
          {
            uid: vm.uid,
            dir,
            vcpu: vm.spec.vcpu,
            memoryInMb: vm.spec.memoryInMb,
            kernelPath: status.kernelMount?.source ?? '',
            initrdPath: status.initrdMount?.source,
            cmdline: mergeCmdline(provider.defaultCmdline(vm.spec.rootVolume !== undefined), vm.spec.kernel.cmdline),
            disks: all,
            nics,
          },
          log,
        );
        log.info({ pid: status.vmmPid }, 'vmm started');
      },
    });
    steps.push({
      name: 'supervision',
      needed: async () => {
        const pid = await running();
        return pid !== undefined && !o.supervisor.watching(vm.uid, pid);
      },
      run: async () => {
        const pid = await running();
        if (pid === undefined) return;
        status.vmmPid = pid;
        o.supervisor.watch(vm.uid, pid, provider.consolePath(dir));
      },
    });

    await runPlan(steps, log, report);
    const pid = await running();
    status.vmmPid = pid ?? 0;
    return { ...status, ready: pid !== undefined };
  }

  private seedFiles(vm: MicroVM, nics: LaunchNic[]): Record<string, Buffer> {
    return noCloudSeed(vm, nics.map((n): GuestInterface => ({ deviceId: n.deviceId, mac: n.mac })));
  }

  async teardown(vm: MicroVM, log: Logger): Promise<void> {
    const { o } = this;
    const dir = vmDir(o.stateDir, vm);
    const provider = o.providers.get(vm.spec.provider);
    const steps: Step[] = [];
    if (provider) {
      steps.push({
        name: `stop ${provider.name}`,
        needed: async () => (await provider.running(vm.uid, dir)) !== undefined,
        run: async () => {
          o.supervisor.unwatch(vm.uid);
          await provider.stop(vm.uid, dir, o.deleteVmTimeoutMs, log);
        },
      });
    }
    o.supervisor.unwatch(vm.uid);
    for (const v of specVolumes(vm.spec)) {
      const key = { uid: vm.uid, volumeId: v.id, dir };
      steps.push({ name: `remove volume ${v.id}`, needed: async () => (await o.volumes.find(key)) !== undefined, run: () => o.volumes.remove(key, log) });
    }
    vm.spec.interfaces.forEach((iface, n) => {
      const name = hostDeviceName(vm, n);
      steps.push({ name: `remove interface ${iface.deviceId} (${name})`, needed: async () => (await o.network.get(name)) !== undefined, run: () => o.network.remove(name) });
    });
    steps.push({ name: 'remove vm directory', needed: () => o.files.exists(dir), run: () => o.files.remove(dir) });
    await runPlan(steps, log, () => undefined);
    // <state-dir>/vm/<namespace>/<name> go too once no VM of that name or namespace is left.
    await o.files.removeIfEmpty(`${o.stateDir}/vm/${vm.spec.namespace}/${vm.spec.name}`);
    await o.files.removeIfEmpty(`${o.stateDir}/vm/${vm.spec.namespace}`);
  }
}
