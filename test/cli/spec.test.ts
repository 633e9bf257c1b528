import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { toJson } from '@bufbuild/protobuf';
import { readSpecFile } from '../../src/cli/spec.js';
import { MicroVMSpecSchema } from '../../src/gen/types/microvm_pb.js';
import { tempDir } from '../helpers/daemon.js';

describe('vm create -f: spec keys', () => {
  const tmp = tempDir('cli-spec');
  after(() => tmp.remove());
  const file = (name: string, text: string) => {
    const p = join(tmp.path, name);
    writeFileSync(p, text);
    return p;
  };
  const read = (text: string) => toJson(MicroVMSpecSchema, readSpecFile(file('s.yaml', text)));

  it('match fields in any case and with or without underscores, through nested messages and lists, keeping map keys as written', () => {
    const expected = read([
      'id: web1', 'namespace: team', 'vcpu: 2', 'memory_in_mb: 512',
      'kernel: {image: "k:1", filename: boot/vmlinux, add_network_config: true}',
      'root_volume: {id: root, source: {container_source: "alpine:3.20"}}',
      'interfaces: [{device_id: eth1, type: TAP, guest_mac: "02:00:00:00:00:10"}]',
      'labels: {Role: Web, role: db}', '',
    ].join('\n'));
    for (const spelling of [
      ['ID: web1', 'Namespace: team', 'VCPU: 2', 'MemoryInMb: 512', 'Kernel: {Image: "k:1", Filename: boot/vmlinux, AddNetworkConfig: true}',
        'RootVolume: {ID: root, Source: {ContainerSource: "alpine:3.20"}}', 'Interfaces: [{DeviceID: eth1, Type: TAP, GuestMAC: "02:00:00:00:00:10"}]', 'Labels: {Role: Web, role: db}'],
      ['Id: web1', 'namespace: team', 'Vcpu: 2', 'memoryInMB: 512', 'kernel: {IMAGE: "k:1", filename: boot/vmlinux, add_Network_Config: true}',
        'root_Volume: {id: root, source: {containerSource: "alpine:3.20"}}', 'interfaces: [{deviceId: eth1, type: TAP, guest_mac: "02:00:00:00:00:10"}]', 'LABELS: {Role: Web, role: db}'],
    ]) {
      assert.deepEqual(read(spelling.join('\n') + '\n'), expected, spelling.join('; '));
    }
    assert.deepEqual((expected as { labels: unknown }).labels, { Role: 'Web', role: 'db' }, 'label keys are data: their case is kept');
  });

  it('refuses two keys that name one field, naming both, and still names an unknown key', () => {
    assert.throws(() => read('id: a\nID: b\n'), /keys "id" and "ID" both name the field id; keep one/);
    assert.throws(() => read('id: a\nkernel: {image: "k:1", Image: "k:2"}\n'), /keys "kernel\.image" and "kernel\.Image" both name the field kernel\.image/);
    assert.throws(() => read('id: a\nmemory_in_mb: 1\nMemoryInMB: 2\n'), /keys "memory_in_mb" and "MemoryInMB" both name the field memory_in_mb/);
    assert.throws(() => read('Name: a\n'), /key "Name" is unknown/);
  });

  it('says what is wrong with a file that is not YAML in one line, without the excerpt it introduces', () => {
    assert.throws(() => read('a: [1, 2\nb: c\n'), (err: Error) => /: not YAML or JSON: .* at line 2, column 1$/.test(err.message) && !err.message.includes('\n'));
  });

  it('refuses an enum name the enum does not have, naming the field and the names it takes; numbers pass', () => {
    assert.throws(() => read('id: a\ninterfaces: [{device_id: eth1, type: TAP}, {device_id: eth2, type: TAPP}]\n'), /: interfaces\[1\]\.type: "TAPP" is not a value of IfaceType: give one of its names as written, or its number \(MACVTAP 0, TAP 1\)$/);
    assert.throws(() => read('id: a\nInterfaces: [{DeviceID: eth1, Type: tap}]\n'), /: Interfaces\[0\]\.Type: "tap" is not a value of IfaceType: .*; names are case-sensitive: TAP$/);
    assert.throws(() => read('id: a\ninterfaces: [{device_id: eth1, type: true}]\n'), /: interfaces\[0\]\.type: true is not a value of IfaceType: give one of its names as written, or its number/);
    assert.deepEqual((read('id: a\ninterfaces: [{device_id: eth1, type: 1}, {device_id: eth2, type: MACVTAP}]\n') as { interfaces: unknown }).interfaces, [{ deviceId: 'eth1', type: 'TAP' }, { deviceId: 'eth2' }]);
  });
});
