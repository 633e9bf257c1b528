/**
 * Which image of an image index (OCI) or manifest list (Docker) this host runs, by the rule of
 * containerd's default platform matcher (github.com/containerd/platforms: `Default()` is
 * `Only(DefaultSpec())`; compare.go `platformVector`, database.go `normalizeArch`), so that an
 * index resolves here to the image flintlockd's containerd would unpack.
 */

/** A platform as an index entry's `platform` or an image config's os/architecture give it. */
export interface Platform {
  os?: string | undefined;
  architecture?: string | undefined;
  variant?: string | undefined;
}

interface Normal {
  os: string;
  architecture: string;
  variant: string;
}

/**
 * The canonical form containerd compares (database.go normalizeOS and normalizeArch): lower
 * case; no os means linux (containerd takes its own GOOS); x86_64 is amd64 and amd64/v1 is
 * amd64; aarch64 is arm64 and arm64/v8 (8, v8.0) is arm64; arm is arm/v7; i386 is 386.
 */
function normalize(p: Platform): Normal {
  const os = (p.os ?? '').toLowerCase() || 'linux';
  let architecture = (p.architecture ?? '').toLowerCase();
  let variant = (p.variant ?? '').toLowerCase();
  switch (architecture) {
    case 'i386':
      architecture = '386';
      variant = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      architecture = 'amd64';
      if (variant === 'v1') variant = '';
      break;
    case 'aarch64':
    case 'arm64':
      architecture = 'arm64';
      if (['8', 'v8', 'v8.0'].includes(variant)) variant = '';
      else if (['9', '9.0', 'v9.0'].includes(variant)) variant = 'v9';
      break;
    case 'armhf':
      architecture = 'arm';
      variant = 'v7';
      break;
    case 'armel':
      architecture = 'arm';
      variant = 'v6';
      break;
    case 'arm':
      if (variant === '' || variant === '7') variant = 'v7';
      else if (['5', '6', '8'].includes(variant)) variant = `v${variant}`;
      break;
  }
  return { os: os === 'macos' ? 'darwin' : os, architecture, variant };
}

/** Node's name of an architecture in the OCI image spec's (Go's GOARCH) terms. */
function goArch(nodeArch: string): string {
  return ({ x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm' } as Record<string, string>)[nodeArch] ?? nodeArch;
}

/**
 * The platforms this host runs, most preferred first: containerd's `platformVector` of its
 * default spec, linux on this host's architecture. containerd reads a CPU variant only on ARM,
 * so on amd64 the default spec has none and the vector is amd64 (no variant, or v1), then 386:
 * amd64/v2, v3 and v4 entries of an index are never chosen (their binaries need instructions
 * that QEMU TCG's default CPU lacks). An image manifest's own config is matched on os and
 * architecture only, as containerd 1.7's unpacker does: a config saying amd64/v3 unpacks. On arm64 (variant v8, as containerd reads it from /proc/cpuinfo on any
 * ARMv8 core): arm64, then arm/v8, v7, v6, v5.
 */
export function hostPlatforms(nodeArch: string = process.arch): Platform[] {
  const architecture = goArch(nodeArch);
  if (architecture === 'amd64') return [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: '386' }];
  if (architecture === 'arm64') return [{ os: 'linux', architecture: 'arm64' }, ...['v8', 'v7', 'v6', 'v5'].map((variant) => ({ os: 'linux', architecture: 'arm', variant }))];
  if (architecture === 'arm') return ['v7', 'v6', 'v5'].map((variant) => ({ os: 'linux', architecture: 'arm', variant }));
  return [{ os: 'linux', architecture }];
}

/**
 * Where `p` stands in `host`'s order of preference (0 first), or -1 when this host does not
 * run it. Compared in containerd's canonical form (os, architecture and variant all equal).
 */
export function platformRank(p: Platform, host: Platform[] = hostPlatforms()): number {
  const n = normalize(p);
  return host.findIndex((h) => {
    const m = normalize(h);
    return m.os === n.os && m.architecture === n.architecture && m.variant === n.variant;
  });
}

/** `os/architecture[/variant]` as written (`linux/arm64/v8`), `?` for a missing part. */
export function formatPlatform(p: Platform | undefined): string {
  if (!p) return '(no platform)';
  return [p.os || '?', p.architecture || '?', ...(p.variant ? [p.variant] : [])].join('/');
}

/** The host's platforms as an error names them: `linux/amd64 or linux/386`. */
export function hostPlatformsText(host: Platform[] = hostPlatforms()): string {
  return host.map(formatPlatform).join(' or ');
}

/**
 * The entry of an image index to use on this host, as containerd's pull picks it
 * (images.FilterPlatforms then LimitManifests: the entries whose platform the host runs, by the
 * host's preference, the index's order among equals; an entry without a platform is kept, after
 * all of those, its config deciding at unpack). Undefined when no entry is for this host.
 */
export function choosePlatform<T extends { platform?: Platform }>(entries: readonly T[], host: Platform[] = hostPlatforms()): T | undefined {
  let best: T | undefined;
  let bestRank = Infinity;
  for (const e of entries) {
    const rank = e.platform ? platformRank(e.platform, host) : host.length;
    if (rank >= 0 && rank < bestRank) {
      best = e;
      bestRank = rank;
    }
  }
  return best;
}
