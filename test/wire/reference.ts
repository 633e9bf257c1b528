import { cpSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/daemon.js';

/** ../shared/specs/flintlock beside the checkout: read-only reference data, never imported at run time. */
export const REFERENCE_DIR = join(ROOT, '..', 'shared', 'specs', 'flintlock');

export function referenceAvailable(): boolean {
  return existsSync(join(REFERENCE_DIR, 'types', 'microvm.proto'));
}

/** Removes an `option (...) = { ... };` block, braces balanced. */
function stripOptionBlocks(text: string): string {
  let out = '';
  let i = 0;
  for (;;) {
    const start = text.indexOf('option (', i);
    if (start < 0) return out + text.slice(i);
    const brace = text.indexOf('{', start);
    const semi = text.indexOf(';', start);
    if (brace < 0 || (semi >= 0 && semi < brace)) {
      out += text.slice(i, semi + 1);
      i = semi + 1;
      continue;
    }
    let depth = 0;
    let j = brace;
    for (; j < text.length; j++) {
      if (text[j] === '{') depth++;
      else if (text[j] === '}' && --depth === 0) break;
    }
    const end = text.indexOf(';', j);
    out += text.slice(i, start);
    i = end + 1;
  }
}

/**
 * A scratch copy of the reference protos without the google.api / openapiv2 imports and options
 * (not shipped with the reference), so buf and protoc can compile them.
 */
export function strippedReference(dest: string): void {
  cpSync(REFERENCE_DIR, dest, { recursive: true });
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.proto')) {
        const text = readFileSync(p, 'utf8')
          .split('\n')
          .filter((l) => !/^import "(google\/api|protoc-gen-openapiv2)\//.test(l))
          .join('\n');
        writeFileSync(p, stripOptionBlocks(text));
      }
    }
  };
  walk(dest);
}
