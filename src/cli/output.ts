import { toJson } from '@bufbuild/protobuf';
import { stringify } from 'yaml';
import { MicroVMSchema, MicroVMStatus_MicroVMState, MicroVMStatus_PowerState, type MicroVM } from '../gen/types/microvm_pb.js';
import { timestampDate } from '@bufbuild/protobuf/wkt';

export type Format = 'table' | 'json' | 'yaml';

/**
 * `-o yaml` text, also for YAML 1.1 readers (PyYAML, Go's yaml.v2): a string those would take
 * for another type (a guest_mac of decimal digits as a base-60 integer, `on` as a boolean) is
 * quoted, which YAML 1.2 readers read alike.
 */
export function yamlText(value: unknown): string {
  return stringify(value, { version: '1.1' });
}

/**
 * A command's result as `-o json` or `-o yaml` prints it; undefined for `-o table`, where each
 * command prints its own lines. One place, so every command honours all three formats.
 */
export function documentText(format: string, value: unknown): string | undefined {
  if (format === 'json') return JSON.stringify(value, null, 2) + '\n';
  if (format === 'yaml') return yamlText(value);
  return undefined;
}

export function stateName(vm: MicroVM): string {
  return MicroVMStatus_MicroVMState[vm.status?.state ?? 0] ?? String(vm.status?.state);
}

function age(vm: MicroVM, now: number): string {
  const created = vm.spec?.createdAt;
  if (!created) return '-';
  const s = Math.max(0, Math.round((now - timestampDate(created).getTime()) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

/** The last error on one line, cut to fit a table; '-' when there is none. */
export function reason(vm: MicroVM, max = 60): string {
  const e = (vm.status?.lastError ?? '').replace(/\s+/g, ' ').trim();
  if (!e) return '-';
  return e.length > max ? `${e.slice(0, max - 1)}…` : e;
}

export function table(rows: string[][]): string {
  // A loop, not Math.max(...column): a spread of every row's cell outgrows the call stack.
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n') + '\n';
}

export function formatVms(vms: MicroVM[], format: Format, single: boolean): string {
  if (format !== 'table') {
    // Every field, defaults included (status.state: PENDING, retry: 0): scripts read fixed keys.
    const docs = vms.map((vm) => toJson(MicroVMSchema, vm, { alwaysEmitImplicit: true }));
    const value = single ? docs[0] : docs;
    return format === 'json' ? JSON.stringify(value, null, 2) + '\n' : yamlText(value);
  }
  const now = Date.now();
  let out = table([VM_COLUMNS, ...vms.map((vm) => vmRow(vm, now))]);
  if (single && vms[0]?.status?.lastError) out += `last error: ${vms[0].status.lastError}\n`;
  if (single && vms[0]?.status) out += powerLine(vms[0]);
  return out;
}

const VM_COLUMNS = ['UID', 'NAMESPACE', 'NAME', 'STATE', 'PROVIDER', 'VCPU', 'MEMORY', 'RETRY', 'AGE', 'REASON'];

function vmRow(vm: MicroVM, now: number): string[] {
  return [
    vm.spec?.uid ?? '',
    vm.spec?.namespace ?? '',
    vm.spec?.id ?? '',
    stateName(vm),
    vm.spec?.provider ?? '',
    String(vm.spec?.vcpu ?? ''),
    `${vm.spec?.memoryInMb ?? ''}Mi`,
    String(vm.status?.retry ?? 0),
    age(vm, now),
    reason(vm),
  ];
}

/**
 * Prints a list that arrives a page at a time as one document. JSON and YAML are printed page by
 * page as they come. A table is printed at the end, once every row is known, so its columns line
 * up across pages (a row is some 100 bytes: 10,000 VMs hold about 1 MB, against the 30 MB of
 * their records). `page` returns the text to print now, `end` the rest.
 */
export function vmListPrinter(format: Format): { page(vms: MicroVM[]): string; end(): string } {
  let count = 0;
  const rows: string[][] = [VM_COLUMNS];
  return {
    page(vms) {
      const first = count === 0;
      count += vms.length;
      if (format === 'json') {
        // The same text as JSON.stringify of the whole array: each element indented by two.
        return vms.map((vm, i) => `${first && i === 0 ? '[\n' : ',\n'}${JSON.stringify(toJson(MicroVMSchema, vm, { alwaysEmitImplicit: true }), null, 2).replace(/^/gm, '  ')}`).join('');
      }
      if (format === 'yaml') return vms.length ? yamlText(vms.map((vm) => toJson(MicroVMSchema, vm, { alwaysEmitImplicit: true }))) : '';
      const now = Date.now();
      for (const vm of vms) rows.push(vmRow(vm, now));
      return '';
    },
    end() {
      if (format === 'json') return count ? '\n]\n' : '[]\n';
      if (format === 'yaml') return count ? '' : '[]\n';
      return table(rows);
    },
  };
}

/** `power: RUNNING`, with the desired state when it differs (a stop or pause on its way). */
function powerLine(vm: MicroVM): string {
  return `power: ${powerText(vm)}\n`;
}

/** `RUNNING`, or `UNKNOWN (desired STOPPED)` while the VMM has not got there yet. */
export function powerText(vm: MicroVM): string {
  const p = vm.status?.power ?? MicroVMStatus_PowerState.POWER_STATE_UNSPECIFIED;
  const now = p === MicroVMStatus_PowerState.POWER_STATE_UNSPECIFIED ? 'UNKNOWN' : MicroVMStatus_PowerState[p];
  const desired = MicroVMStatus_PowerState[vm.status?.desiredPower || MicroVMStatus_PowerState.RUNNING];
  return `${now}${desired !== now ? ` (desired ${desired})` : ''}`;
}
