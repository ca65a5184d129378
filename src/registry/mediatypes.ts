/** Manifest media types a registry must store and serve unchanged (image-spec media-types.md). */
export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

/** The four modern manifest types, in containerd's preference order. */
export const MANIFEST_TYPES: readonly string[] = [MT.dockerManifest, MT.dockerList, MT.ociManifest, MT.ociIndex];

export function isIndexType(mt: string): boolean {
  return mt === MT.ociIndex || mt === MT.dockerList;
}

export function isManifestType(mt: string): boolean {
  return MANIFEST_TYPES.includes(mt);
}

/**
 * Layers a client fetches from their `urls` and never pushes (image-spec layer.md,
 * "Non-Distributable Layers"); a manifest PUT must not require them.
 */
export function isNonDistributable(mt: string): boolean {
  return mt === 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip' || mt.startsWith('application/vnd.oci.image.layer.nondistributable.');
}

/** Strip parameters (`; charset=utf-8`) and lower-case. */
export function bareMediaType(header: string | undefined): string {
  if (!header) return '';
  return (header.split(';')[0] ?? '').trim().toLowerCase();
}

/**
 * Parse an Accept header (comma-joined; node joins repeated lines with ', ').
 * q=0 entries are dropped; order is kept because manifest negotiation only asks
 * "is this type acceptable", never "which is best".
 */
export function parseAccept(header: string | string[] | undefined): string[] {
  const joined = Array.isArray(header) ? header.join(',') : header ?? '';
  const out: string[] = [];
  for (const part of joined.split(',')) {
    const [type, ...params] = part.split(';').map((s) => s.trim());
    if (!type) continue;
    const q = params.find((p) => /^q\s*=/.test(p));
    if (q && Number(q.split('=')[1]) === 0) continue;
    out.push(type.toLowerCase());
  }
  return out;
}

/**
 * Whether a manifest of `mediaType` may answer a by-tag request with this Accept list.
 * Distribution's rule (registry/handlers/manifests.go): OCI types must be asked for
 * (or `*\/*`); Docker types predate negotiation and are served to any client. No Accept
 * at all (curl) gets whatever is stored.
 */
export function acceptsMediaType(accept: readonly string[], mediaType: string): boolean {
  if (accept.length === 0) return true;
  if (accept.some((a) => a === '*/*' || a === mediaType)) return true;
  return mediaType === MT.dockerManifest || mediaType === MT.dockerList;
}
