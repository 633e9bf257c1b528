import assert from 'node:assert/strict';
import { it } from 'node:test';
import { ULID_PATTERN, ulid } from './ulid.js';

it('encodes time in the first 10 characters so ULIDs sort by creation time', () => {
  const r = new Uint8Array(10);
  assert.equal(ulid(0, r), '0'.repeat(26));
  // The spec's reference value: 1469918176385 ms -> 01ARYZ6S41.
  assert.equal(ulid(1469918176385, r).slice(0, 10), '01ARYZ6S41');
  assert.ok(ulid(1000, r) < ulid(1001, r));
  const max = ulid(2 ** 48 - 1, new Uint8Array(10).fill(255));
  assert.equal(max, '7ZZZZZZZZZZZZZZZZZZZZZZZZZ');
  assert.match(ulid(Date.now(), new Uint8Array(10).fill(42)), ULID_PATTERN);
  assert.throws(() => ulid(-1, r), RangeError);
});
