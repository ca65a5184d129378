/**
 * Manifest validation for PUT (image-spec manifest.md, image-index.md; Docker
 * manifest-v2-2). The stored bytes are always the pushed bytes; parsing only extracts
 * what the registry needs: media type, references, subject, artifactType, annotations.
 */
import { RegistryError } from './errors.js';
import { MT, bareMediaType, isIndexType, isManifestType, isNonDistributable } from './mediatypes.js';
import { type Digest, isDigest } from './names.js';

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface ParsedManifest {
  mediaType: string;
  artifactType: string | null;
  subject: Digest | null;
  annotations: Record<string, string> | null;
  /** Blobs that must exist in the repository (config + distributable layers). */
  requiredBlobs: Descriptor[];
  /** Child manifests that must exist in the repository (index entries). */
  requiredManifests: Descriptor[];
  /** Every referenced blob, including foreign layers (kept for GC). */
  allBlobs: Descriptor[];
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, { detail });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseDescriptor(v: unknown, where: string): Descriptor {
  if (!isRecord(v)) throw invalid(`${where} is not a descriptor object`);
  const { mediaType, digest, size, urls, artifactType, annotations } = v;
  if (typeof mediaType !== 'string' || mediaType.length === 0) throw invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !isDigest(digest)) throw invalid(`${where}.digest is not a valid digest`, { digest });
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`${where}.size is not a non-negative integer`);
  if (urls !== undefined && (!Array.isArray(urls) || !urls.every((u) => typeof u === 'string'))) throw invalid(`${where}.urls must be a list of strings`);
  if (artifactType !== undefined && typeof artifactType !== 'string') throw invalid(`${where}.artifactType must be a string`);
  if (annotations !== undefined && !isStringMap(annotations)) throw invalid(`${where}.annotations must map strings to strings`);
  return { mediaType, digest, size, urls: urls as string[] | undefined, artifactType, annotations: annotations as Record<string, string> | undefined };
}

function isStringMap(v: unknown): v is Record<string, string> {
  return isRecord(v) && Object.values(v).every((x) => typeof x === 'string');
}

/** Decide the media type: header, else body `mediaType`, else the shape (OCI allows omitting it). */
function resolveMediaType(contentType: string, body: Record<string, unknown>): string {
  const header = bareMediaType(contentType);
  const field = typeof body.mediaType === 'string' ? body.mediaType : undefined;
  if (field !== undefined && isManifestType(header) && field !== header) {
    throw invalid('Content-Type does not match the manifest mediaType field', { contentType: header, mediaType: field });
  }
  if (isManifestType(header)) return header;
  if (field !== undefined) return field;
  if (Array.isArray(body.manifests)) return MT.ociIndex;
  if (isRecord(body.config)) return MT.ociManifest;
  return header;
}

export function parseManifest(bytes: Buffer, contentType: string): ParsedManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid('manifest is not valid JSON');
  }
  if (!isRecord(doc)) throw invalid('manifest must be a JSON object');
  const mediaType = resolveMediaType(contentType, doc);
  if (mediaType === MT.dockerSchema1 || mediaType === MT.dockerSchema1Signed || doc.schemaVersion === 1) {
    throw invalid('Docker schema1 manifests are not supported');
  }
  if (!isManifestType(mediaType)) throw invalid(`unsupported manifest media type "${mediaType.slice(0, 200)}"`);
  if (doc.schemaVersion !== 2) throw invalid('schemaVersion must be 2');

  const annotations = doc.annotations === undefined ? null : isStringMap(doc.annotations) ? doc.annotations : null;
  if (doc.annotations !== undefined && annotations === null) throw invalid('annotations must map strings to strings');
  if (doc.artifactType !== undefined && typeof doc.artifactType !== 'string') throw invalid('artifactType must be a string');
  const subject = doc.subject === undefined ? null : parseDescriptor(doc.subject, 'subject').digest;

  if (isIndexType(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw invalid('index has no manifests list');
    const children = doc.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`));
    return {
      mediaType,
      artifactType: (doc.artifactType as string | undefined) ?? null,
      subject,
      annotations,
      requiredBlobs: [],
      requiredManifests: children,
      allBlobs: [],
    };
  }
  const config = parseDescriptor(doc.config, 'config');
  if (doc.layers !== undefined && !Array.isArray(doc.layers)) throw invalid('layers must be a list');
  const layers = ((doc.layers as unknown[] | undefined) ?? []).map((l, i) => parseDescriptor(l, `layers[${i}]`));
  // Foreign / non-distributable layers and layers with `urls` are fetched elsewhere
  // and never pushed, so they must not trigger MANIFEST_BLOB_UNKNOWN.
  const required = [config, ...layers.filter((l) => !isNonDistributable(l.mediaType) && !(l.urls && l.urls.length > 0))];
  return {
    mediaType,
    // Referrers use artifactType, falling back to the config media type (distribution-spec).
    artifactType: (doc.artifactType as string | undefined) ?? config.mediaType,
    subject,
    annotations,
    requiredBlobs: required,
    requiredManifests: [],
    allBlobs: [config, ...layers],
  };
}
