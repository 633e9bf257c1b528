import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

export interface Descriptor {
  digest: string;
  size: number;
}

/** Writes content-addressed into an OCI layout's blobs/sha256 and returns its descriptor. */
export function putBlob(layout: string, data: Buffer): Descriptor {
  const blobs = join(layout, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const hex = createHash('sha256').update(data).digest('hex');
  writeFileSync(join(blobs, hex), data);
  return { digest: `sha256:${hex}`, size: data.length };
}

/**
 * An OCI image layout with one image made of the given layers (gzip'd tars unless a media type
 * is given; `urls` goes into the layer's descriptor); `refName` becomes the index annotation.
 * The config is linux/amd64 with the layers' diff_ids unless `config` says otherwise (its
 * fields replace those). Returns the manifest descriptor.
 */
export function writeImageLayout(
  layout: string,
  layers: (Buffer | { data: Buffer; mediaType: string; urls?: string[] })[],
  refName?: string,
  config: Record<string, unknown> = {},
): Descriptor {
  const descs = layers.map((l) => (Buffer.isBuffer(l) ? { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...putBlob(layout, l) } : { mediaType: l.mediaType, ...putBlob(layout, l.data), ...(l.urls ? { urls: l.urls } : {}) }));
  // diff_ids: digests of the uncompressed layers, which containerd and matchlock check.
  const diffIds = layers.map((l) => {
    const [data, type] = Buffer.isBuffer(l) ? [l, '+gzip'] : [l.data, l.mediaType];
    let tar = data;
    try {
      // Docker's uncompressed types are whatever the blob's first bytes say (as containerd reads them).
      const docker = /\.diff\.tar$/.test(type);
      if (type.endsWith('+gzip') || type.endsWith('.gzip') || (docker && data[0] === 0x1f && data[1] === 0x8b)) tar = gunzipSync(data);
      else if (type.endsWith('+zstd') || type.endsWith('.zstd')) tar = execFileSync('zstd', ['-dcq'], { input: data, maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      // a deliberately broken layer: its diff_id stays wrong, as nothing reads it
    }
    return `sha256:${createHash('sha256').update(tar).digest('hex')}`;
  });
  const configBlob = putBlob(layout, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds }, ...config })));
  const manifest = putBlob(layout, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...configBlob }, layers: descs })));
  writeFileSync(join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, ...(refName ? { annotations: { 'org.opencontainers.image.ref.name': refName } } : {}) }],
  }));
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return manifest;
}
