// Child process for the store's crash tests: bumps a counter label N times through the store.
// With a fourth argument `observed` the updates are not durable (UpdateOptions.durable false),
// and the worker prints "done" and waits to be killed instead of closing the store;
// `observed-close` makes the same updates and closes the store.
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';

const [path, uid, times, mode] = process.argv.slice(2);
const store = new SqliteStore(path ?? '');
const opts = mode === 'observed' || mode === 'observed-close' ? { durable: false } : {};
for (let i = 0; i < Number(times); i++) {
  store.update(uid ?? '', (cur) => ({ ...cur, spec: { ...cur.spec, labels: { ...cur.spec.labels, n: String(Number(cur.spec.labels.n ?? '0') + 1) } } }), opts);
}
if (mode === 'observed') {
  process.stdout.write('done\n');
  setInterval(() => undefined, 1 << 30);
} else {
  store.close();
}
