// Address checks without node:net, so the core stays free of I/O modules.

export function isIPv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

export function isIPv6(s: string): boolean {
  if (s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return false;
  let groups = s;
  let extra = 0;
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  if (tail.includes('.')) {
    if (!isIPv4(tail)) return false;
    groups = s.slice(0, lastColon + 1) + '0:0';
    extra = 0;
  }
  const halves = groups.split('::');
  if (halves.length > 2) return false;
  const parse = (h: string): string[] | undefined => {
    if (h === '') return [];
    const g = h.split(':');
    return g.every((x) => /^[0-9a-fA-F]{1,4}$/.test(x)) ? g : undefined;
  };
  const left = parse(halves[0] ?? '');
  const right = halves.length === 2 ? parse(halves[1] ?? '') : [];
  if (!left || !right) return false;
  const count = left.length + right.length + extra;
  return halves.length === 2 ? count <= 7 : count === 8;
}

export function ipFamily(s: string): 4 | 6 | undefined {
  if (isIPv4(s)) return 4;
  if (isIPv6(s)) return 6;
  return undefined;
}

/** `192.168.1.5/24` or `fd00::5/64`: an address with a prefix length that fits its family. */
export function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const family = ipFamily(s.slice(0, slash));
  const prefix = s.slice(slash + 1);
  if (family === undefined || !/^(0|[1-9][0-9]{0,2})$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** A unicast, non-zero MAC address written with colons. */
export function macProblem(s: string): string | undefined {
  if (!MAC.test(s)) return 'must be a MAC address of six hex pairs separated by colons, like aa:bb:cc:00:11:22';
  const first = parseInt(s.slice(0, 2), 16);
  if (first & 1) return 'must be a unicast MAC address (the lowest bit of the first octet must be 0)';
  if (/^00(:00){5}$/.test(s)) return 'must not be the all-zero MAC address';
  return undefined;
}
