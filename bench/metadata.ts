// Time create spends on a large meta-data, versus the way it was handled before (the `yaml`
// package's Document: parse, toJS, set instance_id, re-encode), measured in the same run, and
// the same reading through the daemon's WorkerMetaDataReader (a thread of its own, started
// once; what a create waits for while the daemon serves other requests).
//   node --import tsx bench/metadata.ts [rounds]
// Prints the median of each and the ratios for a block mapping just under the 1 MiB metadata
// limit (CAPMVM's shape, grown) and a ~0.5 MiB nested document.
import { parseDocument } from 'yaml';
import { WorkerMetaDataReader } from '../src/adapters/metadata/worker-reader.js';
import { cloudInitMetaData } from '../src/core/microvm/metadata.js';

const rounds = Number(process.argv[2] ?? 5);
const uid = '01HZY3NDEKTSV4RRFFQ69G5FAV';
const flat = Buffer.from(Array.from({ length: 23_000 }, (_, n) => `key_${n}: value number ${n} with some text`).join('\n') + '\n');
const nested = Buffer.from('a:\n' + Array.from({ length: 15_000 }, (_, n) => `  - [${n}, {x: ${n}, y: "s${n}"}]`).join('\n') + '\n');

function before(meta: Buffer): Buffer {
  const doc = parseDocument(meta.toString('utf8'), { uniqueKeys: false });
  doc.toJS();
  if (!doc.has('instance_id')) doc.set('instance_id', uid);
  return Buffer.from(doc.toString(), 'utf8');
}

async function median(f: () => unknown): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    await f();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] ?? 0;
}

const reader = new WorkerMetaDataReader({ inLineMax: 0 });
// The thread's start (and, from the sources, the bundling of its script) is paid once a daemon.
await reader.read('a: 1', uid, 'meta-data');
for (const [name, meta] of [['flat', flat], ['nested', nested]] as const) {
  const old = await median(() => before(meta));
  const now = await median(() => cloudInitMetaData(meta, uid, 'meta-data'));
  const value = meta.toString('base64');
  const thread = await median(() => reader.read(value, uid, 'meta-data'));
  process.stdout.write(`${name} ${(meta.length / 1024).toFixed(0)} KiB: before ${old.toFixed(0)} ms, now ${now.toFixed(0)} ms (ratio ${(now / old).toFixed(2)}), on the reader's thread ${thread.toFixed(0)} ms (ratio to in line ${(thread / now).toFixed(2)})\n`);
}
await reader.close();
