import { ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { invalid, type MatchlockError } from '../../core/errors.js';
import { LIMITS } from '../../core/microvm/validate.js';

/**
 * The most entries a repeated or map field of a request may hold, by full field name; fields
 * not named here may hold DEFAULT_MAX_ENTRIES. The figures are validation's LIMITS, so a
 * request refused here is one validation would refuse, with the same message.
 */
const MAX_ENTRIES: ReadonlyMap<string, number> = new Map([
  ['flintlock.types.MicroVMSpec.labels', LIMITS.labels],
  ['flintlock.types.MicroVMSpec.metadata', LIMITS.metadataKeys],
  ['flintlock.types.MicroVMSpec.additional_volumes', LIMITS.additionalVolumes],
  ['flintlock.types.MicroVMSpec.interfaces', LIMITS.interfaces],
  ['flintlock.types.Kernel.cmdline', LIMITS.cmdlineEntries],
  ['flintlock.types.StaticAddress.nameservers', LIMITS.nameservers],
]);

/** Entries any other repeated or map field of a request may hold. */
export const DEFAULT_MAX_ENTRIES = 1000;

/** Nesting followed at most; deeper parts are left to the decoder. */
const MAX_DEPTH = 32;

const limitOf = (f: DescField) => MAX_ENTRIES.get(`${f.parent.typeName}.${f.name}`) ?? DEFAULT_MAX_ENTRIES;

const holdsLists = new WeakMap<DescMessage, boolean>();
/** Whether `desc` or a message inside it has a repeated or map field (recursive types count). */
function hasLists(desc: DescMessage, seen = new Set<DescMessage>()): boolean {
  const known = holdsLists.get(desc);
  if (known !== undefined) return known;
  if (seen.has(desc)) return false;
  seen.add(desc);
  const v = desc.fields.some((f) => f.fieldKind === 'list' || f.fieldKind === 'map' || (f.fieldKind === 'message' && hasLists(f.message, seen)));
  holdsLists.set(desc, v);
  return v;
}

/**
 * Refuses a request whose repeated or map fields hold more entries than allowed, reading the
 * protobuf wire bytes without decoding them (proto3 encoding: each map entry and each unpacked
 * element is one occurrence of its field; packed scalars are counted inside their run). Decoding
 * and then validating a 4 MiB request of 200,000 labels took seconds of the event loop; this
 * counts them in milliseconds. A singular message field seen twice is merged by decoders, so
 * its lists are counted together. Returns INVALID_ARGUMENT naming the field
 * (`microvm.labels: must have at most 64 entries`), or undefined when within limits or when
 * the bytes are malformed (the decoder then refuses them as before).
 */
export function wireEntryLimits(desc: DescMessage, bytes: Uint8Array): MatchlockError | undefined {
  if (!hasLists(desc)) return undefined;
  const over = scan(desc, bytes, 0, bytes.length, '', new Map(), 0);
  return over ? invalid(over.field, `must have at most ${over.max} entries`) : undefined;
}

interface Over {
  field: string;
  max: number;
}

function scan(desc: DescMessage, b: Uint8Array, start: number, end: number, path: string, counts: Map<string, number>, depth: number): Over | undefined {
  let pos = start;
  while (pos < end) {
    const [tag, afterTag] = varint(b, pos, end);
    if (afterTag < 0) return undefined;
    pos = afterTag;
    const wire = tag & 7;
    let valueStart = pos;
    switch (wire) {
      case 0: {
        while (pos < end && (b[pos] ?? 0) & 0x80) pos++;
        pos++;
        break;
      }
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2: {
        const [len, afterLen] = varint(b, pos, end);
        if (afterLen < 0) return undefined;
        valueStart = afterLen;
        pos = afterLen + len;
        break;
      }
      default:
        // Groups (proto2) are not in these schemas: leave the bytes to the decoder.
        return undefined;
    }
    if (pos > end) return undefined;
    const field = fieldOf(desc, tag >>> 3);
    if (!field) continue;
    if (field.fieldKind === 'list' || field.fieldKind === 'map') {
      const name = `${path}${field.name}`;
      const n = field.fieldKind === 'list' && field.listKind === 'scalar' && wire === 2 && field.scalar !== ScalarType.STRING && field.scalar !== ScalarType.BYTES ? packedCount(b, valueStart, pos, field.scalar) : 1;
      const seen = (counts.get(name) ?? 0) + n;
      counts.set(name, seen);
      const max = limitOf(field);
      if (seen > max) return { field: name, max };
      if (field.fieldKind === 'list' && field.listKind === 'message' && wire === 2 && depth < MAX_DEPTH && hasLists(field.message)) {
        const over = scan(field.message, b, valueStart, pos, `${name}[${seen - 1}].`, counts, depth + 1);
        if (over) return over;
      }
    } else if (field.fieldKind === 'message' && wire === 2 && depth < MAX_DEPTH && hasLists(field.message)) {
      const over = scan(field.message, b, valueStart, pos, `${path}${field.name}.`, counts, depth + 1);
      if (over) return over;
    }
  }
  return undefined;
}

const byNumber = new WeakMap<DescMessage, Map<number, DescField>>();
function fieldOf(desc: DescMessage, no: number): DescField | undefined {
  let m = byNumber.get(desc);
  if (!m) byNumber.set(desc, (m = new Map(desc.fields.map((f) => [f.number, f]))));
  return m.get(no);
}

/** A varint at `pos` (at most 5 bytes are used: tags and lengths fit in 32 bits): [value, next], next -1 when cut off. */
function varint(b: Uint8Array, pos: number, end: number): [number, number] {
  let v = 0;
  for (let shift = 0; shift < 35 && pos < end; shift += 7) {
    const byte = b[pos++] ?? 0;
    v += (byte & 0x7f) * 2 ** shift;
    if (!(byte & 0x80)) return [v, pos];
  }
  return [0, -1];
}

function packedCount(b: Uint8Array, start: number, end: number, scalar: ScalarType): number {
  switch (scalar) {
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return Math.ceil((end - start) / 8);
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return Math.ceil((end - start) / 4);
    default: {
      let n = 0;
      for (let i = start; i < end; i++) if (!((b[i] ?? 0) & 0x80)) n++;
      return n;
    }
  }
}

/**
 * The same limits over a request's proto3 JSON form (either field name, as fromJson accepts),
 * checked before the JSON is turned into a message: `root` prefixes the field names (`microvm.`
 * for a MicroVMSpec body). Returns INVALID_ARGUMENT naming the field, or undefined.
 */
export function jsonEntryLimits(desc: DescMessage, json: unknown, root = ''): MatchlockError | undefined {
  const over = walkJson(desc, json, root, 0);
  return over ? invalid(over.field, `must have at most ${over.max} entries`) : undefined;
}

function walkJson(desc: DescMessage, json: unknown, path: string, depth: number): Over | undefined {
  if (json === null || typeof json !== 'object' || Array.isArray(json) || depth > MAX_DEPTH || !hasLists(desc)) return undefined;
  const obj = json as Record<string, unknown>;
  for (const field of desc.fields) {
    const v = obj[field.jsonName] ?? obj[field.name];
    if (v === undefined || v === null) continue;
    const name = `${path}${field.name}`;
    if (field.fieldKind === 'map' && typeof v === 'object' && !Array.isArray(v)) {
      const max = limitOf(field);
      if (Object.keys(v).length > max) return { field: name, max };
    } else if (field.fieldKind === 'list' && Array.isArray(v)) {
      const max = limitOf(field);
      if (v.length > max) return { field: name, max };
      if (field.listKind === 'message') {
        for (let i = 0; i < v.length; i++) {
          const over = walkJson(field.message, v[i], `${name}[${i}].`, depth + 1);
          if (over) return over;
        }
      }
    } else if (field.fieldKind === 'message') {
      const over = walkJson(field.message, v, `${name}.`, depth + 1);
      if (over) return over;
    }
  }
  return undefined;
}

/** JSON members and array elements a request body may hold in all; a MicroVMSpec within every limit holds well under 1,000. */
export const MAX_JSON_VALUES = 8192;

/**
 * Refuses a JSON body with more than MAX_JSON_VALUES members and elements in all (counted as
 * the "," and ":" outside strings, an upper bound), before JSON.parse: parsing 200,000 small
 * members takes the event loop far longer than the same bytes in a few long strings.
 * Returns INVALID_ARGUMENT naming `body`, or undefined.
 */
export function jsonValueCount(body: Uint8Array): MatchlockError | undefined {
  let n = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if ((c === 0x2c || c === 0x3a) && ++n > 2 * MAX_JSON_VALUES) {
      return invalid('body', `must hold at most ${MAX_JSON_VALUES} JSON members and array elements (a MicroVM within its limits holds far fewer)`);
    }
  }
  return undefined;
}
