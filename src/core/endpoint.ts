/** The endpoint is local (loopback or a unix socket): plaintext there needs no --insecure. */
export function isLocalEndpoint(endpoint: string): boolean {
  if (endpoint.startsWith('unix:')) return true;
  const host = endpoint.startsWith('[') ? endpoint.slice(1, endpoint.indexOf(']')) : endpoint.slice(0, endpoint.lastIndexOf(':'));
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
