import { Buffer } from 'node:buffer';
import { noCloudSeed } from '../../core/microvm/cloudinit.js';
import { guestMac } from '../../core/microvm/host-names.js';
import type { MicroVMSpec } from '../../core/microvm/types.js';
import { failedPrecondition, quote, type MatchlockError } from '../../core/errors.js';

/**
 * Bytes of command line Linux x86 keeps, its NUL included (COMMAND_LINE_SIZE,
 * arch/x86/include/asm/setup.h). The boot code copies at most that much and drops the rest
 * without a message, so a longer line reaches the guest cut off (the NoCloud seed or a
 * `root=` at its end lost).
 */
export const LINUX_COMMAND_LINE_SIZE = 2048;

/**
 * The NoCloud seed files a VM of `spec` will get, computed at create as the plan computes them
 * at start: the guests' MACs are the ones the plan gives (guestMac), so `network-config` is
 * byte for byte what the launch carries.
 */
export function seedAtCreate(spec: MicroVMSpec, uid: string): Record<string, Buffer> {
  const vm = { uid, spec };
  return noCloudSeed(vm, spec.interfaces.map((i, n) => ({ deviceId: i.deviceId, mac: guestMac(vm, n) })));
}

/** Bytes of the spec's kernel.cmdline entries as the command line carries them ("k=v" or "k", one space between). */
export function specCmdlineBytes(cmdline: Readonly<Record<string, string>>): number {
  return Object.entries(cmdline).reduce((n, [k, v], i) => n + (i > 0 ? 1 : 0) + Buffer.byteLength(k) + (v === '' ? 0 : 1 + Buffer.byteLength(v)), 0);
}

/**
 * The first kernel.cmdline key or value with a character outside printable ASCII (' ' to '~'),
 * which rust-vmm linux-loader refuses in `Cmdline::insert_str` (src/cmdline/mod.rs, valid_str;
 * "String contains a non-printable ASCII character."), as an error naming the field; undefined
 * when there is none. For VMMs that build the guest's command line with insert_str.
 */
export function nonPrintableAsciiError(provider: string, cmdline: Readonly<Record<string, string>>): MatchlockError | undefined {
  const bad = /[^ -~]/u;
  for (const [k, v] of Object.entries(cmdline)) {
    const hit = bad.exec(k) ?? bad.exec(v);
    if (!hit) continue;
    const field = `microvm.kernel.cmdline[${quote(k)}]`;
    const cp = hit[0].codePointAt(0) ?? 0;
    return failedPrecondition(
      `${field}: provider ${provider} refuses a kernel command line with characters outside printable ASCII (' ' to '~', rust-vmm linux-loader's rule); ${bad.test(k) ? 'the key' : 'the value'} has U+${cp.toString(16).toUpperCase().padStart(4, '0')}`,
      field,
    );
  }
  return undefined;
}

/** One contributor to a command line's length, for the error that names them. */
export interface CmdlinePart {
  what: string;
  bytes: number;
}

/**
 * The error for a command line of `total` bytes (NUL included) over `limit`, naming the parts
 * and the rule. The field is kernel.cmdline, or kernel.add_network_config when the
 * network-config seed alone is over the limit.
 */
export function cmdlineTooLongError(provider: string, total: number, limit: number, rule: string, parts: readonly CmdlinePart[], networkConfigBytes = 0): MatchlockError {
  const field = networkConfigBytes >= limit ? 'microvm.kernel.add_network_config' : 'microvm.kernel.cmdline';
  const detail = parts.filter((p) => p.bytes > 0).map((p) => `${p.what} ${p.bytes}`).join(', ');
  return failedPrecondition(`${field}: the kernel command line provider ${provider} would pass is ${total} bytes with its NUL (${detail}), over the ${limit} bytes ${rule}`, field);
}
