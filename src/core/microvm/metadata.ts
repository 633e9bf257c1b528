import { DUMP_SCHEMA, dump, load } from 'js-yaml';
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

function plainString(value: string): boolean {
  return PLAIN_WORD.test(value) && DUMP_SCHEMA.resolveImplicitScalarTag(value).tag === DUMP_SCHEMA.defaultScalarTag;
}

/**
 * `key: value` as a line of a block mapping, as js-yaml's dump writes `{ [key]: value }` with
 * noRefs and lineWidth -1. A word that dump's schema reads back as a string (a uid, a host
 * name) is a plain scalar there, written here without building dump's whole machinery for one
 * line (three such lines cost a create more than its whole validation otherwise); anything
 * else goes through dump.
 */
export function metaDataLine(key: string, value: unknown): string {
  if (typeof value === 'string' && plainString(key) && plainString(value)) return `${key}: ${value}\n`;
  return dump({ [key]: value }, { noRefs: true, lineWidth: -1 });
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
  const added: Record<string, unknown> = {};
  for (const [underscore, hyphen] of META_DATA_SPELLINGS) {
    const given = Object.hasOwn(have, underscore) ? have[underscore] : Object.hasOwn(have, hyphen) ? have[hyphen] : undefined;
    const value = given ?? (underscore === 'instance_id' ? uid : undefined);
    if (value === undefined) continue;
    if (!Object.hasOwn(have, underscore)) added[underscore] = value;
    if (!Object.hasOwn(have, hyphen)) added[hyphen] = value;
  }
  if (Object.keys(added).length === 0 && metaData !== undefined) return metaData;
  // Plain scalars where YAML allows them (`instance_id: 01HZ...`), so tools that grep the seed see
  // what they saw before; quoted only where a plain scalar would read as another type.
  const lines = Object.entries(added).map(([k, v]) => metaDataLine(k, v)).join('');
  if (current === undefined) return Buffer.from(lines, 'utf8');
  const wanted = { ...current, ...added };
  const appended = `${text}${text.endsWith('\n') ? '' : '\n'}${lines}`;
  if (plainBlockMapping(text)) return Buffer.from(appended, 'utf8');
  try {
    if (sameJson(load(appended, { json: true }), wanted)) return Buffer.from(appended, 'utf8');
  } catch {
    // not appendable; written out anew below
  }
  return Buffer.from(dump(wanted, { noRefs: true, lineWidth: -1 }), 'utf8');
}
