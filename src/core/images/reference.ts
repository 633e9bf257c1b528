/**
 * OCI image references, parsed and normalised the way Docker does: `alpine` becomes
 * `docker.io/library/alpine:latest`. Grammar after the distribution project's reference package.
 */

export interface ImageReference {
  /** Registry host, with port when given (`docker.io`, `127.0.0.1:5000`). */
  registry: string;
  /** Repository path inside the registry (`library/alpine`). */
  repository: string;
  tag?: string;
  /** `sha256:<hex>` when pinned by digest. */
  digest?: string;
}

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = `(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?`;
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const REFERENCE = new RegExp(
  `^(?:(${DOMAIN})/)?(${PATH_COMPONENT}(?:/${PATH_COMPONENT})*)(?::(${TAG}))?(?:@(${DIGEST}))?$`,
);
const MAX_NAME = 255;

export const DEFAULT_REGISTRY = 'docker.io';

/** Docker Hub's other names: its v1 index (Docker's credential key) and its API host. */
const DOCKER_HUB_ALIASES: readonly string[] = ['index.docker.io', 'registry-1.docker.io'];
const REGISTRY_HOST = new RegExp(`^${DOMAIN}$`);

/**
 * A registry host as image references write it (host[:port], an IPv6 address in brackets),
 * in the one form every per-registry setting and credential is keyed and looked up by:
 * lowercased, since host names are case-insensitive (RFC 3986 section 3.2.2), and Docker Hub's
 * other names as `docker.io`, the name references give it. Undefined for a string that is no
 * reference's registry (a scheme, a path, a space, a port outside 1-65535): such a name can
 * never match a pull.
 */
export function registryName(host: string): string | undefined {
  if (!REGISTRY_HOST.test(host)) return undefined;
  const port = /:([0-9]+)$/.exec(host)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) return undefined;
  const name = host.toLowerCase();
  return DOCKER_HUB_ALIASES.includes(name) ? DEFAULT_REGISTRY : name;
}

/** Parses a reference, or returns a sentence saying why it is not one. */
export function parseReference(input: string): ImageReference | string {
  if (input.length === 0) return 'must not be empty';
  if (input.length > 1024) return 'must be at most 1024 characters';
  const m = REFERENCE.exec(input);
  if (!m) {
    return 'must be an OCI image reference such as ghcr.io/org/image:tag or alpine:3.20 (lowercase repository, optional :tag and @sha256:digest)';
  }
  const [, domainPart, pathPart, tag, digest] = m;
  let registry = domainPart;
  let repository = pathPart ?? '';
  // Docker's rule: the first component is a registry only if it looks like a host.
  if (registry !== undefined && !/[.:]/.test(registry) && registry !== 'localhost' && registry.toLowerCase() === registry) {
    repository = `${registry}/${repository}`;
    registry = undefined;
  }
  if (registry === undefined) {
    registry = DEFAULT_REGISTRY;
    if (!repository.includes('/')) repository = `library/${repository}`;
  }
  if (DOCKER_HUB_ALIASES.includes(registry)) registry = DEFAULT_REGISTRY;
  if (registry.length + 1 + repository.length > MAX_NAME) return `repository name must be at most ${MAX_NAME} characters`;
  const ref: ImageReference = { registry, repository };
  if (digest !== undefined) {
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) return 'digest must be sha256: followed by 64 lowercase hex digits';
    ref.digest = digest;
  }
  if (tag !== undefined) ref.tag = tag;
  else if (digest === undefined) ref.tag = 'latest';
  return ref;
}

export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}
