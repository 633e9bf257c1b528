import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { run } from '../../src/cli/main.js';

async function matchlock(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; err: string }> {
  let err = '';
  const code = await run(argv, { out: () => true, err: (t) => ((err += t), true) }, env);
  return { code, err };
}

describe('the global --host is held to the endpoint rule before anything is dialled', () => {
  it('refuses a bad port or host with the usage exit code, naming --host and the rule', async () => {
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [['--host', 'localhost:abc'], {}, /--host localhost:abc must be host:port with a port from 1 to 65535.*port "abc" is not a number/],
      [['--host', '127.0.0.1:99999'], {}, /--host 127\.0\.0\.1:99999 must be host:port.*port "99999" is not a number from 0 to 65535/],
      [['--host', '127.0.0.1:0'], {}, /--host 127\.0\.0\.1:0 must be host:port.*port 0 cannot be dialled/],
      [['--host', 'http://127.0.0.1:9090'], {}, /a scheme \(http:\/\/\) is not part of the endpoint/],
      [['--host', 'unix://tmp/x.sock'], {}, /"tmp" where a host goes/],
      [[], { MATCHLOCK_HOST: 'localhost:abc' }, /--host localhost:abc must be host:port.*port "abc"/],
    ];
    for (const [args, env, message] of cases) {
      const { code, err } = await matchlock([...args, 'vm', 'list'], env);
      assert.equal(code, 2, err);
      assert.match(err, message);
      assert.doesNotMatch(err, /loopback|ERR_SOCKET_BAD_PORT|RangeError/);
    }
  });

  it("keeps grpc-js's dns: target form", async () => {
    // Nothing listens on port 1 of loopback: the dial fails as unavailable (5), not as usage.
    const { code, err } = await matchlock(['--host', 'dns:127.0.0.1:1', '--insecure', '--request-timeout', '2s', 'vm', 'list']);
    assert.notEqual(code, 2, err);
  });
});
