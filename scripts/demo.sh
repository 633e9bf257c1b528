#!/usr/bin/env bash
# The main job on one machine: install what is missing, start matchlockd with its embedded
# defaults, create a MicroVM through the CLI and show it. Ctrl-C deletes the VM and stops the
# daemon (VMs of other runs are left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null

ML="node bin/matchlock.js"
log=$(mktemp /tmp/matchlockd.XXXXXX.log)
node bin/matchlockd.js run >"$log" 2>&1 &
daemon=$!
uid=""
cleanup() {
  [ -n "$uid" ] && $ML vm delete "$uid" >/dev/null 2>&1 && $ML vm watch "$uid" --until gone --timeout 30s >/dev/null 2>&1 || true
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for _ in $(seq 50); do
  grep -q 'grpc api listening' "$log" && break
  kill -0 "$daemon" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
cat "$log"

uid=$($ML -o json vm create --name demo --kernel-image ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77 \
  --root-image ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5 --interface id=eth1,type=tap \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).spec.uid))')
$ML vm list
echo
echo "MicroVM $uid created; watching it (Ctrl-C deletes it and stops matchlockd; log: $log)"
$ML vm watch "$uid" --until CREATED --timeout 24h || true
