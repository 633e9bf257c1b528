import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { parse } from 'yaml';
import { formatVms } from '../../src/cli/output.js';
import { run } from '../../src/cli/main.js';
import { EXIT } from '../../src/cli/client.js';
import { tempDir } from '../helpers/daemon.js';
import { MicroVMSchema } from '../../src/gen/types/microvm_pb.js';

/** What PyYAML's safe_load (YAML 1.1, as Ansible and most Python tools read) makes of `text`, as JSON. */
function pyyaml(text: string): unknown {
  const json = execFileSync('python3', ['-c', 'import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'], { input: text, encoding: 'utf8' });
  return JSON.parse(json);
}

describe('-o yaml', () => {
  it('reads back in a YAML 1.1 reader exactly as -o json does', () => {
    // Unquoted, PyYAML reads 52:54:00:12:34:56 as a base-60 integer, `on` and `no` as booleans
    // and 0777 as an octal integer; a script reading `-o yaml` would get those instead.
    const vm = create(MicroVMSchema, {
      version: 3,
      spec: {
        id: 'no', namespace: 'on', vcpu: 2, memoryInMb: 1024,
        labels: { tier: 'yes', build: '0777', at: '12:30' },
        interfaces: [{ deviceId: 'eth1', guestMac: '52:54:00:12:34:56' }, { deviceId: 'on', guestMac: '02:aa:00:00:00:01' }],
      },
    });
    for (const single of [true, false]) {
      const json: unknown = JSON.parse(formatVms([vm], 'json', single));
      assert.deepEqual(pyyaml(formatVms([vm], 'yaml', single)), json);
    }
  });
});

describe('-o json|yaml on commands without a daemon', () => {
  it('image ls, prune and rm print a document in the format asked, not the table', async () => {
    const tmp = tempDir('cli-formats');
    try {
      const state = ['--state-dir', tmp.path, '--config', '/dev/null', '--init'];
      const cli = async (args: string[]) => {
        let out = '';
        const code = await run(args, { out: (t) => (out += t), err: () => undefined }, {});
        return { code, out };
      };
      assert.deepEqual(parse((await cli(['-o', 'yaml', 'image', 'ls', ...state])).out), []);
      assert.deepEqual(JSON.parse((await cli(['-o', 'json', 'image', 'prune', ...state])).out), { removed: [] });
      assert.deepEqual(parse((await cli(['-o', 'yaml', 'image', 'prune', ...state])).out), { removed: [] });
      const rm = await cli(['-o', 'json', 'image', 'rm', 'localhost/none:1', ...state]);
      assert.equal(rm.code, EXIT.notFound);
      assert.deepEqual(JSON.parse(rm.out), { removed: [] }, 'a refusal still prints what was removed before it');
    } finally {
      tmp.remove();
    }
  });
});
