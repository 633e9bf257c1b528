import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CorpusLayer {
  file: string;
  mediaType: string;
}

/**
 * One uncompressed layer in GNU tar's own format with an old-style sparse file (type 'S'), a
 * base-256 uid and a GNU long name: what GNU tar writes by default with --sparse. Without
 * `sparse`, the same files with the sparse ones stored whole (type '0').
 */
export function gnuSparseLayer(dir: string, sparse = true): string {
  execFileSync('bash', ['-euo', 'pipefail', '-c', String.raw`
cd "$1"; mkdir -p g/s g/$(printf 'long-name-%.0s' 1 2 3 4 5 6 7 8 9 10 11 12)
truncate -s 9M g/s/gnu-sparse; for o in 0 1048576 4194304 9437183; do printf x | dd of=g/s/gnu-sparse bs=1 seek=$o conv=notrunc status=none; done
for i in 1 2 3 4 5 6; do truncate -s 64k g/s/many; printf "$i" | dd of=g/s/many bs=1 seek=$((i * 8192)) conv=notrunc status=none; done
echo id > g/$(printf 'long-name-%.0s' 1 2 3 4 5 6 7 8 9 10 11 12)/uid; chown 2500000:7 g/$(printf 'long-name-%.0s' 1 2 3 4 5 6 7 8 9 10 11 12)/uid
tar --format=gnu ${sparse ? '--sparse' : ''} --numeric-owner -C g -cf gnu-sparse.tar .`, 'gnu', dir]);
  return join(dir, 'gnu-sparse.tar');
}

/** security.capability for cap_net_raw=ep (VFS_CAP_REVISION_2), as iputils' ping carries it. */
export const PING_CAPABILITY = '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=';

/**
 * A corpus of small layers, one concern each, written by GNU tar (and Python's tarfile for what
 * GNU tar cannot write: hard links to earlier layers, names with `..` or a leading `/`):
 * whiteouts and opaque directories, dir/file/symlink replacements in each order, parents
 * through relative, absolute and `..` symlinks, every mode bit and owners, xattrs, sparse files
 * in GNU and pax formats, a large file, base-256 ids, long names, and gzip, zstd and
 * uncompressed layers. Returns the layers in order with their media types.
 */
export function buildLayerCorpus(dir: string): CorpusLayer[] {
  execFileSync('bash', ['-euo', 'pipefail', '-c', CORPUS_SCRIPT, 'corpus', dir, PING_CAPABILITY], { stdio: ['ignore', 'ignore', 'inherit'] });
  return readFileSync(join(dir, 'layers'), 'utf8').trim().split('\n').map((l) => {
    const [file, mediaType] = l.split(' ');
    return { file: join(dir, file ?? ''), mediaType: mediaType ?? '' };
  });
}

const OCI = 'application/vnd.oci.image.layer.v1';

const CORPUS_SCRIPT = String.raw`
out=$1; cap=$2
cd "$out"
T="tar --xattrs --xattrs-include=* --numeric-owner --sort=name --mtime=@1700000000"
: > layers
add() { echo "$1 $2" >> layers; }

# 0: the base (pax, gzip): symlinks, replacement subjects, modes, owners, xattrs, hard links.
mkdir -p t0 && cd t0
mkdir -p usr/lib usr/lib64 usr/share bin etc/old/sub r/d2f r/d2s r/f2dx m var/mail tmp h a
echo a > etc/old/a; echo deep > etc/old/sub/deep; echo gone > etc/gone; echo keep > etc/keep
ln -s usr/lib lib; ln -s /usr/lib64 lib64; ln -s ../../../../usr a/up
echo x > r/d2f/child; echo x > r/d2s/child; echo f > r/f2d; echo f > r/f2s
echo tgt > r/target; ln -s target r/s2d; ln -s target r/s2f
printf 'ping' > bin/ping; chmod 0755 bin/ping
printf 'wall' > bin/wall; chgrp 5 bin/wall; chmod 2755 bin/wall
printf 'su' > bin/su; chmod 4755 bin/su
chmod 1777 tmp; chgrp 8 var/mail; chmod 2775 var/mail
# A setgid directory hands its group (and, to directories, its setgid bit) to what is made in it.
printf 'root' > var/mail/root-file; chgrp 0 var/mail/root-file
printf 'mail' > var/mail/mail-file; chmod 0660 var/mail/mail-file
mkdir var/mail/root-dir; chgrp 0 var/mail/root-dir; chmod 0755 var/mail/root-dir; chmod g-s var/mail/root-dir
ln -s mail-file var/mail/root-link; chgrp -h 0 var/mail/root-link
for m in 7777 6755 4711 2711 1755 0666 0644 0600 0400 0000 0777; do printf "$m" > m/f$m; chmod $m m/f$m; done
mkdir m/d700 m/d1777 m/d2770; echo inside > m/d700/in; chmod 0700 m/d700; chmod 1777 m/d1777; chmod 2770 m/d2770
printf 'user' > m/owned-1000; chown 1000:1000 m/owned-1000
printf 'nobody' > m/owned-65534; chown 65534:65534 m/owned-65534
mkdir m/dir-1000; chown 1000:100 m/dir-1000
setfattr -n user.note -v hello m/f0644
setfattr -n user.bin -v 0sAAECA/8= m/f0644
setfattr -n user.dirattr -v dirvalue m/d2770
echo one > h/one; ln h/one h/two
long=usr/share/$(printf 'long-directory-name-%.0s' 1 2 3 4 5 6)/$(printf 'file-name-%.0s' 1 2 3 4 5 6 7 8 9 10 11 12)
mkdir -p "$(dirname "$long")"; echo long > "$long"
printf 'unicode' > 'usr/share/ä b.txt'
# Capabilities last: a chown clears them.
setfattr -n security.capability -v "$cap" bin/ping
cd .. && $T -C t0 -cf - . | gzip -n > l0.tar.gz
add l0.tar.gz "${OCI}.tar+gzip"

# 1: GNU format, uncompressed: a large file, an id only base-256 can hold, GNU long names;
#    then pax sparse 0.0 (containerd refuses GNU's old sparse type 'S'; see gnuSparseLayer).
mkdir -p t1/big t1/ids t1/s
head -c 12582912 /dev/urandom > t1/big/random
printf 'big id' > t1/ids/uid3000000; chown 3000000:3000001 t1/ids/uid3000000
gl=ids/$(printf 'gnu-long-name-%.0s' 1 2 3 4 5 6 7 8 9 10); echo gnu-long > t1/$gl; ln -s $gl t1/ids/long-link-$(printf 'x%.0s' $(seq 120))
tar --format=gnu --numeric-owner --sort=name --mtime=@1700000000 -C t1 -cf l1.tar ./big ./ids
add l1.tar "${OCI}.tar"
truncate -s 5M t1/s/pax00; printf 'middle' | dd of=t1/s/pax00 bs=1 seek=2097152 conv=notrunc status=none
printf 'end' | dd of=t1/s/pax00 bs=1 seek=5242877 conv=notrunc status=none
$T --format=posix --sparse --sparse-version=0.0 -C t1 -cf - ./s | gzip -n > l1b.tar.gz
add l1b.tar.gz "${OCI}.tar+gzip"

# 2: zstd: whiteouts, opaque dir, replacements, writes through lower symlinks, a directory
#    entry over an existing directory (keeps its content, takes the new mode and owner).
mkdir -p t2/etc/old t2/r/d2s t2/r/f2d t2/r/s2d t2/lib/modules/6.1 t2/lib64 t2/a/up/share t2/m/d700
touch t2/etc/.wh.gone t2/etc/old/.wh..wh..opq; echo b > t2/etc/old/b
echo file > t2/r/d2f; rmdir t2/r/d2s; ln -s target t2/r/d2s
rmdir t2/r/f2d; mkdir -p t2/r/f2d; echo child > t2/r/f2d/child; ln -s target t2/r/f2s
rmdir t2/r/s2d; mkdir t2/r/s2d; echo c > t2/r/s2d/c; echo file > t2/r/s2f
echo module > t2/lib/modules/6.1/kernel.ko; echo ld > t2/lib64/ld.so; echo dotdot > t2/a/up/share/through-dotdot
chmod 0755 t2/m/d700; chown 1000:1000 t2/m/d700
# Only the paths below the symlinks are listed, never lib/, lib64/ or a/up/ themselves.
(cd t2 && printf '%s\n' ./etc ./etc/.wh.gone ./etc/old ./etc/old/.wh..wh..opq ./etc/old/b ./r ./r/d2f ./r/d2s ./r/f2d ./r/f2d/child ./r/f2s ./r/s2d ./r/s2d/c ./r/s2f \
  ./lib/modules ./lib/modules/6.1 ./lib/modules/6.1/kernel.ko ./lib64/ld.so ./a/up/share ./a/up/share/through-dotdot ./m/d700 > ../list2)
$T --no-recursion -C t2 -T list2 -cf - | zstd -q -c > l2.tar.zst
add l2.tar.zst "${OCI}.tar+zstd"

# 3: pax sparse 1.0 and 0.1, and a whiteout of a whole directory.
mkdir -p t3/s t3/usr
truncate -s 3M t3/s/pax10; printf 'data' | dd of=t3/s/pax10 bs=1 seek=1048576 conv=notrunc status=none
cp --sparse=always t3/s/pax10 t3/s/pax01-src
touch t3/usr/.wh.lib64
$T --format=posix --sparse -C t3 -cf - ./s/pax10 ./usr/.wh.lib64 | gzip -n > l3.tar.gz
add l3.tar.gz "${OCI}.tar+gzip"
$T --format=posix --sparse --sparse-version=0.1 --transform=s/pax01-src/pax01/ -C t3 -cf - ./s/pax01-src | gzip -n > l3b.tar.gz
add l3b.tar.gz "${OCI}.tar+gzip"

# 4: what only a hand-made archive carries: hard links to files of earlier layers, names with
#    .. and a leading /, and ping's file capability.
python3 - "$cap" <<'PY'
import base64, io, sys, tarfile
cap = base64.b64decode(sys.argv[1][2:])
with tarfile.open('l4.tar.gz', 'w:gz', format=tarfile.PAX_FORMAT) as t:
    def add(name, kind, data=b'', mode=0o644, link='', pax=None, uid=0, gid=0):
        i = tarfile.TarInfo(name); i.mode = mode; i.mtime = 1700000000; i.uid = uid; i.gid = gid
        if pax: i.pax_headers = pax
        if kind == 'file':
            i.size = len(data); t.addfile(i, io.BytesIO(data))
        else:
            i.type = {'link': tarfile.LNKTYPE, 'sym': tarfile.SYMTYPE, 'dir': tarfile.DIRTYPE}[kind]; i.linkname = link; t.addfile(i)
    add('h/three', 'link', link='h/one')
    add('bin/ping6', 'link', link='./bin/ping')
    add('../../escaped-up', 'file', b'up')
    add('/escaped-abs', 'file', b'abs')
    add('bin/ping', 'file', b'ping with cap', mode=0o755, pax={'SCHILY.xattr.security.capability': cap.decode('latin1')})
    add('bin/arping', 'file', b'arping', mode=0o755, pax={'SCHILY.xattr.security.capability': cap.decode('latin1')})
    # trusted.* here, in the last layer: containerd's native snapshotter drops it when it
    # copies a lower layer's tree, which is not the unpack being compared.
    add('m/trusted', 'file', b'trusted', mode=0o600, pax={'SCHILY.xattr.trusted.marker': 'value'})
    # Into the setgid var/mail of layer 0.
    add('var/mail/later-root', 'file', b'later', mode=0o640)
    add('var/mail/later-mail', 'file', b'later', mode=0o2640, gid=8)
    add('var/mail/later-dir', 'dir', mode=0o750)
PY
add l4.tar.gz "${OCI}.tar+gzip"
`;
