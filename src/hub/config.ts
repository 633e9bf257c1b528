import { ErrorCode, MatchlockError, yamlProblem } from '../core/errors.js';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { ipFamily, isIPv4 } from '../core/microvm/net.js';

/**
 * The network hub: one LAN for MicroVMs (an 802.1Q VLAN on a parent, or a plain bridge on a
 * single machine) with the hub's address as router, a DHCP server for a range of it, and NAT
 * from the LAN to an uplink.
 */
export interface HubConfig {
  /** The LAN interface matchlock makes or uses (VLAN link or bridge). */
  interface: string;
  mode: 'vlan' | 'bridge';
  /** vlan mode: the parent link and the VLAN id. */
  parent?: string | undefined;
  vlanId?: number | undefined;
  /** The hub's address on the LAN, CIDR: 192.168.10.2/25. Also the router handed out. */
  address: string;
  rangeStart: string;
  rangeEnd: string;
  dnsServers: string[];
  /** Seconds. dnsmasq has one lease time (its --dhcp-range's), this one, which is also its maximum. */
  defaultLeaseSeconds: number;
  /** Seconds: the longest lease dhcpd grants a client that asks for one (isc only; dnsmasq never grants more than defaultLeaseSeconds). */
  maxLeaseSeconds: number;
  /** Traffic from the LAN leaves through this link, masqueraded. */
  uplink: string;
  dhcp: 'isc' | 'dnsmasq';
  /** Where the hub keeps its generated files, leases, pids and what setup changed. */
  stateDir: string;
}

/** A bad hub setting, naming the key: InvalidArgument. */
function hubConfigError(message: string): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, message);
}

/** 2^31 - 1: the largest lease time both DHCP servers take as given (see validateHub). */
export const LEASE_SECONDS_MAX = 2147483647;

/** dnsmasq's shortest lease: it hands out 120 s for any shorter one (dnsmasq(8), --dhcp-range). */
export const DNSMASQ_MIN_LEASE_SECONDS = 120;

const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/**
 * Why `name` cannot name a link, or undefined when it can: the kernel (dev_valid_name) takes at
 * most 15 bytes without "/", ":" or whitespace, and refuses "all" and "default", the names of
 * /proc/sys/net/ipv4/conf's own entries (RTNETLINK answers: Invalid argument); matchlock takes
 * the portable subset of letters, digits, "_", "." and "-".
 */
export function ifnameRule(name: string): string | undefined {
  if (name === 'all' || name === 'default') return `"${name}" is reserved by the kernel (net.ipv4.conf.${name} configures every link), not a link name`;
  if (!IFNAME.test(name)) return 'must be a Linux interface name (1-15 letters, digits, "_", ".", "-", starting with a letter or digit)';
  return undefined;
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

export interface Subnet {
  network: string;
  netmask: string;
  prefix: number;
  /** The all-ones host part. */
  broadcast: string;
  hub: string;
}

export function subnetOf(cidr: string): Subnet {
  const [ip = '', p = ''] = cidr.split('/');
  const prefix = Number(p);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const network = (ipToInt(ip) & mask) >>> 0;
  return { network: intToIp(network), netmask: intToIp(mask), prefix, broadcast: intToIp((network | ~mask) >>> 0), hub: ip };
}

/**
 * Why `ip` cannot be a host's unicast address, or undefined when it can: the special-purpose
 * blocks of RFC 6890 that no host uses as its own address or as a router or server it hands out.
 */
export function notUnicast(ip: string): string | undefined {
  const n = ipToInt(ip);
  const within = (net: string, prefix: number) => Math.floor(n / 2 ** (32 - prefix)) === Math.floor(ipToInt(net) / 2 ** (32 - prefix));
  if (within('0.0.0.0', 8)) return 'is in 0.0.0.0/8, "this network", only ever a source while a host learns its address (RFC 1122 3.2.1.3, RFC 6890)';
  if (within('127.0.0.0', 8)) return 'is in 127.0.0.0/8, loopback, which never appears on a network (RFC 1122 3.2.1.3)';
  if (within('169.254.0.0', 16)) return 'is in 169.254.0.0/16, link-local, which routers do not forward (RFC 3927 2.7)';
  if (within('224.0.0.0', 4)) return 'is in 224.0.0.0/4, multicast, never a host address (RFC 1112 4, RFC 5771)';
  if (within('240.0.0.0', 4)) return 'is in 240.0.0.0/4, reserved, or the limited broadcast 255.255.255.255 (RFC 1112 4, RFC 919, RFC 6890)';
  return undefined;
}

function inSubnet(ip: string, s: Subnet): boolean {
  const mask = ipToInt(s.netmask);
  return ((ipToInt(ip) & mask) >>> 0) === ipToInt(s.network);
}

/** Checks a hub config; every refusal names the key and the rule. */
export function validateHub(c: HubConfig): HubConfig {
  const bad = (key: string, rule: string) => hubConfigError(`${key}: ${rule}`);
  const ifaceRule = ifnameRule(c.interface);
  if (ifaceRule) throw bad('interface', ifaceRule);
  if (c.mode !== 'vlan' && c.mode !== 'bridge') throw bad('mode', 'must be vlan or bridge');
  // 802.1Q-2018 9.6: the 12-bit VID values 0 (priority tag only) and 4095 (reserved) name no VLAN.
  if (c.vlanId !== undefined && (!Number.isInteger(c.vlanId) || c.vlanId < 1 || c.vlanId > 4094)) throw bad('vlan-id', 'must be between 1 and 4094 (802.1Q VIDs 0 and 4095 are reserved)');
  if (c.mode === 'vlan') {
    if (!c.parent) throw bad('parent', 'vlan mode needs the parent interface');
    const parentRule = ifnameRule(c.parent);
    if (parentRule) throw bad('parent', parentRule);
    if (c.vlanId === undefined) throw bad('vlan-id', 'vlan mode needs the VLAN id (1-4094)');
  } else {
    // A bridge has no parent and no tag: a value given for them would be silently ignored.
    if (c.vlanId !== undefined) throw bad('vlan-id', 'only for mode vlan (a bridge carries no 802.1Q tag)');
    if (c.parent !== undefined) throw bad('parent', 'only for mode vlan');
  }
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(c.address);
  // iproute2 reads a prefix (get_prefix) and the octets of an address (get_addr_ipv4) with
  // strtoul base 0, so "010" is octal 8 to it; isIPv4 refuses an octet with a leading zero.
  if (m?.[2] !== undefined && /^0\d/.test(m[2])) throw bad('address', `the prefix /${m[2]} has a leading zero, which iproute2 reads as octal: write it in decimal without one`);
  if (!m?.[1] || !isIPv4(m[1]) || Number(m[2]) < 8 || Number(m[2]) > 30) throw bad('address', 'must be an IPv4 address with a prefix of /8 to /30, like 192.168.10.2/25 (decimal octets without leading zeros)');
  // The one spelling every tool is given: iproute2, nft and dnsmasq never see the user's text.
  c.address = `${m[1]}/${Number(m[2])}`;
  const s = subnetOf(c.address);
  const hubNotUnicast = notUnicast(s.hub);
  if (hubNotUnicast) throw bad('address', `${s.hub} ${hubNotUnicast}: the hub needs a unicast address`);
  // RFC 919/922: in a subnet of /30 or wider the all-zeros host part names the network and the
  // all-ones host part is its broadcast address; neither can be a host (RFC 3021 lifts this only for /31).
  const special = (ip: string) => (ip === s.network ? 'the network address' : ip === s.broadcast ? 'the broadcast address' : undefined);
  const hubSpecial = special(s.hub);
  if (hubSpecial) throw bad('address', `${s.hub} is ${hubSpecial} of ${s.network}/${s.prefix}, not a host address`);
  for (const [key, ip] of [['range-start', c.rangeStart], ['range-end', c.rangeEnd]] as const) {
    if (!isIPv4(ip)) throw bad(key, 'must be an IPv4 address');
    if (!inSubnet(ip, s)) throw bad(key, `must be inside ${s.network}/${s.prefix}`);
    const ipSpecial = special(ip);
    if (ipSpecial) throw bad(key, `${ip} is ${ipSpecial} of ${s.network}/${s.prefix}, not a host address`);
    const ipNotUnicast = notUnicast(ip);
    if (ipNotUnicast) throw bad(key, `${ip} ${ipNotUnicast}: guests need unicast addresses`);
  }
  if (ipToInt(c.rangeStart) > ipToInt(c.rangeEnd)) throw bad('range-start', 'must not be after range-end');
  if (ipToInt(s.hub) >= ipToInt(c.rangeStart) && ipToInt(s.hub) <= ipToInt(c.rangeEnd)) throw bad('address', 'the hub address must be outside the DHCP range');
  c.dnsServers.forEach((d, i) => {
    if (ipFamily(d) !== 4) throw bad(`dns-servers[${i}]`, 'must be an IPv4 address');
    const dnsNotUnicast = notUnicast(d);
    if (dnsNotUnicast) throw bad(`dns-servers[${i}]`, `${d} ${dnsNotUnicast}: a guest cannot reach a DNS server there`);
    // On the LAN itself, the network and broadcast addresses are no host's (RFC 919/922), as for the router.
    const dnsSpecial = inSubnet(d, s) ? special(d) : undefined;
    if (dnsSpecial) throw bad(`dns-servers[${i}]`, `${d} is ${dnsSpecial} of ${s.network}/${s.prefix}, not a host address: a guest cannot reach a DNS server there`);
  });
  if (!Number.isInteger(c.defaultLeaseSeconds) || c.defaultLeaseSeconds < 60) throw bad('default-lease-time', 'must be at least 60 seconds');
  for (const [key, v] of [['default-lease-time', c.defaultLeaseSeconds], ['max-lease-time', c.maxLeaseSeconds]] as const) {
    if (v > LEASE_SECONDS_MAX) throw bad(key, `must be at most ${LEASE_SECONDS_MAX} seconds (dnsmasq reads a lease time as a C int; dhcpd's lease times and DHCP's lease time option, RFC 2132 9.2, are 32-bit, and a larger value is silently wrapped)`);
  }
  if (!Number.isInteger(c.maxLeaseSeconds) || c.maxLeaseSeconds < c.defaultLeaseSeconds) throw bad('max-lease-time', 'must be at least default-lease-time');
  const uplinkRule = ifnameRule(c.uplink);
  if (uplinkRule) throw bad('uplink', uplinkRule);
  if (c.uplink === c.interface) throw bad('uplink', 'must differ from interface');
  if (c.dhcp !== 'isc' && c.dhcp !== 'dnsmasq') throw bad('dhcp', 'must be isc or dnsmasq');
  // dnsmasq(8), --dhcp-range: "The minimum lease time is two minutes"; it raises a shorter one
  // to 120 s without a word (option.c), so the lease handed out would not be the one asked for.
  if (c.dhcp === 'dnsmasq' && c.defaultLeaseSeconds < DNSMASQ_MIN_LEASE_SECONDS) {
    throw bad('default-lease-time', `must be at least ${DNSMASQ_MIN_LEASE_SECONDS} seconds with dnsmasq (its minimum lease time, dnsmasq(8) --dhcp-range; dhcpd takes 60 to 119)`);
  }
  // The DHCP server, its pid file and the record are read from other working directories later
  // (teardown, systemd's unit), so a relative path would name another place; as the daemon does
  // for its own paths, it is refused rather than guessed.
  if (!isAbsolute(c.stateDir)) throw bad('state-dir', `must be an absolute path (${c.stateDir} is relative)`);
  // The DHCP server's unit names files in it, and a unit line cannot carry a control character.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(c.stateDir)) throw bad('state-dir', `${JSON.stringify(c.stateDir)}: must not hold a control character (a systemd unit cannot name such a path)`);
  // One spelling per directory (no trailing slash, no "." or ".."), so the record, the state and
  // the one-hub-per-host rule compare paths as the kernel resolves them.
  c.stateDir = resolve(c.stateDir);
  return c;
}

const KEYS: Record<string, keyof HubConfig> = {
  interface: 'interface', mode: 'mode', parent: 'parent', 'vlan-id': 'vlanId', address: 'address',
  'range-start': 'rangeStart', 'range-end': 'rangeEnd', 'dns-servers': 'dnsServers',
  'default-lease-time': 'defaultLeaseSeconds', 'max-lease-time': 'maxLeaseSeconds', uplink: 'uplink', dhcp: 'dhcp', 'state-dir': 'stateDir',
};

/** The seed's hub: 192.168.10.0/25, hub .2, range .26-.126, isc-dhcp-server. */
export const HUB_DEFAULTS: HubConfig = {
  interface: 'mlhub0', mode: 'bridge', address: '192.168.10.2/25', rangeStart: '192.168.10.26', rangeEnd: '192.168.10.126',
  dnsServers: ['8.8.8.8', '8.8.4.4'], defaultLeaseSeconds: 600, maxLeaseSeconds: 7200, uplink: 'eth0', dhcp: 'isc', stateDir: '/var/lib/matchlock/hub',
};

/**
 * A hub config from a YAML file (keys as the flags name them) with flags over it. A refusal
 * names where the bad value came from: `--<flagPrefix><key>` for a flag (inspect passes `hub-`),
 * `<file>: <key>` for the file, the bare key for a default. Throws InvalidArgument.
 */
export function loadHubConfig(file: string | undefined, flags: Partial<Record<string, unknown>>, flagPrefix = '', flagNames: Partial<Record<string, string>> = {}): HubConfig {
  let text: string | undefined;
  if (file) {
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw hubConfigError(`${file}: ${yamlProblem(err)}`);
    }
  }
  return hubConfigFrom(file, text, flags, flagPrefix, flagNames);
}

/**
 * loadHubConfig over a file's text. The file's scalars are read as their source text (YAML's
 * failsafe schema, YAML 1.2 10.1): the flags' rules then apply to them as written, so `~` is
 * not a bridge named "null", `0x10` not one named "16", and `0o17` or `1e3` not a lease time.
 */
function hubConfigFrom(file: string | undefined, text: string | undefined, flags: Partial<Record<string, unknown>>, flagPrefix: string, flagNames: Partial<Record<string, string>>): HubConfig {
  const raw: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  const flagName = (key: string) => `--${flagNames[key] ?? `${flagPrefix}${key}`}`;
  // A key nobody gave and that has no default (vlan mode's parent and vlan-id) is named as the
  // flag that would give it, or as the file's key when only a file was read.
  const fromFlags = !file || Object.values(flags).some((v) => v !== undefined);
  const named = (key: string) => {
    const bare = key.replace(/\[\d+\]$/, '');
    const o = origin[bare];
    if (o !== undefined) return o.replace('%s', key);
    if (bare in KEYS && HUB_DEFAULTS[KEYS[bare] as keyof HubConfig] === undefined) return fromFlags ? flagName(key) : `${file}: ${key}`;
    return key;
  };
  if (file && text !== undefined) {
    let doc: unknown;
    try {
      doc = parseYaml(text, { schema: 'failsafe', logLevel: 'error' });
    } catch (err) {
      throw hubConfigError(`${file}: ${yamlProblem(err)}`);
    }
    // An empty file is no settings (failsafe reads it as null, a blank one as "").
    if (doc !== null && doc !== undefined && doc !== '') {
      if (typeof doc !== 'object' || Array.isArray(doc)) throw hubConfigError(`${file}: must be a mapping`);
      for (const [k, v] of Object.entries(doc)) {
        if (!(k in KEYS)) throw hubConfigError(`${file}: unknown key "${k}"`);
        // An empty list is an empty value, refused as such below for every key.
        const list = Array.isArray(v) && (k === 'dns-servers' || v.length === 0);
        if (list ? !v.every((x) => typeof x === 'string') : typeof v !== 'string') {
          throw hubConfigError(`${file}: ${k}: must be a single value${k === 'dns-servers' ? ' or a list of addresses' : ''} (got ${JSON.stringify(v)})`);
        }
        raw[k] = v;
        origin[k] = `${file}: %s`;
      }
    }
  }
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    raw[k] = v;
    origin[k] = flagNames[k] ? `--${flagNames[k]}` : `--${flagPrefix}%s`;
  }
  const out: Record<string, unknown> = { ...HUB_DEFAULTS };
  for (const [k, v] of Object.entries(raw)) {
    const prop = KEYS[k];
    if (!prop) throw hubConfigError(`unknown key "${k}"`);
    // An empty value (`key:`, `""`, `[]`, a flag given as "") is no value: YAML's core schema
    // and PyYAML read `key:` as null. Rather than take it as a setting (no DNS servers, handed
    // out without a word) or silently as the default, every key refuses it alike.
    const blank = (x: unknown) => typeof x === 'string' && x.trim() === '';
    if (blank(v) || (Array.isArray(v) && (v.length === 0 || (prop === 'dnsServers' && v.every(blank)))) || (prop === 'dnsServers' && typeof v === 'string' && v.split(',').every(blank))) {
      const def = HUB_DEFAULTS[prop];
      throw hubConfigError(`${named(k)}: is empty: give a value${def === undefined ? '' : `, or leave it out for the default (${Array.isArray(def) ? def.join(',') : String(def)})`}`);
    }
    if (prop === 'vlanId' || prop === 'defaultLeaseSeconds' || prop === 'maxLeaseSeconds') {
      // Decimal digits only: Number() would also read 0x10, 1e3 and " 7 ", which no reader of
      // these values (dhcpd.conf's lease times, ip link's VLAN id) is given in that form. A
      // leading zero is refused too: iproute2 reads numbers with strtoul base 0, so "010" means
      // 8 to it and 10 here; the value meant is not clear.
      const text = typeof v === 'number' && Number.isSafeInteger(v) ? String(v) : v;
      if (typeof text !== 'string' || !/^\d+$/.test(text)) throw hubConfigError(`${named(k)}: must be a whole number in decimal digits (got ${JSON.stringify(v)})`);
      if (/^0\d/.test(text)) throw hubConfigError(`${named(k)}: must be a whole number in decimal digits without a leading zero (got ${JSON.stringify(v)}; iproute2 would read it as octal)`);
      out[prop] = Number(text);
    } else if (prop === 'dnsServers') out[prop] = Array.isArray(v) ? v.map(String) : String(v).split(',').map((x) => x.trim()).filter(Boolean);
    else out[prop] = String(v);
  }
  try {
    return validateHub(out as unknown as HubConfig);
  } catch (err) {
    const m = /^([a-z-]+(?:\[\d+\])?): ([^]*)$/.exec((err as Error).message);
    if (!m?.[1]) throw err;
    throw hubConfigError(`${named(m[1])}: ${m[2] ?? ''}`);
  }
}

/** The hub config as a hub.yaml that loadHubConfig reads back to the same config. */
export function hubConfigYaml(c: HubConfig): string {
  const doc: Record<string, unknown> = {};
  for (const [key, prop] of Object.entries(KEYS)) {
    const v = c[prop];
    if (v !== undefined) doc[key] = Array.isArray(v) ? v.join(',') : v;
  }
  return stringifyYaml(doc);
}

/**
 * Refuses a config whose record (hubConfigYaml) loadHubConfig would not read back to the same
 * config: status, leases and teardown read only the record, so a hub recorded that way could
 * not be seen or removed. Throws InvalidArgument.
 */
export function checkRecordable(c: HubConfig): void {
  const text = hubConfigYaml(c);
  let back: string;
  try {
    back = hubConfigYaml(hubConfigFrom('record', text, {}, '', {}));
  } catch (err) {
    throw hubConfigError(`this hub could not be read back from its record: ${(err as Error).message}`);
  }
  if (back !== text) throw hubConfigError(`this hub would be read back from its record with other settings:\n${back}`);
}
