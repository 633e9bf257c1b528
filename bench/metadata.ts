// Time create spends on a large meta-data, versus the way it was handled before (the `yaml`
// package's Document: parse, toJS, set instance_id, re-encode), measured in the same run.
//   node --import tsx bench/metadata.ts [rounds]
// Prints the median of each and the ratio new/old for a ~1 MiB block mapping (CAPMVM's shape,
// grown) and a ~0.5 MiB nested document.
import { parseDocument } from 'yaml';
import { cloudInitMetaData } from '../src/core/microvm/metadata.js';

const rounds = Number(process.argv[2] ?? 5);
const uid = '01HZY3NDEKTSV4RRFFQ69G5FAV';
const flat = Buffer.from(Array.from({ length: 25_000 }, (_, n) => `key_${n}: value number ${n} with some text`).join('\n') + '\n');
const nested = Buffer.from('a:\n' + Array.from({ length: 15_000 }, (_, n) => `  - [${n}, {x: ${n}, y: "s${n}"}]`).join('\n') + '\n');

function before(meta: Buffer): Buffer {
  const doc = parseDocument(meta.toString('utf8'), { uniqueKeys: false });
  doc.toJS();
  if (!doc.has('instance_id')) doc.set('instance_id', uid);
  return Buffer.from(doc.toString(), 'utf8');
}

function median(f: () => unknown): number {
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    f();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] ?? 0;
}

for (const [name, meta] of [['flat', flat], ['nested', nested]] as const) {
  const old = median(() => before(meta));
  const now = median(() => cloudInitMetaData(meta, uid, 'meta-data'));
  process.stdout.write(`${name} ${(meta.length / 1024).toFixed(0)} KiB: before ${old.toFixed(0)} ms, now ${now.toFixed(0)} ms, ratio ${(now / old).toFixed(2)}\n`);
}
