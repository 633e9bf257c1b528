import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The directory holding matchlock's package.json, bin/, libexec/, proto/ and dist/: the first
 * directory above this module that has a package.json. Found by walking up rather than by a
 * fixed relative path because this module runs from src/ (a checkout through tsx), from dist/
 * (tsc's output) and from a chunk of the daemon's bundle in dist/matchlockd/.
 */
export const PACKAGE_ROOT = packageRoot(dirname(fileURLToPath(import.meta.url)));

function packageRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}
