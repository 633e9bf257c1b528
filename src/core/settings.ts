import { parseDuration } from './duration.js';
import { endpointRule, parseEndpoint, type EndpointRule } from './endpoint.js';

/**
 * One configuration setting: a flag `--<key>`, a key of the YAML config file and an environment
 * variable. Providers declare theirs next to their code, so adding a provider adds its settings.
 */
export interface SettingDef {
  key: string;
  kind: 'string' | 'bool' | 'duration' | 'int' | 'enum';
  /** The default as it would be written in the config file. */
  default: string;
  help: string;
  /** For kind enum: the accepted values. */
  values?: readonly string[];
  /** For kind int: the accepted range. */
  min?: number;
  max?: number;
  /**
   * For kind string: a comma-separated list, which a YAML config file may also give as a
   * sequence of strings (as Docker's daemon.json gives `insecure-registries`); it is joined
   * with commas, so both spellings reach the reader of the setting alike.
   */
  list?: boolean;
  /**
   * For kind string: the value is a listen address, checked by parseEndpoint's rule when the
   * config is read (`optional`: empty turns the server off).
   */
  endpoint?: EndpointRule & { optional?: boolean };
}

/**
 * Exactly the spellings Go's strconv.ParseBool takes (flintlockd's flags and viper read booleans
 * with it): no surrounding whitespace and not the empty string, which ParseBool refuses. An empty
 * environment variable never gets here: it is unset, as viper reads it.
 */
const TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

/** A boolean as Go's strconv.ParseBool reads it; undefined for anything else. */
export function parseBool(raw: unknown): boolean | undefined {
  if (typeof raw === 'boolean') return raw;
  if (typeof raw === 'number' && (raw === 0 || raw === 1)) return raw === 1;
  if (typeof raw !== 'string') return undefined;
  return TRUE.has(raw) ? true : FALSE.has(raw) ? false : undefined;
}

/** A parsed setting: strings and enums as strings, durations in milliseconds, ints, bools. */
export type SettingValue = string | number | boolean;

/**
 * Parses a raw value (a flag's string, a YAML scalar, an environment variable) for `def`.
 * Returns the value, or a message naming the key and the rule it breaks.
 */
export function parseSetting(def: SettingDef, raw: unknown): { value: SettingValue } | { error: string } {
  const bad = (rule: string) => ({ error: `${def.key} ${rule} (got ${JSON.stringify(raw)})` });
  // Values are read as written, never trimmed: flintlockd's readers (strconv.ParseBool,
  // strconv.Atoi, time.ParseDuration, net.Listen) refuse surrounding whitespace, and a path or
  // name with a stray space is a different path or name to it too.
  const text = raw;
  switch (def.kind) {
    case 'string':
      if (def.list && Array.isArray(text)) {
        // Strings only: a YAML number in a list (1.10) is not written back as it was written.
        if (!text.every((e) => typeof e === 'string')) return bad('must be a string or a list of strings');
        // The one trimming left: list entries, as their reader (listSetting) trims around the
        // commas of the comma form; these keys are matchlock's own, not flintlockd's.
        return { value: text.map((e: string) => e.trim()).join(',') };
      }
      if (typeof text !== 'string' && typeof text !== 'number') return bad(def.list ? 'must be a string or a list of strings' : 'must be a string');
      if (def.endpoint && !(def.endpoint.optional && text === '')) {
        const r = parseEndpoint(String(text), def.endpoint);
        if ('error' in r) return bad(`${endpointRule(def.endpoint)}${def.endpoint.optional ? ', or empty for off' : ''}: ${r.error}`);
      }
      return { value: String(text) };
    case 'bool':
    {
      const b = parseBool(text);
      if (b === undefined) return bad('must be true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False, as Go\'s strconv.ParseBool reads them)');
      return { value: b };
    }
    case 'int': {
      // Number() would read '' as 0 and ' 5' as 5; strconv.Atoi takes neither.
      const n = typeof text === 'number' ? text : typeof text === 'string' && /^[+-]?\d+$/.test(text) ? Number(text) : NaN;
      const min = def.min ?? 0;
      if (!Number.isInteger(n) || n < min || (def.max !== undefined && n > def.max)) {
        return bad(def.max !== undefined ? `must be between ${min} and ${def.max}` : `must be a whole number >= ${min}`);
      }
      return { value: n };
    }
    case 'duration': {
      const ms = typeof text === 'string' ? parseDuration(text) : undefined;
      if (ms === undefined) return bad('must be a duration such as 30s, 10m or 1h');
      return { value: ms };
    }
    case 'enum': {
      const values = def.values ?? [];
      if (typeof text !== 'string' || !values.includes(text)) return bad(`must be ${values.map((v) => (v === '' ? 'empty' : v)).join(', ').replace(/, ([^,]*)$/, ' or $1')}`);
      return { value: text };
    }
  }
}
