// Bundles the compiled daemon (dist/daemon/main.js, tsc's output) and the dependencies it loads
// into dist/matchlockd/, without comments and blanks, with what it imports on first use (prom-client, the HTTP
// gateway, node-tar, ...) in chunks of their own. Run by `npm run build` after tsc;
// bin/matchlockd.js runs dist/matchlockd/main.js.
//
// Why: V8 keeps the source text of every loaded module on its heap (for lazy compilation and
// Function.prototype.toString), and each module costs its own records and scopes. Node's
// loader read ~190 files with their comments and licence headers (2.5 MB of source); the
// minified bundle holds the same code in a few files. An idle daemon is about 4 MB smaller
// (bench/README.md, Start-up).
//
// Left outside the bundle: better-sqlite3 (a native addon found through `bindings`), what the
// daemon requires by name at run time (grpc-health-check, @grpc/reflection and protobufjs, on
// their first call; esbuild, which only a daemon running the sources uses), and the files run
// as processes of their own (dist/adapters/images/oci/unpack-process.js).
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { URL, fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = `${root}dist/matchlockd`;
rmSync(outdir, { recursive: true, force: true });
await build({
  absWorkingDir: root,
  entryPoints: ['dist/daemon/main.js'],
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Whitespace and syntax only: identifiers stay as written, because V8 names a stack frame,
  // a CPU profile's function and a heap snapshot's class by the identifier in the source, not
  // by `.name` (which keepNames sets for a name the bundle had to change to avoid a clash).
  minifyWhitespace: true,
  minifySyntax: true,
  keepNames: true,
  legalComments: 'eof',
  external: ['better-sqlite3', 'esbuild', 'tsx', 'grpc-health-check', '@grpc/reflection', '@grpc/proto-loader', 'protobufjs'],
  // The CommonJS dependencies call require() for node's modules; an ES module has none.
  banner: { js: "import { createRequire as __matchlockRequire } from 'node:module'; const require = __matchlockRequire(import.meta.url);" },
  logLevel: 'warning',
});
