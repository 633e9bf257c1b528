#!/usr/bin/env bash
# The main job on one machine, as root: install what is missing, build the small test guest,
# start matchlockd with its embedded defaults (plus the bridge to use) and boot a MicroVM
# through the CLI, then show it running: state, lease, console. Ctrl-C deletes the VM and
# removes everything the demo made.
#
# The demo runs in a network namespace of its own ("matchlock-demo") where `matchlock host dev`
# makes the bridge, DHCP server and NAT, so it never touches the host's network. The daemon and
# the DHCP server run in sessions of their own, so Ctrl-C reaches only this script, which then
# deletes the VM through the daemon and removes what dev mode made.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root: the daemon creates TAP devices and namespaces" >&2; exit 1; }
scripts/install-deps.sh >/dev/null

ns=matchlock-demo
work=$(mktemp -d /tmp/matchlock-demo.XXXXXX)
state=/var/lib/matchlock
sock=$work/grpc.sock
ML=(node bin/matchlock.js --host "unix:$sock")
daemon="" dev="" uid=""
cleanup() {
  set +e
  if [ -n "$uid" ]; then "${ML[@]}" vm delete "$uid" >/dev/null && "${ML[@]}" vm watch "$uid" --until gone --timeout 30s >/dev/null; fi
  [ -n "$daemon" ] && kill "$daemon" && wait "$daemon"
  [ -n "$dev" ] && ip netns exec "$ns" node bin/matchlock.js host dev --down --uplink up0 --hub-state-dir "$work/hub" >/dev/null
  ip netns del "$ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building the test guest image (cached after the first run)"
layout=$(scripts/build-test-image.sh /var/cache/matchlock/test-guest)
node bin/matchlock.js image import "$layout" --name localhost/matchlock/test-guest:1 --state-dir "$state" --config /dev/null --init

echo "== network: namespace $ns, then matchlock host dev (bridge mlbr0, DHCP, NAT, daemon config)"
ip netns add "$ns"
ip -n "$ns" link set lo up
# The namespace's uplink is a dead-end veth pair: NAT is set up as on a real host, but nothing
# leaves this machine.
ip -n "$ns" link add up0 type veth peer name up1
ip -n "$ns" link set up0 up
ip -n "$ns" link set up1 up
hubflags=(--interface mlbr0 --uplink up0 --dhcp dnsmasq --state-dir "$work/hub")
ip netns exec "$ns" setsid node bin/matchlock.js host dev --uplink up0 --hub-state-dir "$work/hub" \
  --config-out "$work/config.yaml" --unit-out "$work/matchlockd.service"
dev=1

echo "== matchlockd (defaults + the dev config; state in $state; API on unix:$sock)"
# nsenter, not ip netns exec: that mounts a fresh /sys without the host's cgroup hierarchies,
# and matchlockd puts each VMM in a cgroup of its own.
setsid nsenter --net="/run/netns/$ns" node bin/matchlockd.js run --config "$work/config.yaml" --grpc-endpoint "unix:$sock" >"$work/matchlockd.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
  [ -S "$sock" ] && break
  kill -0 "$daemon" 2>/dev/null || { cat "$work/matchlockd.log" >&2; exit 1; }
  sleep 0.1
done
head -3 "$work/matchlockd.log"

echo "== creating a MicroVM"
printf '#!/bin/sh\necho "hello from user-data on $(uname -r)"\n' >"$work/user-data"
uid=$("${ML[@]}" -o json vm create --name demo --vcpu 1 --kernel-image localhost/matchlock/test-guest:1 \
  --kernel-filename boot/vmlinuz --initrd-image localhost/matchlock/test-guest:1 --initrd-filename boot/initrd.img \
  --root-image localhost/matchlock/test-guest:1 --interface id=eth0,type=tap \
  --metadata-from-file "user-data=$work/user-data" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).spec.uid))')
"${ML[@]}" vm watch "$uid" --until CREATED --timeout 2m
for _ in $(seq 120); do "${ML[@]}" vm logs default/demo | grep -q MATCHLOCK_GUEST_READY && break; sleep 0.5; done
echo
"${ML[@]}" vm list
echo
echo "== console (matchlock vm logs --tail 6 default/demo; vm console default/demo attaches)"
"${ML[@]}" vm logs --tail 6 default/demo
echo
echo "== DHCP leases (matchlock hub leases)"
ip netns exec "$ns" "${ML[@]}" hub leases "${hubflags[@]}"
echo
echo "MicroVM $uid is running. Ctrl-C deletes it and cleans up."
while kill -0 "$daemon" 2>/dev/null; do sleep 1; done
