import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WorkerMetaDataReader } from '../../src/adapters/metadata/worker-reader.js';
import { ErrorCode, MatchlockError } from '../../src/core/errors.js';
import { cloudInitMetaData } from '../../src/core/microvm/metadata.js';
import { META_DATA_FIELD } from '../../src/core/microvm/validate.js';

const UID = '01HZY3NDEKTSV4RRFFQ69G5FAV';
/** A nested meta-data document of about `entries` × 30 bytes: the kind cloud-init's rules read slowly. */
const nested = (entries: number) => 'a:\n' + Array.from({ length: entries }, (_, n) => `  - [${n}, {x: ${n}, y: "s${n}"}]`).join('\n') + '\n';
const b64 = (text: string) => Buffer.from(text).toString('base64');

/** What validateSpec's own reading makes of `value`, or the refusal it throws. */
function inLine(value: string): Buffer | MatchlockError {
  try {
    return cloudInitMetaData(Buffer.from(value, 'base64'), UID, META_DATA_FIELD);
  } catch (err) {
    return err as MatchlockError;
  }
}

describe('WorkerMetaDataReader: meta-data read by cloud-init rules on a thread of its own', () => {
  const readers: WorkerMetaDataReader[] = [];
  const make = (opts: ConstructorParameters<typeof WorkerMetaDataReader>[0] = {}) => {
    const r = new WorkerMetaDataReader(opts);
    readers.push(r);
    return r;
  };
  after(async () => {
    for (const r of readers) await r.close();
  });

  it('makes what the reading in line makes, bytes and refusals alike, and leaves small values to the caller', async () => {
    const r = make();
    const valid = b64(nested(1000));
    // Not a mapping: refused, naming the field.
    const refused = b64(`- ${nested(1000)}`);
    assert.ok(valid.length > 16 * 1024 && refused.length > 16 * 1024);
    const ok = await r.read(valid, UID, META_DATA_FIELD);
    assert.deepEqual(ok, { value: valid, uid: UID, outcome: inLine(valid) });
    const no = await r.read(refused, UID, META_DATA_FIELD);
    const expected = inLine(refused);
    assert.ok(expected instanceof MatchlockError && no?.outcome instanceof MatchlockError, 'both refuse it');
    assert.deepEqual([no.outcome.code, no.outcome.message, no.outcome.field], [expected.code, expected.message, expected.field]);
    assert.equal(await r.read(b64('local_hostname: a\n'), UID, META_DATA_FIELD), undefined);
  });

  it('a document that needs more than its heap is refused naming the field; the next reading gets a new thread', async () => {
    const r = make({ inLineMax: 0, heapMb: 16 });
    await assert.rejects(r.read(b64(nested(10_000)), UID, META_DATA_FIELD), (err: unknown) => {
      assert.ok(err instanceof MatchlockError);
      assert.equal(err.code, ErrorCode.InvalidArgument);
      assert.equal(err.field, META_DATA_FIELD);
      assert.match(err.message, /needs more than the 16 MiB matchlockd gives a meta-data reading/);
      return true;
    });
    const small = b64('a: [1, 2]\n');
    assert.deepEqual((await r.read(small, UID, META_DATA_FIELD))?.outcome, inLine(small));
  });

  it('a thread that ends while reading fails that reading with Internal; the reader goes on with a new one', async () => {
    const r = make({ inLineMax: 0 });
    const pending = r.read(b64(nested(5000)), UID, META_DATA_FIELD);
    // The thread is the reader's own; ended from outside, as a crash would end it.
    for (let i = 0; i < 200 && !(r as unknown as { worker?: unknown }).worker; i++) await sleep(10);
    await (r as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
    await assert.rejects(pending, (err: unknown) => err instanceof MatchlockError && err.code === ErrorCode.Internal && /ended before it answered/.test(err.message));
    const small = b64('b: 2\n');
    assert.deepEqual((await r.read(small, UID, META_DATA_FIELD))?.outcome, inLine(small));
  });

  it('refuses a reading while others wait past queuedMax characters, until they are read', async () => {
    const r = make({ inLineMax: 0, queuedMax: 60_000 });
    const doc = b64(nested(1200));
    assert.ok(doc.length > 30_000 && doc.length < 60_000);
    const first = r.read(doc, UID, META_DATA_FIELD);
    await assert.rejects(r.read(doc, UID, META_DATA_FIELD), (err: unknown) => err instanceof MatchlockError && err.code === ErrorCode.ResourceExhausted && err.field === META_DATA_FIELD && /send the create again shortly/.test(err.message));
    assert.deepEqual((await first)?.outcome, inLine(doc));
    assert.deepEqual((await r.read(doc, UID, META_DATA_FIELD))?.outcome, inLine(doc), 'read once the queue is empty again');
  });

  it('an idle thread is ended; close() fails what still waits with Unavailable', async () => {
    const r = make({ inLineMax: 0, idleMs: 50 });
    await r.read(b64('c: 3\n'), UID, META_DATA_FIELD);
    const thread = () => (r as unknown as { worker?: unknown }).worker;
    assert.ok(thread(), 'a thread was started');
    for (let i = 0; i < 100 && thread(); i++) await sleep(20);
    assert.equal(thread(), undefined, 'ended after idleMs without a reading');
    const waiting = r.read(b64(nested(5000)), UID, META_DATA_FIELD);
    for (let i = 0; i < 200 && !thread(); i++) await sleep(10);
    const refused = assert.rejects(waiting, (err: unknown) => err instanceof MatchlockError && err.code === ErrorCode.Unavailable);
    await r.close();
    await refused;
    assert.equal(await r.read(b64(nested(5000)), UID, META_DATA_FIELD), undefined, 'a closed reader leaves every value to the caller');
  });
});
