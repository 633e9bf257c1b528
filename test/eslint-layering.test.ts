import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { ESLint } from 'eslint';
import { ROOT } from './helpers/daemon.js';

// The project's own ESLint config, run on mutated copies of real files placed in each folder:
// an import against the layering must fail lint, the same file without it must pass.
const eslint = new ESLint({ cwd: ROOT });

async function ruleHits(path: string, code: string): Promise<string[]> {
  const [res] = await eslint.lintText(code, { filePath: join(ROOT, path) });
  return (res?.messages ?? []).filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

it('an adapter importing the daemon fails lint', async () => {
  const ok = "import { run } from '../../exec.js';\nexport const x = run;\n";
  assert.deepEqual(await ruleHits('src/adapters/network/iproute2/mutated.ts', ok), []);
  const bad = "import { loadConfig } from '../../../daemon/config.js';\nexport const x = loadConfig;\n";
  assert.match((await ruleHits('src/adapters/network/iproute2/mutated.ts', bad)).join('\n'), /adapters implement core ports/);
});

it('the core importing node:fs, an adapter or the daemon fails lint; its tests may use fakes', async () => {
  assert.match((await ruleHits('src/core/microvm/mutated.ts', "import { readFileSync } from 'node:fs';\nexport const x = readFileSync;\n")).join(), /no I\/O/);
  assert.match((await ruleHits('src/core/microvm/mutated.ts', "import { run } from '../../adapters/exec.js';\nexport const x = run;\n")).join(), /nothing outside src\/core/);
  assert.match((await ruleHits('src/core/plan/mutated.ts', "import { KEYS } from '../../daemon/config.js';\nexport const x = KEYS;\n")).join(), /nothing outside src\/core/);
  assert.deepEqual(await ruleHits('src/core/microvm/mutated.test.ts', "import { MemoryStore } from '../../../test/fakes/memory-store.js';\nexport const x = MemoryStore;\n"), []);
});

it('host importing the CLI fails lint', async () => {
  const bad = "import { EXIT } from '../cli/client.js';\nexport const x = EXIT;\n";
  assert.match((await ruleHits('src/host/mutated.ts', bad)).join(), /never imports the CLI/);
  assert.deepEqual(await ruleHits('src/host/mutated.ts', "import { connect } from '../adapters/api/client.js';\nexport const x = connect;\n"), []);
});
