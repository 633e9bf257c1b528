import { Composer, Document, Lexer, Parser, Schema, isAlias, isCollection, isMap, isScalar, visit, type CST, type CreateNodeOptions, type DocumentOptions, type Node, type Pair, type ParseOptions, type ScalarTag, type SchemaOptions, type Tags } from 'yaml';
import { randomBytes } from 'node:crypto';
import { invalid, yamlProblem } from '../errors.js';

/**
 * Standard base64 with its padding: with a length that is a multiple of 4, this is exactly
 * groups of four alphabet characters, the last of them possibly `xx==` or `xxx=`. Written
 * without a repeated group, whose backtracking state made the test twice as slow on the
 * kilobytes of a user-data value.
 */
const BASE64_CHARS = /^[A-Za-z0-9+/]*={0,2}$/;

function strictBase64(value: string): boolean {
  return value.length % 4 === 0 && BASE64_CHARS.test(value);
}

/**
 * Metadata values arrive base64-encoded, except from clients such as `fl --metadata-from-file`
 * that send raw text. A value that is valid standard base64 is decoded; anything else is taken
 * as it is. (A raw text that happens to be valid base64, such as "abcd", is necessarily read as
 * base64: that ambiguity is flintlock's too.)
 */
export function decodeMetadataValue(value: string): Buffer {
  if (value.length > 0 && strictBase64(value)) return Buffer.from(value, 'base64');
  return Buffer.from(value, 'utf8');
}

const BASE64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * The decoded length of a value that decodeMetadataValue reads as base64 and whose bytes encode
 * back to the same text (the bits a padded last group leaves unused are zero); undefined for
 * any other value. Such a value is stored as it came, without decoding and encoding it again.
 */
export function canonicalBase64Length(value: string): number | undefined {
  if (value.length === 0 || !strictBase64(value)) return undefined;
  const pad = value.endsWith('==') ? 2 : value.endsWith('=') ? 1 : 0;
  if (pad > 0) {
    // The last data character holds 4 (one '=': 2) bits that no byte uses.
    const last = BASE64_ALPHABET.indexOf(value[value.length - pad - 1] ?? '');
    if (last % (pad === 2 ? 16 : 4) !== 0) return undefined;
  }
  return (value.length / 4) * 3 - pad;
}

/**
 * meta-data keys that flintlock and CAPMVM spell with "_" (CAPMVM's templates read
 * `ds.meta_data.instance_id` and `local_hostname`) and cloud-init's NoCloud datasource reads
 * with "-" (cloud-init 22.4, sources/DataSourceNoCloud.py and sources/__init__.py: instance id,
 * hostname, SSH keys, ENI network config). A key given in one spelling is written in both.
 */
export const META_DATA_SPELLINGS: readonly (readonly [string, string])[] = [
  ['instance_id', 'instance-id'],
  ['local_hostname', 'local-hostname'],
  ['public_keys', 'public-keys'],
  ['network_interfaces', 'network-interfaces'],
];


/**
 * How many values meta-data may expand to once YAML aliases are followed. cloud-init writes
 * meta-data out as JSON (instance-data.json), which expands every alias: a few hundred bytes
 * of nested aliases ("billion laughs") would become gigabytes. A 1 MiB document without
 * aliases holds fewer values than this.
 */
export const META_DATA_MAX_VALUES = 1024 * 1024;

/**
 * How many aliases meta-data may hold: turning a document into values costs the `yaml`
 * package a walk of the document per alias, so 10,000 aliases in 40 KB held the daemon's event
 * loop for seconds. cloud-init meta-data uses a handful, if any. matchlock's limit, not PyYAML's.
 */
export const META_DATA_MAX_ALIASES = 1000;

/** How deeply meta-data's collections may nest; checked before the document is composed. */
const META_DATA_MAX_DEPTH = 100;

/**
 * Counts values into `budget`, following aliases; sets `budget.cyclic` when a collection holds
 * itself (an alias inside its own anchored collection), which cloud-init cannot write as JSON.
 */
function countValues(value: unknown, budget: { left: number; cyclic?: boolean }, within = new Set<object>()): void {
  budget.left -= 1;
  if (budget.left < 0 || value === null || typeof value !== 'object') return;
  if (within.has(value)) {
    budget.cyclic = true;
    return;
  }
  within.add(value);
  for (const v of Array.isArray(value) ? (value as unknown[]) : Object.values(value)) {
    countValues(v, budget, within);
    if (budget.left < 0 || budget.cyclic) break;
  }
  within.delete(value);
}

/*
 * cloud-init reads meta-data with PyYAML's safe_load (YAML 1.1). The `yaml` package's 1.1
 * schema resolves plain scalars more widely than PyYAML 6 does (yaml/resolver.py,
 * yaml/constructor.py SafeConstructor): it reads `y`/`n` as booleans, `1e3` and `08` as
 * numbers and `0_` as null, where PyYAML reads strings and 0. These tags resolve plain scalars
 * with PyYAML's own implicit resolvers and construct them as its SafeConstructor does; the
 * untested variants serve explicit tags (`!!float 1` is 1.0).
 */
const PY_BOOL = /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/;
const PY_INT = /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/;
const PY_FLOAT = /^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/;
const PY_NULL = /^(?:~|null|Null|NULL|)$/;
const PY_TIMESTAMP = /^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)$/;

/**
 * The whitespace int() and float() strip from their argument, as Python's str.isspace() has it
 * for what PyYAML's reader lets through (printable characters): JavaScript's \s and NEL, not
 * U+FEFF.
 */
function pyStrip(text: string): string {
  return text.replace(/^(?:(?!\ufeff)[\s\x85])+|(?:(?!\ufeff)[\s\x85])+$/gu, '');
}

/**
 * Python's int(text, base) for an ASCII text without underscores (PyYAML removes them first):
 * surrounding whitespace, one sign, the base's own prefix (0b, 0o, 0x) and the base's digits.
 * NaN where Python raises ValueError.
 */
function pythonInt(text: string, base: 2 | 8 | 10 | 16): number {
  const m = /^([-+]?)([0-9a-z]+)$/i.exec(pyStrip(text));
  if (!m) return NaN;
  const [, sign, all = ''] = m;
  const prefix = { 2: '0b', 8: '0o', 10: undefined, 16: '0x' }[base];
  const digits = prefix !== undefined && all.toLowerCase().startsWith(prefix) ? all.slice(2) : all;
  const valid = { 2: /^[01]+$/, 8: /^[0-7]+$/, 10: /^[0-9]+$/, 16: /^[0-9a-f]+$/i }[base];
  if (!valid.test(digits)) return NaN;
  const n = base === 10 ? Number(digits) : parseInt(digits, base);
  return sign === '-' ? -n : n;
}

/** Python's float(text) without underscores: whitespace, a sign, a decimal, inf/infinity/nan. */
function pythonFloat(text: string): number {
  const t = pyStrip(text).toLowerCase();
  const m = /^([-+]?)(?:((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?)|(inf|infinity)|(nan))$/.exec(t);
  if (!m) return NaN;
  const n = m[2] !== undefined ? Number(m[2]) : m[3] !== undefined ? Infinity : 0;
  return m[4] !== undefined ? NaN : m[1] === '-' ? -n : n;
}

/** Whether pythonFloat's NaN is Python's nan (a value), not its ValueError. */
function pythonNan(text: string): boolean {
  return /^[-+]?nan$/i.test(pyStrip(text));
}

/** `source`'s sign as PyYAML's constructors take it: one leading + or -, before anything else. */
function pySigned(source: string): { sign: 1 | -1; digits: string } {
  return { sign: source.startsWith('-') ? -1 : 1, digits: /^[-+]/.test(source) ? source.slice(1) : source };
}

/**
 * An int as PyYAML's construct_yaml_int builds it (yaml/constructor.py, PyYAML 6): underscores
 * dropped, a sign, then by its start: "0" is 0, 0b binary, 0x hexadecimal, any other leading 0
 * octal (so `01:30` is an octal error, not sexagesimal), a ":" sexagesimal of Python ints,
 * else decimal; each through Python's int(), which takes whitespace and a sign of its own.
 */
function pyInt(source: string, onError: (message: string) => void): number {
  const { sign, digits: d } = pySigned(source.replace(/_/g, ''));
  const n = source.replace(/_/g, '') === '' ? NaN
    : d === '0' ? 0
    : d.startsWith('0b') ? pythonInt(d.slice(2), 2)
    : d.startsWith('0x') ? pythonInt(d.slice(2), 16)
    : d.startsWith('0') ? pythonInt(d, 8)
    : d.includes(':') ? d.split(':').map((part) => pythonInt(part, 10)).reduce((sum, part) => sum * 60 + part, 0)
    : pythonInt(d, 10);
  if (Number.isNaN(n)) onError(`${JSON.stringify(source)} is not an integer to PyYAML (yaml/constructor.py construct_yaml_int)`);
  return sign * n;
}

/**
 * A float as PyYAML's construct_yaml_float builds it: underscores dropped, lower case, a sign,
 * then `.inf`, `.nan`, a ":" sexagesimal of Python floats (an empty part is an error), else
 * Python's float(), which also takes `inf`, `infinity` and `nan`.
 */
function pyFloat(source: string, onError: (message: string) => void): number {
  const v = source.replace(/_/g, '').toLowerCase();
  const { sign, digits: d } = pySigned(v);
  let nan = false;
  let bad = false;
  const n = v === '' ? NaN
    : d === '.inf' ? Infinity
    : d === '.nan' ? ((nan = true), NaN)
    : d.includes(':') ? d.split(':').reduce((sum, part) => {
      const n = pythonFloat(part);
      // A part that is no float fails the whole, whatever another part's nan.
      if (Number.isNaN(n) && !pythonNan(part)) bad = true;
      else if (Number.isNaN(n)) nan = true;
      return sum * 60 + n;
    }, 0)
    : pythonNan(d) ? ((nan = true), NaN)
    : pythonFloat(d);
  if (bad || (Number.isNaN(n) && !nan)) onError(`${JSON.stringify(source)} is not a float to PyYAML (yaml/constructor.py construct_yaml_float)`);
  return sign * n;
}

/** A float as PyYAML's float resolver reads it back: with a "." and a signed exponent. */
function floatText(n: number): string {
  if (Number.isNaN(n)) return '.nan';
  if (!Number.isFinite(n)) return n > 0 ? '.inf' : '-.inf';
  const s = String(n);
  return s.includes('.') ? s : s.replace(/^(-?[0-9]+)/, '$1.0');
}

const PY_SCALARS: ScalarTag[] = [
  { tag: 'tag:yaml.org,2002:null', default: true, test: PY_NULL, resolve: () => null, identify: (v) => v === null || v === undefined, stringify: () => 'null' },
  { tag: 'tag:yaml.org,2002:null', resolve: () => null },
  { tag: 'tag:yaml.org,2002:bool', default: true, test: PY_BOOL, resolve: (s) => /^(?:yes|true|on)$/i.test(s), identify: (v) => typeof v === 'boolean', stringify: ({ value }) => (value ? 'true' : 'false') },
  {
    tag: 'tag:yaml.org,2002:bool',
    resolve: (s, onError) => (PY_BOOL.test(s) || /^(?:yes|no|true|false|on|off)$/i.test(s) ? /^(?:yes|true|on)$/i.test(s) : (onError(`${JSON.stringify(s)} is not a boolean to PyYAML`), s)),
  },
  { tag: 'tag:yaml.org,2002:int', default: true, test: PY_INT, resolve: pyInt, identify: (v) => typeof v === 'number' && Number.isSafeInteger(v), stringify: ({ value }) => String(value) },
  { tag: 'tag:yaml.org,2002:int', resolve: pyInt },
  { tag: 'tag:yaml.org,2002:float', default: true, test: PY_FLOAT, resolve: pyFloat, identify: (v) => typeof v === 'number', stringify: ({ value }) => floatText(Number(value)) },
  { tag: 'tag:yaml.org,2002:float', resolve: pyFloat },
  // A plain `=` resolves to the value tag: a string as a mapping's key (flatten_mapping retags
  // it), which safe_load has no constructor for anywhere else (composerProblem refuses that).
  { tag: 'tag:yaml.org,2002:value', default: true, test: /^=$/, resolve: (s) => s },
];

const REPLACED = new Set(['tag:yaml.org,2002:null', 'tag:yaml.org,2002:bool', 'tag:yaml.org,2002:int', 'tag:yaml.org,2002:float']);

const PY_TIMESTAMP_PARTS = /^([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:(?:[Tt]|[ \t]+)([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+]([0-9]{1,2})(?::([0-9]{2}))?))?)?$/;

/**
 * Why PyYAML's construct_yaml_timestamp (yaml/constructor.py, PyYAML 6) fails on `source`, or
 * undefined: it builds a Python datetime, which takes years 1-9999, a day that exists in its
 * month, hours 0-23, minutes and seconds 0-59 (no leap second), and a UTC offset of less than
 * 24 hours.
 */
function timestampProblem(source: string): string | undefined {
  const m = PY_TIMESTAMP_PARTS.exec(source);
  const bad = `PyYAML (cloud-init's reader) cannot construct the timestamp ${JSON.stringify(source)}`;
  if (!m) return `${bad}: not a YAML 1.1 timestamp`;
  const [year, month, day, hour, minute, second, tzHour, tzMinute] = m.slice(1).map((p) => (p === undefined ? 0 : Number(p)));
  const days = new Date(Date.UTC(2000, month ?? 0, 0)).getUTCDate() - (month === 2 && !((year ?? 0) % 4 === 0 && ((year ?? 0) % 100 !== 0 || (year ?? 0) % 400 === 0)) ? 1 : 0);
  if ((year ?? 0) < 1) return `${bad}: year 0 is out of range (Python's datetime takes 1-9999)`;
  if ((month ?? 0) < 1 || (month ?? 0) > 12) return `${bad}: month must be 1-12`;
  if ((day ?? 0) < 1 || (day ?? 0) > days) return `${bad}: day is out of range for the month`;
  if ((hour ?? 0) > 23 || (minute ?? 0) > 59 || (second ?? 0) > 59) return `${bad}: hour must be 0-23, minute and second 0-59`;
  if ((tzHour ?? 0) * 60 + (tzMinute ?? 0) >= 24 * 60) return `${bad}: a UTC offset must be less than 24 hours`;
  return undefined;
}

/**
 * Why Python's base64.decodebytes (non-strict binascii.a2b_base64), which PyYAML's
 * construct_yaml_binary calls, refuses `source`, or undefined: it takes ASCII only, skips
 * characters outside the alphabet, stops at padding that completes a group, and refuses data
 * that ends one character into a group or ends a group of two or three without its padding.
 */
function binaryProblem(source: string): string | undefined {
  const bad = 'PyYAML (cloud-init\'s reader) cannot decode a !!binary value';
  if ([...source].some((ch) => (ch.codePointAt(0) ?? 0) > 0x7f)) return `${bad}: it must be ASCII`;
  let quad = 0;
  let pads = 0;
  for (const ch of source) {
    if (ch === '=') {
      pads += 1;
      if (quad >= 2 && quad + pads >= 4) return undefined;
    } else if (/[A-Za-z0-9+/]/.test(ch)) {
      quad = (quad + 1) % 4;
      pads = 0;
    }
  }
  if (quad === 1) return `${bad}: its base64 data ends one character into a group of four`;
  if (quad !== 0) return `${bad}: its base64 data lacks its padding`;
  return undefined;
}

function checked(tag: ScalarTag, problem: (source: string) => string | undefined): ScalarTag {
  const resolve = tag.resolve.bind(tag);
  return {
    ...tag,
    resolve: (source, onError, options) => {
      const p = problem(source);
      if (p) onError(p);
      return resolve(source, onError, options);
    },
  };
}

function pyYamlTags(tags: Tags): Tags {
  const kept = tags.filter((t) => typeof t === 'string' || !REPLACED.has(t.tag)).flatMap((t) => {
    if (typeof t === 'string' || !('resolve' in t) || t.tag === undefined) return [t];
    if (t.tag === 'tag:yaml.org,2002:timestamp' && 'test' in t) {
      // Two tags: the implicit one takes what PyYAML's resolver takes (PY_TIMESTAMP); the
      // explicit one (yaml uses a tag without `default` for `!!timestamp` whatever the text)
      // what its constructor takes (timestampProblem): one-digit months and days too, and a
      // text ending in one line break, which the `$` of its Python pattern lets match.
      const implicit = checked({ ...t, test: PY_TIMESTAMP } as ScalarTag, timestampProblem);
      const { test: _implicitOnly, ...untested } = implicit;
      const explicit: ScalarTag = { ...untested, default: false, resolve: (source, onError, options) => implicit.resolve(source.replace(/\n$/, ''), onError, options) };
      return [implicit, explicit];
    }
    if (t.tag === 'tag:yaml.org,2002:binary') return [checked(t as ScalarTag, binaryProblem)];
    return [t];
  });
  return [...PY_SCALARS, ...kept] as Tags;
}

/**
 * How meta-data is read and written: as PyYAML reads it. The 1.1 schema is named outright so a
 * `%YAML 1.2` directive does not change it (PyYAML reads every document as 1.1); merge keys
 * `<<` are merged; a repeated key takes the last value, as PyYAML's constructor does.
 */
const META_DATA_YAML: DocumentOptions & ParseOptions & SchemaOptions & CreateNodeOptions = {
  version: '1.1',
  // One schema for every document: building one runs the tag list through pyYamlTags again,
  // a fifth of a create's meta-data work. yaml only reads a Schema once built.
  schema: new Schema({ schema: 'yaml-1.1', customTags: pyYamlTags, merge: true, resolveKnownTags: false }),
  uniqueKeys: false,
  aliasDuplicateObjects: false,
  // yaml would warn on the process (stderr) for a key it turns into a string, such as a date.
  logLevel: 'error',
};

/** How a value is written: as it is read, but a key `<<` is a string to write, never a merge. */
const META_DATA_WRITE: typeof META_DATA_YAML = {
  ...META_DATA_YAML,
  schema: new Schema({
    schema: 'yaml-1.1',
    customTags: (tags) => pyYamlTags(tags).filter((t) => typeof t === 'string' || t.tag !== 'tag:yaml.org,2002:merge'),
    merge: false,
    resolveKnownTags: false,
  }),
};

/** A SourceToken outside a quoted scalar, block scalar body or comment holding a tab. */
function tabbed(tokens: readonly CST.Token[] | undefined): boolean {
  return tokens?.some((t) => t.type !== 'comment' && 'source' in t && typeof t.source === 'string' && t.source.includes('\t')) ?? false;
}

/**
 * Checks what `yaml` accepts and PyYAML refuses or cannot bear, on the concrete syntax tree
 * before it is composed: a tab anywhere but inside a quoted scalar, a block scalar's body or a
 * comment (PyYAML's scanner skips only spaces before a token and ends a plain scalar at a tab:
 * "found character '\t' that cannot start any token"), and nesting deeper than
 * META_DATA_MAX_DEPTH (composing recurses once per level).
 */
function checkSyntax(token: CST.Token | CST.CollectionItem | undefined, depth: number): string | undefined {
  if (token === undefined) return undefined;
  if (depth > META_DATA_MAX_DEPTH) return `nesting exceeded ${META_DATA_MAX_DEPTH} levels`;
  const tab = 'PyYAML (cloud-init\'s reader) refuses a tab outside quoted scalars, block scalars and comments';
  if (!('type' in token)) {
    if (tabbed(token.start) || tabbed(token.sep)) return tab;
    // PyYAML's parser takes an empty key only after an explicit `?`: "expected <block end>"
    // (or "expected the node content") at a `:` that opens an entry.
    // A tag or anchor before the `:` is an empty key's (`!!str : x` is the key "").
    if (!token.key && !token.start.some((t) => t.type === 'explicit-key-ind' || t.type === 'tag' || t.type === 'anchor') && token.sep?.some((t) => t.type === 'map-value-ind')) return "PyYAML (cloud-init's reader) refuses an entry that starts with `:`; an empty key needs an explicit `?`";
    return checkSyntax(token.key ?? undefined, depth) ?? checkSyntax(token.value, depth);
  }
  switch (token.type) {
    case 'document':
      if (tabbed(token.start) || tabbed(token.end)) return tab;
      return checkSyntax(token.value, depth);
    case 'scalar':
      return token.source.includes('\t') || tabbed(token.end) ? tab : undefined;
    case 'alias':
    case 'single-quoted-scalar':
    case 'double-quoted-scalar':
      return tabbed(token.end) ? tab : undefined;
    case 'block-scalar':
      return tabbed(token.props) ? tab : undefined;
    case 'block-map':
    case 'block-seq':
      for (const item of token.items) {
        const r = checkSyntax(item, depth + 1);
        if (r) return r;
      }
      return undefined;
    case 'flow-collection':
      if (tabbed(token.end)) return tab;
      for (const item of token.items) {
        const r = checkSyntax(item, depth + 1);
        if (r) return r;
      }
      return undefined;
    case 'doc-end':
      return tabbed(token.end) ? tab : undefined;
    case 'space':
    case 'newline':
      return token.source.includes('\t') ? tab : undefined;
    default:
      return undefined;
  }
}

/**
 * Calls `check` on every token of `token` that stands for text of its own (with an offset),
 * depth first, until it returns a problem, which is returned.
 */
function eachSourceToken(token: unknown, check: (t: { type: string; offset: number; source: string }) => string | undefined): string | undefined {
  if (Array.isArray(token)) {
    for (const t of token) {
      const r = eachSourceToken(t, check);
      if (r) return r;
    }
    return undefined;
  }
  if (token === null || typeof token !== 'object') return undefined;
  const t = token as Record<string, unknown>;
  if (typeof t.type === 'string' && typeof t.offset === 'number' && typeof t.source === 'string') {
    const r = check(t as { type: string; offset: number; source: string });
    if (r) return r;
  }
  for (const part of ['start', 'props', 'key', 'sep', 'value', 'items', 'end']) {
    const r = part in t ? eachSourceToken(t[part], check) : undefined;
    if (r) return r;
  }
  return undefined;
}

/**
 * The header of a block scalar with an explicit indentation indicator (`|2`, `>1-`) followed by
 * blank lines holding spaces (in its text or after it, in `text`), or undefined: only there do
 * PyYAML (which keeps such lines as content) and the `yaml` package (which drops them) differ.
 */
function explicitIndentTail(t: { offset: number; source: string }, text: string): string | undefined {
  const props = (t as { props?: { type: string; offset: number; source: string }[] }).props ?? [];
  const header = props.find((p) => p.type === 'block-scalar-header')?.source;
  const last = props[props.length - 1];
  if (!header || !last || !/[1-9]/.test(header)) return undefined;
  const end = last.offset + last.source.length + t.source.length;
  let after = /^(?:[ \t]*\r?\n)*/.exec(text.slice(end))?.[0] ?? '';
  if (/^[ \t]+$/.test(text.slice(end + after.length))) after = text.slice(end);
  // Blank lines are spaces, tabs and line breaks; U+00A0 and the other characters JavaScript's
  // \s takes are content to PyYAML.
  const own = /[^ \t\r\n]/.test(t.source) ? (/[^ \t\r\n]([ \t\r\n]*)$/.exec(t.source)?.[1] ?? '').replace(/^[^\n]*\n?/, '') : t.source;
  return /[ \t]/.test(own + after) ? header : undefined;
}

/** PyYAML's anchor and alias names (yaml/scanner.py scan_anchor): ASCII letters, digits, `-`, `_`. */
const PY_ANCHOR_NAME = /^[&*][0-9A-Za-z_-]+$/;

/** PyYAML's limit on an implicit key, from its first character to its `:` (yaml/scanner.py stale_possible_simple_keys). */
const PY_SIMPLE_KEY_MAX = 1024;

/**
 * Checks, on the concrete syntax tree, what PyYAML's scanner and parser read otherwise than
 * `yaml` does or refuse (yaml/scanner.py, yaml/parser.py, PyYAML 6): anchor and alias names
 * outside [0-9A-Za-z_-] (scan_anchor ends the name at any other character: `&h:x` is the
 * anchor `h` before `:x`); a tag not followed by a space or line break (scan_tag: "expected
 * ' '"; in a flow collection `!!str,` is the tag `str,`); an implicit key on more than one
 * line or longer than 1024 characters up to its `:` (stale_possible_simple_keys drops it); a
 * plain scalar starting with `?` or `:` in a flow collection (check_plain: they are
 * indicators there); and a repeated `%YAML`
 * directive or `%TAG` handle (process_directives).
 */
function tokenProblem(cst: readonly CST.Token[], text: string): string | undefined {
  const reader = "PyYAML (cloud-init's reader)";
  let yamlDirective = false;
  const handles = new Set<string>();
  // Directives belong to the document after them, which starts with `---`.
  if (cst.findLastIndex((t) => t.type === 'directive') > cst.findLastIndex((t) => t.type === 'document')) {
    return `${reader} needs a document after a directive ("expected '<document start>'", yaml/parser.py parse_document_start)`;
  }
  // The stream's first document is implicit unless it starts with `---`; a `...` there ends a
  // document holding no node ("expected the node content", yaml/parser.py parse_node). Only
  // later `...` are skipped (parse_document_start).
  const first = cst.find((t) => t.type === 'document' || t.type === 'directive');
  if (first?.type === 'document' && !first.start.some((t) => t.type === 'doc-start') && first.value === undefined && cst[cst.indexOf(first) + 1]?.type === 'doc-end') {
    return `${reader} refuses a \`...\` before any content ("expected the node content", yaml/parser.py parse_node); leave it out`;
  }
  for (const top of cst) {
    if (top.type === 'directive') {
      const name = top.source.split(/[ \t]/)[0];
      const handle = top.source.split(/[ ]+/)[1];
      // yaml/scanner.py scan_directive: the name is followed by spaces (not a tab); a %TAG
      // handle is !, !! or !word! (scan_tag_handle) and its prefix follows after spaces.
      if ((name === '%YAML' || name === '%TAG') && !/^%(?:YAML|TAG) /.test(top.source)) return `${reader} needs a space after ${name} (yaml/scanner.py scan_directive)`;
      if (name === '%YAML' && !/^%YAML +[0-9]+\.[0-9]+(?: +(?:#.*)?)?$/.test(top.source)) return `${reader} takes a %YAML version of digits "." digits after spaces, then spaces, a comment or the line's end (yaml/scanner.py scan_yaml_directive_value)`;
      if (name === '%TAG' && (handle === undefined || !/^!(?:[0-9A-Za-z_-]*!)?$/.test(handle) || !/^%TAG +\S+ +\S/.test(top.source))) {
        return `${reader} takes a %TAG handle of the form !, !! or !name! (letters, digits, "-", "_") followed by a space and a prefix (yaml/scanner.py scan_tag_handle, scan_directive)`;
      }
      const prefix = name === '%TAG' ? /^%TAG +\S+ +(\S+)(.*)$/.exec(top.source) : null;
      if (prefix && (!uriText(prefix[1] ?? '') || !/^(?: +(?:#.*)?)?$/.test(prefix[2] ?? ''))) {
        return `${reader} takes a %TAG prefix of URI characters only (letters, digits and -;/?:@&=+$,_.!~*'()[] or %XX escapes of UTF-8) followed by a space, a comment or the line's end (yaml/scanner.py scan_tag_uri, scan_directive_ignored_line)`;
      }
      if (name === '%YAML') {
        if (yamlDirective) return `${reader} refuses a repeated %YAML directive (yaml/parser.py process_directives)`;
        yamlDirective = true;
      } else if (name === '%TAG' && handle !== undefined) {
        if (handles.has(handle)) return `${reader} refuses the %TAG handle ${handle} given twice (yaml/parser.py process_directives)`;
        handles.add(handle);
      }
      continue;
    }
    if (top.type === 'document') {
      yamlDirective = false;
      handles.clear();
    }
    const bad = eachSourceToken(top, (t) => {
      if ((t.type === 'anchor' || t.type === 'alias') && !PY_ANCHOR_NAME.test(t.source)) {
        return `${reader} takes only ASCII letters, digits, "-" and "_" in an anchor or alias name, not ${JSON.stringify(t.source)} (yaml/scanner.py scan_anchor ends the name there); put a space after the name`;
      }
      // A value tagged with the non-specific `!` is resolved by PyYAML as if it were plain,
      // whatever its quotes (yaml/composer.py: implicit (True, False)): `! "~"` is null there and
      // a string to the `yaml` package.
      if (t.type === 'tag' && t.source.startsWith('!<') && !uriText(t.source.slice(2, -1))) {
        return `${reader} takes a verbatim tag !<...> of URI characters only, at least one (letters, digits and -;/?:@&=+$,_.!~*'()[] or %XX escapes of UTF-8; yaml/scanner.py scan_tag_uri), not ${t.source}`;
      }
      if (t.type === 'tag' && t.source === '!') return `${reader} resolves a value tagged with the non-specific tag ! as if it were unquoted (yaml/composer.py), where matchlock reads it as a string; drop the tag`;
      // An explicit indentation indicator (|2, >1): PyYAML keeps trailing lines of more spaces
      // than the indentation as content (yaml/scanner.py scan_block_scalar_breaks), the `yaml`
      // package drops them.
      const indicator = t.type === 'block-scalar' ? explicitIndentTail(t, text) : undefined;
      if (indicator) return `${reader} and matchlock read trailing blank lines of a block scalar with an explicit indentation indicator (${indicator}) differently (yaml/scanner.py scan_block_scalar_breaks); leave the indicator out`;
      if (t.type === 'tag' && !/^$|^[ \n\r]/.test(text.slice(t.offset + t.source.length, t.offset + t.source.length + 1))) {
        return `${reader} needs a space or line break after the tag ${t.source} (yaml/scanner.py scan_tag); an empty tagged value in a flow collection needs a space before its "," or closing bracket`;
      }
      return undefined;
    });
    if (bad) return bad;
    const items: [CST.CollectionItem, boolean][] = [];
    collectionItems(top, false, items);
    const misplaced = keyColumnProblem(top, text);
    if (misplaced) return `${reader} ${misplaced}`;
    for (const [item, flow] of items) {
      // In a flow collection `?` and `:` start no plain scalar (check_plain): `{?a: 1}` is the key a.
      for (const t of flow ? [item.key, item.value] : []) {
        // Inside a flow collection a plain scalar ends at any of ,?[]{} (yaml/scanner.py
        // scan_plain): `{a: b?c}` is an error to PyYAML.
        if (t?.type === 'scalar' && t.source.includes('?') && !/^[?:]/.test(t.source)) return `${reader} ends a plain scalar in a flow collection at a "?" (yaml/scanner.py scan_plain); quote ${JSON.stringify(t.source)}`;
        if (t?.type === 'scalar' && /^[?:]/.test(t.source)) return `${reader} reads a \`${t.source[0] ?? ''}\` that starts a plain scalar in a flow collection as an indicator, not as text (yaml/scanner.py check_plain); quote ${JSON.stringify(t.source)}`;
      }
      const colon = item.sep?.find((t) => t.type === 'map-value-ind');
      const explicit = item.start.find((t) => t.type === 'explicit-key-ind');
      if (explicit && !flow) {
        // Lines after an explicit key that hold no `:` are no value to PyYAML ("expected
        // <block end>"), and `yaml` drops them; its `:` on a line of its own stands at the `?`'s
        // column, where a deeper one starts a mapping PyYAML does not expect there.
        if (!colon && (item.value || item.sep?.some((t) => t.type === 'anchor' || t.type === 'tag'))) return `${reader} needs a \`:\` before the value of an explicit key \`? \` ("expected <block end>", yaml/parser.py parse_block_mapping_key)`;
        const column = (offset: number) => offset - text.lastIndexOf('\n', offset - 1) - 1;
        // Line breaks in the key's own text (a block scalar) count too.
        const broken = colon && text.slice(explicit.offset, colon.offset).includes('\n');
        if (colon && !broken && !item.key) return `${reader} refuses a \`:\` on the line of an empty explicit key \`?\` ("expected <block end>", yaml/parser.py parse_block_mapping_key)`;
        if (colon && broken && column(colon.offset) !== column(explicit.offset)) return `${reader} takes the \`:\` of an explicit key \`? \` on a line of its own only at the \`?\`'s column (yaml/parser.py parse_block_mapping_value)`;
      }
      if (!colon || explicit) continue;
      const starts = [...item.start.filter((t) => t.type === 'anchor' || t.type === 'tag'), ...(item.key ? [item.key] : [])].map((t) => ('offset' in t ? t.offset : colon.offset));
      const key = text.slice(Math.min(colon.offset, ...starts), colon.offset);
      if (key.includes('\n')) return `${reader} takes an implicit key on one line only (yaml/scanner.py stale_possible_simple_keys); use an explicit "? " key`;
      if (key.length > PY_SIMPLE_KEY_MAX && [...key].length > PY_SIMPLE_KEY_MAX) return `${reader} takes an implicit key of at most ${PY_SIMPLE_KEY_MAX} characters up to its ":" (yaml/scanner.py stale_possible_simple_keys); use an explicit "? " key`;
    }
  }
  return undefined;
}

/**
 * Whether `text` is a tag URI as PyYAML's scan_tag_uri reads one: its URI characters, with each
 * `%` starting an escape of two hex digits, the escaped bytes UTF-8.
 */
function uriText(text: string): boolean {
  if (!/^(?:[0-9A-Za-z\-;/?:@&=+$,_.!~*'()[\]]|%[0-9A-Fa-f]{2})+$/.test(text)) return false;
  const escapes = text.match(/(?:%[0-9A-Fa-f]{2})+/g) ?? [];
  return escapes.every((run) => {
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(run.replace(/%/g, ''), 'hex'));
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Why a block mapping under `token` has an entry whose first token (a property, `?`, the key,
 * or the `:` of an empty key) stands at another column than its first entry's, or undefined.
 * PyYAML's scanner opens a mapping at a key further right ("expected <block end>",
 * yaml/scanner.py add_indent), where `yaml` takes an entry with an empty key into the mapping
 * at a lower indentation (`x:\n  ? k\n &a : v` gives the outer mapping a key).
 */
function keyColumnProblem(token: CST.Token | null | undefined, text: string): string | undefined {
  if (!token) return undefined;
  const column = (offset: number) => offset - text.lastIndexOf('\n', offset - 1) - 1;
  const first = (item: CST.CollectionItem): number | undefined => {
    const lead = item.start.find((t) => t.type === 'anchor' || t.type === 'tag' || t.type === 'explicit-key-ind');
    return lead?.offset ?? item.key?.offset ?? item.sep?.find((t) => t.type === 'map-value-ind')?.offset;
  };
  if (token.type === 'document') return keyColumnProblem(token.value, text);
  if (token.type !== 'block-map' && token.type !== 'block-seq' && token.type !== 'flow-collection') return undefined;
  if (token.type === 'block-map') {
    const columns = token.items.map(first).filter((o): o is number => o !== undefined).map(column);
    if (columns.some((c) => c !== columns[0])) return 'takes the keys of a block mapping at one column only ("expected <block end>", yaml/scanner.py add_indent)';
  }
  for (const item of token.items) {
    const r = keyColumnProblem(item.key as CST.Token | null, text) ?? keyColumnProblem(item.value, text);
    if (r) return r;
  }
  return undefined;
}

/** Adds every collection item under `token` to `items`, with whether it is in a flow collection. */
function collectionItems(token: CST.Token | null | undefined, inFlow: boolean, items: [CST.CollectionItem, boolean][]): void {
  if (!token) return;
  if (token.type === 'document') collectionItems(token.value, inFlow, items);
  if (token.type === 'block-map' || token.type === 'block-seq' || token.type === 'flow-collection') {
    const flow = inFlow || token.type === 'flow-collection';
    for (const item of token.items) {
      items.push([item, flow]);
      collectionItems(item.key, flow, items);
      collectionItems(item.value, flow, items);
    }
  }
}

/**
 * The concrete syntax tree of `text`, refusing nesting deeper than META_DATA_MAX_DEPTH through
 * flow collections or block indicators on one line (`- - - x`) as the lexer finds it, before
 * yaml's parser, whose time grows steeply with such nesting (seconds for a few hundred thousand
 * levels). Nesting by indentation needs a line's indentation per level, so the document's size
 * bounds it; checkSyntax counts it.
 */
function concreteSyntax(text: string): CST.Token[] | undefined {
  const parser = new Parser();
  const tokens: CST.Token[] = [];
  let flow = 0;
  let compact = 0;
  for (const lexeme of new Lexer().lex(text)) {
    if (lexeme === '[' || lexeme === '{') flow += 1;
    else if (lexeme === ']' || lexeme === '}') flow -= 1;
    else if (lexeme === '-' || lexeme === '?') compact += 1;
    else if (lexeme === '\n' || lexeme === '\r\n') compact = 0;
    if (flow > META_DATA_MAX_DEPTH || compact > META_DATA_MAX_DEPTH) return undefined;
    for (const token of parser.next(lexeme)) tokens.push(token);
  }
  for (const token of parser.end()) tokens.push(token);
  return tokens;
}

const PAIR_COLLECTIONS = new Set(['tag:yaml.org,2002:omap', 'tag:yaml.org,2002:pairs']);
const MERGE_TAG = 'tag:yaml.org,2002:merge';
const VALUE_TAG = 'tag:yaml.org,2002:value';

/**
 * What PyYAML's composer and SafeConstructor refuse in a composed document (yaml/composer.py,
 * yaml/constructor.py, PyYAML 6): an anchor given twice ("found duplicate anchor"), and a
 * mapping key that is a mapping or sequence, or an alias of one ("found unhashable key":
 * construct_mapping puts keys in a Python dict; !!omap and !!pairs keep them in a list).
 */
function composerProblem(doc: Document.Parsed): string | undefined {
  const anchors = new Set<string>();
  let problem: string | undefined;
  visit(doc, (_, node, path) => {
    if (isCollection(node) || isScalar(node)) {
      if (node.anchor) {
        if (anchors.has(node.anchor)) problem = `PyYAML (cloud-init's reader) refuses the anchor &${node.anchor} given twice`;
        anchors.add(node.anchor);
      }
    }
    if (problem) return visit.BREAK;
    // A plain `<<` resolves to the merge tag and a plain `=` to the value tag wherever they
    // stand. flatten_mapping takes either only as a key of a mapping (not of an !!omap or
    // !!pairs item: construct_yaml_omap does not flatten); SafeConstructor has no constructor
    // for them anywhere else, an alias of one included. A `=` key becomes the string "=".
    const owner = path.at(-1);
    const isKey = !!owner && typeof owner === 'object' && 'key' in owner && (owner as Pair).key === node;
    const inPairs = path.slice(-3).some((o) => o && typeof o === 'object' && 'tag' in o && PAIR_COLLECTIONS.has(String((o as Node).tag)));
    const target = isAlias(node) ? node.resolve(doc) : node;
    const merge = isScalar(target) && ((target.source === '<<' && target.type === 'PLAIN' && target.tag === undefined) || target.tag === MERGE_TAG);
    const value = isScalar(target) && ((target.source === '=' && target.type === 'PLAIN' && target.tag === undefined) || target.tag === VALUE_TAG);
    if ((merge || value) && (!isKey || inPairs)) {
      problem = `PyYAML (cloud-init's reader) cannot construct a ${merge ? 'tag:yaml.org,2002:merge, a plain `<<`,' : 'tag:yaml.org,2002:value, a plain `=`,'} that is not a mapping key (yaml/constructor.py flatten_mapping)${isAlias(node) ? ', an alias of one included' : ''}; quote it`;
      return visit.BREAK;
    }
    // yaml merges a plain `<<` key whatever its tag, and no alias of one nor a quoted `<<`
    // tagged merge; PyYAML merges exactly the key nodes tagged merge (flatten_mapping).
    if (isKey && isScalar(node) && node.source === '<<' && node.type === 'PLAIN' && node.tag !== undefined && node.tag !== MERGE_TAG) {
      problem = `matchlock reads a tagged plain \`<<\` key as a merge key and PyYAML (cloud-init's reader) as the string "<<" (yaml/constructor.py flatten_mapping); quote it: "<<"`;
      return visit.BREAK;
    }
    if (isKey && merge && (isAlias(node) || (isScalar(node) && node.type !== 'PLAIN'))) {
      problem = `PyYAML (cloud-init's reader) merges ${isAlias(node) ? 'an alias of a merge key `<<`' : 'a quoted or block `<<` tagged !!merge'} used as a key and matchlock does not (yaml/constructor.py flatten_mapping); write \`<<\` itself`;
      return visit.BREAK;
    }
    // flatten_mapping (yaml/constructor.py) lets a later `<<` win, `yaml` the first.
    if (isMap(node) && node.items.filter((p) => isScalar(p.key) && typeof p.key.value === 'symbol').length > 1) {
      problem = "matchlock refuses more than one merge key `<<` in a mapping (PyYAML, cloud-init's reader, merges them otherwise than matchlock: yaml/constructor.py flatten_mapping); give one `<<` a list of mappings";
      return visit.BREAK;
    }
    // construct_yaml_omap and construct_yaml_pairs take only mappings of one entry, where
    // `yaml` turns any other item into a key without a value.
    if (isCollection(node) && PAIR_COLLECTIONS.has(String(node.tag)) && node.items.some((p) => !(p && typeof p === 'object' && 'value' in p && (p as Pair).value !== null))) {
      problem = `PyYAML (cloud-init's reader) takes only mappings of one entry in a ${String(node.tag).replace('tag:yaml.org,2002:', '!!')} (yaml/constructor.py construct_yaml_omap, construct_yaml_pairs)`;
      return visit.BREAK;
    }
    if (node && typeof node === 'object' && 'key' in node && 'value' in node) {
      const key = (node as Pair).key;
      const target = isAlias(key) ? key.resolve(doc) : key;
      const paired = path.slice(-2).some((owner) => owner && typeof owner === 'object' && 'tag' in owner && PAIR_COLLECTIONS.has(String((owner as Node).tag)));
      if (isCollection(target) && !paired) {
        problem = "PyYAML (cloud-init's reader) refuses a mapping key that is a mapping or sequence (unhashable)";
        return visit.BREAK;
      }
    }
    return undefined;
  });
  return problem;
}

/**
 * `text` with each NEL (U+0085) as a line feed, which has the same length, so ranges in one
 * are ranges in the other. PyYAML's reader and scanner take NEL as a line break and read it as
 * "\n" wherever it stands (yaml/scanner.py scan_line_break); the `yaml` package does not in its
 * 1.1 mode. (A lone CR, LS and PS, which PyYAML also breaks lines at, are refused by
 * decodeMetaData.)
 */
function lineBreaks(text: string): string {
  return text.replace(/\u0085/g, '\n');
}

/**
 * Whether `error` is `yaml`'s complaint about a comment right after a closing quote, a
 * bracket or a comma (`a: "x"#c`, `{a: 1}#c`, `[1,#c`), which PyYAML reads as a comment: its
 * scanner skips to the next token and takes a `#` there as a comment whatever precedes it
 * (yaml/scanner.py scan_to_next_token). A `#` after a plain scalar is part of it, to both.
 */
function commentAfterToken(error: { code: string; pos: [number, number] }, text: string): boolean {
  return error.code === 'MISSING_CHAR' && text[error.pos[0]] === '#' && /["'[\]{},]/.test(text[error.pos[0] - 1] ?? '');
}

interface MetaDataReading {
  doc: Document.Parsed;
  value: Record<string, unknown> | undefined;
  /** The concrete syntax tree it was composed from, to compose it again (META_DATA_TYPED). */
  cst: CST.Token[];
}

/**
 * `text` read as PyYAML's safe_load (cloud-init's reader) reads it: undefined for an empty
 * document, else its mapping. Throws INVALID_ARGUMENT naming `field` for anything PyYAML
 * refuses or that is not one mapping, nests deeper than 100 or expands past
 * META_DATA_MAX_VALUES values through aliases. `options` may be META_DATA_TYPED, to compare
 * readings.
 */
function readMetaData(source: string, field: string, options = META_DATA_YAML): MetaDataReading {
  const text = lineBreaks(source);
  const cst = concreteSyntax(text);
  if (cst === undefined) throw invalid(field, `must be a YAML mapping (nesting exceeded ${META_DATA_MAX_DEPTH} levels)`);
  for (const token of cst) {
    const problem = checkSyntax(token, 0);
    if (problem) throw invalid(field, `must be a YAML mapping (${problem})`);
  }
  const tokens = tokenProblem(cst, text);
  if (tokens) throw invalid(field, `must be a YAML mapping (${tokens})`);
  let aliases = 0;
  eachSourceToken(cst, (t) => (t.type === 'alias' && ++aliases > META_DATA_MAX_ALIASES ? 'too many' : undefined));
  if (aliases > META_DATA_MAX_ALIASES) throw invalid(field, `must hold at most ${META_DATA_MAX_ALIASES} YAML aliases (matchlock's limit: each costs a walk of the document on the daemon's event loop)`);
  const docs = [...new Composer(options).compose(cst, true, text.length)];
  if (docs.length > 1) throw invalid(field, 'must be a YAML mapping (expected a single document, as PyYAML\'s safe_load does)');
  const doc = docs[0] as Document.Parsed;
  const problem = [...doc.errors, ...doc.warnings].find((e) => !commentAfterToken(e, text));
  if (problem) throw invalid(field, `must be a YAML mapping (${yamlProblem(problem)})`);
  const composed = composerProblem(doc);
  if (composed) throw invalid(field, `must be a YAML mapping (${composed})`);
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: -1 });
  } catch (err) {
    throw invalid(field, `must be a YAML mapping (${yamlProblem(err)})`);
  }
  if (value === null || value === undefined) return { doc, value: undefined, cst };
  if (typeof value !== 'object' || Array.isArray(value) || value instanceof Set || value instanceof Map || !isMap(doc.contents)) throw invalid(field, 'must be a YAML mapping of keys to values');
  const budget: { left: number; cyclic?: boolean } = { left: META_DATA_MAX_VALUES };
  countValues(value, budget);
  // cloud-init writes meta-data out as JSON (instance-data.json), which has no cycles.
  if (budget.cyclic) throw invalid(field, 'must not hold itself through a YAML alias (cloud-init writes meta-data as JSON, which cannot hold a cycle)');
  if (budget.left < 0) throw invalid(field, `must not expand to more than ${META_DATA_MAX_VALUES} values through YAML aliases`);
  return { doc, value: value as Record<string, unknown>, cst };
}

/** Keys and strings that may be written plainly when the schema reads them back as strings. */
const PLAIN_WORD = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function plainString(value: string): boolean {
  return PLAIN_WORD.test(value) && ![PY_BOOL, PY_INT, PY_FLOAT, PY_NULL, PY_TIMESTAMP].some((r) => r.test(value));
}

/**
 * Characters PyYAML reads as written only in a double-quoted scalar, escaped, all of which
 * `yaml` writes raw: C1 controls, U+FFFE and U+FFFF (its reader refuses them anywhere:
 * yaml/reader.py NON_PRINTABLE), NEL, LS and PS (line breaks in YAML 1.1, not in 1.2); and a
 * tab, which PyYAML takes raw only in a quoted scalar (yaml writes it in a plain one).
 */
export const PY_DOUBLE_QUOTED_ONLY = /[\t\x7f-\x9f\u2028\u2029\ufffe\uffff]/;

/**
 * `yaml`'s text with the characters of PY_DOUBLE_QUOTED_ONLY but the tab written as escapes:
 * the strings holding them must have been written double-quoted.
 */
export function pyYamlEscaped(yaml: string): string {
  return yaml.replace(/[\x7f-\x9f\u2028\u2029\ufffe\uffff]/g, (c) => {
    const code = c.codePointAt(0) ?? 0;
    if (c === '\u0085') return '\\N';
    if (c === '\u2028') return '\\L';
    if (c === '\u2029') return '\\P';
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16)}`;
  });
}

/** Whether a single-quoted scalar can hold `value` as it is: no control or line-break characters. */
function printable(value: string): boolean {
  for (const ch of value) {
    const c = ch.codePointAt(0) ?? 0;
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || c === 0x2028 || c === 0x2029 || c === 0xfeff || c === 0xfffe || c === 0xffff) return false;
  }
  return true;
}

/**
 * `key: value` in YAML 1.1 as PyYAML reads it back (one block-mapping entry ending in a
 * newline, or with `flow` one flow-mapping entry without it): a word PyYAML reads as a string
 * (a uid, a host name) is written plainly; anything else is serialized with PyYAML's
 * resolvers, which quote a string that would read as anything else.
 */
export function metaDataLine(key: string, value: unknown, flow = false): string {
  if (plainString(key) && typeof value === 'string' && plainString(value)) return `${key}: ${value}${flow ? '' : '\n'}`;
  // Single quotes mean the same in every YAML reader for a one-line printable string.
  if (plainString(key) && typeof value === 'string' && printable(value)) return `${key}: '${value.replace(/'/g, "''")}'${flow ? '' : '\n'}`;
  const doc = new Document({ [key]: value }, META_DATA_WRITE);
  // Every string goes in double quotes: yaml's choice of a plain scalar follows YAML 1.2 and
  // its own reader, where PyYAML reads otherwise (a key `<<` is a merge, a tab is refused, a
  // `?` starting a plain scalar in a flow mapping is an indicator). YAML 1.1 (unlike 1.2) takes
  // NEL, LS and PS as line breaks, and PyYAML's reader refuses C1 controls, U+FFFE and U+FFFF
  // anywhere (yaml/reader.py NON_PRINTABLE), all of which yaml writes raw: they are escaped.
  visit(doc, {
    Scalar: (_, s) => {
      if (typeof s.value === 'string') s.type = 'QUOTE_DOUBLE';
    },
  });
  const yaml = pyYamlEscaped(doc.toString({ lineWidth: 0, ...(flow ? { collectionStyle: 'flow' as const } : {}) }));
  // Only the spaces and line breaks yaml puts around the braces go: JavaScript's trim() and \s
  // would also take a value's own U+00A0, which PyYAML reads as text.
  return flow ? yaml.replace(/^[ \n]*\{[ \n]*/, '').replace(/[ \n]*\}[ \n]*$/, '') : yaml;
}

/**
 * The text of entry `key` of the top-level mapping from its `:` on, to write it under another
 * key: the colon, tag, value, comments and continuation lines are copied as they are, so the
 * copy means to PyYAML what the original means (a space is put after a colon that has none,
 * as JSON writes it: `"k":"v"`). A value with its own anchor is written as an alias of it
 * (PyYAML refuses a repeated anchor). A value is never written anew from its reading, which
 * could change it (1.0 written as 1, a timestamp rewritten, a big integer rounded): where the
 * text cannot be copied, `problem` says why.
 */
function copiedText(pairs: Pair[], text: string, key: string): { copied: string } | { problem: string } {
  const pair = pairs.findLast((p) => isScalar(p.key) && p.key.value === key);
  const k = pair?.key as Node | undefined;
  const v = pair?.value as Node | undefined | null;
  if (!pair) return { problem: `${key} is no key written in the top-level mapping (it comes from a merge key \`<<\` or is an alias)` };
  if (!k?.range || !v?.range) return { problem: `${key} is written in a way matchlock cannot copy` };
  let nested = false;
  visit(v, { Node: (_, n) => void (n !== v && (n as Node).anchor ? (nested = true) : undefined) });
  if (nested) return { problem: `${key}'s value holds an anchor, which PyYAML refuses to see twice` };
  if (v.anchor) return { copied: ': *' + v.anchor };
  // Between the key and its `:` stand only spaces, line breaks and comments (after `? key`).
  const colon = /^(?:[ \n\r]+|#[^\n]*)*:/.exec(text.slice(k.range[1], v.range[1]));
  if (!colon) return { problem: `${key} is written in a way matchlock cannot copy` };
  const after = text.slice(k.range[1] + colon[0].length, v.range[1]).replace(/\n$/, '');
  return { copied: (/^[ \n\r]/.test(after) ? ':' : ': ') + after };
}

interface Added {
  key: string;
  /** The value's text from its `:` on, or undefined for the uid, written by metaDataLine. */
  copied: string | undefined;
  /** The key whose value is copied. */
  given: string | undefined;
  value: unknown;
}

function keyText(key: string): string {
  return plainString(key) ? key : `'${key}'`;
}

/** The last scalar of `node` in the text's order (the end of its last entry), if any. */
function lastScalar(node: unknown): Node | undefined {
  let n = node;
  for (;;) {
    if (isScalar(n)) return n;
    if (!isCollection(n)) return undefined;
    const last: unknown = n.items.at(-1);
    if (last === undefined) return undefined;
    n = last !== null && typeof last === 'object' && 'key' in last ? ((last as Pair).value ?? (last as Pair).key) : last;
  }
}

/**
 * The client's text with `added` written into its top-level mapping, keeping every byte of it:
 * a block mapping gets lines at its keys' column right after its last entry (before any
 * comment lines or document end marker that follow), or, when the text ends in a block scalar
 * without a final line break (a line break after it would change its value: PyYAML reads
 * `a: |\n  x` as "x", `a: |\n  x\n` as "x\n"), before the line of the last entry; a flow
 * mapping gets entries before its closing brace.
 */
function withEntries(source: string, doc: Document.Parsed, added: Added[], field: string): string {
  // Positions are found in the text as PyYAML breaks its lines; the bytes written are the client's.
  const text = lineBreaks(source);
  const map = doc.contents as Node & { flow?: boolean; items: Pair<Node | null, Node | null>[] };
  const range = map.range ?? [0, text.length, text.length];
  if (map.flow) {
    const close = text.lastIndexOf('}', range[1] - 1);
    const last = map.items.at(-1) as Pair<Node | null, Node | null> | undefined;
    const lastEnd = last?.value?.range?.[1] ?? last?.key?.range?.[1] ?? close;
    // Between the last value and the brace stand only spaces, line breaks, comments and at most
    // one comma; a `#` there starts a comment, whose commas separate nothing.
    const comma = map.items.length > 0 && !text.slice(lastEnd, close).replace(/#[^\n]*/g, '').includes(',') ? ', ' : ' ';
    // A copy ends with its value (a comment after it is not part of it).
    const entries = added.map((a) => (a.copied !== undefined ? `${keyText(a.key)}${a.copied}` : metaDataLine(a.key, a.value, true))).join(', ');
    // Spaces before the brace go, but not the one that ends an empty value's tag or anchor
    // (`{a: !!null }`: a tag runs to the next space, so `!!null,` would be the tag "null,").
    const kept = source.slice(0, close).replace(/[ ]*$/, '');
    // A NEL is a line break to PyYAML here (the source is the client's, NEL and all).
    const props = /(?:^|[\s\x85,[{:])[!&][^\s\x85]*$/.test(kept) && kept.length < close ? ' ' : '';
    return `${kept}${props}${comma}${entries}${map.items.length > 0 ? ' ' : ''}${source.slice(close)}`;
  }
  const lineStart = text.lastIndexOf('\n', range[0] - 1) + 1;
  // Properties before the first key on its line (`&a key: 1`) are the key's to PyYAML (its
  // scanner starts the possible simple key at them): the keys' column is where they start.
  const indent = /^ */.exec(text.slice(lineStart, range[0]))?.[0] ?? '';
  const lines = added.map((a) => (a.copied !== undefined ? `${indent}${keyText(a.key)}${a.copied}\n` : metaDataLine(a.key, a.value).replace(/^(?=.)/gm, indent))).join('');
  const end = lastScalar(map);
  const lastKey = (map.items.at(-1) as Pair<Node | null, Node | null> | undefined)?.key;
  const last = isScalar(lastKey) ? lastKey.value : undefined;
  const copiesLast = added.some((a) => a.copied !== undefined && a.given === last);
  /** The text with the new lines in front of the last entry's line. */
  const beforeLastEntry = () => {
    const line = text.lastIndexOf('\n', (lastKey?.range?.[0] ?? range[0]) - 1) + 1;
    return `${source.slice(0, line)}${lines}${source.slice(line)}`;
  };
  // Only a block scalar whose content ends the text: after a comment or `...` line the new
  // lines can go as after any other value.
  if (!text.endsWith('\n') && isScalar(end) && (end.type === 'BLOCK_LITERAL' || end.type === 'BLOCK_FOLDED') && end.range?.[1] === text.length) {
    // Its copy would gain the line break the original lacks (and `yaml`, which reads a final
    // `|` or `|+` as if the text ended in one, would not see the change).
    // A stripped one (`|-`) has no final line break to gain.
    const stripped = /^[|>](?:[1-9]?-|-[1-9])/.test(text.slice(end.range?.[0] ?? 0, (end.range?.[0] ?? 0) + 3));
    // A copy of an anchored value is an alias of it, which cannot stand in front of its anchor.
    if (added.some((a) => a.given === last && a.copied?.startsWith(': *'))) {
      throw invalid(field, `must give both spellings of ${String(last)} or end with a line break: its value is a block scalar with an anchor that ends the text without a final line break, so the new lines go in front of it, where its copy (an alias) cannot stand (PyYAML, cloud-init's reader, refuses an alias before its anchor: yaml/composer.py compose_node)`);
    }
    if (!stripped && copiesLast) {
      throw invalid(field, `must give both spellings of ${String(last)} or end with a line break: its value is a block scalar that ends the text without a final line break, which a copy in front of it would gain (PyYAML, cloud-init's reader, reads a block scalar with the line break after its last line, if there is one: yaml/scanner.py scan_block_scalar)`);
    }
    return beforeLastEntry();
  }
  // The rest of the line the mapping ends on is a comment at most.
  let at = range[1] > 0 && text[range[1] - 1] === '\n' ? range[1] : text.indexOf('\n', range[1]) + 1;
  if (at === 0) at = text.length;
  // Blank lines after the mapping belong to no value, but a block scalar kept whole (`|+`)
  // among the new lines would take them as its own (YAML 1.1 section 9.1.1.2, keep chomping):
  // the new lines go after them.
  const blank = /^(?:[ ]*\n)+/.exec(text.slice(at));
  if (blank) at += blank[0].length;
  // Indented comment or space lines ending the text with no line break, after the last value:
  // new lines in front of them would give them to a copied block scalar among the new lines
  // as its content. The new lines go before the last entry then (as above), unless it is
  // copied itself.
  const rest = text.slice(at);
  if (!text.endsWith('\n') && lastKey?.range && !copiesLast && /^[ \t]/m.test(rest) && /^(?:[ \t]*(?:#[^\n]*)?(?:\n|$))*$/.test(rest)) return beforeLastEntry();
  const before = text.slice(0, at);
  return `${source.slice(0, at)}${before === '' || before.endsWith('\n') ? '' : '\n'}${lines}${source.slice(at)}`;
}

/**
 * A block scalar that ends the text after a line of content, with no line break after it,
 * read as PyYAML reads it: without a final line break, whatever its chomping (there is none to
 * chomp), where `yaml` reads `|` and `|+` there as if the text ended in one. `at` is its
 * header's offset and `stripped` its text from there with the header's chomping `-`, which
 * `yaml` reads as PyYAML reads the original. Undefined for any other ending, including blank
 * or space-only lines after the content, whose line breaks chomping decides.
 */
function finalBlockScalar(doc: Document.Parsed, text: string): { at: number; stripped: string } | undefined {
  const end = lastScalar(doc.contents);
  // Its content must be what ends the text: a comment or `...` after it follows a line break
  // PyYAML keeps (clip and keep chomping apply there).
  // The last line is content when it holds anything but spaces (a space or U+00A0 at its end
  // is content too): PyYAML takes only spaces for a block scalar's indentation and blank lines.
  if (text.endsWith('\n') || !/[^ ]/.test(text.slice(text.lastIndexOf('\n') + 1)) || !isScalar(end) || (end.type !== 'BLOCK_LITERAL' && end.type !== 'BLOCK_FOLDED') || end.range?.[1] !== text.length) return undefined;
  const at = end.range?.[0];
  const header = at === undefined ? null : /^[|>](?:[1-9][+-]?|[+-][1-9]?)?/.exec(text.slice(at));
  if (at === undefined || !header || header[0].includes('-')) return undefined;
  return { at, stripped: `${header[0].replace(/[+]/, '')}-${text.slice(at + header[0].length)}` };
}

/**
 * PyYAML's reader (yaml/reader.py, PyYAML 6) takes only printable characters: tab, LF, CR,
 * U+0020-U+007E, NEL, U+00A0-U+D7FF, U+E000-U+FFFD and U+10000-U+10FFFF.
 */
const NON_PRINTABLE = /[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\u{10000}-\u{10ffff}]/u;

/**
 * Line breaks PyYAML takes that the `yaml` package does not (yaml/scanner.py scan_line_break):
 * a CR on its own, LS (U+2028) and PS (U+2029). They are refused anywhere, in a comment or a
 * quoted scalar too, where PyYAML ends the comment or folds the line.
 */
const FOREIGN_BREAK = /\r(?!\n)|[\u2028\u2029]/;

/**
 * meta-data's bytes as text: UTF-8 of printable characters only, as PyYAML's reader takes them
 * ("'utf-8' codec can't decode byte", "unacceptable character"). PyYAML would also read
 * UTF-16 with a byte order mark; matchlock writes its keys in UTF-8, so it refuses UTF-16
 * rather than mix encodings in one file.
 */
function decodeMetaData(bytes: Buffer, field: string): string {
  if (bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))) {
    throw invalid(field, 'must be UTF-8 (matchlock does not take UTF-16 meta-data)');
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw invalid(field, 'must be UTF-8 (PyYAML, cloud-init\'s reader, refuses invalid UTF-8)');
  }
  const bad = NON_PRINTABLE.exec(text);
  if (bad) {
    const code = bad[0].codePointAt(0) ?? 0;
    throw invalid(field, `must hold printable characters only (PyYAML, cloud-init's reader, refuses U+${code.toString(16).toUpperCase().padStart(4, '0')})`);
  }
  // PyYAML skips U+FEFF only as the stream's first character (yaml/scanner.py
  // scan_to_next_token at index 0); anywhere else it is part of the text (a key's first
  // character), where the `yaml` package drops it at the start of a line.
  const bom = text.indexOf('\ufeff', text.startsWith('\ufeff') ? 1 : 0);
  if (bom >= 0) throw invalid(field, `must not hold U+FEFF (a byte order mark) after its start (at character ${bom}): PyYAML, cloud-init's reader, reads it there as text (yaml/scanner.py scan_to_next_token skips it only at the start)`);
  const brk = FOREIGN_BREAK.exec(text);
  if (brk) {
    const line = text.slice(0, brk.index).split(/\r\n|\n|\u0085/).length;
    const name = brk[0] === '\r' ? 'a CR not followed by LF' : brk[0] === '\u2028' ? 'U+2028 (line separator)' : 'U+2029 (paragraph separator)';
    throw invalid(field, `must not hold ${name} (at character ${brk.index}, line ${line}): it is a line break to PyYAML, cloud-init's reader (yaml/scanner.py scan_line_break, scan_to_next_token), and not to matchlock's; use LF line breaks`);
  }
  return text;
}

/**
 * What a typed reading puts before a scalar's tag and text: a string no client can write (a
 * double-quoted "\0" is a NUL to YAML, so a fixed marker could be spelt by a client's string
 * and read as a null), random per process.
 */
const TYPED = `\0${randomBytes(16).toString('hex')}\0`;

/**
 * How meta-data is read to compare two readings: as META_DATA_YAML reads it, but with every
 * scalar that is not a string read as TYPED, its tag and its text, so that what JavaScript
 * would equate (1.0 and 1, -0.0 and 0, an integer key and a string key, bytes and the string
 * they spell, two integers past 2^53) stays apart, as it does in Python.
 */
const META_DATA_TYPED: typeof META_DATA_YAML = {
  ...META_DATA_YAML,
  schema: new Schema({
    schema: 'yaml-1.1',
    customTags: (tags) =>
      pyYamlTags(tags).map((t) => {
        if (typeof t === 'string' || !('resolve' in t) || ('collection' in t && t.collection) || t.tag === 'tag:yaml.org,2002:merge' || t.tag === 'tag:yaml.org,2002:str') return t;
        const tag = t as ScalarTag;
        return { ...tag, resolve: (source: string, onError: (message: string) => void, options: ParseOptions) => (tag.resolve(source, onError, options), `${TYPED}${tag.tag}\0${source}`) } as ScalarTag;
      }),
    merge: true,
    resolveKnownTags: false,
  }),
};

/** How META_DATA_TYPED reads a null, before its text. */
const TYPED_NULL = `${TYPED}tag:yaml.org,2002:null\0`;

/** Each top-level key's value of a reading with META_DATA_TYPED, as JSON. */
function typedEntries(read: Record<string, unknown> | null | undefined): Map<string, string> {
  const json = (v: unknown): string => JSON.stringify(v, (_, x: unknown) => (x instanceof Set ? [`${TYPED}set`, ...x] : x instanceof Map ? [`${TYPED}map`, ...x] : x));
  return new Map(Object.entries(read ?? {}).map(([k, v]) => [k, json(v)]));
}

/** Whether `value` of `key` (read with META_DATA_TYPED) counts as no value: null, or an empty instance id. */
function none(key: string, value: unknown): boolean {
  // flintlock keeps a client's instance id only when it is not empty (addInstanceData).
  return value === null || value === undefined || (typeof value === 'string' && value.startsWith(TYPED_NULL)) || (value === '' && (key === 'instance_id' || key === 'instance-id'));
}

/**
 * meta-data as cloud-init and CAPMVM both need it: a YAML mapping whose instance id is the
 * VM's uid unless the client gave one (CAPMVM's kubelet provider id is
 * microvm://<vm_host>/<instance_id>, and cloud-init runs its per-instance modules only when
 * `instance-id` changes), with every key of META_DATA_SPELLINGS present in both spellings.
 *
 * meta-data is read as cloud-init reads it, with PyYAML's safe_load (YAML 1.1). The client's
 * bytes are kept: missing keys are written into the top-level mapping (lines after a block
 * mapping's last entry, entries before a flow mapping's closing brace), each a copy of the
 * other spelling's text from its `:` on; a value is never written anew from its reading. The
 * result is read again and every top-level key compared with the client's reading, typed
 * (1.0 is not 1, an integer key not a string), so nothing is handed on that PyYAML would read
 * otherwise; a document of plain `key: value` lines is neither read nor read again with YAML
 * (plainMetaData, held to this reading by metadata.test.ts). A null or empty instance id in
 * either spelling counts as none: cloud-init would take null as the instance id "None" (str()
 * of it, sources/__init__.py get_instance_id, cloud-init 22.4), the same for every VM, and
 * flintlock keeps a client's instance id only when it is not empty (addInstanceData); both
 * spellings get the uid, written after the null or empty one (PyYAML takes a repeated key's
 * last value).
 *
 * Throws INVALID_ARGUMENT naming `field` for anything PyYAML would refuse, that is not one
 * mapping, that PyYAML reads otherwise than matchlock's reader (a lone CR, LS or PS; more than
 * one `<<` in a mapping, a tagged `<<` key, an alias of `<<` as a key; anchor names outside
 * [0-9A-Za-z_-]), or whose missing spelling cannot be copied as text (a value from a merge key,
 * a value holding an anchor, an anchored block scalar or one ending in blank lines that ends the
 * text without a line break): the message names the rule and PyYAML's source.
 */
export function cloudInitMetaData(metaData: Buffer | undefined, uid: string, field: string): Buffer {
  const whole = metaData === undefined ? '' : decodeMetaData(metaData, field);
  const plain = plainMetaData(whole, uid);
  if (plain !== undefined) return plain === whole && metaData !== undefined ? metaData : Buffer.from(plain, 'utf8');
  return metaDataRead(whole, metaData, uid, field);
}

/** One line of plain meta-data: a key, `: ` and a value, each a word of PLAIN_WORD's characters. */
const PLAIN_LINE = /^([A-Za-z0-9][A-Za-z0-9_.-]*): ([A-Za-z0-9][A-Za-z0-9_.-]*)$/;

/** The largest meta-data plainMetaData reads (characters); larger documents take the full reader and its limits. */
const PLAIN_MAX = 64 * 1024;

/**
 * meta-data as cloudInitMetaData makes it, for the documents CAPMVM and flintlock's other
 * clients send (`instance_id: <name>`, `local_hostname: <name>`, `platform: liquid_metal`):
 * nothing but lines `key: value`, one space after the colon, LF line breaks (the last one
 * optional), every key and value a word PyYAML's resolvers read as a string (plainString), no
 * key twice. PyYAML reads such a document as a mapping of those strings with no doubt, so
 * the missing keys are the lines metaDataRead would write, after the last one, without a YAML
 * reader (a cold create spent most of its validation reading a line or two with one). Returns
 * undefined for anything else, which metaDataRead takes; `metadata.test.ts` holds the two to
 * one result, byte for byte.
 */
export function plainMetaData(text: string, uid: string): string | undefined {
  if (text === '' || text.length > PLAIN_MAX) return undefined;
  const entries = new Map<string, string>();
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  for (const line of lines) {
    const m = PLAIN_LINE.exec(line);
    const [key, value] = [m?.[1] ?? '', m?.[2] ?? ''];
    // A key past PyYAML's simple-key limit is refused by it, and so by metaDataRead.
    if (!m || key.length > PY_SIMPLE_KEY_MAX || entries.has(key) || !plainString(key) || !plainString(value)) return undefined;
    entries.set(key, value);
  }
  let added = '';
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    const given = [underscore, hyphen].find((k) => entries.has(k));
    if (given === undefined && underscore !== 'instance_id') continue;
    for (const key of [underscore, hyphen]) {
      if (!entries.has(key)) added += given === undefined ? metaDataLine(key, uid) : `${key}: ${entries.get(given) ?? ''}\n`;
    }
  }
  if (added === '') return text;
  return `${text}${text.endsWith('\n') ? '' : '\n'}${added}`;
}

/**
 * cloudInitMetaData's full reading of any document: `whole` is the decoded text of
 * `metaData` (undefined: none given). Exported for the test that holds plainMetaData to it.
 */
export function metaDataRead(whole: string, metaData: Buffer | undefined, uid: string, field: string): Buffer {
  // A byte order mark is no column of the first line; it stays in front.
  const bom = whole.startsWith('\ufeff') ? '\ufeff' : '';
  const client = whole.slice(bom.length);
  // Empty as PyYAML sees it: spaces and line breaks only (JavaScript's trim() would also take
  // U+00A0 and other spaces that are text to PyYAML, and a tab, which its scanner refuses
  // there: scan_to_next_token skips spaces only).
  let reading = /^[ \r\n\x85]*$/.test(client) ? { doc: undefined, value: undefined, cst: [] } : readMetaData(client, field);
  // Everything below reads `source`, which is what PyYAML reads: the client's text with a
  // final block scalar's header made stripping where `yaml` would read a line break PyYAML
  // does not (finalBlockScalar). The client's own ending is put back on what is written.
  const final = reading.doc ? finalBlockScalar(reading.doc, lineBreaks(client)) : undefined;
  const source = final === undefined ? client : client.slice(0, final.at) + final.stripped;
  if (final !== undefined) reading = readMetaData(source, field);
  const text = lineBreaks(source);
  const { doc, value: current, cst } = reading;
  // Which keys the client gave is read typed: a !!binary key spelling `instance_id` is bytes to
  // PyYAML, another key than the string, where a JavaScript object would take it as the string.
  const typedDoc = cst.length === 0 ? undefined : (new Composer(META_DATA_TYPED).compose(cst, true, text.length).next().value as Document.Parsed | undefined);
  const typedValue = typedDoc?.toJS({ maxAliasCount: -1 }) as unknown;
  const have = typedValue !== null && typeof typedValue === 'object' ? (typedValue as Record<string, unknown>) : {};
  const pairs = doc && isMap(doc.contents) ? (doc.contents.items as Pair[]) : [];
  const added: Added[] = [];
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    const given = [underscore, hyphen].find((k) => Object.hasOwn(have, k) && !none(k, have[k]));
    if (given === undefined && underscore !== 'instance_id') continue;
    const copy = given === undefined ? undefined : copiedText(pairs, text, given);
    for (const key of [underscore, hyphen]) {
      // A key the client gave a value is the client's, even where the spellings differ.
      if (key === given || (Object.hasOwn(have, key) && !none(key, have[key]))) continue;
      if (copy && 'problem' in copy) throw invalid(field, `must give both ${underscore} and ${hyphen} when matchlock cannot copy one to the other: ${copy.problem}`);
      added.push({ key, copied: copy?.copied, given, value: given === undefined ? uid : undefined });
    }
  }
  if (added.length === 0 && metaData !== undefined) return metaData;
  // An empty document (comments, markers, a null) holds nothing to keep.
  if (current === undefined || doc === undefined) return Buffer.from(added.map((a) => metaDataLine(a.key, a.value)).join(''), 'utf8');
  const read = withEntries(source, doc, added, field);
  const out = final === undefined ? read : read.slice(0, read.length - final.stripped.length) + client.slice(final.at);
  // The result is read again, as strictly as Python compares values, to prove it means the
  // client's mapping plus the new keys; anything else is refused rather than handed on.
  const cannot = `must be a YAML mapping matchlock can add ${added.map((a) => a.key).join(', ')} to without changing how PyYAML reads it`;
  let after: Map<string, string>;
  try {
    after = typedEntries(readMetaData(read, field, META_DATA_TYPED).value);
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).replace(`${field}: `, '');
    throw invalid(field, `${cannot}: with them it ${why.replace(/^must be/, 'would not be')}; give these keys yourself`);
  }
  const before = typedEntries(have);
  const wanted = new Map(before);
  for (const a of added) wanted.set(a.key, a.given !== undefined ? (before.get(a.given) ?? '') : JSON.stringify(a.value));
  for (const k of new Set([...wanted.keys(), ...after.keys()])) {
    if (after.get(k) !== wanted.get(k)) throw invalid(field, `${cannot}: ${JSON.stringify(k)} would change; give these keys yourself`);
  }
  return Buffer.from(bom + out, 'utf8');
}
