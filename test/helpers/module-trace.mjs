// Loaded with `node --import` before matchlockd: records which modules the daemon loads.
// Every ES module's URL is appended to $MATCHLOCK_MODULE_TRACE as it loads (a loader hook);
// on SIGUSR2 the CommonJS modules loaded so far (require's cache: what grpc-js, prom-client and
// the like require among themselves, which no ESM hook sees) are written to <that file>.cjs.
import { appendFileSync, writeFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

const out = process.env.MATCHLOCK_MODULE_TRACE;

export async function load(url, context, next) {
  const loaded = await next(url, context);
  if (out) appendFileSync(out, `${url}\n`);
  return loaded;
}

if (isMainThread && out) {
  register(import.meta.url);
  const cache = createRequire(import.meta.url).cache;
  process.on('SIGUSR2', () => writeFileSync(`${out}.cjs`, Object.keys(cache).join('\n') + '\n'));
}
