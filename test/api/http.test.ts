import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';
import { rawHttp } from '../helpers/raw-http.js';

interface Reply {
  status: number;
  body: { microvm?: { spec: Record<string, unknown> & { uid: string }; status?: { state?: string } } | { spec: { uid: string } }[]; code?: number; message?: string };
}

describe('HTTP/JSON API', () => {
  const tmp = tempDir('http');
  let d: DaemonHandle;
  before(async () => {
    d = await startDaemon(tmp.path, ['--enable-http', '--http-endpoint', '127.0.0.1:0']);
  });
  after(async () => {
    await d?.stop();
    tmp.remove();
  });
  const call = (method: string, path: string, body?: unknown) =>
    new Promise<Reply>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: d.httpPort, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Reply['body']) : {} }));
      });
      req.on('error', reject);
      req.end(body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body));
    });

  it('creates from snake_case and camelCase bodies with enum names or numbers, and every route is reachable', async () => {
    const snake = await call('POST', '/v1alpha1/microvm', {
      id: 'h1', namespace: 'web', kernel: { image: 'k:1', filename: 'boot/vmlinux', add_network_config: true },
      root_volume: { id: 'root', source: { container_source: 'r:1' } },
      interfaces: [{ device_id: 'eth1', type: 'TAP', guest_mac: '02:00:00:00:00:05' }], labels: { team: 'a' },
    });
    assert.equal(snake.status, 200, JSON.stringify(snake.body));
    const camel = await call('POST', '/v1alpha1/microvm', {
      id: 'h2', namespace: 'web', memoryInMb: 2048, kernel: { image: 'k:1', filename: 'boot/vmlinux' },
      rootVolume: { id: 'root', source: { containerSource: 'r:1' } }, interfaces: [{ deviceId: 'eth1', type: 1 }],
    });
    assert.equal(camel.status, 200, JSON.stringify(camel.body));
    const m1 = snake.body.microvm as { spec: Record<string, unknown> & { uid: string } };
    const m2 = camel.body.microvm as { spec: Record<string, unknown> & { uid: string } };
    assert.deepEqual(m1.spec.labels, { team: 'a' });
    assert.equal(m2.spec.memoryInMb, 2048);

    const got = await call('GET', `/v1alpha1/microvm/uid/${m1.spec.uid}`);
    assert.equal(got.status, 200);
    const gotVm = got.body.microvm as { spec: { uid: string; metadata: Record<string, string> } };
    assert.equal(gotVm.spec.uid, m1.spec.uid);
    assert.deepEqual(parse(Buffer.from(gotVm.spec.metadata['meta-data'] ?? '', 'base64').toString()), { instance_id: m1.spec.uid, 'instance-id': m1.spec.uid });

    const listNs = await call('GET', '/v1alpha1/microvm/web');
    assert.deepEqual((listNs.body.microvm as { spec: { uid: string } }[]).map((m) => m.spec.uid), [m1.spec.uid, m2.spec.uid]);
    const byName = await call('GET', '/v1alpha1/microvm/web?name=h2');
    assert.deepEqual((byName.body.microvm as { spec: { uid: string } }[]).map((m) => m.spec.uid), [m2.spec.uid]);
    const all = await call('GET', '/v1alpha1/microvm');
    assert.equal((all.body.microvm as unknown[]).length, 2);
    // The route without a namespace in its path takes it as a query parameter, as grpc-gateway
    // binds the request fields the path does not; a namespace with no VM lists nothing.
    const byQuery = await call('GET', '/v1alpha1/microvm?namespace=web&name=h1');
    assert.deepEqual((byQuery.body.microvm as { spec: { uid: string } }[]).map((m) => m.spec.uid), [m1.spec.uid]);
    assert.deepEqual((await call('GET', '/v1alpha1/microvm?namespace=nomatch')).body, { microvm: [], nextPageToken: '' });
    assert.equal((await call('GET', '/v1alpha1/microvm?namespace=web&namespace=other')).status, 400);
    // The Get route with its uid left out is a Get of the empty uid, not a List of namespace "uid".
    for (const path of ['/v1alpha1/microvm/uid/', '/v1alpha1/microvm/uid']) {
      const empty = await call('GET', path);
      assert.equal(empty.status, 400, `${path}: ${JSON.stringify(empty.body)}`);
      assert.match(empty.body.message ?? '', /uid/);
    }

    const del = await call('DELETE', `/v1alpha1/microvm/${m1.spec.uid}`);
    assert.equal(del.status, 200);
    let gone: Reply | undefined;
    for (let i = 0; i < 50; i++) {
      gone = await call('GET', `/v1alpha1/microvm/uid/${m1.spec.uid}`);
      if (gone.status === 404) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(gone?.status, 404);
    assert.equal(gone?.body.code, 5);
    assert.match(gone?.body.message ?? '', /not found/);
  });

  it('answers bad input with 400 and a gRPC-style error naming the field', async () => {
    const bad = await call('POST', '/v1alpha1/microvm', { id: 'x', kernel: { image: 'k:1', filename: 'boot/vmlinux' }, interfaces: [] });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.code, 3);
    assert.match(bad.body.message ?? '', /^microvm\.root_volume: /);
    const notJson = await call('POST', '/v1alpha1/microvm', '{not json');
    assert.equal(notJson.status, 400);
    assert.match(notJson.body.message ?? '', /^body: must be a JSON MicroVMSpec/);
    // An unknown field is dropped (grpc-gateway's DiscardUnknown); what is missing is still named.
    const unknownField = await call('POST', '/v1alpha1/microvm', { id: 'x', bogus: 1 });
    assert.equal(unknownField.status, 400);
    assert.match(unknownField.body.message ?? '', /^microvm\.kernel: is required/);
    // An enum name it does not know is refused naming the field's path, not dropped to the zero value.
    const badEnum = await call('POST', '/v1alpha1/microvm', { id: 'x', interfaces: [{ deviceId: 'eth0' }, { deviceId: 'eth1', type: 'TAPP' }] });
    assert.equal(badEnum.status, 400);
    assert.match(badEnum.body.message ?? '', /^microvm\.interfaces\[1\]\.type: must be one of MACVTAP, TAP \(or its number\), not "TAPP"$/);
    const wrongType = await call('POST', '/v1alpha1/microvm', { id: 'x', vcpu: 'two' });
    assert.equal(wrongType.status, 400);
    assert.match(wrongType.body.message ?? '', /^body: must be a JSON MicroVMSpec \(.*vcpu/);
    const notObject = await call('POST', '/v1alpha1/microvm', '[1]');
    assert.match(notObject.body.message ?? '', /^body: must be a JSON MicroVMSpec, a JSON object, not an array$/);
    // A path served with other methods: grpc-gateway's Method Not Allowed, UNIMPLEMENTED (501),
    // with the methods it takes; a path served by no route stays 404.
    for (const [method, path, allow] of <[string, string, string][]>[['PUT', '/v1alpha1/microvm', 'GET, POST'], ['DELETE', '/v1alpha1/microvm', 'GET, POST'], ['POST', '/v1alpha1/microvm/ns', 'DELETE, GET'], ['POST', '/v1alpha1/microvm/uid/x', 'GET'], ['GET', '/v1/microvm/x/stop', 'POST'], ['POST', '/v1/server-info', 'GET']]) {
      const r = await rawHttp(d.httpPort ?? 0, method, path);
      assert.equal(r.status, 501, `${method} ${path}`);
      // The body may come chunked: the JSON lies between the first "{" and the last "}".
      const parsed = JSON.parse(r.body.slice(r.body.indexOf('{'), r.body.lastIndexOf('}') + 1)) as { code: number; message: string };
      assert.equal(parsed.code, 12);
      // HEAD goes wherever GET does.
      const want = allow.includes('GET') ? `${allow}, HEAD` : allow;
      assert.match(parsed.message, new RegExp(`^Method Not Allowed: ${method} .* answers ${want}$`));
      assert.equal(/allow: ([^\r]*)\r\n/i.exec(r.head)?.[1], want);
    }
    assert.equal((await call('PUT', '/v1alpha1/elsewhere')).status, 404);
    const head = await rawHttp(d.httpPort ?? 0, 'HEAD', '/v1alpha1/microvm');
    assert.equal(head.status, 200, 'HEAD is GET without the body');
    assert.equal(head.body, '');
    // A List field given twice, by one name or both, is refused naming it.
    for (const q of ['page_size=2&page_size=1', 'page_size=2&pageSize=3', 'name=a&name=b', 'pageToken=a&page_token=b']) {
      const r = await call('GET', `/v1alpha1/microvm?${q}`);
      assert.equal(r.status, 400, q);
      assert.match(r.body.message ?? '', /^(page_size|name|page_token): must be given once/, q);
    }
    // Hostile meta-data is the client's fault, not the daemon's: 400 naming the field, never 500.
    const spec = { id: 'x', kernel: { image: 'k:1', filename: 'boot/vmlinux' }, rootVolume: { id: 'root', source: { containerSource: 'r:1' } }, interfaces: [{ deviceId: 'eth1', type: 1 }] };
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...'bcdefg'.split('').map((k, n) => `${k}: &${k} [${Array(10).fill(`*${'abcdefg'[n]}`).join(', ')}]`)].join('\n');
    for (const metaData of [bomb, 'local_hostname: *nowhere\n']) {
      const hostile = await call('POST', '/v1alpha1/microvm', { ...spec, metadata: { 'meta-data': Buffer.from(metaData).toString('base64') } });
      assert.equal(hostile.status, 400, JSON.stringify(hostile.body));
      assert.equal(hostile.body.code, 3);
      assert.match(hostile.body.message ?? '', /^microvm\.metadata\["meta-data"\]: /);
    }
  });

  // The JSON rules of flintlock's gateway, grpc-gateway v2's default marshaler (flintlock's
  // internal/command/run/run.go calls runtime.NewServeMux() with no options): grpc-gateway
  // runtime/marshaler_registry.go, defaultMarshaler = JSONPb{MarshalOptions{EmitUnpopulated:
  // true}, UnmarshalOptions{DiscardUnknown: true}}. What EmitUnpopulated writes is the table in
  // protobuf-go encoding/protojson/encode.go (MarshalOptions.EmitUnpopulated): zero scalars,
  // [] for lists, {} for maps, null for message fields; oneof members (proto3 optional ones
  // too) left out. Errors are google.rpc.Status marshalled the same way (runtime/errors.go,
  // DefaultHTTPErrorHandler; stream errors as {"error": Status}, runtime/handler.go errorChunk).
  const created = async (body: unknown) => {
    const r = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', JSON.stringify(body), { 'content-type': 'application/json' });
    const json = r.body.slice(r.body.indexOf('{'), r.body.lastIndexOf('}') + 1);
    return { status: r.status, text: json, vm: (JSON.parse(json) as { microvm?: Record<string, Record<string, unknown>> }).microvm };
  };
  const gwSpec = (id: string) => ({
    id, namespace: 'gw', kernel: { image: 'k:1', filename: 'boot/vmlinux' },
    rootVolume: { id: 'root', source: { containerSource: 'r:1' } }, interfaces: [{ deviceId: 'eth1', type: 'MACVTAP' }],
  });

  it('writes every field of an answer, unset ones included, as grpc-gateway v2 does', async () => {
    const made = await created(gwSpec('every'));
    assert.equal(made.status, 200, made.text);
    const status = made.vm?.status ?? {};
    const spec = made.vm?.spec ?? {};
    // PENDING and MACVTAP are their enums' zero values: written by name all the same.
    assert.equal(status.state, 'PENDING');
    assert.deepEqual(spec.interfaces, [{ deviceId: 'eth1', type: 'MACVTAP' }], 'guestMac, address and overrides are proto3 optional: left out');
    assert.equal(typeof spec.uid, 'string');
    assert.deepEqual(spec.additionalVolumes, []);
    assert.deepEqual(spec.labels, {});
    assert.equal(spec.deletedAt, null, 'an unset message field is null');
    assert.equal(spec.allowGuestAgent, false);
    assert.ok(!('initrd' in spec), 'initrd is proto3 optional: left out');
    assert.deepEqual(status.volumes, {});
    assert.equal(status.retry, 0);
    assert.equal(status.lastError, '');
    const info = JSON.parse((await rawHttp(d.httpPort ?? 0, 'GET', '/v1/server-info')).body.replace(/^[^{]*|[^}]*$/g, '')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(info), ['version', 'commit', 'apiVersions', 'providers', 'stateDir', 'daemonId', 'startedAt', 'uptime']);
    assert.deepEqual((await call('DELETE', `/v1alpha1/microvm/${String(spec.uid)}`)).body, {}, 'google.protobuf.Empty');
  });

  it('a List that matches nothing answers an empty microvm list, not {}', async () => {
    for (const path of ['/v1alpha1/microvm/gw?name=nope', '/v1alpha1/microvm/nowhere']) {
      const none = await call('GET', path);
      assert.equal(none.status, 200);
      assert.deepEqual(none.body, { microvm: [], nextPageToken: '' }, path);
    }
  });

  it('reads a field it does not know as absent (DiscardUnknown), in nested messages too', async () => {
    const made = await created({ ...gwSpec('unk'), futureField: 1, kernel: { image: 'k:1', filename: 'boot/vmlinux', futureKernelField: 'x' } });
    assert.equal(made.status, 200, made.text);
    assert.equal(made.vm?.spec?.id, 'unk');
    assert.ok(!made.text.includes('future'));
    await call('DELETE', `/v1alpha1/microvm/${String(made.vm?.spec?.uid)}`);
  });

  it('every power verb reads its body as its request message, under the same rules', async () => {
    // Before, start, pause and resume ignored their body whatever it was, while stop and
    // restart refused an unknown field.
    const gone = '01HZY3NDEKTSV4RRFFQ69G0000';
    for (const verb of ['stop', 'start', 'restart', 'pause', 'resume']) {
      const extra = await call('POST', `/v1/microvm/${gone}/${verb}`, verb === 'stop' || verb === 'restart' ? '{"grace": "5s", "bogus": 1}' : '{"bogus": 1}');
      assert.equal(extra.status, 404, `${verb} with an unknown field: ${JSON.stringify(extra.body)}`);
      assert.deepEqual(Object.keys(extra.body), ['code', 'message', 'details']);
      const garbage = await call('POST', `/v1/microvm/${gone}/${verb}`, 'not json');
      assert.equal(garbage.status, 400, `${verb} with a body that is not JSON`);
      assert.match(garbage.body.message ?? '', /^body: must be /);
      const wrong = await call('POST', `/v1/microvm/${gone}/${verb}`, '{"uid": 5}');
      assert.equal(wrong.status, 400, `${verb} with a uid that is no string`);
      assert.match(wrong.body.message ?? '', /^body: must be .*uid/);
    }
  });

  it('a stream ends on an error as {"error": Status}, details included', async () => {
    const refused = await rawHttp(d.httpPort ?? 0, 'GET', '/v1/events?after_id=999999999');
    const chunk = JSON.parse(refused.body.slice(refused.body.indexOf('{'), refused.body.lastIndexOf('}') + 1)) as { error: Record<string, unknown> };
    assert.deepEqual(Object.keys(chunk.error), ['code', 'message', 'details']);
    assert.deepEqual(chunk.error.details, []);
  });

  it('answers malformed request targets with 400 naming the part, never 500', async () => {
    const cases: [string, RegExp][] = [
      ['/v1alpha1/microvm/uid/%ZZ', /^path segment 4: has a malformed percent-encoding \("%ZZ"\)/],
      ['/v1alpha1/microvm/uid/%', /^path segment 4: has a malformed percent-encoding/],
      ['/v1alpha1/microvm/uid/%E0%A4%A', /^path segment 4: has a malformed percent-encoding/],
      ['/v1alpha1/microvm/uid/%C0%AF', /^path segment 4: has a malformed percent-encoding/],
      ['/v1alpha1/microvm/%zz', /^path segment 3: has a malformed percent-encoding/],
      ['/v1alpha1/microvm/ns?name=%G1', /^query parameter "name": has a malformed percent-encoding/],
      ['//', /^path: has an empty segment at position 1/],
      ['//v1alpha1/microvm', /^path: has an empty segment at position 1/],
      ['/v1alpha1//microvm/uid/01ARZ3NDEKTSV4RRFFQ69G5FAV', /^path: has an empty segment at position 2/],
    ];
    for (const method of ['GET', 'DELETE', 'POST']) {
      for (const [path, message] of cases) {
        const r = await call(method, path);
        assert.equal(r.status, 400, `${method} ${path}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, 3);
        assert.match(r.body.message ?? '', message, `${method} ${path}`);
      }
    }
    // A uid that decodes to anything at all is looked up, and simply not found.
    for (const uid of ['%2E%2E%2Fetc', '01ARZ3NDEKTSV4RRFFQ69G5FAU', 'a%2Fb', '%00', 'x'.repeat(10_000)]) {
      const r = await call('GET', `/v1alpha1/microvm/uid/${uid}`);
      assert.equal(r.status, 404, `${uid}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.message ?? '', /^microvm ".*not found$/);
      assert.ok((r.body.message ?? '').length < 200);
      assert.equal((await call('DELETE', `/v1alpha1/microvm/${uid}`)).status, 200, 'deleting an unknown uid succeeds');
    }
    assert.equal((await call('DELETE', '/v1alpha1/microvm/')).status, 501, 'the collection takes GET and POST, not DELETE');
  });

  it('a client hanging up mid-body is not logged as an internal failure', async () => {
    const sock = connect(d.httpPort ?? 0, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('POST /v1alpha1/microvm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id":');
    await new Promise((r) => setTimeout(r, 200));
    sock.destroy();
    await new Promise((r) => setTimeout(r, 500));
    const internal = d.logs.filter((l) => l.includes('http request failed'));
    assert.deepEqual(internal, []);
    assert.equal((await call('GET', '/v1alpha1/microvm')).status, 200);
  });

  it('a refusal sent before the body was read still reaches a client that is writing a big body', async () => {
    // Answering and closing with unread body bytes makes the kernel send a reset, which can
    // overtake the answer: the client then sees EPIPE or ECONNRESET instead of its status.
    const body = Buffer.alloc(1 << 20, 'x');
    const cases: [string, string, number][] = [
      ['POST', '/v1alpha1/microvm/uid/%ZZ', 400],
      ['POST', '/no/such/route', 404],
      ['PUT', '/v1/microvm/x/frob', 404],
      ['GET', '/v1alpha1/microvm', 200],
      ['POST', '/v1alpha1/microvm', 400],
    ];
    for (const [method, path, want] of cases) {
      const seen = new Map<number, number>();
      for (let i = 0; i < 10; i++) {
        const { status } = await rawHttp(d.httpPort ?? 0, method, path, body);
        seen.set(status, (seen.get(status) ?? 0) + 1);
      }
      assert.deepEqual([...seen], [[want, 10]], `${method} ${path} with a 1 MiB body`);
    }
    // Over the 4 MiB limit, the rest is read and dropped before the refusal names the field.
    const big = await rawHttp(d.httpPort ?? 0, 'POST', '/v1alpha1/microvm', Buffer.alloc(6 << 20, 'x'));
    assert.equal(big.status, 400);
    assert.match(big.body, /body: must be at most 4194304 bytes/);
  });
});
