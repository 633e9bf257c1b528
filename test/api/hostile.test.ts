import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  CreateMicroVMRequestSchema,
  DeleteMicroVMRequestSchema,
  GetMicroVMRequestSchema,
  ListMicroVMsRequestSchema,
} from '../../src/gen/services/microvm/v1alpha1/microvms_pb.js';
import type { MicroVMSpec, NetworkInterface_IfaceType } from '../../src/gen/types/microvm_pb.js';
import { rawClient, validSpec } from '../helpers/client.js';
import { startDaemon, tempDir, type DaemonHandle } from '../helpers/daemon.js';

type Case = [label: string, field: string, mutate: (s: MicroVMSpec) => void];

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** Each case breaks one thing in an otherwise valid CAPMVM-shaped spec. */
const CASES: Case[] = [
  ['empty name', 'microvm.id', (s) => (s.id = '')],
  ['name with ../', 'microvm.id', (s) => (s.id = '../etc')],
  ['name with /', 'microvm.id', (s) => (s.id = 'a/b')],
  ['name is /', 'microvm.id', (s) => (s.id = '/')],
  ['name with newline', 'microvm.id', (s) => (s.id = 'vm\nINFO fake log line')],
  ['name of 300 characters', 'microvm.id', (s) => (s.id = 'a'.repeat(300))],
  ['namespace ..', 'microvm.namespace', (s) => (s.namespace = '..')],
  ['namespace with ../', 'microvm.namespace', (s) => (s.namespace = 'a/../b')],
  ['namespace with NUL', 'microvm.namespace', (s) => (s.namespace = 'ns\u0000x')],
  ['namespace with escape sequence', 'microvm.namespace', (s) => (s.namespace = 'ns\u001b[31m')],
  ['negative vcpu', 'microvm.vcpu', (s) => (s.vcpu = -1)],
  ['65 vcpus', 'microvm.vcpu', (s) => (s.vcpu = 65)],
  ['512 MB memory', 'microvm.memory_in_mb', (s) => (s.memoryInMb = 512)],
  ['memory over 32 GiB', 'microvm.memory_in_mb', (s) => (s.memoryInMb = 2_000_000_000)],
  ['negative memory', 'microvm.memory_in_mb', (s) => (s.memoryInMb = -5)],
  ['no kernel', 'microvm.kernel', (s) => (s.kernel = undefined)],
  ['empty kernel image', 'microvm.kernel.image', (s) => s.kernel && (s.kernel.image = '')],
  ['uppercase kernel repository', 'microvm.kernel.image', (s) => s.kernel && (s.kernel.image = 'ghcr.io/Org/Kernel:1')],
  ['no kernel filename', 'microvm.kernel.filename', (s) => s.kernel && (s.kernel.filename = undefined)],
  ['kernel filename escaping the image', 'microvm.kernel.filename', (s) => s.kernel && (s.kernel.filename = '../../etc/shadow')],
  ['kernel filename with control character', 'microvm.kernel.filename', (s) => s.kernel && (s.kernel.filename = 'boot/\u0007vmlinux')],
  ['cmdline key with space', 'microvm.kernel.cmdline', (s) => s.kernel && (s.kernel.cmdline = { 'a b': '1' })],
  ['cmdline value injecting a second argument', 'microvm.kernel.cmdline', (s) => s.kernel && (s.kernel.cmdline = { console: 'ttyS0 init=/bin/sh' })],
  ['cmdline past the kernel limit of 2048 bytes', 'microvm.kernel.cmdline', (s) => s.kernel && (s.kernel.cmdline = { console: 'ttyS0', ['x'.repeat(2040)]: '' })],
  ['cmdline value of 1 MiB', 'microvm.kernel.cmdline', (s) => s.kernel && (s.kernel.cmdline = { console: 'x'.repeat(1 << 20) })],
  ['no root volume and no initrd', 'microvm.root_volume', (s) => (s.rootVolume = undefined)],
  ['root volume without id', 'microvm.root_volume.id', (s) => s.rootVolume && (s.rootVolume.id = '')],
  ['root volume without source', 'microvm.root_volume.source', (s) => s.rootVolume && (s.rootVolume.source = undefined)],
  ['root volume bad reference', 'microvm.root_volume.source.container_source', (s) => s.rootVolume?.source && (s.rootVolume.source.containerSource = 'not a ref')],
  ['root volume negative size', 'microvm.root_volume.size_in_mb', (s) => s.rootVolume && (s.rootVolume.sizeInMb = -1)],
  ['root volume absurd size', 'microvm.root_volume.size_in_mb', (s) => s.rootVolume && (s.rootVolume.sizeInMb = 2_147_483_647)],
  ['root volume with a mount point', 'microvm.root_volume.mount_point', (s) => s.rootVolume && (s.rootVolume.mountPoint = '/mnt')],
  ['root volume from virtiofs', 'microvm.root_volume.source.virtiofs_source', (s) => s.rootVolume && (s.rootVolume.source = { $typeName: 'flintlock.types.VolumeSource', virtiofsSource: '/srv' })],
  ['relative mount point', 'microvm.additional_volumes[0].mount_point', (s) => s.additionalVolumes.push({ ...s.rootVolume!, id: 'data', mountPoint: 'mnt/data' })],
  ['mount point with ..', 'microvm.additional_volumes[0].mount_point', (s) => s.additionalVolumes.push({ ...s.rootVolume!, id: 'data', mountPoint: '/mnt/../etc' })],
  ['additional volume reusing the root id', 'microvm.additional_volumes[0].id', (s) => s.additionalVolumes.push({ ...s.rootVolume!, id: 'root' })],
  ['no interfaces', 'microvm.interfaces', (s) => (s.interfaces = [])],
  ['nine interfaces', 'microvm.interfaces', (s) => (s.interfaces = Array.from({ length: 9 }, (_, n) => ({ ...s.interfaces[0]!, deviceId: `eth${n}` })))],
  ['uppercase device id', 'microvm.interfaces[0].device_id', (s) => (s.interfaces[0]!.deviceId = 'Eth1')],
  ['empty device id', 'microvm.interfaces[0].device_id', (s) => (s.interfaces[0]!.deviceId = '')],
  ['duplicate device id', 'microvm.interfaces[1].device_id', (s) => s.interfaces.push({ ...s.interfaces[0]! })],
  ['unknown interface type', 'microvm.interfaces[0].type', (s) => (s.interfaces[0]!.type = 7 as NetworkInterface_IfaceType)],
  ['MAC not hex', 'microvm.interfaces[0].guest_mac', (s) => (s.interfaces[0]!.guestMac = 'zz:zz:zz:zz:zz:zz')],
  ['multicast MAC', 'microvm.interfaces[0].guest_mac', (s) => (s.interfaces[0]!.guestMac = '01:00:5e:00:00:01')],
  ['all-zero MAC', 'microvm.interfaces[0].guest_mac', (s) => (s.interfaces[0]!.guestMac = '00:00:00:00:00:00')],
  ['MAC with a trailing newline', 'microvm.interfaces[0].guest_mac', (s) => (s.interfaces[0]!.guestMac = '02:00:00:00:00:01\n')],
  ['address without prefix', 'microvm.interfaces[0].address.address', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '192.168.10.30', nameservers: [] })],
  ['address octet over 255', 'microvm.interfaces[0].address.address', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '300.1.1.1/24', nameservers: [] })],
  ['IPv4 prefix /33', 'microvm.interfaces[0].address.address', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '10.0.0.1/33', nameservers: [] })],
  ['gateway not an IP', 'microvm.interfaces[0].address.gateway', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '10.0.0.5/24', gateway: 'router', nameservers: [] })],
  ['gateway of the other family', 'microvm.interfaces[0].address.gateway', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '10.0.0.5/24', gateway: 'fd00::1', nameservers: [] })],
  ['nameserver not an IP', 'microvm.interfaces[0].address.nameservers[0]', (s) => (s.interfaces[0]!.address = { $typeName: 'flintlock.types.StaticAddress', address: '10.0.0.5/24', nameservers: ['dns.example'] })],
  ['bridge name over 15 bytes', 'microvm.interfaces[0].overrides.bridge_name', (s) => (s.interfaces[0]!.overrides = { $typeName: 'flintlock.types.NetworkOverrides', bridgeName: 'a'.repeat(16) })],
  ['bridge name with /', 'microvm.interfaces[0].overrides.bridge_name', (s) => (s.interfaces[0]!.overrides = { $typeName: 'flintlock.types.NetworkOverrides', bridgeName: 'br/0' })],
  ['label key with space', 'microvm.labels', (s) => (s.labels = { 'bad key': 'v' })],
  ['label value with newline', 'microvm.labels', (s) => (s.labels = { ok: 'line1\nline2' })],
  ['2 MiB of metadata', 'microvm.metadata', (s) => (s.metadata = { 'user-data': b64('x'.repeat(2 * 1024 * 1024)) })],
  ['metadata key with path', 'microvm.metadata', (s) => (s.metadata = { '../user-data': b64('x') })],
  ['metadata keys one FAT name apart', 'microvm.metadata', (s) => (s.metadata = { 'user-data': b64('x'), 'user-DATA': b64('y') })],
  ['metadata key that is a DOS device name', 'microvm.metadata["CON"]', (s) => (s.metadata = { CON: b64('x') })],
  ['meta-data that is a YAML list', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64('- a\n- b\n') })],
  ['meta-data that is not YAML', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64('key: [unclosed\n') })],
  ['meta-data with an unresolved alias', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64('local_hostname: *nowhere\n') })],
  ['meta-data that is an alias bomb', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64(['a: &a [x, x, x, x, x, x, x, x, x, x]', ...'bcdefg'.split('').map((k, n) => `${k}: &${k} [${Array(10).fill(`*${'abcdefg'[n]}`).join(', ')}]`)].join('\n')) })],
  ['meta-data nested 200 deep', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64(`a: ${'['.repeat(200)}${']'.repeat(200)}\n`) })],
  ['meta-data of two documents', 'microvm.metadata["meta-data"]', (s) => (s.metadata = { 'meta-data': b64('a: 1\n---\nb: 2\n') })],
  ['device_id longer than a Linux interface name', 'microvm.interfaces[0].device_id', (s) => (s.interfaces[0]!.deviceId = 'eth_with_long_name')],
  ['initrd with a bad reference', 'microvm.initrd.image', (s) => (s.initrd = { $typeName: 'flintlock.types.Initrd', image: '::' })],
  ['unknown provider', 'microvm.provider', (s) => (s.provider = 'vmware')],
];

describe('hostile and malformed requests', () => {
  const tmp = tempDir('hostile');
  let daemon: DaemonHandle;
  let client: ReturnType<typeof rawClient>;
  before(async () => {
    daemon = await startDaemon(tmp.path);
    client = rawClient(daemon.grpcPort);
  });
  after(async () => {
    client?.close();
    await daemon?.stop();
    tmp.remove();
  });

  const expectInvalid = async (p: Promise<unknown>, field: string) => {
    await assert.rejects(p, (err: grpc.ServiceError) => {
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${err.code} ${err.details}`);
      assert.ok(err.details.startsWith(`${field}:`) || err.details.includes(field), `"${err.details}" should name ${field}`);
      return true;
    });
  };

  it(`refuses ${CASES.length} broken specs with InvalidArgument naming the field`, async () => {
    assert.ok(CASES.length >= 40);
    // The unbroken spec is accepted, so each refusal below is due to its one change.
    const ok = (await client.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: validSpec() }))) as { microvm: { spec: { uid: string } } };
    await client.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: ok.microvm.spec.uid }));
    for (const [label, field, mutate] of CASES) {
      const spec = validSpec();
      mutate(spec);
      await it(label, () => expectInvalid(client.call('createMicroVM', create(CreateMicroVMRequestSchema, { microvm: spec })), field));
    }
    await expectInvalid(client.call('createMicroVM', create(CreateMicroVMRequestSchema, {})), 'microvm');
  });

  it('answers NOT_FOUND "not found" for any uid no record has, INVALID_ARGUMENT only for an empty one', async () => {
    await expectInvalid(client.call('getMicroVM', create(GetMicroVMRequestSchema, { uid: '' })), 'uid');
    await expectInvalid(client.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid: '' })), 'uid');
    // 26 characters with a U (not in Crockford's alphabet), lowercase, paths, control characters, huge.
    for (const uid of ['01ARZ3NDEKTSV4RRFFQ69G5FAU', '01arz3ndektsv4rrffq69g5fav', '../../etc/passwd', '01ARZ3NDEKTSV4RRFFQ69G5FA/', '\u0000', ' ', 'x'.repeat(1_000_000)]) {
      await assert.rejects(client.call('getMicroVM', create(GetMicroVMRequestSchema, { uid })), (err: grpc.ServiceError) => {
        assert.equal(err.code, grpc.status.NOT_FOUND, `${uid.slice(0, 30)}: ${err.code} ${err.details}`);
        assert.match(err.details, /^microvm ".*not found$/);
        assert.ok(err.details.length < 200, 'the error quotes a bounded part of the uid');
        return true;
      });
      await client.call('deleteMicroVM', create(DeleteMicroVMRequestSchema, { uid }));
    }
  });

  it('refuses hostile list filters', async () => {
    await expectInvalid(client.call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'a/b' })), 'namespace');
    await expectInvalid(client.call('listMicroVMs', create(ListMicroVMsRequestSchema, { namespace: 'ns', name: 'x\ny' })), 'name');
  });

  it('survives bytes that are not protobuf, and nothing was written', async () => {
    const garbage = new grpc.Client(`127.0.0.1:${daemon.grpcPort}`, grpc.credentials.createInsecure());
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      garbage.makeUnaryRequest('/microvm.services.api.v1alpha1.MicroVM/CreateMicroVM', (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), (e) => resolve(e));
    });
    garbage.close();
    assert.ok(err && err.code !== grpc.status.OK);
    const listed = (await client.call('listMicroVMs', create(ListMicroVMsRequestSchema, {}))) as { microvm: unknown[] };
    // Only the one valid VM was ever created; wait for its delete to finish.
    for (let i = 0; i < 300 && ((await client.call('listMicroVMs', create(ListMicroVMsRequestSchema, {}))) as { microvm: unknown[] }).microvm.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(listed.microvm.length <= 1);
    const db = new Database(join(tmp.path, 'matchlock.db'), { readonly: true });
    const rows = db.prepare('SELECT count(*) AS n FROM microvms').get() as { n: number };
    db.close();
    assert.equal(rows.n, 0);
    assert.equal(daemon.proc.exitCode, null, 'the daemon is still running');
  });
});
