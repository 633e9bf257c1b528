/**
 * A listen address as flintlockd's settings write it (Go's net.Listen form): `host:port`,
 * `:port` for every interface, `[v6]:port`, or, where a setting allows it, `unix:/path` (also
 * gRPC's `unix:///path`; the path absolute). `host` is empty for every interface.
 */
export type Endpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export interface EndpointRule {
  /** Whether `unix:` paths are accepted (grpc-endpoint only: the other servers are HTTP over TCP). */
  unix?: boolean;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** An IPv6 address in RFC 4291 text form (with an optional %zone): eight groups, or fewer with one `::`. */
function isIPv6(text: string): boolean {
  let s = text.replace(/%[A-Za-z0-9._-]+$/, '');
  let groups = 8;
  const v4 = /:((\d+\.){3}\d+)$/.exec(s);
  if (v4) {
    if (!IPV4.test(v4[1] ?? '')) return false;
    s = `${s.slice(0, v4.index)}:0:0`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return false;
  const parts = halves.map((h) => (h === '' ? [] : h.split(':')));
  if (!parts.flat().every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  const n = parts.flat().length;
  groups = halves.length === 2 ? groups - 1 : groups;
  return halves.length === 2 ? n <= groups : n === groups;
}

/** The rule every endpoint setting is held to, in the words of the refusal. */
export function endpointRule(rule: EndpointRule = {}): string {
  return `must be host:port with a port from 0 to 65535 (0: any free port), :port for every interface, [IPv6]:port${rule.unix ? ' or unix:/absolute/path' : ''}`;
}

/** Parses `text` by the rule above; the error says what is wrong with it. */
export function parseEndpoint(text: string, rule: EndpointRule = {}): { endpoint: Endpoint } | { error: string } {
  if (text.startsWith('unix:')) {
    if (!rule.unix) return { error: 'a unix: socket is not served here' };
    const rest = text.slice('unix:'.length);
    // gRPC's URI form: `unix://host/path` puts `host` in the authority, and grpc-js then binds
    // the rest as a path relative to the working directory; only `unix:///abs` is empty there.
    if (rest.startsWith('//') && !rest.startsWith('///')) {
      const authority = rest.slice(2).split('/')[0] ?? '';
      return { error: `unix://${authority}/… puts ${JSON.stringify(authority)} where a host goes, not the path: write unix:/absolute/path or unix:///absolute/path` };
    }
    const path = rest.startsWith('///') ? rest.slice(2) : rest;
    if (path === '') return { error: 'unix: needs a socket path' };
    // grpc-js would take unix:relative from the daemon's working directory (/ under systemd),
    // which neither clients nor grpc-socket-group's chown would find by the same name.
    if (!path.startsWith('/')) return { error: `the socket path ${JSON.stringify(path)} must be absolute` };
    return { endpoint: { kind: 'unix', path } };
  }
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text);
  if (scheme) return { error: `a scheme (${scheme[1] ?? ''}://) is not part of the endpoint: write host:port` };
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return { error: 'an IPv6 address in brackets must be followed by :port' };
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (!isIPv6(host)) return { error: `${JSON.stringify(host)} is not an IPv6 address` };
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return { error: 'the port is missing' };
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return { error: 'an IPv6 address goes in brackets ([::1]:9090)' };
    if (host !== '' && !IPV4.test(host) && !(HOSTNAME.test(host) && !/^[\d.]+$/.test(host))) return { error: `${JSON.stringify(host)} is not a host name or IP address` };
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 0 && port <= 65535)) return { error: `port ${JSON.stringify(portText)} is not a number from 0 to 65535` };
  return { endpoint: { kind: 'tcp', host, port } };
}

/** Like parseEndpoint for a setting already validated; throws on a value that is not. */
export function endpointOf(text: string, rule: EndpointRule = { unix: true }): Endpoint {
  const r = parseEndpoint(text, rule);
  if ('error' in r) throw new Error(`${text}: ${r.error}`);
  return r.endpoint;
}

/** A host, with or without a port (`localhost`, `127.0.0.1:5000`, `[::1]:9090`), on loopback. */
export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : /^[^:]*:\d+$/.test(host) ? host.slice(0, host.lastIndexOf(':')) : host;
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * The endpoint is local (loopback or a unix socket): plaintext there needs no --insecure.
 * `:port` listens on every interface, so it is not.
 */
export function isLocalEndpoint(endpoint: string): boolean {
  if (endpoint.startsWith('unix:')) return true;
  const r = parseEndpoint(endpoint);
  if ('endpoint' in r && r.endpoint.kind === 'tcp' && r.endpoint.host === '') return false;
  return isLoopbackHost(endpoint);
}

/**
 * Where a client on this host reaches a daemon listening on `endpoint`: every interface
 * (`:port`, 0.0.0.0, [::]) is reached on loopback, as Go's net.Dial does for `:port`.
 */
export function dialAddress(endpoint: string): string {
  const r = parseEndpoint(endpoint, { unix: true });
  if ('error' in r || r.endpoint.kind === 'unix') return endpoint;
  const { host, port } = r.endpoint;
  if (host === '' || host === '0.0.0.0') return `127.0.0.1:${port}`;
  if (/^[0:]+$/.test(host)) return `[::1]:${port}`;
  return endpoint;
}
