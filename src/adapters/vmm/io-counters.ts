import { readFile } from 'node:fs/promises';
import type { IoCountersNic, NetCounters } from '../../core/vmm.js';

/** The resident set and the CPU time (user + system) of one process, from /proc/<pid>. */
export interface ProcessUsage {
  cpuSeconds: number;
  rssBytes: number;
}

/**
 * /proc/<pid>/stat fields 14 and 15 (utime, stime, in clock ticks; proc(5)) and /proc/<pid>/status
 * VmRSS (kB). The comm field may hold spaces and parentheses, so fields are counted after its
 * last ")". Ticks are USER_HZ, 100 on every Linux architecture Node runs on.
 */
export async function processUsage(pid: number, ticksPerSecond = 100): Promise<ProcessUsage> {
  const [stat, status] = await Promise.all([readFile(`/proc/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/status`, 'utf8')]);
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const rss = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return { cpuSeconds: (utime + stime) / ticksPerSecond, rssBytes: rss?.[1] ? Number(rss[1]) * 1024 : 0 };
}

/**
 * Counters of the VM's host network devices from /proc/<pid>/net/dev, which shows the devices of
 * the VMM's own network namespace (sysfs would show the mounter's). A TAP counts what the guest
 * sends as received and what it receives as sent (tun's view), so TAP counters are swapped; a
 * macvtap counts as the guest does. Devices that are not there count nothing.
 */
export async function hostNetCounters(pid: number, nics: readonly IoCountersNic[]): Promise<NetCounters> {
  const text = await readFile(`/proc/${pid}/net/dev`, 'utf8');
  const out: NetCounters = { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 };
  const byName = new Map<string, number[]>();
  for (const line of text.split('\n').slice(2)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    byName.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim().split(/\s+/).map(Number));
  }
  for (const nic of nics) {
    const f = byName.get(nic.hostDevice);
    if (!f) continue;
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets …
    const [hostRxBytes = 0, hostRxPackets = 0] = f;
    const hostTxBytes = f[8] ?? 0;
    const hostTxPackets = f[9] ?? 0;
    const tap = nic.type === 'TAP';
    out.rxBytes += tap ? hostTxBytes : hostRxBytes;
    out.rxPackets += tap ? hostTxPackets : hostRxPackets;
    out.txBytes += tap ? hostRxBytes : hostTxBytes;
    out.txPackets += tap ? hostRxPackets : hostTxPackets;
  }
  return out;
}
