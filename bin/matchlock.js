#!/usr/bin/env node
// An installed package runs the compiled JavaScript in dist/. A checkout (it has src/) runs the
// TypeScript sources through tsx, so a build left behind is never what runs there, unless
// MATCHLOCK_COMPILED=1 asks for dist/ (the start-up bench compares the two).
import { existsSync } from 'node:fs';
import { URL } from 'node:url';

const fromSource = existsSync(new URL('../src/cli/main.ts', import.meta.url)) && process.env.MATCHLOCK_COMPILED !== '1';
let entry;
if (fromSource) {
  const { register } = await import('tsx/esm/api');
  register();
  entry = await import('../src/cli/main.ts');
} else if (existsSync(new URL('../dist/cli/main.js', import.meta.url))) entry = await import('../dist/cli/main.js');
else {
  process.stderr.write('matchlock: the compiled JavaScript (dist/) is missing: run `npm run build` first, or unset MATCHLOCK_COMPILED to run the sources\n');
  process.exit(1);
}
await entry.main(process.argv);
