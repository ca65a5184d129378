/**
 * Which cached manifest answers a tag request while the upstream cannot (stale-if-error
 * across clients). Tags are cached per Accept set, but nodes mix clients: containerd,
 * CRI-O, skopeo and prefetch jobs ask with different Accept headers. When the upstream is
 * down, any cached variant of the tag that this client can read is better than a 503.
 * Pure: the caller looks the variants up and fetches the chosen record.
 */
import { MT, isIndexType } from './mediatypes.js';
import type { Digest } from './names.js';

export interface TagVariant {
  digest: Digest;
  mediaType: string;
  /** When the upstream last confirmed this digest for the tag (ms). */
  checkedAt: number;
}

/**
 * Strict acceptance for a stale answer: the client named the type (or takes anything).
 * Looser than this would hand an index to a client that cannot read one.
 */
export function clientReads(accept: readonly string[], mediaType: string): boolean {
  return accept.length === 0 || accept.includes('*/*') || accept.includes(mediaType);
}

/**
 * The variant to serve: the most recently confirmed one the client reads; on equal
 * times an index wins for clients that read indexes (it covers every platform).
 */
export function chooseStaleVariant<T extends TagVariant>(variants: readonly T[], accept: readonly string[]): T | undefined {
  let best: T | undefined;
  for (const v of variants) {
    if (!clientReads(accept, v.mediaType)) continue;
    if (!best || v.checkedAt > best.checkedAt || (v.checkedAt === best.checkedAt && isIndexType(v.mediaType) && !isIndexType(best.mediaType))) best = v;
  }
  return best;
}

/**
 * For a client that reads no index: the index entry a registry would have answered it
 * with, linux/amd64 (distribution's rule for clients without manifest-list support),
 * or null. The index body is as cached (verified by digest), but still untrusted JSON.
 */
export function defaultPlatformChild(indexBody: Buffer): { digest: Digest; mediaType: string } | null {
  let doc: unknown;
  try {
    doc = JSON.parse(indexBody.toString('utf8'));
  } catch {
    return null;
  }
  const manifests = (doc as { manifests?: unknown }).manifests;
  if (!Array.isArray(manifests)) return null;
  for (const m of manifests as Array<Record<string, unknown>>) {
    const p = m?.platform as { os?: unknown; architecture?: unknown } | undefined;
    if (p?.os !== 'linux' || p.architecture !== 'amd64') continue;
    if (typeof m.digest !== 'string' || typeof m.mediaType !== 'string') continue;
    if (m.mediaType !== MT.ociManifest && m.mediaType !== MT.dockerManifest) continue;
    return { digest: m.digest as Digest, mediaType: m.mediaType };
  }
  return null;
}
