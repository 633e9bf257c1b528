// Child process for the no-lost-update test: bumps a counter label N times through the store.
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';

const [path, uid, times] = process.argv.slice(2);
const store = new SqliteStore(path ?? '');
for (let i = 0; i < Number(times); i++) {
  store.update(uid ?? '', (cur) => ({ ...cur, spec: { ...cur.spec, labels: { ...cur.spec.labels, n: String(Number(cur.spec.labels.n ?? '0') + 1) } } }));
}
store.close();
