import assert from 'node:assert/strict';
import { createServer, globalAgent, type ServerResponse } from 'node:http';
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

  it("keeps the body's idle bound after a head that came later than the agent's own socket timeout", async () => {
    // Node's agent gives each socket a timeout of its own (5 s); when that passed while the
    // head was awaited (a pull-through cache fetching a layer first), a bound set through the
    // request never fired and a body that stalled then was waited for without end.
    // Node keeps the agent's options in a property its types leave out.
    const agentOptions = (globalAgent as unknown as { options: { timeout?: number | undefined } }).options;
    const agentTimeout = agentOptions.timeout;
    agentOptions.timeout = 100;
    const held: ServerResponse[] = [];
    const server = createServer((_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('{');
        held.push(res);
      }, 400);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const res = await httpGet(`http://${host}/slow`, { timeoutMs: 1000 });
      let guard: NodeJS.Timeout | undefined;
      const never = new Promise<string>((resolve) => (guard = setTimeout(() => resolve('still waiting after 8 s'), 8000)));
      const read = readAll(res).then(() => 'read to the end', (e: Error) => e.message);
      assert.equal(await Promise.race([read, never]), `${host} sent nothing more of its answer for 1000 ms`);
      clearTimeout(guard);
    } finally {
      agentOptions.timeout = agentTimeout;
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
