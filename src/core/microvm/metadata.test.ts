import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { it } from 'node:test';
import { execFileSync, spawnSync } from 'node:child_process';
import { META_DATA_SPELLINGS, canonicalBase64Length, cloudInitMetaData, decodeMetadataValue, metaDataLine, metaDataRead, plainMetaData } from './metadata.js';
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

it('a meta-data line reads back as its value in PyYAML (YAML 1.1, cloud-init\'s reader)', { skip: noPyYaml }, () => {
  const values: string[] = [
    'n1', 'vm-1', 'node.example.com', '01JF0000000000000000000000', '0123', '0123456789', '1e5', '1E5', '1_000', '0x1F', '0b101', '0o17', '017', '010',
    '1.5', '.5', '.inf', 'NaN', 'nan', '.nan', 'true', 'True', 'TRUE', 'false', 'yes', 'Yes', 'no', 'NO', 'on', 'off', 'y', 'n', 'Y', 'N',
    'null', 'Null', '~', '', ' ', 'a b', 'a:b', 'a: b', 'a#b', 'a #b', '-a', '- a', '?a', '=', '<<', '2001-12-14', '2001-12-14t21:59:43.10-05:00',
    '1:20', '190:20:30', 'é', 'x\ny', "it's", '"q"', '[a]', '{a}', 'a,b', '---', '...', '%a', '@a', '`a', '!a', '&a', '*a', '|', '>',
    // A tab (PyYAML takes it raw only in quoted scalars) and characters PyYAML takes only escaped.
    'a\tb', '\tx', 'x\t', '\x7f', 'a\x80b', '\x9f', '\x01', '\ufffe', 'x\uffff', '\u00a0', 'x\u00a0', '\u00a0x',
  ];
  for (let n = 0; n < 200; n++) values.push(ulid(Date.now() - n * 7919, randomBytes(10)));
  // Each value under a plain key and under one PyYAML takes only escaped, as a block-mapping
  // line and as a flow-mapping entry (written between braces).
  const cases = values.flatMap((v) => ['instance_id', 'k\x7f\t'].flatMap((k) => [{ k, v, line: metaDataLine(k, v) }, { k, v, line: `{${metaDataLine(k, v, true)}}` }]));
  const read = pyYaml(cases.map((c) => c.line));
  cases.forEach(({ k, v, line }, i) => {
    assert.deepEqual(read[i], { [k]: v }, `PyYAML: ${JSON.stringify(line)}`);
  });
  assert.equal(metaDataLine('instance_id', '01JF0000000000000000000000'), 'instance_id: 01JF0000000000000000000000\n', 'a uid stays a plain scalar');
});

it('a meta-data key copied to its other spelling means to PyYAML (cloud-init) what the client\'s key means', { skip: noPyYaml }, () => {
  const uid = '01JF0000000000000000000000';
  // The values YAML 1.2 and PyYAML (YAML 1.1) read differently, in each layout the
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
  const strings = ['=', '<<', '0o17', '1e3', '010', '1_000', '1:20', 'yes', 'y', 'on', '2001-12-14', '0x1F', '.5', '~', 'null', '52:54:00:12:34:56', 'eth0', '/mnt/data',
    // Characters PyYAML takes only quoted (a tab) or only escaped (yaml/reader.py NON_PRINTABLE), and line breaks to YAML 1.1.
    '/mnt/a\tb', '/mnt/data\uffff', '/mnt/\ufffe', '/mnt/\x7f', '/mnt/\x85x', '/mnt/\u2028', '/mnt/\x9f\x80'];
  const docs = strings.map((s) => ({ [s]: { value: s, list: [s] } }));
  const read = pyYaml(docs.map((d) => cloudInitYaml(d)));
  docs.forEach((d, i) => assert.deepEqual(read[i], d, JSON.stringify(cloudInitYaml(d))));
});

/**
 * Asserts, with PyYAML, that every key of `doc` reads the same in the meta-data matchlock
 * writes for it and that both spellings of each key read the same; returns that reading.
 */
function seedReadsAsClient(doc: string, uid: string): Record<string, unknown> {
  const out = cloudInitMetaData(Buffer.from(doc), uid, 'f').toString();
  const [before, after] = pyYaml([doc, out]) as Record<string, unknown>[];
  const shown = `${JSON.stringify(doc)} became ${JSON.stringify(out)}`;
  for (const [k, v] of Object.entries(before ?? {})) {
    // A null instance id is none (cloudInitMetaData's docstring): it becomes the uid.
    if (v === null && (k === 'instance_id' || k === 'instance-id')) continue;
    assert.deepEqual(after?.[k], v, `${shown}: ${k} reads the same`);
  }
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    if (after?.[underscore] !== undefined || after?.[hyphen] !== undefined) assert.deepEqual(after?.[hyphen], after?.[underscore], `${shown}: ${underscore} and ${hyphen} read the same`);
  }
  return after ?? {};
}

for (const [name, doc, expected] of [
  ['an indented top-level mapping keeps its text and its meaning', '  instance_id: i-1\n  flag: yes\n  list:\n    - 010\n', { instance_id: 'i-1', flag: true, list: [8], 'instance-id': 'i-1' }],
  ['a flow mapping with an entry spanning lines keeps its text and its meaning', '{instance_id: 010, x: "a\n b", flag: yes}', { instance_id: 8, x: 'a b', flag: true, 'instance-id': 8 }],
  ['an explicit key is copied as PyYAML reads it', '? instance_id\n: 010\n', { instance_id: 8, 'instance-id': 8 }],
  // Explicit keys are written from the reading, so these show the reading itself.
  ['plain scalars are read with PyYAML\'s resolvers (y, 1e3, 08 are strings; 0_ is 0)', '? local_hostname\n: y\n? instance_id\n: 1e3\n? public_keys\n: [08, 0_, n]\n', { local_hostname: 'y', instance_id: '1e3', public_keys: ['08', 0, 'n'], 'instance-id': '1e3', 'local-hostname': 'y', 'public-keys': ['08', 0, 'n'] }],
  ['a %YAML 1.2 directive does not change the reading (PyYAML reads 1.1)', '%YAML 1.2\n---\n? instance_id\n: 010\n', { instance_id: 8, 'instance-id': 8 }],
  ['a null instance id is none: both spellings get the uid', 'instance_id: ~\n', { instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['a block scalar kept whole at the end of the text keeps its value', 'a: |+\n  x', { instance_id: 'UID01', 'instance-id': 'UID01', a: 'x' }],
  ['a byte order mark is no indentation', '\ufeffinstance_id: 010\n', { instance_id: 8, 'instance-id': 8 }],
  ['a flow mapping with a comment keeps its text and its meaning', '{local_hostname: 010 # c\n}', { local_hostname: 8, instance_id: 'UID01', 'instance-id': 'UID01', 'local-hostname': 8 }],
  ['a null instance id in a flow mapping is none: both spellings get the uid', '{instance-id: null, a: 1}', { 'instance-id': 'UID01', a: 1, instance_id: 'UID01' }],
  ['a comma in a comment after a flow mapping\'s last entry separates nothing', '{a: 1 # x, y\n}', { a: 1, instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['a flow mapping whose last entry has a comma and a comment keeps its meaning', '{instance_id: [1, {b: c}] # c\n , }', { instance_id: [1, { b: 'c' }], 'instance-id': [1, { b: 'c' }] }],
  ['an indented mapping ending in a sequence at its keys\' column keeps its meaning', '  a:\n  - x\n', { a: ['x'], instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['an indented mapping ending in a block scalar kept whole keeps its meaning', '  a: |+\n    x\n\n', { a: 'x\n\n', instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['an indented mapping ending in a plain scalar on two lines keeps its meaning', '--- \n  a: b\n   c\n', { a: 'b c', instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['a NEL is a line break, as PyYAML reads it', 'a: b\u0085c: d\n', { a: 'b', c: 'd', instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['a NEL in a quoted value is a line break, as PyYAML reads it', '? instance_id\n: "x\u0085 y"\n', { instance_id: 'x y', 'instance-id': 'x y' }],
  ['an indented mapping ending in a NEL keeps its meaning', '  a: 1\u0085  instance_id: 2\u0085', { a: 1, instance_id: 2, 'instance-id': 2 }],
  ['a flow mapping broken by a NEL keeps its meaning', '{a: 1,\u0085instance_id: 2}', { a: 1, instance_id: 2, 'instance-id': 2 }],
  ['an anchor on the first key is the key\'s: the keys\' column is where it starts', '&m a: 1\nb: *m\n', { a: 1, b: 'a', instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['a tag on the first key of an indented mapping is the key\'s', '  !!str a: 1\n', { a: 1, instance_id: 'UID01', 'instance-id': 'UID01' }],
  ['an anchored value copied before the first key is written as read, not as an alias of a later anchor', 'instance_id: &A v', { instance_id: 'v', 'instance-id': 'v' }],
  ['a block scalar kept whole, copied after blank lines, keeps its value', 'instance_id: |+\n  keep\n\n\nb: 1\n\n', { instance_id: 'keep\n\n\n', b: 1, 'instance-id': 'keep\n\n\n' }],
] as const) {
  it(`meta-data to cloud-init: ${name}`, { skip: noPyYaml }, () => {
    assert.deepEqual(seedReadsAsClient(doc, 'UID01'), expected);
    assert.ok(cloudInitMetaData(Buffer.from(doc), 'UID01', 'f').toString().includes(doc.replace(/\}$/, '')), 'the client\'s text is kept');
  });
}

for (const doc of ['instance_id:\ti-1\n', 'a: 1\t# c\n', 'a: [1,\t2]\n', 'a: x\tb\n', 'b: &b 1\nx: *b\t\n', 'b: &b 1\nx: [*b\t]\n', 'instance_id: =\n', 'a: [=]\n', 'a: !!omap [= : 1]\n', 'a: [!!value =]\n', 'a: !<tag:yaml.org,2002:value> =\n', 'a: {&e =: 1}\nb: *e\n', 'a: !!value x\n', 'a: !custom x\n']) {
  it(`meta-data PyYAML cannot read is refused, naming the field and the rule: ${JSON.stringify(doc)}`, { skip: noPyYaml }, () => {
    assert.notEqual(spawnSync(PYTHON, ['-c', 'import sys, yaml; yaml.safe_load(sys.stdin.read())'], { input: doc }).status, 0, 'PyYAML refuses it');
    assert.throws(() => cloudInitMetaData(Buffer.from(doc), 'UID01', 'microvm.metadata["meta-data"]'), (err: Error & { field?: string }) => {
      assert.equal(err.field, 'microvm.metadata["meta-data"]');
      assert.match(err.message, /must be a YAML mapping \(.*(tab|tag|=)/i);
      return true;
    });
  });
}

it('a meta-data value written from its reading reads back the same in PyYAML', { skip: noPyYaml }, () => {
  const values: unknown[] = [{ '<<': 1, '=': 2, 'a\u0085': [{ '<<': '<<' }] }, 'x\u2028y\u0085', [1.5e-7, 1e21, -0.5, true, null, 'y', 'n', '1e3', '08']];
  const lines = values.flatMap((v) => [metaDataLine('k', v), `{${metaDataLine('k', v, true)}}`]);
  const read = pyYaml(lines);
  lines.forEach((l, i) => assert.deepEqual(read[i], { k: values[Math.floor(i / 2)] }, JSON.stringify(l)));
});

it('meta-data whose two spellings the client gave differently is kept as given', () => {
  const both = Buffer.from('instance_id: a\ninstance-id: b\nlocal_hostname: ~\nlocal-hostname: h\n');
  assert.equal(cloudInitMetaData(both, 'UID01', 'f').toString(), `${both.toString()}local_hostname: h\n`, 'a null spelling takes the other one\'s value');
});

/** Whether PyYAML's safe_load refuses `doc`'s bytes. */
function pyYamlRefuses(doc: Buffer): boolean {
  return spawnSync(PYTHON, ['-c', 'import sys, yaml; yaml.safe_load(sys.stdin.buffer.read())'], { input: doc }).status !== 0;
}

for (const [doc, rule] of [
  ['? [x]\n: 2\n', /mapping or sequence \(unhashable\)/],
  ['{[a]: 1}', /unhashable/],
  ['a: {[1]: 2}\n', /unhashable/],
  ['? {a: 1}\n: x\n', /unhashable/],
  ['x: &a [1]\n? *a\n: 2\n', /unhashable/],
  ['a: &x 1\nb: &x 2\n', /anchor &x given twice/],
  ['a: \x01\n', /printable .*U\+0001/],
  ['a: \x7f\n', /printable .*U\+007F/],
  ['a: \x80\n', /printable .*U\+0080/],
  ['a: \ufffe\n', /printable .*U\+FFFE/],
  ['a: 2001-13-01\n', /timestamp .*month/],
  ['a: 2001-02-30\n', /timestamp .*day/],
  ['a: 1900-02-29\n', /timestamp .*day/],
  ['a: 2001-01-01T25:00:00\n', /timestamp .*hour/],
  ['a: 9999-12-31 23:59:60\n', /timestamp .*second/],
  ['a: 0000-01-01\n', /timestamp .*year/],
  ['a: !!binary x\n', /binary/],
  ['a: !!binary YQ=x\n', /binary .*padding/],
  [': x\n', /starts with `:`/],
  ['[: x]\n', /starts with `:`/],
] as const) {
  it(`meta-data PyYAML's constructor or reader refuses is refused, naming the field and the rule: ${JSON.stringify(doc)}`, { skip: noPyYaml }, () => {
    assert.ok(pyYamlRefuses(Buffer.from(doc)), 'PyYAML refuses it');
    assert.throws(() => cloudInitMetaData(Buffer.from(doc), 'UID01', 'microvm.metadata["meta-data"]'), (err: Error & { field?: string; code?: string }) => {
      assert.equal(err.field, 'microvm.metadata["meta-data"]');
      assert.match(err.message, rule);
      return true;
    });
  });
}

it('meta-data PyYAML reads is not refused by those rules', { skip: noPyYaml }, () => {
  for (const doc of ['a: 2000-02-29\n', 'a: 2001-01-01 00:00:00 +23:59\n', 'a: !!binary "Y Q = ="\n', 'a: !!binary YQ==YQ\n', '? \n: x\n', 'a: !!omap [{[a]: 1}]\n', 'a: &x 1\nb: *x\n', 'a: "\\x01"\n', '\ufeffa: é\u0085\n']) {
    assert.ok(!pyYamlRefuses(Buffer.from(doc)), `PyYAML reads ${JSON.stringify(doc)}`);
    assert.doesNotThrow(() => cloudInitMetaData(Buffer.from(doc), 'UID01', 'f'), JSON.stringify(doc));
  }
});

it('meta-data that is not UTF-8 is refused, naming the field (PyYAML refuses invalid UTF-8; UTF-16 is not taken)', { skip: noPyYaml }, () => {
  const bad = Buffer.from('a: b\xff\n', 'latin1');
  assert.ok(pyYamlRefuses(bad), 'PyYAML refuses it');
  for (const doc of [bad, Buffer.from('\ufeffa: 1\n', 'utf16le')]) {
    assert.throws(() => cloudInitMetaData(doc, 'UID01', 'microvm.metadata["meta-data"]'), (err: Error & { field?: string }) => {
      assert.equal(err.field, 'microvm.metadata["meta-data"]');
      assert.match(err.message, /must be UTF-8/);
      return true;
    });
  }
});

it('meta-data to cloud-init: a block scalar kept whole, copied before blank lines and a comment, keeps its value', { skip: noPyYaml }, () => {
  const doc = 'instance_id: |+\n  keep\n\n\nb: 1\n  \n\n# c\n';
  assert.deepEqual(seedReadsAsClient(doc, 'UID01'), { instance_id: 'keep\n\n\n', b: 1, 'instance-id': 'keep\n\n\n' });
  assert.equal(cloudInitMetaData(Buffer.from(doc), 'UID01', 'f').toString(), 'instance_id: |+\n  keep\n\n\nb: 1\n  \n\ninstance-id: |+\n  keep\n\n\n# c\n', 'the new line goes after the blank lines');
});

it('meta-data that holds itself through an alias is refused, naming the field (cloud-init writes it as JSON)', () => {
  for (const doc of ['--- &m\na: 1\nb: *m\n', 'a: &s\n  - 1\n  - *s\n']) {
    assert.throws(() => cloudInitMetaData(Buffer.from(doc), 'UID01', 'microvm.metadata["meta-data"]'), (err: Error & { field?: string }) => {
      assert.equal(err.field, 'microvm.metadata["meta-data"]', JSON.stringify(doc));
      assert.match(err.message, /cycle/);
      return true;
    });
  }
});

/**
 * How PyYAML's safe_load reads each document's bytes, typed: ['ok', tree] or ['err', message].
 * A tree is [Python type, value]: a float keeps its repr (1.0 is not 1), an int its digits, a
 * dict its keys' types, a datetime its offset.
 */
function pyTyped(docs: Buffer[]): [string, unknown][] {
  const script = `import base64, datetime, json, sys, yaml
def tree(v):
    if v is None: return ['NoneType']
    if isinstance(v, (bool, int, float)): return [type(v).__name__, repr(v)]
    if isinstance(v, str): return ['str', v]
    if isinstance(v, bytes): return ['bytes', v.hex()]
    if isinstance(v, (datetime.date, datetime.datetime)): return [type(v).__name__, v.isoformat()]
    if isinstance(v, (list, tuple)): return [type(v).__name__, [tree(x) for x in v]]
    if isinstance(v, dict): return ['dict', [[tree(k), tree(x)] for k, x in v.items()]]
    if isinstance(v, set): return ['set', sorted([tree(x) for x in v], key=json.dumps)]
    return [type(v).__name__, repr(v)]
out = []
for d in json.load(sys.stdin):
    try:
        out.append(['ok', tree(yaml.safe_load(base64.b64decode(d)))])
    except Exception as e:
        out.append(['err', type(e).__name__ + ': ' + str(e)])
print(json.dumps(out))`;
  return JSON.parse(execFileSync(PYTHON, ['-c', script], { input: JSON.stringify(docs.map((d) => d.toString('base64'))), encoding: 'utf8' })) as [string, unknown][];
}

type Tree = [string, unknown];

/** A dict tree's entries, by their key's tree as JSON. */
function entriesOf(tree: unknown, shown: string): Map<string, Tree> {
  assert.ok(Array.isArray(tree) && tree[0] === 'dict', `${shown}: a mapping, not ${JSON.stringify(tree)}`);
  return new Map((tree[1] as [Tree, Tree][]).map(([k, v]) => [JSON.stringify(k), v]));
}

const strKey = (k: string): string => JSON.stringify(['str', k]);

/**
 * Asserts with PyYAML, typed, that the meta-data matchlock writes for `doc` reads every client
 * key as the client's text does, both spellings of each key alike, the instance id as the
 * client's (neither null nor empty) or else `uid`, and no other key.
 */
function assertReadsAsClientTyped(doc: string, uid: string): void {
  const out = cloudInitMetaData(Buffer.from(doc), uid, 'f');
  const [before, after] = pyTyped([Buffer.from(doc), out]);
  const shown = `${JSON.stringify(doc)} became ${JSON.stringify(out.toString())}`;
  assert.equal(before?.[0], 'ok', `PyYAML reads ${JSON.stringify(doc)}: ${JSON.stringify(before)}`);
  assert.equal(after?.[0], 'ok', `PyYAML reads ${shown}: ${JSON.stringify(after)}`);
  const [was, now] = [entriesOf(before?.[1], shown), entriesOf(after?.[1], shown)];
  const none = (k: string, v: Tree | undefined): boolean => v === undefined || v[0] === 'NoneType' || (k.startsWith('instance') && v[0] === 'str' && v[1] === '');
  for (const [k, v] of was) {
    const key = JSON.parse(k) as Tree;
    if (key[0] === 'str' && none(String(key[1]), v)) continue;
    assert.deepEqual(now.get(k), v, `${shown}: ${k} reads the same`);
  }
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    assert.deepEqual(now.get(strKey(underscore)), now.get(strKey(hyphen)), `${shown}: ${underscore} and ${hyphen} read the same`);
    const given = [underscore, hyphen].map((k) => was.get(strKey(k))).find((v) => !none(underscore, v));
    if (underscore === 'instance_id') assert.deepEqual(now.get(strKey(underscore)), given ?? ['str', uid], `${shown}: the instance id`);
    else if (given !== undefined) assert.deepEqual(now.get(strKey(underscore)), given, `${shown}: ${underscore}`);
  }
  const known = new Set([...was.keys(), ...META_DATA_SPELLINGS.flat().map(strKey)]);
  for (const k of now.keys()) assert.ok(known.has(k), `${shown}: no key ${k} of its own`);
}

for (const [kind, docs] of [
  ['JSON without a space after the colon: a copy in a flow mapping is a valid `key: value` entry', ['{"instance_id":"client-1"}', '{"local-hostname":"web","a":[1,{"b":"c"}]}', '{"instance_id":1.0,}', '{"instance_id":\n"x"}']],
  ['a value is copied as its text, which keeps its Python type and value', ['instance_id: 1.0\n', 'instance_id: -0.0\n', 'instance_id: 12345678901234567891\n', 'instance_id: {1: a, 2.5: b}\n', 'instance_id: 2001-12-14 21:59:43.10 -5\n', '? instance_id\n: 010\n', 'instance-id: own\n<<: {instance-id: merged}\n', 'a: &x 1\ninstance_id: [*x, *x]\n']],
  ['a block scalar at the end of a text without a final line break keeps its value (new lines go before its entry; its own copy gets a stripping header)', ['local_hostname: vm1\nnetwork-interfaces: |\n  auto eth0\n  iface eth0 inet dhcp', 'instance_id: |+\n  x', 'instance_id:\n  a: |\n    x', 'local-hostname: >2\n   a\n   b', 'local-hostname: |+2\n   a\r\n   b', 'local-hostname: |\n  a\u0085  b', 'instance-id: ~\nb: |+\n  x', '!!str a: |+\n  x', '&q a: |+\n  x', 'a: |\n  x', 'a: >\n  x', 'a:\n  b: |\n    x', 'a: |+\n  x\n\n  ', 'instance_id: |-\n  x\nb: |+\n  y', '  a: 1\n  b: |\n    x', 'instance_id: >-\n  y', 'instance_id: !!str |2-\n   y', 'instance_id:\n  a: |-\n    x']],
  ['a copy never precedes the anchors it uses', ['h: &h web\nlocal-hostname: [*h]\nb: |+\n  x', 'h: &h web\nlocal-hostname: *h\nb: |+\n  x', 'local_hostname: &h web\nb: |\n  x']],
  ['a `#` right after a quote, bracket or comma starts a comment, as PyYAML\'s scanner reads it (scan_to_next_token); after a plain scalar it does not', ['a: "x"#c\n', '{a: 1}#c', 'a: [1,#c\n 2]\n', 'a: [#c\n 1]\n', 'a: {b: 1,#c\n}\n', 'a: x#c\n', 'a: x,#c\n', "instance_id: 'i'#c\n", '{"instance_id":"i"}#c\n']],
  ['an empty instance id is none, as flintlock takes it: both spellings get the uid', ['instance-id: ""\n', "instance_id: ''\nlocal-hostname: h\n", '{instance-id: ""}', 'instance_id: ""\ninstance-id: ~\n', 'instance_id: !!str\n']],
  ['what those rules leave alone reads as PyYAML reads it', ['a: [x:y]\n', 'a: !!omap [b: ]\n', 'a: !!omap\n- b: 1\n- c:\n', 'a:\n  &x\n  b: 1\n', 'a: [&x\n b]\n', '? a\n  b\n: 1\n', '{? a\n b: 1}', 'a: [1, 2]#c\n', 'instance_id: a#b\n']],
  ['CRLF line breaks (kept by the copies) read as PyYAML reads them', ['local-hostname: "a\r\n\r\n b"\r\n', 'instance_id: |\r\n  x\r\n  y\r\n', "a: 'x\r\n  y'\r\nlocal_hostname: |+\r\n  k\r\n\r\n", 'a: b\r\n  c\r\n']],
  ['a block scalar followed by a comment or `...` and no final line break keeps its line break, as does its copy', ['local-hostname: h\nnetwork-interfaces: |\n  auto eth0\n  iface eth0 inet dhcp\n# generated', 'instance_id: |\n  x\n...', 'public_keys:\n- |+\n  k\n\n# c', 'instance_id: !!binary |\n  aGk=\n# c', 'a: |+\n  x\n\n# c', 'instance_id: |\n  x\n  # c', 'a: 1\nlocal-hostname: |\n  a\n\n  ']],
  ['indented comment or space lines ending the text after a block scalar stay out of a copied block scalar (the new lines go before the last entry)', ['instance_id: |\n  w\na: |\n    x\n  # c', 'public_keys: |\n  w\na: >-\n    x\n    ', 'local-hostname: |2\n   w\na: >\n   x\n  ', 'public_keys: |\n  w\na: \n  b: |\n      x\n    ', '  instance_id: |2\n     w\n  a: >\n     x\n  ', 'instance_id: |\r\n  w\r\na: |\r\n    x\r\n  # c']],
  ['a string that spells the typed reading\'s own text for a null is a string (a double-quoted "\\0" is a NUL)', ['instance_id: "\\0tag:yaml.org,2002:null\\0x"\n', 'local_hostname: "\\0tag:yaml.org,2002:null\\0h"\n']],
  ['a plain `=` key, an empty key with a tag or anchor and an empty tagged value in a flow mapping read as PyYAML reads them (flatten_mapping, scan_tag)', ['= : key\n', '!!str : key\n', '!!null : key\n', '&x : key\n', '{instance_id: !!null }', '{a: &x }', '{"a":!!null }', 'a: {= : 1}\n', 'a: {&e =: 1}\nc: {*e : 2}\n']],
  ['a !!binary key is bytes, another key than the string it spells (instance_id stays the client\'s)', ['instance_id: i-abc\n!!binary aW5zdGFuY2VfaWQ=: ""\n', '!!binary aW5zdGFuY2UtaWQ=: x\ninstance_id: y\n', 'local-hostname: h\n!!binary bG9jYWxfaG9zdG5hbWU=: g\n', '{instance_id: i-abc, !!binary aW5zdGFuY2VfaWQ=: ~}']],
  ['!!int and !!float values as Python\'s int() and float() read them (construct_yaml_int, construct_yaml_float)', ['a: !!float inf\n', 'a: !!float -Infinity\n', 'a: !!float nan\n', 'a: !!int 0o7\n', 'a: !!int "1\\n"\n', 'a: !!int 0x0b1\n', 'a: !!int 1:05\n', 'instance_id: !!float 1:30.5\n', 'instance_id: !!int " -12 "\n']],
  ['explicit keys whose `:` stands at the `?`\'s column', ['? a\n: x\n', 'a:\n  ? b\n  : c\n', '? a\n\n: x\n']],
  ['a %TAG prefix of URI characters, a comment after it', ['%TAG !e! tag:yaml.org,2002:\n---\na: !e!str 1\n', '%TAG !e! tag:x #c\n---\na: 1\n']],
  ['a !!timestamp whose text ends in one line break, which Python\'s `$` lets the pattern match, or with one-digit month and day, which the constructor takes where the resolver does not (construct_yaml_timestamp)', ['a: !!timestamp |\n  2001-01-01\n', 'a: !!timestamp "2001-12-14 21:59:43.10 -5\\n"\n', 'instance_id: !!timestamp |\n  2001-02-28\n', 'a: !!timestamp 2001-1-1\n', 'instance_id: !!timestamp 2001-2-3\n']],
  ['a final block scalar whose last line ends in spaces or other characters JavaScript takes for spaces is content, copied with a stripping header', ['local_hostname: |\n  web ', 'instance_id: >\n  i-1 ', 'local_hostname: |\n  web\t', 'local_hostname: |\n  web\u00a0', 'instance_id: |\n  x\u3000']],
  ['a line of U+00A0 after an explicit indentation indicator is content to PyYAML', ['instance_id: |2\n  \u00a0\n', 'a: >1\n \u3000\n']],
  ['a tag before a NEL in a flow mapping keeps the space it needs before the new entries', ['{a:\u0085!!null }', '{a: \u0085!!str }']],
  ['an implicit key of up to 1024 characters up to its colon is read (yaml/scanner.py)', [`{${'k'.repeat(1024)}: 1}`, `${'k'.repeat(1024)}: 1\n`, `{${'\u{1F600}'.repeat(1000)}: 1}`, `{&a ${'k'.repeat(1021)}: 1}`]],
] as const) {
  it(`meta-data to cloud-init, read back typed with PyYAML: ${kind}`, { skip: noPyYaml }, () => {
    for (const doc of docs) assertReadsAsClientTyped(doc, 'UID01');
  });
}

/**
 * meta-data matchlock refuses, naming the field and the rule: `pyYaml` says whether PyYAML
 * refuses it too ('refuses') or reads it, where matchlock could not hand it on unchanged.
 */
for (const [kind, docs, rule, pyYaml] of [
  ['a CR on its own, LS and PS are line breaks to PyYAML and not to `yaml` (scan_line_break)', ['# c\rinstance-id: client-1\rlocal-hostname: web\r', 'a: 1 # c\u2028instance-id: client-1\n', 'a: 1\u2029instance_id: x\u2029', 'instance_id: "a\u2028b"\n', 'instance_id: "a\r b"\n', 'a: 1\r\nb: 2\r'], /must not hold .* \(at character [0-9]+, line [0-9]+\): it is a line break to PyYAML, cloud-init's reader \(yaml\/scanner\.py scan_line_break/, 'reads'],
  ['a second merge key in a mapping, which PyYAML lets win (flatten_mapping)', ['<<: {instance-id: ~}\n<<: {instance-id: client-1}\n', 'b: &b {local-hostname: a}\n<<: *b\n<<: {local-hostname: c}\n', 'a:\n  <<: {x: 1}\n  <<: {x: 2}\n'], /more than one merge key `<<` in a mapping .*yaml\/constructor\.py flatten_mapping/, 'reads'],
  ['a value that cannot be copied as its text (from a merge, or holding an anchor)', ['<<: {local-hostname: "a\\tb"}\n', 'instance-id: [&a "a\\tb"]\n', 'instance-id: {&a k: "\\x7f"}\n', '<<: {instance_id: 1.0}\n', '<<: {instance_id: -0.0}\n', 'base: &b\n  instance_id: 010\n<<: *b\n', 'public_keys:\n- &k 010\n- *k\n', '<<: [{instance-id: first}, {instance-id: second}]\n'], /must give both \S+ and \S+ when matchlock cannot copy one to the other: .*(merge key|anchor)/, 'reads'],
  ['a block scalar kept whole ending the text in a line of spaces, whose copy in front of it would gain a line break', ['instance_id: |+\n  x\n  '], /end with a line break: .*yaml\/scanner\.py scan_block_scalar/, 'reads'],
  ['an anchored block scalar ending the text without a line break, whose copy (an alias) cannot stand in front of it', ['instance_id: &k |+\n  x', 'local-hostname: &h |\n  web'], /end with a line break: its value is a block scalar with an anchor .*alias before its anchor/, 'reads'],
  ['an alias of a merge key `<<` used as a key, which PyYAML merges and `yaml` does not (flatten_mapping)', ['&m <<: {}\n*m : {instance-id: client-id}\n', '&m <<: {a: 1}\n*m : {instance_id: client-id}\n', '{&m <<: {}, *m : {instance-id: client-id}}'], /merges an alias of a merge key `<<` used as a key .*flatten_mapping/, 'reads'],
  ['an alias of a merge key `<<` with a value PyYAML cannot merge', ['&m <<: {}\n*m : x\n'], /merges an alias of a merge key `<<` used as a key/, 'refuses'],
  ['a plain `<<` key with a tag other than merge, which `yaml` merges and PyYAML reads as a string (flatten_mapping)', ['!!str <<: {instance-id: x}\ninstance_id: y\n', '!<tag:yaml.org,2002:str> <<: {local-hostname: evil}\nlocal_hostname: h\n', '? !!str <<\n: {instance-id: x}\n'], /tagged plain `<<` key as a merge key .*flatten_mapping\); quote it/, 'reads'],
  ['a %TAG prefix PyYAML cannot scan as a URI (scan_tag_uri)', ['%TAG !e! tag:a|b\n---\na: 1\n', '%TAG !e! tag:a%zz\n---\na: 1\n', '%TAG !e! tag:a%c3\n---\na: 1\n', '%TAG !e! tag:x#c\n---\na: 1\n', '%TAG !e! tag:a"b\n---\na: 1\n'], /%TAG prefix of URI characters only .*scan_tag_uri/, 'refuses'],
  ['a directive with no document after it (parse_document_start)', ['a: 1\n...\n%YAML 1.1\n', 'a: 1\n...\n%TAG !e! tag:x\n'], /needs a document after a directive/, 'refuses'],
  ['a `...` before any content (parse_node)', ['...\n', '...', '# c\n...\n', '\ufeff...\n'], /refuses a `\.\.\.` before any content/, 'refuses'],
  ['lines after an explicit key without a `:`, which `yaml` drops (parse_block_mapping_key)', ['? a\n- x\nb: 1\n', '? l #\n h\n', '? "k"\n &a\n', '? |\n  kk\n !!str\n', 'instance_id: x\n? >\n  kk\n !!null\n'], /needs a `:` before the value of an explicit key/, 'refuses'],
  ['the `:` of an explicit key on its own line deeper than the `?` (parse_block_mapping_value)', ['? a\n : x\n', 'a:\n  ? b\n   : c\n', '?\n : x\n', '? # c\n : x\n', '? !!str\n : x\n', '? |-\n  instance_id\n : i-abc\n', 'm:\n  ? >-\n    k\n   : x\n'], /only at the `\?`'s column/, 'refuses'],
  ['a `:` on the line of an empty explicit key (parse_block_mapping_key)', ['instance_id: i-1\n\n? : b\n', 'a: 1\n# c\n? !!str : b\n', 'a: 1\n\n? &x : b\n'], /refuses a `:` on the line of an empty explicit key/, 'refuses'],
  ['an entry of a block mapping at another column than its first (add_indent)', ['x:\n  ? k\n &x : v\n', 'x:\n  ? k\n !!str : v\n'], /takes the keys of a block mapping at one column only .*add_indent/, 'refuses'],
  ['a %YAML version PyYAML cannot scan (scan_yaml_directive_value)', ['%YAML \t1.1\n---\ninstance_id: i-1\n', '%YAML 1.1#c\n---\na: 1\n'], /%YAML version of digits .*scan_yaml_directive_value/, 'refuses'],
  ['a !!float that Python\'s float() refuses', ['a: !!float :1\n', 'a: !!float 1::2\n', 'a: !!float 0x10\n', 'a: !!float x:nan\n'], /must be a YAML mapping \(".*" is not a float to PyYAML \(yaml\/constructor\.py construct_yaml_float\)\)/, 'refuses'],
  ['an anchor name PyYAML ends at a character outside [0-9A-Za-z_-], reading the rest as the value (scan_anchor)', ['local-hostname: &h:x web\n', 'a: [&x:y]\n'], /must be a YAML mapping \(.*anchor or alias name, not "&.*yaml\/scanner\.py scan_anchor/, 'reads'],
  ['an anchor or alias name outside [0-9A-Za-z_-] (scan_anchor)', ['a: &x.y 1\n', 'a: &x/y 1\n', 'a: &\u00e9 1\n'], /must be a YAML mapping \(.*anchor or alias name, not "&.*yaml\/scanner\.py scan_anchor/, 'refuses'],
  ['a plain `<<` that is not a mapping key (merge tag, no constructor)', ['local-hostname: web\nx: <<\n', 'a: [<<]\n', '- <<\n'], /must be a YAML mapping \(.*plain `<<`, that is not a mapping key/, 'refuses'],
  ['a node tagged merge that is no key of a mapping: a tagged value, an alias of a `<<` key, a `<<` in an !!omap or !!pairs item (construct_yaml_omap does not flatten)', ['a: !!merge <<\n', 'a: [!!merge <<]\n', '&m <<: {x: 1}\nb: *m\n', 'a: !!omap [<<: {a: 1}]\n', 'a: !!pairs [<<: 1]\n'], /must be a YAML mapping \(.*cannot construct a tag:yaml\.org,2002:merge, a plain `<<`, that is not a mapping key/, 'refuses'],
  ['a quoted `<<` key tagged !!merge, which PyYAML merges and `yaml` does not (flatten_mapping)', ['!!merge "<<": {instance-id: x}\n'], /merges a quoted or block `<<` tagged !!merge used as a key/, 'reads'],
  ['a verbatim tag without a URI (scan_tag_uri)', ['local_hostname: !<> x\n', 'a: [!<> x]\n'], /verbatim tag !<\.\.\.> of URI characters only/, 'refuses'],
  ['a tag not followed by a space or line break (scan_tag)', ['x: {k: !!str}\n', 'a: [!!str, b]\n', 'a: !!str]\n'], /must be a YAML mapping \(.*space or line break after the tag !!str \(yaml\/scanner\.py scan_tag\)/, 'refuses'],
  ['an implicit key longer than 1024 characters up to its colon (stale_possible_simple_keys)', [`{${'k'.repeat(1025)}: 1}`, `${'k'.repeat(1025)}: 1\n`, `{&a ${'k'.repeat(1022)}: 1}`, `{"${'k'.repeat(1030)}": 1}`], /must be a YAML mapping \(.*implicit key of at most 1024 characters .*yaml\/scanner\.py stale_possible_simple_keys/, 'refuses'],
  ['an implicit key on more than one line (stale_possible_simple_keys)', ['{a\n b: 1}', '{"a\n b": 1}', 'a: {x: 1, "y\n z": 2}\n'], /must be a YAML mapping \(.*implicit key on one line only \(yaml\/scanner\.py stale_possible_simple_keys\)/, 'refuses'],
  ['a plain scalar starting with `?` in a flow collection, which PyYAML reads as a key indicator (check_plain)', ['{?instance-id: x}', 'a: [?x]\n'], /must be a YAML mapping \(.*`\?` that starts a plain scalar in a flow collection .*yaml\/scanner\.py check_plain/, 'reads'],
  ['a plain scalar starting with `:` in a flow collection (check_plain)', ['a: [:x]\n', 'a: {x: :y}\n'], /must be a YAML mapping \(.*`:` that starts a plain scalar in a flow collection .*yaml\/scanner\.py check_plain/, 'refuses'],
  ['an !!omap or !!pairs item that is not a mapping of one entry (construct_yaml_omap)', ['a: !!pairs [b]\n', 'a: !!omap [{}]\n', 'a: !!omap [b]\n'], /must be a YAML mapping \(.*only mappings of one entry in a !!(omap|pairs) \(yaml\/constructor\.py construct_yaml_omap/, 'refuses'],
  ['a repeated %YAML directive or %TAG handle (process_directives)', ['%YAML 1.1\n%YAML 1.1\n---\na: 1\n', '%TAG ! !a\n%TAG ! !b\n---\na: 1\n'], /must be a YAML mapping \(.*(repeated %YAML directive|%TAG handle ! given twice) \(yaml\/parser\.py process_directives\)/, 'refuses'],
  ['a copy that does not read back as the original (every result is read again)', ['? instance_id\n: - a\n  - b\n', '? instance_id\n: a: 1\n  b: 2\n'], /matchlock can add instance-id to without changing how PyYAML reads it: with them it would not be a YAML mapping \(.*\); give these keys yourself/, 'reads'],
  ['a document PyYAML reads as a set, not a mapping', ['--- !!set\n? a\n', '!!set {a, b}\n'], /must be a YAML mapping of keys to values/, 'reads'],
  ['a document of characters JavaScript takes for spaces and PyYAML for text (U+00A0, U+3000), which PyYAML reads as a string', ['\u00a0', '\u3000\n', ' \u00a0 \n', '\n\u2003\n'], /must be a YAML mapping of keys to values/, 'reads'],
  ['a document of tabs and line breaks, where PyYAML\'s scanner finds a tab that cannot start a token (scan_to_next_token skips spaces only)', ['\t', ' \t \n', '\ufeff\t\n', '\u0085\t', '\n\t\n'], /must be a YAML mapping \(.*tab/, 'refuses'],
  ['a byte order mark after the start, which PyYAML reads as text (scan_to_next_token)', ['\n\ufeffinstance_id: foo\n', '# c\n\ufeffinstance_id: foo\n'], /must not hold U\+FEFF \(a byte order mark\) after its start .*yaml\/scanner\.py scan_to_next_token/, 'reads'],
  ['two byte order marks, then a flow mapping', ['\ufeff\ufeff{instance_id: foo}'], /must not hold U\+FEFF \(a byte order mark\) after its start/, 'reads'],
  ['a value with the non-specific tag !, which PyYAML resolves as if unquoted (composer)', ['instance_id: ! "~"\n', 'instance-id: ! ~\n', '! "<<": {instance_id: x}\n'], /must be a YAML mapping \(.*non-specific tag ! .*yaml\/composer\.py/, 'reads'],
  ['a block scalar with an explicit indentation indicator (scan_block_scalar_breaks)', ['instance_id: |2\n   x\n   \n', 'instance_id: >2\n   x\n   \n', 'instance_id: |1\n  \n'], /must be a YAML mapping \(.*explicit indentation indicator \([|>][0-9]\).*yaml\/scanner\.py scan_block_scalar_breaks/, 'reads'],
  ['a `?` inside a plain scalar in a flow collection (scan_plain)', ['{a: b?c}\n', 'a: [x?y]\n', '{instance_id: a?b}\n'], /must be a YAML mapping \(.*ends a plain scalar in a flow collection at a "\?" \(yaml\/scanner\.py scan_plain\)/, 'refuses'],
  ['an !!int that Python\'s int() refuses', ['a: !!int 09\n', 'instance_id: !!int 08\n', 'a: !!int 0b12\n', 'a: !!int 0x1g\n', 'a: !!int 0o19\n', 'a: !!int 01:30\n', 'a: !!int 0:0\n', 'a: !!int ""\n', 'a: !!int 1::2\n'], /must be a YAML mapping \(".*" is not an integer to PyYAML \(yaml\/constructor\.py construct_yaml_int\)\)/, 'refuses'],
  ['a %TAG handle or directive PyYAML cannot scan (scan_directive, scan_tag_handle)', ['%TAG e! tag:x\n---\na: 1\n', '%YAML\t 1.1\n---\na: 1\n', "%TAG !e!' tag:x\n---\na: 1\n"], /must be a YAML mapping \(.*(needs a space after %YAML|%TAG handle of the form).*yaml\/scanner\.py scan_(directive|tag_handle)/, 'refuses'],
  ['more aliases than matchlock takes (each costs a walk of the document)', [`a: &a x\nb: [${Array(1001).fill('*a').join(', ')}]\n`], /must hold at most 1000 YAML aliases \(matchlock's limit/, 'reads'],
] as const) {
  it(`meta-data matchlock refuses, naming the field and the rule: ${kind}`, { skip: noPyYaml }, () => {
    const read = pyTyped(docs.map((d) => Buffer.from(d)));
    docs.forEach((doc, i) => {
      assert.equal(read[i]?.[0], pyYaml === 'refuses' ? 'err' : 'ok', `PyYAML ${pyYaml} ${JSON.stringify(doc.slice(0, 60))}: ${JSON.stringify(read[i])}`);
      assert.throws(() => cloudInitMetaData(Buffer.from(doc), 'UID01', 'microvm.metadata["meta-data"]'), (err: Error & { field?: string }) => {
        assert.equal(err.field, 'microvm.metadata["meta-data"]');
        assert.match(err.message, rule, JSON.stringify(doc.slice(0, 60)));
        return true;
      }, JSON.stringify(doc.slice(0, 60)));
    });
  });
}

it('meta-data with keys JavaScript objects cannot hold (a date, bytes) writes no warning on the daemon\'s stderr', async () => {
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  try {
    for (const doc of ['2001-12-14: x\n', '!!binary aGk=: y\n']) cloudInitMetaData(Buffer.from(doc), 'UID01', 'f');
    // process.emitWarning delivers on the next tick.
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off('warning', onWarning);
  }
  assert.deepEqual(warnings.map((w) => w.message), []);
});

it('plain `key: value` meta-data is written as the full reader writes it, byte for byte, and PyYAML reads it as the client\'s mapping with the keys added', { skip: noPyYaml }, () => {
  // Mostly a uid as the daemon makes it; also strings metaDataLine must quote or escape.
  const uids = ['01JF0000000000000000000000', ulid(Date.now(), randomBytes(10)), 'a\tb', 'yes', "it's", '\x7f', '010', '<<', 'x y', '?a'];
  // Words PyYAML resolves as strings (plainString), near the edges of its resolvers, and, less
  // often, words it resolves as other types; keys JavaScript objects treat specially; both
  // sides of PyYAML's 1,024-character simple-key limit.
  const keys = [[...META_DATA_SPELLINGS.flat(), 'platform', 'cluster_name', '__proto__', 'constructor', 'a', 'A1', '0x1g', 'k'.repeat(1024), 'x.y-z_'], ['k'.repeat(1025), 'yes', '010', '1.5', 'null', '2001-01-01', '1e-3']];
  const values = [
    ['vm-1', 'web.example.com', 'liquid_metal', 'y', 'n', '1e3', '1.e-3x', '1.2.3', '0x1g', '0b2', '1._x', '2001-1-1x', '2001-12-14x', 'True1', 'v'.repeat(1500), '01JF0000000000000000000000'],
    ['yes', 'No', '010', '0o7', '1_000', '1.5', '1.e-3', '0.', '1._', '1_e-3', '.inf', 'null', '2001-12-14', '2001-1-1', '1:20'],
  ];
  const pick = <T>(a: readonly T[]): T => a[Math.floor(Math.random() * a.length)] as T;
  const word = (pools: string[][]): string => pick(pools[Math.random() < 0.9 ? 0 : 1] ?? []);
  const docs: string[] = ['instance_id: capmvm-1\nlocal_hostname: capmvm-1\nplatform: liquid_metal\n', 'local_hostname: vm-1\n', 'local-hostname: vm-1', 'platform: x\n'];
  for (let n = 0; n < 3000; n++) {
    // Most documents plain but for the words; the rest near misses beside the plain form:
    // other spacing, comments, trailing spaces, CRLF, blank and indented lines.
    const near = Math.random() < 0.3;
    const lines = Array.from({ length: 1 + Math.floor(Math.random() * 4) }, () => `${word(keys)}${near ? pick([': ', ':  ', ' : ', ':\t']) : ': '}${word(values)}`);
    const sep = near ? pick(['\n', '\r\n', '\n\n', ' \n', ' # c\n', '\n  ']) : '\n';
    docs.push(lines.join(sep) + pick(['\n', '\n', '', sep]));
  }
  const plain: { doc: string; uid: string; out: string }[] = [];
  for (const [n, doc] of docs.entries()) {
    const uid = n % 2 === 0 ? (uids[0] ?? '') : pick(uids);
    const out = plainMetaData(doc, uid);
    if (out === undefined) continue;
    let full: string;
    try {
      full = metaDataRead(doc, Buffer.from(doc), uid, 'f').toString('utf8');
    } catch (err) {
      assert.fail(`${JSON.stringify(doc.slice(0, 80))} (uid ${JSON.stringify(uid)}): the plain reading gave ${JSON.stringify(out.slice(0, 200))}, the full reader refuses it: ${String(err)}`);
    }
    assert.equal(out, full, `${JSON.stringify(doc.slice(0, 200))} (uid ${JSON.stringify(uid)}): the plain reading and the full reader write one result`);
    assert.equal(cloudInitMetaData(Buffer.from(doc), uid, 'f').toString('utf8'), out, 'cloudInitMetaData gives that result');
    plain.push({ doc, uid, out });
  }
  // Neither side of the comparison left nearly empty by the generator.
  assert.ok(plain.length > docs.length / 5 && plain.length < docs.length * 0.8, `${plain.length} of ${docs.length} documents read as plain`);
  // PyYAML reads 300 of them and their results, typed (one Python process, output in bounds).
  const sample = plain.filter((_, i) => i % Math.ceil(plain.length / 300) === 0);
  const read = pyTyped(sample.flatMap((p) => [Buffer.from(p.doc), Buffer.from(p.out)]));
  sample.forEach(({ doc, uid, out }, i) => {
    const shown = `${JSON.stringify(doc.slice(0, 200))} became ${JSON.stringify(out.slice(0, 300))}`;
    const [before, after] = [read[2 * i], read[2 * i + 1]];
    assert.equal(before?.[0], 'ok', `PyYAML reads ${shown}: ${JSON.stringify(before)}`);
    assert.equal(after?.[0], 'ok', `PyYAML reads ${shown}: ${JSON.stringify(after)}`);
    const [was, now] = [entriesOf(before?.[1], shown), entriesOf(after?.[1], shown)];
    const expected = new Map(was);
    for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
      const given = was.get(strKey(underscore)) ?? was.get(strKey(hyphen)) ?? (underscore === 'instance_id' ? (['str', uid] as Tree) : undefined);
      if (given === undefined) continue;
      for (const k of [underscore, hyphen]) if (!expected.has(strKey(k))) expected.set(strKey(k), given);
    }
    assert.deepEqual(now, expected, `PyYAML reads ${shown} as the client's mapping with the keys added`);
    for (const [k, v] of now) assert.ok(k.startsWith('["str",') && v[0] === 'str', `${shown}: ${k} and its value strings to PyYAML, not ${JSON.stringify(v)}`);
  });
});
