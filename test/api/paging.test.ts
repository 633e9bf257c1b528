// ListMicroVMs a page at a time (AIP-158 with flintlock's wire format): keyset pages in uid
// order that stay exact while records come and go, tokens bound to their filter, bounded pages,
// and flintlock's clients (no page_size) still getting everything in one answer.
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { serviceDefinition } from '../../src/adapters/api/grpc/service-def.js';
import { createHttpApi } from '../../src/adapters/api/http/server.js';
import { MAX_PAGE_BYTES, MAX_PAGE_SIZE } from '../../src/adapters/api/paging.js';
import { SqliteStore } from '../../src/adapters/store/sqlite/store.js';
import { seededUid, storedMicroVM } from '../helpers/records.js';
import {
  ListMicroVMsRequestSchema,
  MicroVM as MicroVMServiceDesc,
  type ListMicroVMsResponse,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { silentLogger } from '../fakes/memory-store.js';
import { grpcApiOver, serviceOver } from '../helpers/api-server.js';
import { tempDir } from '../helpers/daemon.js';


/** uids sort as their numbers do: 26 characters, like a ULID. */
const uidOf = seededUid;

const record = (n: number, namespace: string, fill = 64) => storedMicroVM(uidOf(n), { name: `vm-${n}`, namespace, metadata: { 'user-data': randomBytes(fill).toString('base64') } });

function grpcClient(target: string) {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(MicroVMServiceDesc), 'MicroVM');
  const client = new Ctor(target, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 }) as unknown as Record<string, (...a: unknown[]) => void> & grpc.Client;
  const list = (req: ListInit): Promise<ListMicroVMsResponse> =>
    new Promise((resolve, reject) => {
      client.listMicroVMs?.call(client, create(ListMicroVMsRequestSchema, req), (err: grpc.ServiceError | null, res: ListMicroVMsResponse) => (err ? reject(err) : resolve(res)));
    });
  return { list, close: () => client.close() };
}

type ListInit = MessageInitShape<typeof ListMicroVMsRequestSchema>;

const uids = (res: ListMicroVMsResponse) => res.microvm.map((m) => m.spec?.uid ?? '');

describe('ListMicroVMs pages', () => {
  const tmp = tempDir('paging');
  const RECORDS = 2500;
  let store: SqliteStore;
  let server: Awaited<ReturnType<typeof grpcApiOver>>;
  let client: ReturnType<typeof grpcClient>;

  before(async () => {
    store = new SqliteStore(join(tmp.path, 'paging.db'));
    // Even numbers: room for inserts between any two records.
    for (let i = 0; i < RECORDS; i++) store.insert(record(2 * i + 2, `ns-${i % 5}`));
    server = await grpcApiOver(store, tmp.path);
    client = grpcClient(server.target);
  });
  after(() => {
    client.close();
    server.stop();
    store.close();
    tmp.remove();
  });

  it('return each record that exists throughout exactly once, in uid order, while records are created and deleted between and during pages', async () => {
    const initial = store.uids({}, {});
    assert.equal(initial.length, RECORDS);
    const deleted = new Set<string>();
    const created = new Set<string>();
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    // Inserts at odd numbers anywhere (behind and ahead of the pages already read) and deletes
    // of random records, behind and ahead: an offset-based page would skip or repeat records.
    const churn = () => {
      for (let k = 0; k < 8; k++) {
        const n = 2 * rand(RECORDS + 1) + 1;
        if (!created.has(uidOf(n)) && !store.get(uidOf(n))) {
          store.insert(record(n, `ns-${n % 5}`));
          created.add(uidOf(n));
        }
        const victim = initial[rand(initial.length)] as string;
        if (store.remove(victim)) deleted.add(victim);
      }
    };
    let writing = true;
    const writer = (async () => {
      while (writing) {
        churn();
        await new Promise((r) => setImmediate(r));
      }
    })();
    const seen: string[] = [];
    let pages = 0;
    let token = '';
    try {
      do {
        const res = await client.list({ namespace: '', pageSize: 100, pageToken: token });
        assert.ok(res.microvm.length <= 100, `page of ${res.microvm.length}`);
        seen.push(...uids(res));
        pages++;
        token = res.nextPageToken;
        churn();
      } while (token !== '');
    } finally {
      writing = false;
      await writer;
    }
    assert.ok(pages >= RECORDS / 100, `${pages} pages`);
    assert.ok(deleted.size > 100 && created.size > 100, `churn: ${deleted.size} deleted, ${created.size} created`);
    assert.deepEqual(seen, [...seen].sort(), 'uid order across pages');
    assert.equal(new Set(seen).size, seen.length, 'no record twice');
    const seenSet = new Set(seen);
    const missing = initial.filter((u) => !deleted.has(u) && !seenSet.has(u));
    assert.deepEqual(missing, [], 'every record that existed throughout was returned');
    for (const u of seen) assert.ok(initial.includes(u) || created.has(u), `${u} was a record`);
  });

  it('refuse a token used with another filter, a token not issued here and a negative page_size, naming the field', async () => {
    const first = await client.list({ namespace: 'ns-1', pageSize: 10 });
    assert.equal(first.microvm.length, 10);
    assert.notEqual(first.nextPageToken, '');
    const refused = async (req: ListInit, field: string) => {
      await assert.rejects(client.list(req), (err: grpc.ServiceError) => {
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.details);
        assert.ok(err.details.startsWith(`${field}: `), err.details);
        return true;
      });
    };
    await refused({ namespace: 'ns-2', pageSize: 10, pageToken: first.nextPageToken }, 'page_token');
    await refused({ namespace: '', pageSize: 10, pageToken: first.nextPageToken }, 'page_token');
    await refused({ namespace: 'ns-1', name: 'vm-7', pageSize: 10, pageToken: first.nextPageToken }, 'page_token');
    await refused({ namespace: 'ns-1', pageSize: 10, pageToken: 'bm90IGEgdG9rZW4' }, 'page_token');
    await refused({ namespace: 'ns-1', pageSize: 10, pageToken: first.nextPageToken.slice(0, -3) }, 'page_token');
    await refused({ namespace: 'ns-1', pageSize: -1 }, 'page_size');
    // The same filter continues where the first page ended.
    const second = await client.list({ namespace: 'ns-1', pageSize: 10, pageToken: first.nextPageToken });
    assert.ok((uids(second)[0] ?? '') > (uids(first).at(-1) ?? ''));
  });

  it('without page_size (flintlock clients) answer every record at once with no token; a token without page_size gives the rest', async () => {
    const all = await client.list({ namespace: '' });
    assert.equal(all.microvm.length, store.uids({}, {}).length);
    assert.equal(all.nextPageToken, '');
    const first = await client.list({ namespace: 'ns-3', pageSize: 7 });
    const rest = await client.list({ namespace: 'ns-3', pageToken: first.nextPageToken });
    assert.deepEqual([...uids(first), ...uids(rest)], store.uids({ namespace: 'ns-3' }, {}));
    assert.equal(rest.nextPageToken, '');
  });

  it('answer concurrent Lists each with its own records (answers share a reused buffer)', async () => {
    const filters = Array.from({ length: 24 }, (_, i) => ({ namespace: i % 6 === 5 ? '' : `ns-${i % 5}`, pageSize: i % 2 ? 0 : 150 }));
    const answers = await Promise.all(filters.map((f) => client.list(f)));
    answers.forEach((res, i) => {
      const f = filters[i] as { namespace: string; pageSize: number };
      const want = store.uids({ namespace: f.namespace }, f.pageSize ? { limit: f.pageSize } : {});
      assert.deepEqual(uids(res), want, JSON.stringify(f));
      for (const m of res.microvm) assert.ok(f.namespace === '' || m.spec?.namespace === f.namespace);
    });
  });

  it(`cap page_size at ${MAX_PAGE_SIZE} and a page at ${MAX_PAGE_BYTES} bytes`, async () => {
    const big = await client.list({ namespace: '', pageSize: 100_000 });
    assert.equal(big.microvm.length, MAX_PAGE_SIZE);
    assert.notEqual(big.nextPageToken, '');
    // 40 records of some 100 KB: more than a page may hold.
    for (let i = 0; i < 40; i++) store.insert(record(10_000_000 + i, 'large', 75_000));
    const got: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const res = await client.list({ namespace: 'large', pageSize: 1000, pageToken: token });
      const bytes = res.microvm.reduce((n, m) => n + (m.spec?.metadata['user-data']?.length ?? 0), 0);
      assert.ok(bytes <= MAX_PAGE_BYTES, `page of ${bytes} bytes`);
      got.push(...uids(res));
      token = res.nextPageToken;
      pages++;
    } while (token !== '');
    assert.ok(pages >= 2, `${pages} pages`);
    assert.deepEqual(got, store.uids({ namespace: 'large' }, {}));
  });

  it('over HTTP/JSON too: page_size and page_token as query parameters, nextPageToken in the answer', async () => {
    const service = serviceOver(store);
    const http = createHttpApi({ service, logger: silentLogger });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(http.address() as AddressInfo).port}/v1alpha1/microvm`;
    try {
      const got: string[] = [];
      let token = '';
      let pages = 0;
      do {
        const res = await fetch(`${base}/ns-4?page_size=200${token ? `&pageToken=${token}` : ''}`);
        assert.equal(res.status, 200);
        const body = (await res.json()) as { microvm?: { spec: { uid: string } }[]; nextPageToken?: string };
        assert.ok((body.microvm?.length ?? 0) <= 200);
        got.push(...(body.microvm ?? []).map((m) => m.spec.uid));
        token = body.nextPageToken ?? '';
        pages++;
      } while (token !== '');
      assert.ok(pages >= 2, `${pages} pages`);
      assert.deepEqual(got, store.uids({ namespace: 'ns-4' }, {}));
      const whole = (await (await fetch(`${base}/ns-4`)).json()) as { microvm: unknown[]; nextPageToken?: string };
      assert.equal(whole.microvm.length, got.length);
      // The last page's token is empty, and written all the same (grpc-gateway's EmitUnpopulated).
      assert.equal(whole.nextPageToken, '');
      const first = (await (await fetch(`${base}/ns-4?page_size=5`)).json()) as { nextPageToken: string };
      const other = await fetch(`${base}/ns-0?page_size=5&page_token=${first.nextPageToken}`);
      assert.equal(other.status, 400);
      assert.match(((await other.json()) as { message: string }).message, /^page_token: /);
      const bad = await fetch(`${base}/ns-0?page_size=ten`);
      assert.equal(bad.status, 400);
      assert.match(((await bad.json()) as { message: string }).message, /^page_size: /);
      // Past int32, as no gRPC client could send it: refused, naming the range, whatever its digits.
      for (const big of ['9999999999', '99999999999', '2147483648']) {
        const res = await fetch(`${base}/ns-0?page_size=${big}`);
        assert.equal(res.status, 400, big);
        assert.match(((await res.json()) as { message: string }).message, /^page_size: must be an int32/);
      }
    } finally {
      await new Promise((r) => http.close(r));
    }
  });
});
