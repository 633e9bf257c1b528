// Writes files through the adapters that rename a temporary into place, so a test can trace
// the syscalls they make: node --import tsx durable-worker.ts <dir>
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { renameDurably } from '../../src/adapters/durable.js';
import { VfatCloudInitDisk } from '../../src/adapters/metadata/cidata.js';
import { writeGuardFile } from '../../src/host/guard.js';

const dir = process.argv[2] ?? '.';
await mkdir(join(dir, 'vm'), { recursive: true });
await new VfatCloudInitDisk().write(join(dir, 'vm', 'cidata.img'), { 'meta-data': Buffer.from('instance-id: x\n'), 'user-data': Buffer.from('#cloud-config\n') });
await mkdir(join(dir, 'etc'), { recursive: true });
await writeGuardFile(join(dir, 'etc', 'guard.nft'));
await mkdir(join(dir, 'rootfs', 'tree.tmp-1-00000000', 'etc'), { recursive: true });
await writeFile(join(dir, 'rootfs', 'tree.tmp-1-00000000', 'etc', 'hostname'), 'x\n');
await renameDurably(join(dir, 'rootfs', 'tree.tmp-1-00000000'), join(dir, 'rootfs', 'tree'), 'tree');
