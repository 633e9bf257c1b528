import { failedPrecondition, invalid, notFound, quote } from '../errors.js';
import { PROVIDERS, isProviderName, type ProviderAvailability, type ProviderName } from '../providers.js';
import type { ChangeNotifier, Clock, Random, Store } from '../ports.js';
import { initialStatus, type MicroVM, type MicroVMSpec } from './types.js';
import { ulid } from './ulid.js';
import { validateSpec, type SpecInput } from './validate.js';

export interface ServiceDeps {
  store: Store;
  clock: Clock;
  random: Random;
  notifier: ChangeNotifier;
  providers: ProviderAvailability;
  defaultProvider: ProviderName;
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
    const { clock, random, store, notifier } = this.deps;
    const provider = this.resolveProvider(input?.provider);
    const now = clock.now();
    const uid = ulid(now.getTime(), random.bytes(10));
    const spec = validateSpec(input, uid, provider);
    this.checkCapabilities(spec, provider);
    if (PROVIDERS.get(provider)?.capabilities.metadataInterface && !spec.interfaces.some((i) => i.deviceId === 'eth0')) {
      const { address, ...rest } = FIRECRACKER_METADATA_INTERFACE;
      spec.interfaces.unshift({ ...rest, address: { ...address, nameservers: [] } });
    }
    const iso = now.toISOString();
    const vm: MicroVM = { uid, version: 1, spec, status: initialStatus(), createdAt: iso, updatedAt: iso };
    store.insert(vm);
    notifier.changed(uid);
    return vm;
  }

  get(uid: string): MicroVM {
    checkUid(uid);
    const vm = this.deps.store.get(uid);
    if (!vm) throw notFound(`microvm ${quote(uid)}`);
    return vm;
  }

  list(namespace: string, name: string | undefined): MicroVM[] {
    if (namespace !== '') checkFilter('namespace', namespace);
    if (name !== undefined && name !== '') checkFilter('name', name);
    return this.deps.store.list({ namespace, name });
  }

  /**
   * Marks the VM DELETING; the reconciler tears it down and drops the record. Safe to repeat:
   * a repeat changes nothing stored but nudges the reconciler again.
   */
  delete(uid: string): void {
    checkUid(uid);
    const now = this.deps.clock.now().toISOString();
    const vm = this.deps.store.update(uid, (cur) => {
      if (cur.status.state === 'DELETING') return undefined;
      return {
        ...cur,
        status: { ...cur.status, state: 'DELETING', retry: 0, lastError: '' },
        updatedAt: now,
        deletedAt: now,
      };
    });
    if (vm) this.deps.notifier.changed(uid);
  }

  private resolveProvider(requested: string | undefined): ProviderName {
    const name = requested === undefined || requested === '' ? this.deps.defaultProvider : requested;
    if (!isProviderName(name)) {
      throw invalid('microvm.provider', `must be one of ${[...PROVIDERS.keys()].join(', ')} or empty for the host default`);
    }
    const availability = this.deps.providers.get(name);
    if (!availability || !availability.usable) {
      throw failedPrecondition(`provider ${name} cannot run on this host: ${availability && !availability.usable ? availability.reason : 'unknown'}`, 'microvm.provider');
    }
    return name;
  }

  private checkCapabilities(spec: MicroVMSpec, provider: ProviderName): void {
    const caps = PROVIDERS.get(provider)?.capabilities;
    if (!caps) return;
    spec.interfaces.forEach((iface, n) => {
      if (iface.type === 'MACVTAP' && !caps.macvtap) {
        throw failedPrecondition(`microvm.interfaces[${n}].type: provider ${provider} does not support MACVTAP interfaces; use TAP`, `microvm.interfaces[${n}].type`);
      }
    });
    spec.additionalVolumes.forEach((v, n) => {
      if (v.source.virtiofsSource !== undefined && !caps.virtiofs) {
        throw failedPrecondition(`microvm.additional_volumes[${n}].source.virtiofs_source: provider ${provider} does not support virtiofs (cloudhypervisor does)`, `microvm.additional_volumes[${n}].source`);
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

function checkFilter(field: string, value: string): void {
  if (value.length > 253 || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(value)) {
    throw invalid(field, 'must start with a letter or digit and contain only letters, digits, ".", "_" and "-"');
  }
}
