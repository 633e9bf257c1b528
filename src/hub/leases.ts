/**
 * Readers for the lease databases of the hub's DHCP servers: ISC dhcpd's dhcpd.leases and
 * dnsmasq's --dhcp-leasefile. Both are written by the servers, but their content comes from
 * clients (hostnames, client identifiers), so any byte may appear in a field.
 */

export interface Lease {
  ip: string;
  mac: string;
  hostname: string;
  /** ISO 8601 (UTC); empty for a lease that never ends. */
  expires: string;
}

type Token = { kind: 'word' | 'string'; text: string } | { kind: '{' | '}' | ';' };

/**
 * dhcpd's lexical rules (common/conflex.c, as dhcpd.leases(5) describes): `#` starts a comment
 * to the end of the line; strings are double-quoted, with `\"`, `\\`, `\t`, `\n`, `\r`, `\b`
 * and three-digit octal escapes (dhcpd writes non-printable bytes of a uid or hostname so);
 * `{`, `}` and `;` are punctuation; anything else up to whitespace is a word. Braces inside a
 * string are data, which is what regexes over braces get wrong.
 */
export function* iscTokens(text: string): Generator<Token> {
  let i = 0;
  while (i < text.length) {
    const c = text[i] ?? '';
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v') {
      i++;
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (c === '{' || c === '}' || c === ';') {
      i++;
      yield { kind: c };
    } else if (c === '"') {
      const bytes: number[] = [];
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < text.length) {
          const e = text[i + 1] ?? '';
          const octal = /^[0-7]{3}/.exec(text.slice(i + 1, i + 4))?.[0];
          if (octal) {
            bytes.push(parseInt(octal, 8) & 0xff);
            i += 4;
            continue;
          }
          const mapped = ({ t: '\t', n: '\n', r: '\r', b: '\b' } as Record<string, string>)[e] ?? e;
          bytes.push(...Buffer.from(mapped, 'utf8'));
          i += 2;
        } else {
          const cp = text.codePointAt(i) ?? 0;
          const ch = String.fromCodePoint(cp);
          bytes.push(...Buffer.from(ch, 'utf8'));
          i += ch.length;
        }
      }
      i++; // the closing quote (or the end of a truncated file)
      yield { kind: 'string', text: Buffer.from(bytes).toString('utf8') };
    } else {
      const start = i;
      while (i < text.length && !/[\s{};"#]/.test(text[i] ?? '')) i++;
      yield { kind: 'word', text: text.slice(start, i) };
    }
  }
}

interface Statement {
  words: string[];
  /** The statements of a `{ … }` block that ends the statement, if any. */
  block?: Statement[];
}

/** Statements as dhcpd writes them: words ending in `;` or in a (possibly nested) block. */
function statements(tokens: Iterator<Token>, nested: boolean): Statement[] {
  const out: Statement[] = [];
  let words: string[] = [];
  for (let r = tokens.next(); !r.done; r = tokens.next()) {
    const t = r.value;
    if (t.kind === 'word' || t.kind === 'string') words.push(t.text);
    else if (t.kind === ';') {
      if (words.length) out.push({ words });
      words = [];
    } else if (t.kind === '{') {
      out.push({ words, block: statements(tokens, true) });
      words = [];
    } else if (nested) {
      if (words.length) out.push({ words });
      return out;
    }
  }
  if (words.length) out.push({ words });
  return out;
}

/**
 * `ends 5 2026/11/27 10:10:00` (UTC, the default db-time-format), `ends epoch 1764238200`
 * (db-time-format local) or `ends never`.
 */
function iscTime(words: string[]): string | undefined {
  const [, a, b, c] = words;
  if (a === 'never') return '';
  if (a === 'epoch' && b && /^\d+$/.test(b)) return new Date(Number(b) * 1000).toISOString();
  const m = /^(\d{4})\/(\d{1,2})\/(\d{1,2})$/.exec(b ?? '');
  const t = /^(\d{1,2}):(\d{2}):(\d{2})$/.exec(c ?? '');
  if (!m || !t) return undefined;
  const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(t[1]), Number(t[2]), Number(t[3])));
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

/**
 * Current leases in a dhcpd.leases file: dhcpd appends a new block for every change, so the last
 * block for an address wins; only active leases that have not ended are returned. Statements
 * matchlock does not read (uid, set, on-blocks, failover state) are skipped whole.
 */
export function parseIscLeases(text: string, now = Date.now()): Lease[] {
  const byIp = new Map<string, Lease & { active: boolean }>();
  for (const s of statements(iscTokens(text), false)) {
    if (s.words[0] !== 'lease' || s.words.length !== 2 || !s.block) continue;
    const ip = s.words[1] ?? '';
    const lease = { ip, mac: '', hostname: '', expires: '', active: false };
    for (const f of s.block) {
      const [k, v, w] = f.words;
      if (k === 'ends') lease.expires = iscTime(f.words) ?? '';
      else if (k === 'binding' && v === 'state') lease.active = w === 'active';
      else if (k === 'hardware' && v === 'ethernet' && w) lease.mac = w.toLowerCase();
      else if (k === 'client-hostname' && v !== undefined) lease.hostname = v;
    }
    byIp.set(ip, lease);
  }
  return [...byIp.values()].filter((l) => l.active && (!l.expires || Date.parse(l.expires) > now)).map(({ active: _a, ...l }) => l);
}

/**
 * Current IPv4 leases in a dnsmasq lease file. Lines are `<expiry> <mac> <ip> <hostname|*>
 * <client-id|*>` (expiry in seconds since the epoch, 0 for an infinite lease); with DHCPv6 a
 * `duid <server duid>` line is followed by `<expiry> <iaid> <ipv6> <hostname> <client duid>`
 * lines, which carry no MAC and are left out, as are lines that are not leases.
 */
export function parseDnsmasqLeases(text: string, now = Date.now()): Lease[] {
  const out: Lease[] = [];
  for (const line of text.split('\n')) {
    const [exp, mac, ip, host] = line.trim().split(/\s+/);
    if (!exp || !/^\d+$/.test(exp) || !mac || !ip || ip.includes(':') || !/^\d+\.\d+\.\d+\.\d+$/.test(ip)) continue;
    const seconds = Number(exp);
    const end = new Date(seconds * 1000);
    if (Number.isNaN(end.getTime())) continue;
    const expires = seconds === 0 ? '' : end.toISOString();
    if (expires && Date.parse(expires) <= now) continue;
    out.push({ ip, mac: mac.toLowerCase(), hostname: host === undefined || host === '*' ? '' : host, expires });
  }
  return out;
}
