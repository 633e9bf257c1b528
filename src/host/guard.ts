import { mkdir } from 'node:fs/promises';
import { writeFileDurably } from '../adapters/durable.js';
import { dirname } from 'node:path';
import { run } from '../adapters/exec.js';

/** nftables tables (one per family) that keep guests away from the host's own addresses. */
export const GUARD_TABLE = 'matchlock_guard';

/** Host-side names of matchlock's guest devices: TAPs (including metadata TAPs) and macvtaps. */
export const GUEST_DEVICE_PATTERNS = ['mlt*', 'mlv*'] as const;

/**
 * The packet-mark bit that carries "came in on a guest device" from the bridge layer to the IP
 * layer. It is set and cleared again before anything but conntrack and raw-priority rules run,
 * so no routing rule or other ruleset ever sees it.
 */
export const GUEST_MARK = 0x00400000;

/**
 * The guard, as one nft script that replaces both tables atomically (re-running it never
 * duplicates rules).
 *
 * A guest is hostile from its first instruction, so nothing it sends may reach the host's own
 * services (the API, sshd, the metadata of other tools) except what booting needs: DHCP to the
 * hub. Its traffic through the host (routed or NATed by the hub) is left alone, and so are
 * replies to connections the host opened. A TAP enslaved to a bridge is only visible as the
 * input port at the bridge layer (at the IP layer the input device is the bridge), so the bridge
 * table marks those frames and the inet table decides with `fib daddr type local` right after
 * conntrack. Firecracker's MMDS is answered inside the VMM, so it needs no exception.
 *
 * MACVTAP guests never enter the host's IP stack through their mlv* device: their frames leave
 * through the parent link, and come back (if at all) through the external network, where they
 * look like any other host's traffic and must be filtered there.
 */
export function guardRuleset(): string {
  const ours = GUEST_DEVICE_PATTERNS.map((p) => `"${p}"`);
  const mark = `0x${GUEST_MARK.toString(16).padStart(8, '0')}`;
  const clear = `0x${(~GUEST_MARK >>> 0).toString(16).padStart(8, '0')}`;
  return [
    `table bridge ${GUARD_TABLE} {}`,
    `delete table bridge ${GUARD_TABLE}`,
    `table inet ${GUARD_TABLE} {}`,
    `delete table inet ${GUARD_TABLE}`,
    `table bridge ${GUARD_TABLE} {`,
    '  chain prerouting {',
    '    type filter hook prerouting priority -300; policy accept;',
    ...ours.map((p) => `    iifname ${p} meta mark set meta mark | ${mark}`),
    '  }',
    '}',
    `table inet ${GUARD_TABLE} {`,
    '  chain prerouting {',
    // After conntrack (-200), before mangle (-150) and NAT.
    '    type filter hook prerouting priority -190; policy accept;',
    ...ours.map((p) => `    iifname ${p} jump from_guest`),
    `    meta mark & ${mark} == ${mark} jump from_guest`,
    '  }',
    '  chain from_guest {',
    `    meta mark set meta mark & ${clear}`,
    // Broadcast and multicast are never routed on: for the host they are as local as its addresses.
    '    fib daddr type != { local, broadcast, multicast } return',
    '    ct state established,related accept',
    '    meta l4proto udp udp sport 68 udp dport 67 accept',
    '    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept',
    '    counter drop',
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Installs (or replaces) the guard in this network namespace. */
export async function installGuard(): Promise<void> {
  await run('nft', ['-f', '-'], { input: guardRuleset() });
}

/** Whether the guard (its inet table) is installed in this network namespace. */
export async function guardInstalled(): Promise<boolean> {
  return run('nft', ['list', 'table', 'inet', GUARD_TABLE]).then(() => true, () => false);
}

/** Removes the guard from this network namespace; removing none succeeds. */
export async function removeGuard(): Promise<void> {
  await run('nft', ['-f', '-'], { input: guardRuleset().split('\n').slice(0, 4).join('\n') + '\n' });
}

/** Writes the guard as a file that `nft -f` loads (matchlockd's unit does, before each start). */
export async function writeGuardFile(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  // Durable: an empty guard file after a power cut would load no rules and start the daemon unguarded.
  await writeFileDurably(`${path}.tmp`, path, `#!/usr/sbin/nft -f\n# Written by matchlock host setup: guests may not reach this host's own addresses.\n${guardRuleset()}`, 0o644);
}
