#!/usr/bin/env node
// An installed package runs the compiled JavaScript in dist/: the daemon's bundle
// (dist/matchlockd/, scripts/bundle-daemon.mjs). A checkout (it has src/) runs the TypeScript
// sources through tsx, so a build left behind is never what runs there, unless
// MATCHLOCK_COMPILED=1 asks for dist/ (the start-up bench compares the two).
import { existsSync } from 'node:fs';
import { URL } from 'node:url';
import { setFlagsFromString } from 'node:v8';

// V8 grows the young generation up to 2 × 16 MiB when objects are allocated quickly (a daemon
// start reading every record, a List) and then keeps it: about 15 MiB of an idle daemon's RSS,
// 30 MiB after reading 1,000 records. The daemon's allocations are small and short-lived, so
// the young generation stays at its initial 2 × 1 MiB, what `--max-semi-space-size=1` does
// (the flag host setup's unit passes); no growth is the one form of it V8 honours once running.
// List and create times are unchanged within noise (bench/README.md). An operator's own
// --max-semi-space-size (command line or NODE_OPTIONS) is left alone.
const nodeFlags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
if (!nodeFlags.some((a) => /^--max[-_]semi[-_]space[-_]size/.test(a))) setFlagsFromString('--semi-space-growth-factor=1');

// V8's optimizing compiler (TurboFan) is off while the daemon starts: loading ~190 modules makes
// node's own module-loader functions hot, and optimizing even one of them pages about 4 MB of
// the compiler's machine code from the node binary into the process (RSS it keeps while idle)
// and allocates its zones. Once serving, the compiler is on again and hot request paths are
// optimized as before; functions that warmed up meanwhile keep their counts. An operator's own
// choice of compiler tiers (command line or NODE_OPTIONS) is left alone.
const compilerChosen = nodeFlags.some((a) => /^--(no-)?(opt|turbofan|jitless|lite-mode)\b/.test(a.replaceAll('_', '-')));
if (!compilerChosen) setFlagsFromString('--no-opt');
const fromSource = existsSync(new URL('../src/daemon/main.ts', import.meta.url)) && process.env.MATCHLOCK_COMPILED !== '1';
let entry;
if (fromSource) {
  const { register } = await import('tsx/esm/api');
  register();
  entry = await import('../src/daemon/main.ts');
} else if (existsSync(new URL('../dist/matchlockd/main.js', import.meta.url))) entry = await import('../dist/matchlockd/main.js');
else {
  process.stderr.write('matchlockd: the compiled JavaScript (dist/) is missing: run `npm run build` first, or unset MATCHLOCK_COMPILED to run the sources\n');
  process.exit(1);
}
await entry.main(process.argv);
if (!compilerChosen) setFlagsFromString('--opt');

// A request path (a create, a delete, a pass's steps) runs a few times a minute, so its
// functions would spend their first calls in the interpreter until V8's budget sends them to
// Sparkplug, its non-optimizing compiler: a fresh daemon's creates ran mostly interpreted. Once
// serving, a function V8 compiles from then on (lazily, at its first call) gets Sparkplug's
// machine code at once. Not while starting: every start-up function would get it too (idle RSS
// +4 MB). Sequential create p50 against the bare server: bench/README.md, "Sparkplug once
// serving". An operator's own choice of these tiers is left alone.
const baselineChosen = nodeFlags.some((a) => /^--(no-)?(always-)?sparkplug\b|^--max-opt\b|^--(no-)?(jitless|lite-mode)\b/.test(a.replaceAll('_', '-')));
if (!baselineChosen) setFlagsFromString('--always-sparkplug');
