import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * flintlock's basic auth: `authorization: Basic <base64(token)>`, one opaque token. Both sides
 * are hashed first so the comparison takes the same time whatever the lengths.
 */
export function tokenMatches(header: string | undefined, token: string): boolean {
  if (header === undefined) return false;
  const m = /^Basic\s+(\S+)$/i.exec(header.trim());
  if (!m?.[1]) return false;
  const sent = Buffer.from(m[1], 'base64');
  const a = createHash('sha256').update(sent).digest();
  const b = createHash('sha256').update(token, 'utf8').digest();
  return timingSafeEqual(a, b);
}

export function basicAuthHeader(token: string): string {
  return `Basic ${Buffer.from(token, 'utf8').toString('base64')}`;
}

export const UNAUTHENTICATED_MESSAGE = 'authorization: a valid "Basic <base64 token>" header is required';
