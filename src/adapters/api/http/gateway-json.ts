import { create, fromJson, toJson, type DescEnum, type DescMessage, type JsonObject, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { FeatureSet_FieldPresence } from '@bufbuild/protobuf/wkt';
import { invalid, quote } from '../../../core/errors.js';

/**
 * The JSON rules of every HTTP/JSON route, those of grpc-gateway v2's default marshaler, which
 * flintlock keeps (its `runtime.NewServeMux()` in internal/command/run/run.go takes no
 * options). grpc-gateway v2 runtime/marshaler_registry.go, `defaultMarshaler`: `JSONPb` with
 * `protojson.MarshalOptions{EmitUnpopulated: true}` and
 * `protojson.UnmarshalOptions{DiscardUnknown: true}`; `UseProtoNames` and `UseEnumNumbers`
 * stay false.
 *
 * Written (protobuf-go encoding/protojson/encode.go, `EmitUnpopulated` and
 * `unpopulatedFieldRanger`): lowerCamelCase field names, enums by name, 64-bit integers as
 * strings, every field outside a oneof even when unset: implicit-presence scalars and enums
 * as their zero value, repeated fields as `[]`, maps as `{}`, a message field (or any other
 * field with explicit presence) as `null`. Fields of a oneof, proto3 `optional` ones among
 * them, are left out when unset.
 *
 * Read (encoding/protojson/decode.go, `DiscardUnknown`): either field name; an unknown field is
 * dropped as if it were absent (an unknown enum name, which the gateway drops too, is refused
 * here: fromGatewayJson). An empty body is the empty message, as the gateway's generated
 * handlers take `io.EOF` from the decoder.
 */
export function gatewayJson<D extends DescMessage>(schema: D, message: MessageShape<D>): JsonObject {
  return withUnpopulated(schema, toJson(schema, message, { alwaysEmitImplicit: true }) as JsonObject);
}

/** `gatewayJson` of a message built from `init`, as the text of an answer. */
export function gatewayText<D extends DescMessage>(schema: D, init: MessageInitShape<D>): string {
  return JSON.stringify(gatewayJson(schema, create(schema, init)));
}

/**
 * A google.rpc.Status as grpc-gateway writes an error (runtime/errors.go,
 * `DefaultHTTPErrorHandler`, through the same marshaler): `details` is always there, `[]` when
 * empty, since EmitUnpopulated writes empty repeated fields.
 */
export function statusJson(code: number, message: string): { code: number; message: string; details: [] } {
  return { code, message, details: [] };
}

/**
 * A request body as JSON: an empty body, or one of JSON whitespace only, is `{}`. Errors:
 * INVALID_ARGUMENT naming `body` when the text is not JSON, with `expected` saying what it
 * must be.
 */
export function parseGatewayBody(body: Uint8Array, expected: string): unknown {
  const text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  // Blank is JSON's whitespace only (RFC 8259 section 2), as grpc-gateway's decoder reads
  // it: JavaScript's trim() would also take U+00A0, U+FEFF and other spaces.
  if (/^[ \t\r\n]*$/.test(text)) return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw invalid('body', `must be ${expected} (${(err as Error).message})`);
  }
}

/**
 * A parsed request body as a message of `schema`, unknown fields dropped. An enum name the
 * schema does not know is refused, unlike grpc-gateway (which drops it, leaving the zero value:
 * a mistyped `"type": "TAPP"` would make a MACVTAP), as the gRPC API refuses an enum number it
 * does not know. Errors: INVALID_ARGUMENT naming the field's path under `root` (`microvm` for
 * a MicroVMSpec, as validation names its fields) for an unknown enum name; naming `body` when a
 * known field has a value of the wrong type (the message goes on to name the field), or the
 * body is not a JSON object.
 */
export function fromGatewayJson<D extends DescMessage>(schema: D, json: unknown, expected: string, root = ''): MessageShape<D> {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw invalid('body', `must be ${expected}, a JSON object, not ${json === null ? 'null' : Array.isArray(json) ? 'an array' : typeof json}`);
  }
  const known = knownFieldsOnly(schema, json as JsonObject, root);
  try {
    return fromJson(schema, known);
  } catch (err) {
    throw invalid('body', `must be ${expected} (${(err as Error).message})`);
  }
}

/**
 * `json` without the keys `desc` has no field for (by JSON or proto name), in nested messages,
 * lists and maps of messages too; values of known fields are left for fromJson to judge, but
 * an enum name the enum does not have is refused here, naming the field's path under `path`
 * (proto names, `[n]` for list items, as validation names fields: `microvm.interfaces[1].type`).
 */
function knownFieldsOnly(desc: DescMessage, json: JsonObject, path: string): JsonObject {
  if (desc.typeName.startsWith('google.protobuf.')) return json;
  const out: JsonObject = {};
  const isObject = (v: unknown): v is JsonObject => v !== null && typeof v === 'object' && !Array.isArray(v);
  for (const [key, value] of Object.entries(json)) {
    const field = desc.fields.find((f) => f.jsonName === key || f.name === key);
    if (!field) continue;
    const at = path ? `${path}.${field.name}` : field.name;
    const item = (n: number | string) => (typeof n === 'number' ? `${at}[${n}]` : `${at}[${JSON.stringify(n)}]`);
    if (field.fieldKind === 'message' && isObject(value)) out[key] = knownFieldsOnly(field.message, value, at);
    else if (field.fieldKind === 'list' && field.listKind === 'message' && Array.isArray(value)) out[key] = value.map((v, n) => (isObject(v) ? knownFieldsOnly(field.message, v, item(n)) : v));
    else if (field.fieldKind === 'map' && field.mapKind === 'message' && isObject(value)) out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, isObject(v) ? knownFieldsOnly(field.message, v, item(k)) : v]));
    else {
      if (field.fieldKind === 'enum') knownEnumName(field.enum, value, at);
      else if (field.fieldKind === 'list' && field.listKind === 'enum' && Array.isArray(value)) value.forEach((v, n) => knownEnumName(field.enum, v, item(n)));
      else if (field.fieldKind === 'map' && field.mapKind === 'enum' && isObject(value)) for (const [k, v] of Object.entries(value)) knownEnumName(field.enum, v, item(k));
      out[key] = value;
    }
  }
  return out;
}

/** Refuses a string that is not one of `desc`'s value names; anything else is fromJson's to judge. */
function knownEnumName(desc: DescEnum, value: unknown, at: string): void {
  if (typeof value !== 'string' || desc.values.some((v) => v.name === value)) return;
  throw invalid(at, `must be one of ${desc.values.map((v) => v.name).join(', ')} (or its number), not ${quote(value)}`);
}

/**
 * Adds what toJson's alwaysEmitImplicit leaves out and protojson's EmitUnpopulated writes:
 * `null` for each unset field with explicit presence outside a oneof, in nested messages too.
 * Fields come in declaration order, as protojson writes them. Well-known types keep their own
 * JSON forms (a Timestamp is a string).
 */
function withUnpopulated(desc: DescMessage, json: JsonObject): JsonObject {
  if (desc.typeName.startsWith('google.protobuf.')) return json;
  const out: JsonObject = {};
  for (const field of desc.fields) {
    const value = json[field.jsonName];
    if (value === undefined) {
      // A proto3 `optional` field sits in a synthetic oneof (protojson skips it when unset);
      // protobuf-es does not list synthetic oneofs in `field.oneof`.
      if (field.fieldKind !== 'list' && field.fieldKind !== 'map' && field.oneof === undefined && !field.proto.proto3Optional && field.presence !== FeatureSet_FieldPresence.IMPLICIT) {
        out[field.jsonName] = null;
      }
      continue;
    }
    if (field.fieldKind === 'message' && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      out[field.jsonName] = withUnpopulated(field.message, value);
    } else if (field.fieldKind === 'list' && field.listKind === 'message' && Array.isArray(value)) {
      out[field.jsonName] = value.map((item) => withUnpopulated(field.message, item as JsonObject));
    } else if (field.fieldKind === 'map' && field.mapKind === 'message' && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      out[field.jsonName] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withUnpopulated(field.message, v as JsonObject)]));
    } else {
      out[field.jsonName] = value;
    }
  }
  return out;
}
