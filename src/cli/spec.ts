import { create, fromJson, type DescField, type DescMessage, type JsonValue } from '@bufbuild/protobuf';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { MicroVMSpecSchema, NetworkInterface_IfaceType, type MicroVMSpec } from '../gen/types/microvm_pb.js';
import { yamlProblem } from '../core/errors.js';
import { EXIT, cliError } from './client.js';

/**
 * A MicroVMSpec from a YAML or JSON file (or "-" for stdin), enum names or numbers as proto3
 * JSON allows. Field names match in any case and with or without underscores (`memory_in_mb`,
 * `memoryInMb`, `MemoryInMB`, `ID`), as Go's encoding/json matches its keys case-insensitively;
 * two keys naming one field are refused, naming both. Keys of maps (labels, metadata) are data
 * and kept as written.
 */
export function readSpecFile(path: string): MicroVMSpec {
  let text: string;
  try {
    text = readFileSync(path === '-' ? 0 : path, 'utf8');
  } catch (err) {
    throw cliError(`-f ${path}: ${(err as Error).message}`, EXIT.usage);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw cliError(`-f ${path}: not YAML or JSON: ${yamlProblem(err)}`, EXIT.usage);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw cliError(`-f ${path}: must be a MicroVMSpec mapping`, EXIT.usage);
  const named = protoKeys(MicroVMSpecSchema, doc as Record<string, unknown>, path, '');
  try {
    return fromJson(MicroVMSpecSchema, named as JsonValue);
  } catch (err) {
    const msg = (err as Error).message.replace(/^cannot decode message flintlock\.types\.MicroVMSpec from JSON: /, '');
    // The one slip every new user makes: flintlock calls the VM's name `id`.
    const hint = /key "name" is unknown/i.test(msg) ? ' (a MicroVMSpec names its VM with "id"; --name is the flag for it)' : '';
    throw cliError(`-f ${path}: ${msg}${hint}`, EXIT.usage);
  }
}

/** A field name as compared: lower case, without underscores. */
const fold = (key: string) => key.toLowerCase().replaceAll('_', '');

/**
 * `obj` with each key that names a field of `desc` (in any case, with or without `_`) written
 * as that field's proto3 JSON name, through nested messages, lists of them and map values.
 * Unknown keys are kept as written, for fromJson to refuse by name. Well-known types
 * (google.protobuf.*) have their own JSON forms and are left alone.
 */
function protoKeys(desc: DescMessage, obj: Record<string, unknown>, path: string, at: string): Record<string, unknown> {
  const fields = new Map(desc.fields.map((f) => [fold(f.name), f]));
  const out: Record<string, unknown> = {};
  const from = new Map<string, string>();
  for (const [key, value] of Object.entries(obj)) {
    const field = fields.get(fold(key));
    if (!field) {
      out[key] = value;
      continue;
    }
    const seen = from.get(field.jsonName);
    if (seen !== undefined) throw cliError(`-f ${path}: keys "${at}${seen}" and "${at}${key}" both name the field ${at}${field.name}; keep one`, EXIT.usage);
    from.set(field.jsonName, key);
    checkEnums(field, value, path, `${at}${key}`);
    out[field.jsonName] = nested(field, value, path, `${at}${key}.`);
  }
  return out;
}

/**
 * An enum value written as a name must be one of the enum's names as the .proto spells them
 * (proto3 JSON, as Go's protojson reads it: case-sensitive); numbers (and null, the default)
 * are left to fromJson, which takes any (proto3 enums are open). Anything else (a name it
 * lacks, true, a list) is refused naming the field and the names it takes, where fromJson
 * would name only the enum's type.
 */
function checkEnums(field: DescField, value: unknown, path: string, at: string): void {
  const desc = field.fieldKind === 'enum' ? field.enum : field.fieldKind === 'list' && field.listKind === 'enum' ? field.enum : undefined;
  if (!desc) return;
  const names = desc.values.map((v) => v.name);
  const check = (v: unknown, where: string) => {
    if (typeof v === 'number' || v === null || (typeof v === 'string' && names.includes(v))) return;
    const near = typeof v === 'string' ? names.find((n) => n.toLowerCase() === v.toLowerCase()) : undefined;
    const numbers = desc.values.map((e) => `${e.name} ${e.number}`).join(', ');
    throw cliError(`-f ${path}: ${where}: ${JSON.stringify(v) ?? String(v)} is not a value of ${desc.name}: give one of its names as written, or its number (${numbers})${near ? `; names are case-sensitive: ${near}` : ''}`, EXIT.usage);
  };
  if (field.fieldKind === 'list' && Array.isArray(value)) value.forEach((v, i) => check(v, `${at}[${i}]`));
  else check(value, at);
}

function nested(field: DescField, value: unknown, path: string, at: string): unknown {
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  const message = field.fieldKind === 'message' ? field.message : field.fieldKind === 'list' && field.listKind === 'message' ? field.message : field.fieldKind === 'map' && field.mapKind === 'message' ? field.message : undefined;
  if (!message || message.typeName.startsWith('google.protobuf.')) return value;
  if (field.fieldKind === 'message') return isObject(value) ? protoKeys(message, value, path, at) : value;
  if (field.fieldKind === 'list') return Array.isArray(value) ? value.map((v, i) => (isObject(v) ? protoKeys(message, v, path, `${at.slice(0, -1)}[${i}].`) : v)) : value;
  return isObject(value) ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, isObject(v) ? protoKeys(message, v, path, `${at}${k}.`) : v])) : value;
}

export interface SpecFlags {
  name?: string;
  namespace?: string;
  kernelImage?: string;
  kernelFilename?: string;
  kernelCmdline?: string[];
  initrdImage?: string;
  initrdFilename?: string;
  rootImage?: string;
  rootSize?: string;
  vcpu?: string;
  memory?: string;
  interface?: string[];
  metadataFromFile?: string[];
  label?: string[];
  provider?: string;
  networkConfig?: boolean;
}

function pairs(flag: string, items: string[] | undefined): [string, string][] {
  return (items ?? []).map((item) => {
    const i = item.indexOf('=');
    if (i <= 0) throw cliError(`${flag} ${item}: must be key=value`, EXIT.usage);
    return [item.slice(0, i), item.slice(i + 1)];
  });
}

function int(flag: string, v: string | undefined): number {
  if (v === undefined) return 0;
  if (!/^\d+$/.test(v)) throw cliError(`${flag} ${v}: must be a whole number`, EXIT.usage);
  return Number(v);
}

/** `--interface id=eth1,type=tap,mac=…,bridge=…,address=…,gateway=…` */
function parseInterface(spec: string) {
  const fields = Object.fromEntries(pairs('--interface', spec.split(',')));
  const known = new Set(['id', 'type', 'mac', 'bridge', 'address', 'gateway']);
  for (const k of Object.keys(fields)) if (!known.has(k)) throw cliError(`--interface ${spec}: unknown key ${k} (id, type, mac, bridge, address, gateway)`, EXIT.usage);
  const type = (fields.type ?? 'tap').toUpperCase();
  if (type !== 'TAP' && type !== 'MACVTAP') throw cliError(`--interface ${spec}: type must be tap or macvtap`, EXIT.usage);
  return {
    deviceId: fields.id ?? '',
    type: type === 'TAP' ? NetworkInterface_IfaceType.TAP : NetworkInterface_IfaceType.MACVTAP,
    guestMac: fields.mac,
    overrides: fields.bridge === undefined ? undefined : { bridgeName: fields.bridge },
    address: fields.address === undefined ? undefined : { address: fields.address, gateway: fields.gateway },
  };
}

/** The common case as flags; metadata files are sent base64-encoded, as flintlock expects. */
export function specFromFlags(f: SpecFlags): MicroVMSpec {
  const metadata = Object.fromEntries(
    pairs('--metadata-from-file', f.metadataFromFile).map(([k, path]) => {
      try {
        return [k, readFileSync(path).toString('base64')];
      } catch (err) {
        throw cliError(`--metadata-from-file ${k}=${path}: ${(err as Error).message}`, EXIT.usage);
      }
    }),
  );
  const rootSize = int('--root-size', f.rootSize);
  return create(MicroVMSpecSchema, {
    id: f.name ?? '',
    namespace: f.namespace ?? '',
    labels: Object.fromEntries(pairs('--label', f.label)),
    vcpu: int('--vcpu', f.vcpu),
    memoryInMb: int('--memory', f.memory),
    kernel: f.kernelImage === undefined ? undefined : {
      image: f.kernelImage,
      filename: f.kernelFilename ?? 'boot/vmlinux',
      cmdline: Object.fromEntries(pairs('--kernel-cmdline', f.kernelCmdline)),
      addNetworkConfig: f.networkConfig ?? true,
    },
    initrd: f.initrdImage === undefined ? undefined : { image: f.initrdImage, filename: f.initrdFilename },
    rootVolume: f.rootImage === undefined ? undefined : { id: 'root', source: { containerSource: f.rootImage }, sizeInMb: rootSize || undefined },
    interfaces: (f.interface ?? ['id=eth1,type=tap']).map(parseInterface),
    metadata,
    provider: f.provider,
  });
}
