// Crockford base32, as ULIDs use it (no I, L, O, U).
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const TIME_LEN = 10;
const RANDOM_LEN = 16;

/**
 * A ULID (26 characters: 48-bit millisecond time, 80 random bits), as flintlock assigns.
 * Pure: the caller supplies the time and 10 random bytes, so tests can pin both.
 */
export function ulid(timeMs: number, random: Uint8Array): string {
  if (!Number.isSafeInteger(timeMs) || timeMs < 0 || timeMs > 2 ** 48 - 1) {
    throw new RangeError(`ulid time out of range: ${timeMs}`);
  }
  if (random.length < 10) throw new RangeError('ulid needs 10 random bytes');
  let time = '';
  let t = timeMs;
  for (let i = 0; i < TIME_LEN; i++) {
    time = ALPHABET.charAt(t % 32) + time;
    t = Math.floor(t / 32);
  }
  // 80 bits -> 16 characters of 5 bits each.
  let bits = 0n;
  for (let i = 0; i < 10; i++) bits = (bits << 8n) | BigInt(random[i] ?? 0);
  let rand = '';
  for (let i = 0; i < RANDOM_LEN; i++) {
    rand = ALPHABET.charAt(Number(bits & 31n)) + rand;
    bits >>= 5n;
  }
  return time + rand;
}

export const ULID_PATTERN = /^[0-9A-HJKMNP-TV-Z]{26}$/;
