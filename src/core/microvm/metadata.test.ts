import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { it } from 'node:test';
import { dump } from 'js-yaml';
import { canonicalBase64Length, decodeMetadataValue, metaDataLine } from './metadata.js';
import { ulid } from './ulid.js';

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

it('a meta-data line is written as js-yaml dump writes that one entry', () => {
  const values: unknown[] = [
    'n1', 'vm-1', 'node.example.com', '01JF0000000000000000000000', '0123', '0123456789', '1e5', '1E5', '1_000', '0x1F', '0b101', '0o17', '017',
    '1.5', '.5', '.inf', 'NaN', 'nan', '.nan', 'true', 'True', 'TRUE', 'false', 'yes', 'Yes', 'no', 'NO', 'on', 'off', 'y', 'n', 'Y', 'N',
    'null', 'Null', '~', '', ' ', 'a b', 'a:b', 'a: b', 'a#b', 'a #b', '-a', '- a', '?a', '=', '<<', '2001-12-14', '2001-12-14t21:59:43.10-05:00',
    '1:20', '190:20:30', 'é', 'x\ny', "it's", '"q"', '[a]', '{a}', 'a,b', '---', '...', '%a', '@a', '`a', '!a', '&a', '*a', '|', '>',
    0, 1, -1, 1.5, true, false, null, [], ['ssh-ed25519 AAAA x@y', 'k2'], { a: 1 },
  ];
  for (let n = 0; n < 200; n++) values.push(ulid(Date.now() - n * 7919, randomBytes(10)));
  for (const key of ['instance_id', 'instance-id', 'local_hostname', 'local-hostname', 'public_keys', 'public-keys', 'network_interfaces', 'network-interfaces']) {
    for (const v of values) assert.equal(metaDataLine(key, v), dump({ [key]: v }, { noRefs: true, lineWidth: -1 }), JSON.stringify([key, v]));
  }
});
