import { create } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { cloudInitMetaData } from '../../src/core/microvm/metadata.js';
import { META_DATA_FIELD } from '../../src/core/microvm/validate.js';
import { CreateMicroVMRequestSchema, ListMicroVMsRequestSchema, type CreateMicroVMResponse } from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

describe('a create with a large meta-data does not hold the API', () => {
  const tmp = tempDir('metadata-thread');
  let d: DaemonHandle | undefined;
  after(async () => {
    await d?.stop();
    tmp.remove();
  });

  it('a List sent while the meta-data is read is answered first; the VM gets what the reading in line makes', async () => {
    d = await startDaemon(join(tmp.path, 'd'), ['--vmm-user', 'root', '--vmm-cgroups=false', '--retry-backoff', '1h']);
    const c = rawClient(d.target, undefined, undefined, 120_000);
    try {
      // About 330 KiB of nested YAML: seconds of cloud-init's rules (bench/metadata.ts).
      const doc = 'a:\n' + Array.from({ length: 10_000 }, (_, n) => `  - [${n}, {x: ${n}, y: "s${n}"}]`).join('\n') + '\n';
      const image = '127.0.0.1:9/metadata/absent:1';
      const spec = validSpec({ kernel: { image, filename: 'boot/vmlinux' }, rootVolume: { id: 'root', source: { containerSource: image } }, metadata: { 'meta-data': Buffer.from(doc).toString('base64') } });
      const answered: string[] = [];
      const created = c.call<CreateMicroVMResponse>('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec })).then((r) => (answered.push('create'), r));
      // Long enough for the create to arrive and its reading to start; in line, that reading
      // would hold the List until it is done.
      await sleep(300);
      await c.call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'ns1' }));
      answered.push('list');
      const res = await created;
      assert.deepEqual(answered, ['list', 'create']);
      const uid = res.microvm?.spec?.uid ?? '';
      const stored = Buffer.from(res.microvm?.spec?.metadata['meta-data'] ?? '', 'base64');
      assert.deepEqual(stored, cloudInitMetaData(Buffer.from(doc), uid, META_DATA_FIELD));
    } finally {
      c.close();
    }
  });
});
