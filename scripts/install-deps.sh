#!/usr/bin/env bash
# Installs every Debian and npm package matchlock and its tests need. Safe to re-run: Debian
# packages already present are not fetched again. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # independent gRPC client and the wire check's protoc; libprotobuf-dev holds protoc's
  # well-known types (google/protobuf/timestamp.proto), only a Recommends of protobuf-compiler
  python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  # TLS test PKI
  openssl
  # the VMM that runs here, and what the runtime drives around it
  qemu-system-x86 iproute2 e2fsprogs dosfstools mtools
  # virtiofsd for Cloud Hypervisor shares (Debian 12 ships it here, as /usr/lib/qemu/virtiofsd)
  qemu-system-common
  # the test guest (busybox-static is fetched by apt-get download) and the test network
  busybox-static dnsmasq-base iputils-ping
  # a real OCI registry and the tool that fills it; xfs for the reflink benchmark
  docker-registry skopeo xfsprogs
  # layer unpack: xattrs (setfattr; getfattr in tests), zstd layers, gzip; containerd is the
  # tests' reference unpacker
  attr zstd gzip containerd
  # the network hub: both DHCP servers and nftables; the hub tests also set a Docker-like
  # iptables FORWARD policy (iptables-nft) and bridge netfilter sysctls (procps' sysctl)
  isc-dhcp-server nftables iptables procps
  # Firecracker takes only an ELF vmlinux: the decompressors for bzImage payloads (Debian's
  # kernels use lz4)
  lz4 xz-utils bzip2
  # the daemon's process spawner (libexec/spawner.py uses only python3-minimal's modules);
  # perl-base (Essential) runs test stand-ins (test/fakes/qemu-standin.pl)
  python3-minimal perl-base
  # VMM confinement: the VMM user (useradd, getent); tests enter namespaces (nsenter, unshare)
  passwd libc-bin util-linux
  # the Debian 12 cloud-init guest (scripts/build-cloud-image.sh)
  mmdebstrap
  # Debian's cloud-init code, run on the host against our seeds (its package is only
  # extracted, not installed): the Python modules it imports
  python3-yaml python3-jinja2 python3-jsonschema python3-configobj python3-jsonpatch
  python3-requests python3-netifaces python3-serial python3-oauthlib
  # promtool, which checks matchlockd's metrics exposition (see quiet_prometheus below)
  prometheus
)

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "matchlock needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The test guest builder resolves the current kernel ABI from the package lists, so they must
# exist even when nothing is missing.
if [ "${#missing[@]}" -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -qq
fi
# Debian's prometheus package enables its server and starts it where services may start; only
# its promtool is wanted here. While packages install, a policy-rc.d (unless the machine has its
# own) keeps their services from starting (the tests start every server they use themselves),
# and afterwards prometheus's unit is disabled (and stopped under systemd).
quiet_prometheus() {
  local made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made=1
  fi
  local rc=0
  "$@" || rc=$?
  [ -n "$made" ] && rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      systemctl disable prometheus.service >/dev/null 2>&1 || true
    fi
  fi
  return "$rc"
}
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  quiet_prometheus env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm records what it installed in node_modules/.package-lock.json; skip the (slow, native)
# reinstall when that is newer than the lockfile.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
