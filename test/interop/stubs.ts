import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/daemon.js';
import { referenceAvailable, strippedReference } from '../wire/reference.js';

/**
 * Python stubs (grpcio) of the MicroVM service, from flintlock's reference protos or from
 * matchlock's own (`proto/`, with matchlock's added fields). `types/` becomes `fltypes/` because
 * Python's stdlib owns `types`; file paths are not on the wire.
 */
export const PYTHON = '/usr/bin/python3';

/** What a Python grpcio client test needs and this host lacks (empty when all is there). */
export function pythonMissing(): string[] {
  return [
    [PYTHON, existsSync(PYTHON)],
    ['protoc', spawnSync('protoc', ['--version']).status === 0],
    ['grpc_python_plugin', existsSync('/usr/bin/grpc_python_plugin')],
    ['python3 grpc module', spawnSync(PYTHON, ['-c', 'import grpc']).status === 0],
    ['reference protos', referenceAvailable()],
  ].filter(([, ok]) => !ok).map(([n]) => String(n));
}

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
