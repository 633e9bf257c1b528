import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/daemon.js';
import { strippedReference } from '../wire/reference.js';

/**
 * Python stubs (grpcio) of the MicroVM service, from flintlock's reference protos or from
 * matchlock's own (`proto/`, with matchlock's added fields). `types/` becomes `fltypes/` because
 * Python's stdlib owns `types`; file paths are not on the wire.
 */
export function pythonStubs(dir: string, from: 'reference' | 'matchlock'): string {
  const src = join(dir, 'proto');
  if (from === 'reference') strippedReference(src);
  else cpSync(join(ROOT, 'proto'), src, { recursive: true });
  renameSync(join(src, 'types'), join(src, 'fltypes'));
  const svc = join(src, 'services/microvm/v1alpha1/microvms.proto');
  writeFileSync(svc, readFileSync(svc, 'utf8').replace('import "types/microvm.proto"', 'import "fltypes/microvm.proto"'));
  const out = join(dir, 'stubs');
  mkdirSync(out);
  execFileSync('protoc', [`-I${src}`, `--python_out=${out}`, `--grpc_out=${out}`, '--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin', 'fltypes/microvm.proto', 'services/microvm/v1alpha1/microvms.proto'], { stdio: 'pipe' });
  assert.ok(readdirSync(join(out, 'fltypes')).includes('microvm_pb2.py'));
  return out;
}
