import { DUMP_SCHEMA, dump, load } from 'js-yaml';
import { isMap, isNode, parseDocument, visit, type Node, type Pair } from 'yaml';
import { invalid } from '../errors.js';

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

function countValues(value: unknown, budget: { left: number }): void {
  budget.left -= 1;
  if (budget.left < 0 || value === null || typeof value !== 'object') return;
  for (const v of Array.isArray(value) ? (value as unknown[]) : Object.values(value)) {
    countValues(v, budget);
    if (budget.left < 0) return;
  }
}

function parseMapping(text: string, field: string): Record<string, unknown> | undefined {
  let value: unknown;
  try {
    // json: a repeated key takes the last value, as PyYAML (cloud-init's parser) does.
    value = load(text, { json: true });
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw invalid(field, `must be a YAML mapping (${reason})`);
  }
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw invalid(field, 'must be a YAML mapping of keys to values');
  const budget = { left: META_DATA_MAX_VALUES };
  countValues(value, budget);
  if (budget.left < 0) throw invalid(field, `must not expand to more than ${META_DATA_MAX_VALUES} values through YAML aliases`);
  return value as Record<string, unknown>;
}

/**
 * Whether a document already parsed as a mapping is a block mapping whose keys start in
 * column 0 and which no document marker ends: then a line `key: value` appended in column 0
 * is one more entry of it (every value before it is closed or ends at a less indented line).
 */
function plainBlockMapping(text: string): boolean {
  const lines = text.split('\n');
  let n = 0;
  while (n < lines.length && /^(\s*(#.*)?|%.*|---\s*)$/.test(lines[n] ?? '')) n++;
  if (!/^[^\s{[&!*|>%?#-]/.test(lines[n] ?? '')) return false;
  for (let k = n + 1; k < lines.length; k++) if (/^(---|\.\.\.)(\s|$)/.test(lines[k] ?? '')) return false;
  return true;
}

/** Keys and strings that may be written plainly when the schema reads them back as strings. */
const PLAIN_WORD = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Plain scalars that PyYAML (cloud-init's reader; YAML 1.1) resolves to something other than a
 * string while YAML 1.2's core schema (js-yaml) may read a string: PyYAML 6's implicit resolvers
 * for bool, int (octal `010`, `0b`, underscores `1_000`, sexagesimal `1:20`), float, null,
 * merge, timestamp and value (yaml/resolver.py), of which a PLAIN_WORD can match these.
 */
const PYYAML_NOT_STRING = [
  /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/,
  /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$/,
  /^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/,
  /^(?:~|null|Null|NULL)$/,
  /^[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?/,
];

/** Whether a single-quoted scalar can hold `value` as it is: no control or line-break characters. */
function printable(value: string): boolean {
  for (const ch of value) {
    const c = ch.codePointAt(0) ?? 0;
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || c === 0x2028 || c === 0x2029 || c === 0xfeff) return false;
  }
  return true;
}

function plainString(value: string): boolean {
  return PLAIN_WORD.test(value) && DUMP_SCHEMA.resolveImplicitScalarTag(value).tag === DUMP_SCHEMA.defaultScalarTag && !PYYAML_NOT_STRING.some((r) => r.test(value));
}

/**
 * `key: value` as a line of a block mapping, for a value matchlock supplies (the VM's uid): a
 * word that both YAML 1.2 (js-yaml) and PyYAML (YAML 1.1, cloud-init's reader) read back as
 * that string is a plain scalar (a uid, a host name); any other one-line string is single
 * quoted, which means the same in both; anything else goes through js-yaml's dump.
 */
export function metaDataLine(key: string, value: unknown): string {
  const k = plainString(key) ? key : `'${key.replace(/'/g, "''")}'`;
  if (typeof value === 'string' && plainString(value)) return `${k}: ${value}\n`;
  if (typeof value === 'string' && printable(value)) return `${k}: '${value.replace(/'/g, "''")}'\n`;
  return dump({ [key]: value }, { noRefs: true, lineWidth: -1 });
}

/**
 * The entry `key` of the top-level mapping of `text` as written, with `as` in place of its key:
 * what follows the key (the colon, tag, value, comments, continuation lines) is copied as it
 * is, so the copy means to any YAML reader what the original means (cloud-init reads meta-data
 * with PyYAML, YAML 1.1, where `0o17` is a string and `010` is 8; js-yaml reads YAML 1.2).
 * A value with its own anchor is written as an alias of it (PyYAML refuses a repeated anchor).
 * Undefined when the entry cannot be copied so: anchors inside the value, or no such entry.
 */
function copiedEntry(pairs: Pair[], text: string, key: string, as: string): string | undefined {
  const pair = pairs.findLast((p) => isNode(p.key) && (p.key as Node & { value?: unknown }).value === key);
  const k = pair?.key as Node | undefined;
  const v = pair?.value as Node | undefined | null;
  if (!k?.range || !v?.range) return undefined;
  const name = plainString(as) ? as : `'${as}'`;
  let nested = false;
  visit(v, { Node: (_, n) => void (n !== v && (n as Node).anchor ? (nested = true) : undefined) });
  if (nested) return undefined;
  if (v.anchor) return `${name}: *${v.anchor}\n`;
  const after = text.slice(k.range[1], v.range[1]);
  if (!/^[ \t]*:/.test(after)) return undefined;
  return `${name}${after}${after.endsWith('\n') ? '' : '\n'}`;
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * meta-data as cloud-init and CAPMVM both need it: a YAML mapping whose instance id is the
 * VM's uid unless the client gave one (CAPMVM's kubelet provider id is
 * microvm://<vm_host>/<instance_id>, and cloud-init runs its per-instance modules only when
 * `instance-id` changes), with every key of META_DATA_SPELLINGS present in both spellings.
 *
 * The client's bytes are kept: missing keys are appended as lines, and the result is parsed
 * again to prove it means the client's mapping plus those keys; only when it does not (a flow
 * mapping, an indented one, an explicit document end) is the mapping written out anew.
 * Parsing is bounded (nesting depth 100, META_DATA_MAX_VALUES); anything that is not a YAML
 * mapping throws INVALID_ARGUMENT naming `field`.
 */
export function cloudInitMetaData(metaData: Buffer | undefined, uid: string, field: string): Buffer {
  const text = metaData?.toString('utf8') ?? '';
  const current = text.trim() === '' ? undefined : parseMapping(text, field);
  const have = current ?? {};
  // Where each entry is written, for copies of it (parsed already, so this parse succeeds).
  const doc = current === undefined ? undefined : parseDocument(text, { uniqueKeys: false });
  const pairs = doc && isMap(doc.contents) ? (doc.contents.items as Pair[]) : [];
  const added: Record<string, unknown> = {};
  const lines: string[] = [];
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    const from = Object.hasOwn(have, underscore) ? underscore : Object.hasOwn(have, hyphen) ? hyphen : undefined;
    const given = from === undefined ? undefined : have[from];
    const value = given ?? (underscore === 'instance_id' ? uid : undefined);
    if (value === undefined) continue;
    for (const key of [underscore, hyphen]) {
      if (Object.hasOwn(have, key)) continue;
      added[key] = value;
      // A client's value is copied as written, never re-serialized: js-yaml reads YAML 1.2 and
      // cloud-init PyYAML's YAML 1.1, which read `0o17`, `010`, `1e3` or `1_000` differently.
      lines.push((from !== undefined && given !== null && given !== undefined ? copiedEntry(pairs, text, from, key) : undefined) ?? metaDataLine(key, value));
    }
  }
  if (lines.length === 0 && metaData !== undefined) return metaData;
  if (current === undefined) return Buffer.from(lines.join(''), 'utf8');
  const wanted = { ...current, ...added };
  const appended = `${text}${text.endsWith('\n') ? '' : '\n'}${lines.join('')}`;
  if (plainBlockMapping(text)) return Buffer.from(appended, 'utf8');
  try {
    if (sameJson(load(appended, { json: true }), wanted)) return Buffer.from(appended, 'utf8');
  } catch {
    // not appendable; written out anew below
  }
  // Written anew as a block mapping of every entry copied as written (a flow mapping, an
  // indented one): the values keep their text, so PyYAML reads them as before.
  const entries = pairs.map((p) => {
    const k = p.key as Node | null;
    const v = p.value as Node | null;
    if (!k?.range || !v?.range) return undefined;
    const entry = text.slice(k.range[0], v.range[1]);
    return entry.includes('\n') || !/^[^\s?]/.test(entry) ? undefined : `${entry}\n`;
  });
  if (entries.every((e) => e !== undefined)) {
    const anew = `${entries.join('')}${lines.join('')}`;
    try {
      if (sameJson(load(anew, { json: true }), wanted)) return Buffer.from(anew, 'utf8');
    } catch {
      // not so simple; js-yaml's dump below
    }
  }
  return Buffer.from(dump(wanted, { noRefs: true, lineWidth: -1 }), 'utf8');
}
