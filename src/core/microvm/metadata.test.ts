import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { it } from 'node:test';
import { execFileSync, spawnSync } from 'node:child_process';
import { load } from 'js-yaml';
import { META_DATA_SPELLINGS, canonicalBase64Length, cloudInitMetaData, decodeMetadataValue, metaDataLine } from './metadata.js';
import { ulid } from './ulid.js';
import { cloudInitYaml } from './cloudinit.js';

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

/** Debian's python3, whose PyYAML (python3-yaml, scripts/install-deps.sh) is cloud-init's YAML reader. */
const PYTHON = '/usr/bin/python3';
const noPyYaml = spawnSync(PYTHON, ['-c', 'import yaml'], { encoding: 'utf8' }).status === 0 ? false : `PyYAML is missing (${PYTHON} -c 'import yaml' fails; scripts/install-deps.sh installs python3-yaml)`;

/** Each document as PyYAML's safe_load (the loader cloud-init uses) reads it, through JSON. */
function pyYaml(docs: string[]): unknown[] {
  const script = 'import json, sys, yaml\nprint(json.dumps([yaml.safe_load(d) for d in json.load(sys.stdin)], default=str))';
  return JSON.parse(execFileSync(PYTHON, ['-c', script], { input: JSON.stringify(docs), encoding: 'utf8' })) as unknown[];
}

it('a meta-data line reads back as its value in js-yaml (YAML 1.2) and in PyYAML (YAML 1.1)', { skip: noPyYaml }, () => {
  const values: string[] = [
    'n1', 'vm-1', 'node.example.com', '01JF0000000000000000000000', '0123', '0123456789', '1e5', '1E5', '1_000', '0x1F', '0b101', '0o17', '017', '010',
    '1.5', '.5', '.inf', 'NaN', 'nan', '.nan', 'true', 'True', 'TRUE', 'false', 'yes', 'Yes', 'no', 'NO', 'on', 'off', 'y', 'n', 'Y', 'N',
    'null', 'Null', '~', '', ' ', 'a b', 'a:b', 'a: b', 'a#b', 'a #b', '-a', '- a', '?a', '=', '<<', '2001-12-14', '2001-12-14t21:59:43.10-05:00',
    '1:20', '190:20:30', 'é', 'x\ny', "it's", '"q"', '[a]', '{a}', 'a,b', '---', '...', '%a', '@a', '`a', '!a', '&a', '*a', '|', '>',
  ];
  for (let n = 0; n < 200; n++) values.push(ulid(Date.now() - n * 7919, randomBytes(10)));
  const lines = values.map((v) => metaDataLine('instance_id', v));
  const read = pyYaml(lines);
  values.forEach((v, i) => {
    assert.deepEqual(load(lines[i] ?? ''), { instance_id: v }, `js-yaml: ${JSON.stringify(lines[i])}`);
    assert.deepEqual(read[i], { instance_id: v }, `PyYAML: ${JSON.stringify(lines[i])}`);
  });
  assert.equal(metaDataLine('instance_id', '01JF0000000000000000000000'), 'instance_id: 01JF0000000000000000000000\n', 'a uid stays a plain scalar');
});

it('a meta-data key copied to its other spelling means to PyYAML (cloud-init) what the client\'s key means', { skip: noPyYaml }, () => {
  const uid = '01JF0000000000000000000000';
  // The values js-yaml (YAML 1.2) and PyYAML (YAML 1.1) read differently, in each layout the
  // copy is written in: appended lines, an indented mapping, one ended by "...", a flow mapping.
  const docs = [
    'instance_id: 0o17\n', 'instance_id: 1e3\n', 'instance_id: 010\n', 'local_hostname: 1_000\n', 'instance-id: 0x1F\n', 'local_hostname: yes\n',
    'local_hostname: 1:20\n', 'instance_id: !!str 010\n', 'local_hostname: "010"\n', "local_hostname: '0o17' # c\n",
    'public_keys:\n  - 010\n  - ssh-ed25519 AAAA x@y\n', 'network_interfaces: |\n  auto eth0\n  iface eth0 inet dhcp\n',
    'instance_id: &id 010\nother: *id\n', '  instance_id: 010\n  local_hostname: 0o17\n', 'instance_id: 010\n...\n',
    '{instance_id: 010, local_hostname: 0o17}', 'local_hostname: n1\ninstance_id:\n',
  ];
  const out = docs.map((d) => cloudInitMetaData(Buffer.from(d), uid, 'f').toString());
  const [original, copied] = [pyYaml(docs), pyYaml(out)] as Record<string, unknown>[][];
  docs.forEach((doc, i) => {
    const before = original?.[i] ?? {};
    const after = copied?.[i] ?? {};
    for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
      const given = Object.hasOwn(before, underscore) ? before[underscore] : before[hyphen];
      if (given === undefined || given === null) continue;
      assert.deepEqual([after[underscore], after[hyphen]], [given, given], `${JSON.stringify(doc)} became ${JSON.stringify(out[i])}`);
    }
    for (const [k, v] of Object.entries(before)) if (v !== null) assert.deepEqual(after[k], v, `${JSON.stringify(doc)}: ${k} is kept`);
  });
  // The reported cases, as PyYAML reads them.
  assert.deepEqual(copied?.slice(0, 4), [
    { instance_id: '0o17', 'instance-id': '0o17' },
    { instance_id: '1e3', 'instance-id': '1e3' },
    { instance_id: 8, 'instance-id': 8 },
    { local_hostname: 1000, 'local-hostname': 1000, instance_id: uid, 'instance-id': uid },
  ]);
  assert.equal(out[0], 'instance_id: 0o17\ninstance-id: 0o17\n', 'the value is copied as written');
  assert.equal((copied?.[16] ?? {})['instance-id'], uid, 'an empty instance id still gets the uid');
});

it('a YAML document matchlock writes for cloud-init (network-config, vendor-data mounts) reads back in PyYAML as written', { skip: noPyYaml }, () => {
  const strings = ['=', '<<', '0o17', '1e3', '010', '1_000', '1:20', 'yes', 'y', 'on', '2001-12-14', '0x1F', '.5', '~', 'null', '52:54:00:12:34:56', 'eth0', '/mnt/data'];
  const docs = strings.map((s) => ({ [s]: { value: s, list: [s] } }));
  const read = pyYaml(docs.map((d) => cloudInitYaml(d)));
  docs.forEach((d, i) => assert.deepEqual(read[i], d, JSON.stringify(cloudInitYaml(d))));
});
