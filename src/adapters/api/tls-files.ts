import { X509Certificate, createPrivateKey } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { ErrorCode, MatchlockError } from '../../core/errors.js';

/**
 * The rules for the TLS files a user gives, on both sides of the API: matchlockd's tls-cert,
 * tls-key and tls-client-ca, and the CLI's --tls-cert, --tls-key and --tls-ca. What Node's TLS
 * would refuse only when the channel or server is made (with OpenSSL's bare words), or would
 * accept and then fail every handshake with, is refused here as InvalidArgument naming the
 * setting or flag, its path and the rule.
 */

/** A TLS file as the user named it: its setting or flag (`tls-cert`, `--tls-ca`) and its path. */
export interface TlsFile {
  name: string;
  path: string;
}

function refusal(f: TlsFile, rule: string, cause?: unknown): MatchlockError {
  return new MatchlockError(ErrorCode.InvalidArgument, `${f.name} ${f.path}: ${rule}`, { field: f.name, cause });
}

/**
 * The file's bytes; a file that cannot be read is refused with the system's reason, and
 * anything but a regular file (a FIFO would block the read for good, /dev/zero never end it)
 * is refused before it is read. The open does not block on a FIFO (O_NONBLOCK).
 */
export function readTlsFile(f: TlsFile): Buffer {
  let fd: number | undefined;
  try {
    fd = openSync(f.path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (st.isDirectory()) throw refusal(f, 'is a directory; it must be a file');
    if (!st.isFile()) throw refusal(f, `is ${st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : 'no regular file'}; it must be a regular file`);
    return readFileSync(fd);
  } catch (err) {
    if (err instanceof MatchlockError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw refusal(f, e.code === 'EISDIR' ? `is a directory; it must be a file (${e.message})` : e.message, err);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * A certificate (chain) and its private key: each file alone first, so that the refusal names
 * the file at fault, then the pair. The certificate file must hold a PEM certificate, the key
 * file a PEM private key, and that key must be the one of the first certificate.
 */
export function checkKeyPair(certFile: TlsFile, cert: Buffer, keyFile: TlsFile, key: Buffer): void {
  const check = (f: TlsFile, options: SecureContextOptions, rule: string) => {
    try {
      createSecureContext(options);
    } catch (err) {
      throw refusal(f, `${rule} (${(err as Error).message})`, err);
    }
  };
  check(certFile, { cert }, 'must hold a PEM certificate');
  check(keyFile, { key }, 'must hold a PEM private key');
  const pair = `must be the private key of the certificate in ${certFile.name} ${certFile.path}`;
  check(keyFile, { cert, key }, pair);
  // OpenSSL compares a key with the certificate's only when both are of one type: an RSA key
  // with an EC certificate is taken, and every handshake then fails.
  let matches: boolean;
  try {
    matches = new X509Certificate(cert).checkPrivateKey(createPrivateKey(key));
  } catch (err) {
    throw refusal(keyFile, `${pair} (${(err as Error).message})`, err);
  }
  if (!matches) throw refusal(keyFile, `${pair} (it is a key of another type or pair)`);
}

/**
 * A CA file must hold at least one PEM certificate, each of which parses: OpenSSL takes a file
 * without one as a trust store that trusts nobody (and one with a bad certificate as trusting
 * only those before it), so every handshake would fail with no word about the file.
 */
export function checkCaFile(f: TlsFile, pem: Buffer): void {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw refusal(f, 'must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----); it holds none');
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw refusal(f, `certificate ${i + 1} of ${blocks.length} does not parse (${(err as Error).message})`, err);
    }
  }
}
