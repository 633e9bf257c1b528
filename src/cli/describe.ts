import { timestampDate } from '@bufbuild/protobuf/wkt';
import { readFileSync } from 'node:fs';
import { parseDnsmasqLeases, parseIscLeases, type Lease } from '../hub/leases.js';
import { MicroVMEvent_Type, type MicroVMEvent } from '../gen/services/matchlock/v1/lifecycle_pb.js';
import { MicroVMStatus_MicroVMState, MicroVMStatus_PowerState, type MicroVM } from '../gen/types/microvm_pb.js';
import { powerText, stateName } from './output.js';
import { generatedMac } from '../core/microvm/host-names.js';

/**
 * A failed step's error as recorded in status.last_error: the plan prefixes the step's name,
 * which never holds ": " ("vmm qemu: qemu exited with 1: …", "image ghcr.io/a/b:1: manifest
 * unknown"). Returns the step and the reason, or just the reason for errors from outside a
 * plan ("vmm pid 12 exited unexpectedly").
 */
export function splitLastError(lastError: string): { step?: string; reason: string } {
  const at = lastError.indexOf(': ');
  const step = at > 0 ? lastError.slice(0, at) : '';
  return step && step.length <= 120 && !step.includes('\n') ? { step, reason: lastError.slice(at + 2) } : { reason: lastError };
}

/**
 * Leases from a hub lease file: ISC dhcpd's dhcpd.leases (it has `lease … {` blocks) or
 * dnsmasq's --dhcp-leasefile. Without one to read, why not (no path given; the file given
 * cannot be read, and the error), for describeVm to say.
 */
export function readLeaseFile(path: string | undefined): Lease[] | string {
  if (!path) return 'no lease file: --leases-file';
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return `cannot read the lease file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  return /^\s*lease\s+\S+\s*\{/m.test(text) ? parseIscLeases(text) : parseDnsmasqLeases(text);
}

function inWords(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  const t = s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
  return ms >= 0 ? `in ${t}` : `${t} ago`;
}

/**
 * One stored change in a line: when, what, the state and power it moved between, and the error
 * the record carried then.
 */
function eventLine(e: MicroVMEvent, now: number): string {
  const when = e.time ? timestampDate(e.time) : undefined;
  const state = MicroVMStatus_MicroVMState[e.state] ?? String(e.state);
  const power = MicroVMStatus_PowerState[e.power] ?? String(e.power);
  const parts = [when ? `${when.toISOString()} (${inWords(when.getTime() - now)})` : '-', MicroVMEvent_Type[e.type] ?? String(e.type)];
  if (e.stateChanged && e.type === MicroVMEvent_Type.UPDATED) parts.push(`state ${MicroVMStatus_MicroVMState[e.previousState] ?? e.previousState} -> ${state}`);
  else parts.push(`state ${state}`);
  if (e.powerChanged) parts.push(`power ${MicroVMStatus_PowerState[e.previousPower] ?? e.previousPower} -> ${power}`);
  const err = e.microvm?.status?.lastError;
  if (err) parts.push(`error: ${err.length > 160 ? `${err.slice(0, 160)}…` : err}`);
  return `  ${parts.join('  ')}`;
}

/**
 * `vm describe`: one VM in plain words, one `Key: value` per line. Addresses come from the
 * leases (matched by each interface's MAC) when a lease file is given. `events`: the VM's
 * newest stored changes (ListMicroVMEvents), or why there are none to show; `now` is for tests.
 */
export function describeVm(vm: MicroVM, leases: Lease[] | string | undefined, now = Date.now(), events: MicroVMEvent[] | string = []): string {
  const spec = vm.spec;
  const st = vm.status;
  const lines: [string, string][] = [];
  const add = (k: string, v: string) => lines.push([k, v]);
  add('Name', `${spec?.namespace ?? ''}/${spec?.id ?? ''}`);
  add('UID', spec?.uid ?? '');
  add('Provider', spec?.provider ?? '');
  add('State', stateName(vm));
  add('Power', powerText(vm));
  const err = splitLastError(st?.lastError ?? '');
  add('Step', err.step ? `${err.step} (failed)` : stateName(vm) === 'CREATED' ? '- (all steps done)' : '-');
  add('Reason', err.reason || '-');
  add('Retry', String(st?.retry ?? 0));
  const next = st?.nextAttemptAt ? timestampDate(st.nextAttemptAt) : undefined;
  add('Next retry', next ? `${next.toISOString()} (${inWords(next.getTime() - now)})` : '-');
  add('VMM pid', st?.vmmPid ? String(st.vmmPid) : '-');
  add('Guest booted', st?.guestBooted ? 'yes' : 'no');
  add('vCPU / memory', `${spec?.vcpu ?? ''} / ${spec?.memoryInMb ?? ''}Mi`);
  if (spec?.createdAt) add('Created', `${timestampDate(spec.createdAt).toISOString()} (${inWords(timestampDate(spec.createdAt).getTime() - now)})`);
  const out = lines.map(([k, v]) => `${`${k}:`.padEnd(15)}${v}`);
  out.push('Interfaces:');
  const ifaces = spec?.interfaces ?? [];
  if (!ifaces.length) out.push('  (none)');
  for (const i of ifaces) {
    const s = st?.networkInterfaces[i.deviceId];
    // The lease is the guest's: its MAC is the one the spec names or matchlock derives from the
    // uid (status.mac_address is the host device's, as in flintlock, for a TAP another one).
    const mac = (i.guestMac || (spec?.uid ? generatedMac(spec.uid, i.deviceId) : '')).toLowerCase();
    const lease = mac && Array.isArray(leases) ? leases.find((l) => l.mac.toLowerCase() === mac) : undefined;
    const addr = lease ? lease.ip : i.address?.address || (Array.isArray(leases) ? 'no lease' : `unknown (${leases ?? 'no lease file: --leases-file'})`);
    out.push(`  ${i.deviceId}  host ${s?.hostDeviceName || '-'}  mac ${mac || '-'}  address ${addr}`);
  }
  out.push('Events:');
  if (typeof events === 'string') out.push(`  (${events})`);
  else if (!events.length) out.push('  (none kept)');
  else for (const e of events) out.push(eventLine(e, now));
  return out.join('\n') + '\n';
}
