#!/usr/bin/env bash
# Builds a Debian 12 guest with systemd and cloud-init as an OCI image layout, the kind of root
# filesystem CAPMVM boots:
#   /                 Debian bookworm from Debian packages (mmdebstrap): systemd as init,
#                     systemd-networkd (no ifupdown, no netplan, so cloud-init renders networkd),
#                     dbus (hostnamectl), openssh-server, cloud-init
#   boot/vmlinuz      the kernel and busybox initramfs of the small test guest
#   boot/initrd.img   (scripts/build-test-image.sh): it loads the virtio and vfat modules,
#                     mounts /dev/vda and switch_roots to systemd
#   matchlock-report  a unit pulled in and ordered by cloud-final that waits for cloud-init and prints
#                     what it did to the serial console, one "ML_REPORT <key> <value>" line each
#                     (status, result.json, instance id, hostname, links, addresses, mounts and
#                     the base64 of every file named in /etc/matchlock-report.files), then
#                     "ML_REPORT_DONE"
# Usage: build-cloud-image.sh OUT_DIR TEST_GUEST_LAYOUT   (OUT_DIR/oci is the layout; reused
# while the kernel ABI, cloud-init's version and this script are unchanged). Needs root.
set -euo pipefail
out=${1:?usage: build-cloud-image.sh OUT_DIR TEST_GUEST_LAYOUT}
guest=${2:?usage: build-cloud-image.sh OUT_DIR TEST_GUEST_LAYOUT}
mkdir -p "$out"
out=$(cd "$out" && pwd)
guest=$(cd "$guest" && pwd)
ci=$(apt-cache policy cloud-init | awk '/Candidate:/{print $2}')
[ -n "$ci" ] && [ "$ci" != "(none)" ] || { echo "cannot resolve cloud-init's version (run apt-get update)" >&2; exit 1; }
self=$(sha256sum "$0" | cut -c1-12)
guestid=$(ls -a "$guest" | sed -n 's/^\.built-from-//p')
stamp="$out/oci/.built-from-$guestid-cloud-init-$ci-$self"
if [ -f "$stamp" ]; then echo "$out/oci"; exit 0; fi

work=$(mktemp -d "$out/.build-XXXXXX")
# --one-file-system: never into the chroot's /proc, /sys or /dev mounts should a build be cut short.
trap 'rm -rf --one-file-system "$work"' EXIT
cd "$work"

# Kernel and initramfs from the test guest's single layer.
manifest=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$guest/index.json")
layer=$(tr ',' '\n' <"$guest/blobs/sha256/$manifest" | sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' | tail -1)
mkdir boot-src
tar -xzf "$guest/blobs/sha256/$layer" -C boot-src ./boot/vmlinuz ./boot/initrd.img

mkdir hooks
cat >hooks/report <<'REPORT'
#!/bin/sh
# Prints what cloud-init did, for tests reading the serial console.
out() { echo "ML_REPORT $*" >/dev/ttyS0; }
cloud-init status --wait >/dev/null 2>&1
out status "$(cloud-init status --long | tr '\n' ' ')"
out result "$(tr -d '\n' </run/cloud-init/result.json 2>/dev/null)"
out instance-id "$(cat /var/lib/cloud/data/instance-id 2>/dev/null)"
out hostname "$(hostname)"
ip -o link show | while read -r l; do out link "$l"; done
ip -o addr show | while read -r l; do out addr "$l"; done
findmnt -rn -o TARGET,SOURCE,FSTYPE | while read -r l; do out mount "$l"; done
if [ -f /etc/matchlock-report.files ]; then
  while read -r f; do
    [ -n "$f" ] || continue
    if [ -e "$f" ]; then out file "$f" "$(base64 -w0 "$f")"; else out file "$f" -; fi
  done </etc/matchlock-report.files
fi
echo "ML_REPORT_DONE" >/dev/ttyS0
REPORT
cat >hooks/matchlock-report.service <<'UNIT'
[Unit]
Description=Report cloud-init's work on the serial console
After=cloud-final.service
Wants=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/matchlock-report
StandardOutput=journal

[Install]
# Pulled in by cloud-final itself: cloud-final is ordered after multi-user.target, so a unit
# that multi-user.target wants and that waits for cloud-final would be an ordering cycle.
WantedBy=cloud-final.service
UNIT
cat >hooks/customize <<HOOK
#!/bin/sh
set -e
root=\$1
mkdir -p "\$root/boot" "\$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cp "$work/boot-src/boot/vmlinuz" "$work/boot-src/boot/initrd.img" "\$root/boot/"
install -m 0755 "$work/hooks/report" "\$root/usr/local/sbin/matchlock-report"
install -m 0644 "$work/hooks/matchlock-report.service" "\$root/etc/systemd/system/"
# One configured link is enough to go on; an interface that gets no IPv6 answer must not hold
# the boot for two minutes.
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n' \
  >"\$root/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
chroot "\$root" systemctl enable systemd-networkd.service matchlock-report.service
chroot "\$root" systemctl mask serial-getty@ttyS0.service
# cloud-init's default locale is en_US.UTF-8 and Debian's locale-gen ignores the locale it is
# given, so a cloud image carries that locale already generated.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "\$root/etc/locale.gen"
chroot "\$root" locale-gen
# Every boot of this image is a first boot: no machine id, no hostname, no host keys.
: >"\$root/etc/machine-id"
rm -f "\$root/etc/hostname" "\$root"/etc/ssh/ssh_host_*
rm -rf "\$root/var/lib/apt/lists"/* "\$root/var/cache/apt"/*.bin
HOOK
chmod +x hooks/customize

mmdebstrap --quiet --variant=minbase --mode=root \
  --include=systemd,systemd-sysv,udev,dbus,iproute2,openssh-server,cloud-init \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="$work/hooks/customize \"\$1\"" \
  bookworm rootfs http://deb.debian.org/debian >&2

# OCI image layout: one gzip'd layer, reproducible (sorted, fixed mtime, numeric owners)
layout="$work/oci"
mkdir -p "$layout/blobs/sha256"
tar --sort=name --mtime=@0 --numeric-owner --xattrs -C rootfs -cf layer.tar .
gzip -n -6 -c layer.tar >layer.tar.gz
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$layout/blobs/sha256/$d"; echo "$d"; }
layerd=$(put layer.tar.gz)
diffid=$(sha256sum layer.tar | cut -d' ' -f1)
rm layer.tar
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diffid" >config.json
config=$(put config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$config" "$(stat -c %s config.json)" "$layerd" "$(stat -c %s layer.tar.gz)" >manifest.json
manifest=$(put manifest.json)
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest" "$(stat -c %s manifest.json)" >"$layout/index.json"
touch "$layout/$(basename "$stamp")"
rm -rf "$out/oci"
mv "$layout" "$out/oci"
echo "$out/oci"
