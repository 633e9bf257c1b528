/** A host, with or without a port (`localhost`, `127.0.0.1:5000`, `[::1]:9090`), on loopback. */
export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : /^[^:]*:\d+$/.test(host) ? host.slice(0, host.lastIndexOf(':')) : host;
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** The endpoint is local (loopback or a unix socket): plaintext there needs no --insecure. */
export function isLocalEndpoint(endpoint: string): boolean {
  return endpoint.startsWith('unix:') || isLoopbackHost(endpoint);
}
