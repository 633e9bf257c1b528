import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { httpGet, readAll } from './http.js';

describe('httpGet', () => {
  it('a registry that stops sending in the middle of an answer fails the read with the timeout named, not "aborted"', async () => {
    const held: ServerResponse[] = [];
    const server = createServer((req, res) => {
      if (req.url === '/head') return void held.push(res);
      res.writeHead(200, { 'content-length': '1000' });
      res.write('{');
      held.push(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const res = await httpGet(`http://${host}/body`, { timeoutMs: 200 });
      await assert.rejects(readAll(res), { message: `${host} sent nothing more of its answer for 200 ms` });
      await assert.rejects(httpGet(`http://${host}/head`, { timeoutMs: 200 }), { message: `no answer from ${host} within 200 ms` });
    } finally {
      for (const r of held) r.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('bounds the name lookup and the connect too, with the same timeout and message', async () => {
    // A resolver that never answers (a black-holed DNS server): before, Node's agent ended the
    // request after its own 5 s with a message naming the 30 s bound, and a shorter bound was
    // not applied at all until the socket connected.
    const hung = () => undefined;
    const t0 = Date.now();
    await assert.rejects(httpGet('http://registry.test:5000/v2/', { timeoutMs: 300, lookup: hung }), { message: 'no answer from registry.test:5000 within 300 ms' });
    assert.ok(Date.now() - t0 < 4000, 'the bound given, not the agent\'s 5 s');
  });
});
