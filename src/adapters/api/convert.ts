/**
 * Protobuf <-> domain conversion, shared by the gRPC and HTTP adapters.
 */
import { create, toBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, timestampFromDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import { createHash } from 'node:crypto';
import type { InterfaceInput, SpecInput, VolumeInput } from '../../core/microvm/validate.js';
import type { Mount as DomainMount, MicroVM as DomainVM, PowerState, Volume as DomainVolume } from '../../core/microvm/types.js';
import {
  MicroVMSchema,
  MicroVMStatus_MicroVMState,
  MicroVMStatus_PowerState,
  Mount_MountType,
  NetworkInterface_IfaceType,
  type MicroVM,
  type MicroVMSpec,
  MountSchema,
  type Volume,
  file_types_microvm,
} from '../../gen/types/microvm_pb.js';

function volumeInput(v: Volume): VolumeInput {
  return {
    id: v.id,
    isReadOnly: v.isReadOnly,
    mountPoint: v.mountPoint,
    source: v.source && { containerSource: v.source.containerSource, virtiofsSource: v.source.virtiofsSource },
    partitionId: v.partitionId,
    sizeInMb: v.sizeInMb,
  };
}

/** A wire MicroVMSpec as plain input for validation. uid and timestamps are dropped: the server owns them. */
export function specInput(spec: MicroVMSpec | undefined): SpecInput | undefined {
  if (spec === undefined) return undefined;
  return {
    id: spec.id,
    namespace: spec.namespace,
    labels: { ...spec.labels },
    vcpu: spec.vcpu,
    memoryInMb: spec.memoryInMb,
    kernel: spec.kernel && {
      image: spec.kernel.image,
      filename: spec.kernel.filename,
      cmdline: { ...spec.kernel.cmdline },
      addNetworkConfig: spec.kernel.addNetworkConfig,
    },
    initrd: spec.initrd && { image: spec.initrd.image, filename: spec.initrd.filename },
    rootVolume: spec.rootVolume && volumeInput(spec.rootVolume),
    additionalVolumes: spec.additionalVolumes.map(volumeInput),
    interfaces: spec.interfaces.map(
      (i): InterfaceInput => ({
        deviceId: i.deviceId,
        type: i.type,
        guestMac: i.guestMac,
        address: i.address && { address: i.address.address, gateway: i.address.gateway, nameservers: [...i.address.nameservers] },
        overrides: i.overrides && { bridgeName: i.overrides.bridgeName },
      }),
    ),
    metadata: { ...spec.metadata },
    provider: spec.provider,
    allowGuestAgent: spec.allowGuestAgent,
  };
}

/** An RFC 3339 time as a Timestamp; absent when empty or unreadable (a hand-made record), never a throw. */
const ts = (iso: string | undefined): Timestamp | undefined => {
  const ms = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(ms) ? undefined : timestampFromDate(new Date(ms));
};

function volume(v: DomainVolume) {
  return {
    id: v.id,
    isReadOnly: v.isReadOnly,
    mountPoint: v.mountPoint,
    source: { containerSource: v.source.containerSource, virtiofsSource: v.source.virtiofsSource },
    partitionId: v.partitionId,
    sizeInMb: v.sizeInMb,
  };
}

const mount = (m: DomainMount | undefined): MessageInitShape<typeof MountSchema> | undefined =>
  m && { type: m.type === 'DEV' ? Mount_MountType.DEV : Mount_MountType.HOSTPATH, source: m.source };

/** A stored VM as flintlock.types.MicroVM. Unlike flintlock, labels, provider and timestamps are returned. */
export function toWire(vm: DomainVM): MicroVM {
  const { spec, status } = vm;
  return create(MicroVMSchema, {
    version: vm.version,
    spec: {
      id: spec.name,
      namespace: spec.namespace,
      labels: spec.labels,
      vcpu: spec.vcpu,
      memoryInMb: spec.memoryInMb,
      kernel: spec.kernel,
      initrd: spec.initrd,
      rootVolume: spec.rootVolume && volume(spec.rootVolume),
      additionalVolumes: spec.additionalVolumes.map(volume),
      interfaces: spec.interfaces.map((i) => ({
        deviceId: i.deviceId,
        type: i.type === 'TAP' ? NetworkInterface_IfaceType.TAP : NetworkInterface_IfaceType.MACVTAP,
        guestMac: i.guestMac,
        address: i.address,
        overrides: i.overrides,
      })),
      metadata: spec.metadata,
      createdAt: ts(vm.createdAt),
      updatedAt: ts(vm.updatedAt),
      deletedAt: ts(vm.deletedAt),
      uid: vm.uid,
      provider: spec.provider,
      allowGuestAgent: spec.allowGuestAgent,
    },
    status: {
      state: MicroVMStatus_MicroVMState[status.state],
      volumes: Object.fromEntries(Object.entries(status.volumes).map(([k, v]) => [k, { mount: mount(v.mount) }])),
      kernelMount: mount(status.kernelMount),
      initrdMount: mount(status.initrdMount),
      networkInterfaces: status.networkInterfaces,
      retry: status.retry,
      vsockPath: status.vsockPath,
      lastError: status.lastError,
      nextAttemptAt: ts(status.nextAttemptAt),
      provider: spec.provider,
      vmmPid: status.vmmPid,
      guestBooted: status.guestBooted,
      imageDigests: status.imageDigests ?? {},
      desiredPower: powerToWire(vm.power?.desired ?? 'RUNNING'),
      power: powerToWire(status.power),
    },
  });
}

/** A domain power state as flintlock.types.MicroVMStatus.PowerState; undefined: UNSPECIFIED. */
export function powerToWire(p: PowerState | undefined): MicroVMStatus_PowerState {
  return p === undefined ? MicroVMStatus_PowerState.POWER_STATE_UNSPECIFIED : MicroVMStatus_PowerState[p];
}

/**
 * A stored VM as the bytes of flintlock.types.MicroVM (protobuf binary), what Get and List send.
 * The store keeps these beside each record, so reads never re-encode.
 */
export function encodeMicroVM(vm: DomainVM): Uint8Array {
  return toBinary(MicroVMSchema, toWire(vm));
}

/**
 * Bump when toWire changes what it makes of a record without a change to the .proto (a field
 * filled differently): stores re-encode their records when this or the message schema changes.
 */
const WIRE_MAPPING_REVISION = 1;

/**
 * Names the encoding encodeMicroVM produces: a hash of flintlock.types' file descriptor (any
 * field added or renumbered changes it) and WIRE_MAPPING_REVISION. A store whose bytes were made
 * under another fingerprint re-encodes them when it opens.
 */
export const WIRE_FORMAT: string = createHash('sha256')
  .update(toBinary(FileDescriptorProtoSchema, file_types_microvm.proto))
  .update(String(WIRE_MAPPING_REVISION))
  .digest('hex')
  .slice(0, 16);
