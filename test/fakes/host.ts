import type { CloudInitDisk, HostFiles, HostNetwork, ImageStore, LinkInfo, Supervisor, VolumeKey, Volumes } from '../../src/core/ports.js';
import type { PlanDeps } from '../../src/core/plan/context.js';
import type { Step } from '../../src/core/plan/step.js';
import type { CmdlineInput, Launch, ProviderDescriptor, VmRef, VmmInstance, VmmProvider } from '../../src/core/vmm.js';

/**
 * In-memory fakes of every host port the plans use, sharing one world, so plan tests can look at
 * the whole host after any step. Each fake keeps the rules of the real adapter that a plan could
 * break: a link cannot be created twice, a TAP's bridge must exist, a VMM needs its kernel.
 */
export class FakeWorld {
  readonly files = new Map<string, Buffer>();
  readonly dirs = new Set<string>();
  readonly links = new Map<string, LinkInfo>();
  readonly volumes = new Map<string, string>();
  readonly watched = new Map<string, number>();
  readonly vmms = new Map<string, { pid: number; launch: Launch; paused?: boolean }>();
  /** Every call that changed the world, in order. */
  readonly calls: string[] = [];
  /** image ref -> digest; digest -> files inside. */
  readonly registry = new Map<string, string>([
    ['k', 'sha256:kernel'],
    ['r', 'sha256:root'],
  ]);
  readonly imageFiles = new Map<string, string[]>([
    ['sha256:kernel', ['boot/vmlinux', 'boot/initrd']],
    ['sha256:root', []],
  ]);
  private nextIndex = 10;
  private nextPid = 1000;
  /** Breaks adapters: the next call of each named one does nothing (a run that cannot achieve its goal). */
  readonly sabotage = new Set<string>();

  constructor() {
    this.links.set('br0', { name: 'br0', ifindex: 2, mac: '02:00:00:00:00:b0', kind: 'other', up: true });
    this.links.set('eth9', { name: 'eth9', ifindex: 3, mac: '02:00:00:00:00:e9', kind: 'other', up: true });
  }

  private skip(what: string): boolean {
    return this.sabotage.delete(what);
  }

  /** A stable view of the host, to compare two worlds. */
  snapshot(): unknown {
    const sorted = <T>(m: Map<string, T>) => Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));
    return {
      files: [...this.files.keys()].sort(),
      dirs: [...this.dirs].sort(),
      links: sorted(new Map([...this.links].map(([k, l]) => [k, { ...l, ifindex: 0 }]))),
      volumes: sorted(this.volumes),
      watched: [...this.watched.keys()].sort(),
      vmms: [...this.vmms.keys()].sort(),
    };
  }

  readonly images: ImageStore = {
    ensure: async (ref, _log, pinned) => {
      const d = pinned ?? this.registry.get(ref);
      if (!d) throw new Error(`image ${ref} not found`);
      return d;
    },
    ready: async (digest) => [...this.registry.values()].includes(digest),
    file: async (digest, path) => {
      if (!this.imageFiles.get(digest)?.includes(path)) throw new Error(`${path} not in ${digest}`);
      const host = `/images/${digest}/${path}`;
      this.files.set(host, Buffer.from('image file'));
      return host;
    },
  };

  readonly fileSystem: HostFiles = {
    exists: async (p) => this.files.has(p) || this.dirs.has(p),
    read: async (p) => this.files.get(p),
    mkdirp: async (p) => {
      this.calls.push(`mkdir ${p}`);
      if (this.skip('mkdir')) return;
      this.dirs.add(p);
    },
    remove: async (p) => {
      this.calls.push(`rm ${p}`);
      for (const k of [...this.files.keys()]) if (k === p || k.startsWith(`${p}/`)) this.files.delete(k);
      for (const k of [...this.dirs]) if (k === p || k.startsWith(`${p}/`)) this.dirs.delete(k);
    },
    removeIfEmpty: async (p) => {
      const children = [...this.dirs, ...this.files.keys()].some((k) => k.startsWith(`${p}/`));
      if (!children) this.dirs.delete(p);
    },
  };

  readonly volumeStore: Volumes = {
    find: async (key) => this.volumes.get(volumeKey(key)),
    create: async (key, digest) => {
      this.calls.push(`volume create ${key.volumeId}`);
      if (this.volumes.has(volumeKey(key))) throw new Error(`volume ${key.volumeId} exists already`);
      if (!this.dirs.has(key.dir)) throw new Error(`${key.dir} does not exist`);
      const path = `${key.dir}/volume-${key.volumeId}.img`;
      if (this.skip('volume')) return path;
      this.volumes.set(volumeKey(key), path);
      this.files.set(path, Buffer.from(digest));
      return path;
    },
    remove: async (key) => {
      this.calls.push(`volume rm ${key.volumeId}`);
      const p = this.volumes.get(volumeKey(key));
      if (p) this.files.delete(p);
      this.volumes.delete(volumeKey(key));
    },
  };

  /** How often each link was read (get), to hold plans to the reads they need. */
  readonly linkReads = new Map<string, number>();

  readonly network: HostNetwork = {
    get: async (name) => {
      this.linkReads.set(name, (this.linkReads.get(name) ?? 0) + 1);
      const l = this.links.get(name);
      return l && { ...l };
    },
    createTap: async (name, opts) => {
      this.calls.push(`tap ${name}`);
      if (this.links.has(name)) throw new Error(`link ${name} exists`);
      if (!this.links.has(opts.bridge)) throw new Error(`bridge ${opts.bridge} missing`);
      const broken = this.skip('tap');
      const link: LinkInfo = { name, ifindex: this.nextIndex++, mac: 'fe:00:00:00:00:01', kind: 'tap', master: broken ? undefined : opts.bridge, alias: opts.alias, up: !broken };
      this.links.set(name, link);
      return { ...link };
    },
    adopt: async (name, opts) => {
      this.calls.push(`adopt ${name}`);
      const l = this.links.get(name);
      if (!l) throw new Error(`link ${name} missing`);
      if (this.skip('adopt')) return;
      l.alias = opts.alias;
      if (opts.bridge !== undefined) l.master = opts.bridge;
      l.up = true;
    },
    createMacvtap: async (name, opts) => {
      this.calls.push(`macvtap ${name}`);
      if (this.links.has(name)) throw new Error(`link ${name} exists`);
      if (!this.links.has(opts.parent)) throw new Error(`parent ${opts.parent} missing`);
      const link: LinkInfo = { name, ifindex: this.nextIndex++, mac: opts.mac, kind: 'macvtap', alias: opts.alias, up: true };
      if (!this.skip('macvtap')) this.links.set(name, link);
      // What the host shows after the change, as the iproute2 adapter reads it back.
      const shown = this.links.get(name);
      if (!shown) throw new Error(`link ${name} vanished right after it was created`);
      return { ...shown };
    },
    remove: async (name) => {
      this.calls.push(`link rm ${name}`);
      this.links.delete(name);
    },
    listOwned: async () => [...this.links.values()].filter((l) => l.alias !== undefined),
  };

  readonly cloudInit: CloudInitDisk = {
    write: async (path, files) => {
      this.calls.push(`seed ${path}`);
      if (this.skip('seed')) return;
      this.files.set(path, Buffer.from(JSON.stringify(Object.keys(files).sort())));
    },
  };

  readonly supervisor: Supervisor = {
    watch: (uid, pid) => {
      this.calls.push(`watch ${uid}`);
      this.watched.set(uid, pid);
    },
    unwatch: (uid) => {
      this.watched.delete(uid);
    },
    watching: (uid, pid) => this.watched.get(uid) === pid,
  };

  deps(over: Partial<PlanDeps> = {}): PlanDeps {
    return {
      images: this.images,
      volumes: this.volumeStore,
      files: this.fileSystem,
      network: this.network,
      cloudInit: this.cloudInit,
      supervisor: this.supervisor,
      bridgeName: 'br0',
      parentIface: 'eth9',
      deleteVmTimeoutMs: 10,
      daemonId: '0123456789abcdef',
      ...over,
    };
  }

  /** A fake VMM provider whose processes live in this world. */
  provider(descriptor: Partial<ProviderDescriptor> = {}, extra: { createSteps?: (ref: VmRef) => Step[]; deleteSteps?: (ref: VmRef) => Step[] } = {}): VmmProvider {
    const d: ProviderDescriptor = {
      name: 'fake',
      defaultBinary: 'fake-vmm',
      capabilities: { macvtap: true, virtiofs: true, vsock: true, metadataInterface: false, pause: false },
      metadata: { kind: 'nocloud-disk', file: 'cidata.img' },
      sockets: ['fake.sock'],
      ...descriptor,
    };
    return { descriptor: d, instance: (ref: VmRef) => this.fakeInstance(ref, extra) };
  }

  private fakeInstance(ref: VmRef, extra: { createSteps?: (ref: VmRef) => Step[]; deleteSteps?: (ref: VmRef) => Step[] }): VmmInstance {
    return {
      ref,
      files: { pid: `${ref.dir}/fake.pid`, console: `${ref.dir}/console.log` },
      consolePath: `${ref.dir}/console.log`,
      expectedFiles: () => [],
      defaultCmdline: (i: CmdlineInput) => [['console', 'ttyS0'], ...(i.hasRoot ? [['root', '/dev/vda'] as [string, string]] : [])],
      createSteps: () => extra.createSteps?.(ref) ?? [],
      deleteSteps: () => extra.deleteSteps?.(ref) ?? [],
      running: async () => this.vmms.get(ref.uid)?.pid,
      start: async (launch) => {
        this.calls.push(`vmm start ${ref.uid}`);
        if (this.vmms.has(ref.uid)) throw new Error('vmm already running');
        if (!this.files.has(launch.kernelPath)) throw new Error(`kernel ${launch.kernelPath} missing`);
        for (const disk of launch.disks) if (!this.files.has(disk.path)) throw new Error(`disk ${disk.path} missing`);
        for (const nic of launch.nics) if (!this.links.has(nic.hostDevice)) throw new Error(`nic ${nic.hostDevice} missing`);
        const pid = this.nextPid++;
        if (this.skip('vmm')) return pid;
        this.vmms.set(ref.uid, { pid, launch });
        this.files.set(`${ref.dir}/fake.pid`, Buffer.from(String(pid)));
        return pid;
      },
      stop: async ({ timeoutMs }) => {
        this.calls.push(`vmm stop ${ref.uid}`, `vmm stop grace ${timeoutMs}`);
        if (this.skip('stop')) return;
        this.vmms.delete(ref.uid);
      },
      // Like QMP stop/cont: refused without a running VMM.
      setPaused: async (paused) => {
        this.calls.push(`vmm ${paused ? 'pause' : 'resume'} ${ref.uid}`);
        const v = this.vmms.get(ref.uid);
        if (!v) throw new Error('no vmm runs');
        if (this.skip('pause')) return;
        v.paused = paused;
      },
      powerState: async () => {
        const v = this.vmms.get(ref.uid);
        return v === undefined ? 'stopped' : v.paused ? 'paused' : 'running';
      },
    };
  }

}

function volumeKey(k: VolumeKey): string {
  return `${k.uid}/${k.volumeId}`;
}
