import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { putBlob } from '../helpers/oci.js';


/**
 * A multi-arch layout: an image index naming the test guest as linux/amd64 and a tiny other
 * image as linux/arm64, tagged "multi". A client that picks the wrong platform gets no kernel.
 */
export function multiArchLayout(guestLayout: string, dir: string): string {
  cpSync(guestLayout, dir, { recursive: true });
  const guestIndex = JSON.parse(readFileSync(join(guestLayout, 'index.json'), 'utf8')) as { manifests: { digest: string; size: number }[] };
  const amd64 = guestIndex.manifests[0];
  if (!amd64) throw new Error('guest layout has no manifest');
  const tree = join(dir, '..', 'arm-tree');
  mkdirSync(tree, { recursive: true });
  writeFileSync(join(tree, 'ARCH'), 'arm64\n');
  const tar = execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', tree, '-cf', '-', '.']);
  const layer = putBlob(dir, gzipSync(tar));
  const diffId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
  const config = putBlob(dir, Buffer.from(JSON.stringify({ architecture: 'arm64', os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] } })));
  const arm = putBlob(dir, Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
  })));
  const index = putBlob(dir, Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...arm, platform: { os: 'linux', architecture: 'arm64' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd64.digest, size: amd64.size, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  })));
  writeFileSync(join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...index, annotations: { 'org.opencontainers.image.ref.name': 'multi' } }],
  }));
  return dir;
}

/** The digests of the guest layout's manifest and its layer. */
export function guestDigests(layout: string): { manifest: string; layer: string } {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const manifest = index.manifests[0]?.digest ?? '';
  const m = JSON.parse(readFileSync(join(layout, 'blobs', 'sha256', manifest.slice(7)), 'utf8')) as { layers: { digest: string }[] };
  return { manifest, layer: m.layers[0]?.digest ?? '' };
}
