import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema, type DescriptorProto, type EnumDescriptorProto, type EnumValueDescriptorProto, type FieldDescriptorProto, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT, tempDir } from '../helpers/daemon.js';
import { referenceAvailable, strippedReference } from './reference.js';

const BUF = join(ROOT, 'node_modules', '.bin', 'buf');
const OURS = join(ROOT, 'proto');

function descriptorSet(dir: string, out: string): FileDescriptorProto[] {
  execFileSync(BUF, ['build', dir, '--as-file-descriptor-set', '-o', out], { stdio: 'pipe' });
  return fromBinary(FileDescriptorSetSchema, readFileSync(out)).file;
}

function breaking(ours: string, against: string): { ok: boolean; output: string } {
  const r = spawnSync(BUF, ['breaking', ours, '--against', against, '--exclude-imports', '--config', '{"version":"v2","breaking":{"use":["PACKAGE"],"except":["FILE_SAME_GO_PACKAGE"]}}'], { encoding: 'utf8' });
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` };
}

/** package.Message -> descriptor, nested messages included. */
function messages(files: FileDescriptorProto[]): Map<string, DescriptorProto> {
  const out = new Map<string, DescriptorProto>();
  const add = (prefix: string, m: DescriptorProto) => {
    const name = `${prefix}.${m.name}`;
    out.set(name, m);
    m.nestedType.forEach((n) => add(name, n));
  };
  for (const f of files) f.messageType.forEach((m) => add(f.package, m));
  return out;
}

describe('wire compatibility with flintlock', { skip: !referenceAvailable() && !process.env.CI ? 'reference protos not found beside the checkout' : false }, () => {
  const tmp = tempDir('wire');
  let ref: string;
  before(() => {
    ref = join(tmp.path, 'ref');
    strippedReference(ref);
  });
  after(() => tmp.remove());

  it('buf breaking (PACKAGE rules) finds nothing between our protos and the reference', () => {
    const r = breaking(OURS, ref);
    assert.ok(r.ok, r.output);
  });

  it('every reference message, field, enum value and RPC exists with the same name, number and type; extras are >= 1000', () => {
    const theirs = descriptorSet(ref, join(tmp.path, 'ref.binpb'));
    const ours = descriptorSet(OURS, join(tmp.path, 'ours.binpb'));
    const theirMsgs = messages(theirs);
    const ourMsgs = messages(ours);
    let fieldsChecked = 0;
    for (const [name, m] of theirMsgs) {
      if (name.startsWith('google.')) continue;
      const mine = ourMsgs.get(name);
      assert.ok(mine, `message ${name} missing`);
      for (const f of m.field) {
        const g: FieldDescriptorProto | undefined = mine.field.find((x) => x.number === f.number);
        assert.ok(g, `${name} field ${f.name} = ${f.number} missing`);
        assert.deepEqual([g.name, g.type, g.label, g.typeName, g.proto3Optional, g.jsonName], [f.name, f.type, f.label, f.typeName, f.proto3Optional, f.jsonName], `${name}.${f.name}`);
        fieldsChecked++;
      }
      for (const g of mine.field) {
        if (!m.field.some((f) => f.number === g.number)) assert.ok(g.number >= 1000, `${name}.${g.name} = ${g.number} is an addition below 1000`);
      }
      for (const e of m.enumType) {
        const mineEnum: EnumDescriptorProto | undefined = mine.enumType.find((x) => x.name === e.name);
        assert.deepEqual(mineEnum?.value.map((v: EnumValueDescriptorProto) => [v.name, v.number]), e.value.map((v) => [v.name, v.number]), `${name}.${e.name}`);
      }
    }
    assert.ok(fieldsChecked > 60, `only ${fieldsChecked} fields compared`);
    const svc = (files: FileDescriptorProto[]) =>
      files.flatMap((f) => f.service.map((s) => ({ name: `${f.package}.${s.name}`, methods: s.method.map((m) => [m.name, m.inputType, m.outputType, !!m.clientStreaming, !!m.serverStreaming]) })));
    // matchlock's own services live in their own package (contract: matchlock.v1), never in flintlock's.
    const ourServices = svc(ours);
    assert.deepEqual(ourServices.filter((x) => !x.name.startsWith('matchlock.v1.')), svc(theirs));
    assert.ok(ourServices.some((x) => x.name === 'matchlock.v1.MicroVMLifecycle'));
  });

  it('the check fails when a field number changes (the test can fail)', () => {
    const broken = join(tmp.path, 'broken');
    cpSync(OURS, broken, { recursive: true });
    const p = join(broken, 'types', 'microvm.proto');
    writeFileSync(p, readFileSync(p, 'utf8').replace('int32 memory_in_mb = 5;', 'int32 memory_in_mb = 55;'));
    const r = breaking(broken, ref);
    assert.equal(r.ok, false);
    assert.match(r.output, /memory_in_mb/);
  });
});
