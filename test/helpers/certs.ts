import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Certs {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from a CA the server does not trust. */
  rogueCert: string;
  rogueKey: string;
  /** A server certificate of the same CA naming only DNS:localhost, no IP address. */
  dnsOnlyCert: string;
  dnsOnlyKey: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' });
}

function ca(dir: string, name: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`], dir);
}

function leaf(dir: string, name: string, signer: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${signer}.crt`, '-CAkey', `${signer}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`], dir);
}

/** A throwaway PKI made with the openssl CLI: CA, server (SAN 127.0.0.1, localhost), client, rogue client, DNS-only server. */
export function makeCerts(dir: string): Certs {
  ca(dir, 'ca');
  ca(dir, 'rogue-ca');
  leaf(dir, 'server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf(dir, 'client', 'ca', 'extendedKeyUsage=clientAuth\n');
  leaf(dir, 'rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  leaf(dir, 'dns-only', 'ca', 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n');
  const p = (f: string) => join(dir, f);
  return {
    ca: p('ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    rogueCert: p('rogue.crt'),
    rogueKey: p('rogue.key'),
    dnsOnlyCert: p('dns-only.crt'),
    dnsOnlyKey: p('dns-only.key'),
  };
}
