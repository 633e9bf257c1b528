import { ErrorCode, MatchlockError, failedPrecondition, invalid, notFound, quote } from '../errors.js';
import type { ChangeNotifier, Clock, EncodedRecord, MetaDataReader, PageOptions, Random, ReadMetaData, Store } from '../ports.js';
import type { ProviderEntry } from '../vmm.js';
import { initialStatus, type MicroVM, type MicroVMSpec } from './types.js';
import { ulid } from './ulid.js';
import { META_DATA_FIELD, validateSpec, type SpecInput } from './validate.js';

export interface ServiceDeps {
  store: Store;
  clock: Clock;
  random: Random;
  notifier: ChangeNotifier;
  /** Every provider this matchlock knows, with whether it can run here. */
  providers: ReadonlyMap<string, ProviderEntry>;
  /** The provider of VMs that name none. */
  defaultProvider: string;
  /** Reads a large meta-data off the event loop for createEncodedAsync; without it, it is read in line. */
  metaData?: MetaDataReader | undefined;
}

/** flintlock's MMDS interface, prepended for Firecracker VMs that have no eth0 of their own. */
export const FIRECRACKER_METADATA_INTERFACE = {
  deviceId: 'eth0',
  type: 'TAP',
  guestMac: 'AA:FF:00:00:00:01',
  address: { address: '169.254.0.1/16', nameservers: [] },
} as const;

/**
 * The MicroVM API's behaviour, independent of the wire: validate, default, persist, notify.
 * Each call returns in milliseconds; the slow work happens in the reconciler.
 */
export class MicroVMService {
  constructor(private readonly deps: ServiceDeps) {}

  create(input: SpecInput | undefined): MicroVM {
    return this.createEncoded(input).vm;
  }

  /**
   * create, also returning the record's protobuf bytes (flintlock.types.MicroVM) as the store
   * wrote them: what `encoded(vm.uid)` returns until the record next changes, without reading
   * them back.
   */
  createEncoded(input: SpecInput | undefined, ahead?: { now: Date; uid: string; metaData: ReadMetaData | undefined }): { vm: MicroVM; encoded: Uint8Array } {
    const vm = this.made(input, ahead);
    const encoded = this.deps.store.insert(vm);
    this.deps.notifier.changed(vm.uid);
    return { vm, encoded };
  }

  /** The record a create makes of `input`, validated and defaulted; nothing stored. */
  private made(input: SpecInput | undefined, ahead?: { now: Date; uid: string; metaData: ReadMetaData | undefined }): MicroVM {
    const { clock, random } = this.deps;
    const provider = this.resolveProvider(input?.provider);
    const now = ahead?.now ?? clock.now();
    const uid = ahead?.uid ?? ulid(now.getTime(), random.bytes(10));
    const spec = validateSpec(input, uid, provider.descriptor.name, ahead?.metaData);
    this.checkCapabilities(spec, provider);
    if (provider.descriptor.capabilities.metadataInterface && !spec.interfaces.some((i) => i.deviceId === 'eth0')) {
      const { address, ...rest } = FIRECRACKER_METADATA_INTERFACE;
      spec.interfaces.unshift({ ...rest, address: { ...address, nameservers: [] } });
    }
    // The provider's own rules see the spec as it will be launched, metadata interface included
    // (it is one more device and one more network-config entry).
    const own = provider.descriptor.checkSpec?.(spec, uid);
    if (own) throw own;
    const iso = now.toISOString();
    return { uid, version: 1, spec, status: initialStatus(), createdAt: iso, updatedAt: iso };
  }

  /**
   * createEncoded for an API handler: a meta-data large enough to cost the event loop is read
   * first by the MetaDataReader (a worker thread), while other requests are served; the record
   * is then made and stored as createEncoded does, with the time and uid of the request's
   * arrival. Same results and refusals; rejects with the reader's error when the reading could
   * not run. `wanted` is asked once the reading is done: a client that gave up meanwhile (its
   * deadline passed, it cancelled) gets Canceled and nothing is stored, so its retry does not
   * make the VM twice.
   */
  async createEncodedAsync(input: SpecInput | undefined, wanted: () => boolean = () => true): Promise<{ vm: MicroVM; encoded: Uint8Array }> {
    const reader = this.deps.metaData;
    const value = input?.metadata['meta-data'];
    if (reader === undefined || value === undefined || !reader.takes(value)) return this.createEncoded(input);
    const now = this.deps.clock.now();
    const uid = ulid(now.getTime(), this.deps.random.bytes(10));
    // Every other check first, in line, with the meta-data taken as read (empty): a request
    // refused before validation reaches the meta-data (its size, an earlier field) is refused
    // at once, as in line, never after a reading of what may be megabytes. A refusal after that
    // point may still be preceded by the meta-data's own: the reading decides.
    let reached = false;
    const taken: ReadMetaData = {
      value,
      uid,
      get outcome() {
        reached = true;
        return Buffer.alloc(0);
      },
    };
    try {
      this.made(input, { now, uid, metaData: taken });
    } catch (err) {
      if (!reached) throw err;
    }
    const metaData = await reader.read(value, uid, META_DATA_FIELD);
    if (metaData !== undefined && !wanted()) throw new MatchlockError(ErrorCode.Canceled, `microvm ${uid}: the client gave up while its meta-data was read; nothing was created`);
    return this.createEncoded(input, { now, uid, metaData });
  }

  /**
   * Whether createEncodedAsync would read this request's meta-data off the event loop; when
   * not, createEncoded does the same work at once (an API handler answers in the same turn).
   */
  readsAhead(input: SpecInput | undefined): boolean {
    const value = input?.metadata['meta-data'];
    return value !== undefined && this.deps.metaData?.takes(value) === true;
  }

  get(uid: string): MicroVM {
    checkUid(uid);
    const vm = this.deps.store.get(uid);
    if (!vm) throw notFound(`microvm ${quote(uid)}`);
    return vm;
  }

  list(namespace: string, name: string | undefined): MicroVM[] {
    checkListFilter(namespace, name);
    return this.deps.store.list({ namespace, name });
  }

  /**
   * A page of what list returns: up to `page.limit` records after uid `page.after`, in uid
   * order, so a caller walking every record holds one page at a time. Same errors as list.
   */
  listPage(namespace: string, name: string | undefined, page: PageOptions): MicroVM[] {
    checkListFilter(namespace, name);
    return this.deps.store.page({ namespace, name }, page);
  }

  /** What get returns, as the stored protobuf bytes (flintlock.types.MicroVM); same errors. */
  encoded(uid: string): Uint8Array {
    checkUid(uid);
    const bytes = this.deps.store.encoded(uid);
    if (!bytes) throw notFound(`microvm ${quote(uid)}`);
    return bytes;
  }

  /**
   * What list returns, as stored protobuf bytes, read lazily a record at a time (see
   * Store.encodedRecords: consume it synchronously). The filter is checked before it returns.
   */
  encodedList(namespace: string, name: string | undefined, page: PageOptions = {}): IterableIterator<EncodedRecord> {
    checkListFilter(namespace, name);
    return this.deps.store.encodedRecords({ namespace, name }, page);
  }

  /**
   * Marks the VM DELETING; the reconciler tears it down and drops the record. Safe to repeat:
   * a repeat changes nothing stored but nudges the reconciler again. A retry scheduled for a
   * failed create is dropped with the rest of its failure state: delete starts at once.
   */
  delete(uid: string): void {
    checkUid(uid);
    const now = this.deps.clock.now().toISOString();
    const vm = this.deps.store.update(uid, (cur) => {
      if (cur.status.state === 'DELETING') return undefined;
      return {
        ...cur,
        status: { ...cur.status, state: 'DELETING', retry: 0, lastError: '', nextAttemptAt: undefined, missingLink: undefined },
        updatedAt: now,
        deletedAt: now,
      };
    });
    if (vm) this.deps.notifier.changed(uid);
  }

  private resolveProvider(requested: string | undefined): ProviderEntry {
    const name = requested === undefined || requested === '' ? this.deps.defaultProvider : requested;
    const entry = this.deps.providers.get(name);
    if (!entry) {
      throw invalid('microvm.provider', `must be one of ${[...this.deps.providers.keys()].join(', ')} or empty for the host default`);
    }
    const a = entry.availability;
    if (!a.usable) throw failedPrecondition(`provider ${name} cannot run on this host: ${a.reason}`, 'microvm.provider');
    return entry;
  }

  /** Which providers have `cap`, as a clause: "cloudhypervisor does", "a, b do", "no provider does". */
  private providersWith(cap: keyof ProviderEntry['descriptor']['capabilities']): string {
    const names = [...this.deps.providers.values()].filter((p) => p.descriptor.capabilities[cap]).map((p) => p.descriptor.name);
    if (names.length === 0) return 'no provider does';
    return `${names.join(', ')} ${names.length === 1 ? 'does' : 'do'}`;
  }

  private checkCapabilities(spec: MicroVMSpec, entry: ProviderEntry): void {
    const { capabilities: caps, name: provider } = entry.descriptor;
    spec.interfaces.forEach((iface, n) => {
      if (iface.type === 'MACVTAP' && !caps.macvtap) {
        throw failedPrecondition(`microvm.interfaces[${n}].type: provider ${provider} does not support MACVTAP interfaces; use TAP`, `microvm.interfaces[${n}].type`);
      }
    });
    spec.additionalVolumes.forEach((v, n) => {
      if (v.source.virtiofsSource !== undefined && !caps.virtiofs) {
        throw failedPrecondition(`microvm.additional_volumes[${n}].source.virtiofs_source: provider ${provider} does not support virtiofs (${this.providersWith('virtiofs')})`, `microvm.additional_volumes[${n}].source`);
      }
    });
    if (spec.allowGuestAgent && !caps.vsock) {
      throw failedPrecondition(`microvm.allow_guest_agent: provider ${provider} has no vsock device for the guest agent`, 'microvm.allow_guest_agent');
    }
  }
}

/**
 * Only an empty uid is the client's mistake. Any other uid is looked up as it is and, when no
 * record has it, answers "not found" whatever its shape: flintlock does so, and CAPMVM decides
 * from that text that a VM is gone.
 */
function checkUid(uid: string): void {
  if (uid === '') throw invalid('uid', 'is required');
}

function checkListFilter(namespace: string, name: string | undefined): void {
  if (namespace !== '') checkFilter('namespace', namespace);
  if (name !== undefined && name !== '') checkFilter('name', name);
}

function checkFilter(field: string, value: string): void {
  if (value.length > 253 || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(value)) {
    throw invalid(field, 'must start with a letter or digit and contain only letters, digits, ".", "_" and "-"');
  }
}
