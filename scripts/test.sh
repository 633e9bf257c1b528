#!/usr/bin/env bash
# The whole test suite: lint, type check, then every *.test.ts under src/ and test/ through
# node:test with the TAP reporter. An empty file list is a failure, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
npx eslint .
npx tsc -p tsconfig.json
mapfile -t files < <(find src test -name '*.test.ts' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files found under src/ or test/" >&2
  exit 1
fi
if [ "$#" -gt 0 ]; then files=("$@"); fi
exec node --import tsx --test --test-reporter=tap --test-concurrency=1 "${files[@]}"
