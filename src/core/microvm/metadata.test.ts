import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { it } from 'node:test';
import { canonicalBase64Length, decodeMetadataValue } from './metadata.js';

it('a metadata value is kept as sent exactly when decoding and encoding it again gives it back', () => {
  const values = ['', 'abcd', 'QQ==', 'QR==', 'QUI=', 'QUJ=', 'QUJD', 'Q===', 'QQ=', 'not base64!', '#cloud-config\n', 'é'];
  for (let n = 0; n < 40; n++) {
    const b64 = randomBytes(n).toString('base64');
    values.push(b64);
    // Every last data character: only some leave the unused bits zero.
    const at = b64.length - (b64.endsWith('==') ? 3 : b64.endsWith('=') ? 2 : 1);
    if (at >= 0) for (const c of 'AEIMQgw+/9z') values.push(b64.slice(0, at) + c + b64.slice(at + 1));
  }
  for (const v of values) {
    const decoded = decodeMetadataValue(v);
    // The empty value is text, not base64 (it is kept as it is either way).
    const same = v !== '' && decoded.toString('base64') === v;
    assert.equal(canonicalBase64Length(v), same ? decoded.length : undefined, JSON.stringify(v));
  }
});
