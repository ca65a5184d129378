/**
 * What makes an upstream's manifest answer cacheable. An upstream, or a captive portal or
 * proxy in front of it, can answer 200 with anything: the bytes are stored and served only
 * if they match the digest asked for or announced, parse as one of the manifest media
 * types, and (by tag) are of a type the client accepts. Anything else is never stored, so
 * a portal page cannot outlive the portal.
 */
import { RegistryError } from './errors.js';
import { type ParsedManifest, parseManifest } from './manifests.js';
import { MANIFEST_TYPES, MT, bareMediaType, isManifestType } from './mediatypes.js';
import { type Digest, digestAlgorithm, isDigest } from './names.js';
import { digestOf } from './service.js';

/**
 * Content-Types under which some registries send manifests; for these the body's own
 * `mediaType` (or its shape) decides. Anything else that is not a manifest type (text/html
 * from a portal, say) is refused without looking further.
 */
const GENERIC_TYPES: ReadonlySet<string> = new Set(['', 'application/json', 'text/plain', 'application/octet-stream', 'binary/octet-stream']);

/** Why an upstream answer was refused: `digest` (bytes vs digest), `not-a-manifest`, `not-accepted`. */
export type RefusalReason = 'digest' | 'not-a-manifest' | 'not-accepted';

/** The upstream answered 200 with something that must not be cached (a 502 to the client). */
export class UpstreamManifestRefused extends RegistryError {
  constructor(
    readonly reason: RefusalReason,
    message: string,
  ) {
    super('UNAVAILABLE', message, { status: 502 });
  }
}

export interface VerifiedManifest {
  digest: Digest;
  mediaType: string;
  parsed: ParsedManifest;
}

/**
 * Whether a by-tag answer of `mediaType` may be cached for a client with this Accept list:
 * no Accept, `*\/*` or no manifest type listed (the upstream was then asked for all of
 * them) accepts every type; Docker types predate negotiation and go to any client (as
 * distribution, and as local tags are served, see `acceptsMediaType`); OCI types must be listed.
 */
export function acceptsUpstreamType(accept: readonly string[], mediaType: string): boolean {
  if (accept.length === 0 || accept.includes('*/*')) return true;
  if (!accept.some((a) => MANIFEST_TYPES.includes(a))) return true;
  return accept.includes(mediaType) || mediaType === MT.dockerManifest || mediaType === MT.dockerList;
}

/** A Content-Type safe to quote in an error message and a log line. */
function shown(contentType: string): string {
  const bare = bareMediaType(contentType);
  return bare === '' ? 'none' : bare.replace(/[^\w.+\-/]/g, '?').slice(0, 100);
}

/**
 * Check an upstream's 200 answer for `reference` (a tag or a digest). Throws
 * UpstreamManifestRefused when it must not be cached, and MANIFEST_UNKNOWN for Docker
 * schema1 (policy: neither produced nor proxied; containerd 2 and dockerd >= 26 refuse it).
 */
export function verifyUpstreamManifest(
  body: Buffer,
  opts: {
    contentType: string;
    announcedDigest: string;
    /** The tag or digest asked for upstream. */
    reference: string;
    /** The client's Accept when it asked by tag (also when the tag resolved to a digest), else null. */
    accept: readonly string[] | null;
  },
): VerifiedManifest {
  const byDigest = isDigest(opts.reference);
  const digest = digestOf(body, byDigest ? digestAlgorithm(opts.reference as Digest) : 'sha256');
  const announced = opts.announcedDigest;
  if ((byDigest && digest !== opts.reference) || (!byDigest && isDigest(announced) && announced.startsWith('sha256:') && announced !== digest)) {
    throw new UpstreamManifestRefused('digest', 'upstream manifest does not match its digest');
  }
  const ct = bareMediaType(opts.contentType);
  if (!isManifestType(ct) && ct !== MT.dockerSchema1 && ct !== MT.dockerSchema1Signed && !GENERIC_TYPES.has(ct)) {
    throw new UpstreamManifestRefused('not-a-manifest', `upstream answered with Content-Type ${shown(opts.contentType)}, not a manifest`);
  }
  const mediaType = upstreamMediaType(ct, body);
  if (mediaType === MT.dockerSchema1 || mediaType === MT.dockerSchema1Signed) {
    throw new RegistryError('MANIFEST_UNKNOWN', 'Docker schema1 manifests are not supported by this mirror');
  }
  let parsed: ParsedManifest;
  try {
    parsed = parseManifest(body, mediaType);
  } catch (e) {
    const why = e instanceof RegistryError ? e.message : 'unreadable';
    throw new UpstreamManifestRefused('not-a-manifest', `upstream answered with something that is not a manifest (Content-Type ${shown(opts.contentType)}: ${why})`);
  }
  // By digest the client named the content, whatever its type (as for local content).
  if (opts.accept && !acceptsUpstreamType(opts.accept, parsed.mediaType)) {
    throw new UpstreamManifestRefused('not-accepted', `upstream answered ${parsed.mediaType}, which the client does not accept`);
  }
  return { digest, mediaType: parsed.mediaType, parsed };
}

/**
 * The media type to store: the Content-Type when it is a manifest type, else (generic
 * JSON) the body's own `mediaType`, or its shape (OCI allows leaving `mediaType` out).
 * Unreadable bodies yield '' and are refused by the parse that follows.
 */
function upstreamMediaType(ct: string, body: Buffer): string {
  if (isManifestType(ct) || ct === MT.dockerSchema1 || ct === MT.dockerSchema1Signed) return ct;
  try {
    const doc = JSON.parse(body.toString('utf8')) as { mediaType?: unknown; manifests?: unknown; schemaVersion?: unknown } | null;
    if (doc === null || typeof doc !== 'object') return '';
    if (typeof doc.mediaType === 'string') return doc.mediaType;
    if (doc.schemaVersion === 1) return MT.dockerSchema1;
    return Array.isArray(doc.manifests) ? MT.ociIndex : MT.ociManifest;
  } catch {
    return '';
  }
}
