#!/usr/bin/env bash
# Builds the small test guest from Debian packages as an OCI image layout:
#   boot/vmlinuz      Debian's cloud kernel (the ABI is resolved, never hard-coded)
#   boot/initrd.img   busybox + the virtio/vfat modules, loaded in dependency order, then
#                     switch_root to /dev/vda
#   /                 a busybox root whose init prints markers on the console, runs the
#                     cidata user-data when it is a script, and does DHCP on every interface
# Usage: build-test-image.sh OUT_DIR   (OUT_DIR/oci is the layout; reused when present)
set -euo pipefail
out=${1:?usage: build-test-image.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
abi=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$abi" ] || { echo "cannot resolve the cloud kernel package (run apt-get update)" >&2; exit 1; }
stamp="$out/oci/.built-from-$abi"
if [ -f "$stamp" ]; then echo "$out/oci"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download "$abi" busybox-static >/dev/null 2>&1 || { echo "apt-get download $abi busybox-static failed" >&2; exit 1; }
dpkg-deb -x "$abi"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
kver=${abi#linux-image-}
moddir="kernel/lib/modules/$kver"
busybox="$work/bb/bin/busybox"

# Modules the guest needs, with their dependencies first (read from each .ko's depends= field).
declare -A seen=()
order=()
# depends= names use "_" where file names may use "-": match either.
modpath() { find "$moddir" -name "$(echo "$1" | sed 's/[_-]/[_-]/g').ko" | head -1; }
visit() {
  local m=$1 f deps d
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  f=$(modpath "$m")
  [ -n "$f" ] || { echo "module $m not in $abi (built in?)" >&2; return 0; }
  deps=$(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | tr ',' ' ')
  for d in $deps; do visit "$d"; done
  order+=("$f")
}
for m in virtio_mmio virtio_blk virtio_net fat vfat nls_cp437 nls_ascii nls_iso8859_1; do visit "$m"; done

mkroot() {
  local dir=$1
  mkdir -p "$dir"/{bin,sbin,etc,proc,sys,dev,run,tmp,mnt/cidata,newroot,root,usr/bin,usr/sbin}
  cp "$busybox" "$dir/bin/busybox"
  for a in $("$busybox" --list); do [ "$a" = busybox ] || ln -sf /bin/busybox "$dir/bin/$a"; done
}

# initramfs
mkroot initrd
mkdir -p initrd/modules
n=0
for f in "${order[@]}"; do cp "$f" "initrd/modules/$(printf '%02d' $n)-$(basename "$f")"; n=$((n + 1)); done
cat >initrd/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /newroot || { echo "MATCHLOCK_GUEST_ERROR no root on /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod +x initrd/init
(cd initrd && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -n -9) >initrd.img

# root filesystem (also the volume image) with the kernel and initrd in boot/
mkroot rootfs
mkdir -p rootfs/boot rootfs/usr/share/udhcpc
cp "kernel/boot/vmlinuz-$kver" rootfs/boot/vmlinuz
cp initrd.img rootfs/boot/initrd.img
printf 'root:x:0:0:root:/root:/bin/sh\n' >rootfs/etc/passwd
printf 'root:x:0:\n' >rootfs/etc/group
cat >rootfs/usr/share/udhcpc/default.script <<'DHCP'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "MATCHLOCK_LEASE $interface $ip" >/dev/console ;;
esac
exit 0
DHCP
chmod +x rootfs/usr/share/udhcpc/default.script
cat >rootfs/sbin/init <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "MATCHLOCK_GUEST_UP"
for d in /dev/vd?; do
  mount -t vfat -o ro "$d" /mnt/cidata 2>/dev/null || continue
  [ -f /mnt/cidata/meta-data ] && break
  umount /mnt/cidata
done
if [ -f /mnt/cidata/meta-data ]; then
  echo "MATCHLOCK_CIDATA $(grep -h instance_id /mnt/cidata/meta-data)"
  hostname "$(sed -n 's/^local_hostname: *//p' /mnt/cidata/meta-data)" 2>/dev/null
fi
ip link set lo up
for i in /sys/class/net/eth*; do
  [ -e "$i" ] || continue
  n=${i##*/}
  ip link set "$n" up
  udhcpc -i "$n" -s /usr/share/udhcpc/default.script -t 20 -T 1 -A 1 -b -S >/dev/null 2>&1
done
if [ -f /mnt/cidata/user-data ] && [ "$(head -c 2 /mnt/cidata/user-data)" = '#!' ]; then
  cp /mnt/cidata/user-data /tmp/user-data
  chmod +x /tmp/user-data
  /tmp/user-data 2>&1 | sed 's/^/MATCHLOCK_USERDATA /'
fi
echo "MATCHLOCK_GUEST_READY"
while true; do sleep 3600; done
INIT
chmod +x rootfs/sbin/init

# OCI image layout: one gzip'd layer, reproducible (sorted, fixed mtime, numeric root owner)
layout="$work/oci"
mkdir -p "$layout/blobs/sha256"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C rootfs -cf layer.tar .
gzip -n -9 -c layer.tar >layer.tar.gz
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$layout/blobs/sha256/$d"; echo "$d"; }
layer=$(put layer.tar.gz)
diffid=$(sha256sum layer.tar | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diffid" >config.json
config=$(put config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$config" "$(stat -c %s config.json)" "$layer" "$(stat -c %s layer.tar.gz)" >manifest.json
manifest=$(put manifest.json)
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest" "$(stat -c %s manifest.json)" >"$layout/index.json"
touch "$layout/.built-from-$abi"
rm -rf "$out/oci"
mv "$layout" "$out/oci"
echo "$out/oci"
