/**
 * Decide what an OCI image layout (staged by stage.ts) contains: one planned image per
 * `index.json` entry, each with every manifest (children before parents) and every blob it
 * needs, all checked against the staged, digest-verified files. Pure decisions over the
 * staging area; nothing is stored here.
 */
import { RegistryError } from '../errors.js';
import { type Descriptor, type ParsedManifest, parseManifest } from '../manifests.js';
import { isIndexType, isManifestType } from '../mediatypes.js';
import { type Digest, type RepoName, type Tag, parseRepoName, parseTag } from '../names.js';
import type { Staging } from './stage.js';

export const REF_NAME = 'org.opencontainers.image.ref.name';
export const CONTAINERD_NAME = 'io.containerd.image.name';
/** Index nesting deeper than this is refused (a cycle cannot happen with digests, but depth can). */
const MAX_DEPTH = 8;

export interface ImportTarget {
  /** Re-home each image's repository path under this prefix. */
  namespace?: RepoName;
  /** Store every image in this repository (the archive's names give only the tags). */
  repository?: RepoName;
}

export interface PlannedManifest {
  digest: Digest;
  mediaType: string;
  body: Buffer;
  parsed: ParsedManifest;
}

export interface PlannedImage {
  repo: RepoName;
  tag: Tag | null;
  root: PlannedManifest;
  /** Child manifests, leaves first, each once; the root is not included. */
  children: PlannedManifest[];
  /** Config and layer blobs (distributable, present in the archive), each once. */
  blobs: Digest[];
  /** The root manifest was built by the importer (a docker-save archive without one). */
  built?: boolean;
}

export function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, { detail });
}

export function parseJson(buf: Buffer, name: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    throw invalid(`${name} is not valid JSON`);
  }
}

/**
 * Split `[host/]path[:tag][@digest]` into a repository path (registry host dropped: the
 * image is re-homed) and its tag. A host is a first component with a `.` or `:`, or
 * `localhost`, as in the Docker reference grammar.
 */
export function splitImageName(ref: string): { path: string; tag: string | undefined } {
  let s = ref.split('@', 1)[0]!;
  let tag: string | undefined;
  const colon = s.lastIndexOf(':');
  if (colon > s.lastIndexOf('/')) {
    tag = s.slice(colon + 1);
    s = s.slice(0, colon);
  }
  const slash = s.indexOf('/');
  if (slash > 0) {
    const first = s.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') s = s.slice(slash + 1);
  }
  return { path: s, tag };
}

/** Where an index.json entry goes: its repository and tag (null: stored by digest only). */
export function targetOf(annotations: Record<string, string> | undefined, target: ImportTarget, entry: number): { repo: RepoName; tag: Tag | null } {
  const full = annotations?.[CONTAINERD_NAME];
  const refName = annotations?.[REF_NAME];
  let path: string | undefined;
  let tag: string | undefined;
  if (full) ({ path, tag } = splitImageName(full));
  if (refName) {
    // ref.name is a tag by the spec (containerd, Docker 25+); skopeo stores whatever name it
    // was given, e.g. `alpine:3.19` or `docker.io/library/alpine:3.19`.
    if (/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(refName)) tag = refName;
    else {
      const s = splitImageName(refName);
      path ??= s.path;
      tag = s.tag ?? tag;
    }
  }
  let repo: string;
  if (target.repository) repo = target.repository;
  else if (!path) throw invalid(`index.json entry ${entry} has no image name (${CONTAINERD_NAME}, or a name in ${REF_NAME}); import it with repository=<name>`);
  else repo = `${target.namespace}/${path}`;
  try {
    return { repo: parseRepoName(repo), tag: tag === undefined ? null : parseTag(tag) };
  } catch (e) {
    throw invalid(`index.json entry ${entry} names an invalid image ${JSON.stringify((full ?? refName ?? '').slice(0, 200))}: ${(e as Error).message}`);
  }
}

export interface Limits {
  maxManifestBytes: number;
}

export async function readManifest(staging: Staging, d: Descriptor, limits: Limits): Promise<PlannedManifest> {
  const staged = staging.blobs.get(d.digest);
  if (!staged) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', `manifest ${d.digest} is not in the archive`, { detail: { digest: d.digest } });
  if (staged.size !== d.size) throw invalid(`manifest ${d.digest} is ${staged.size} bytes, its descriptor says ${d.size}`);
  if (staged.size > limits.maxManifestBytes) throw new RegistryError('MANIFEST_INVALID', `manifest ${d.digest} exceeds ${limits.maxManifestBytes} bytes`, { status: 413 });
  const body = await staged.read(0, staged.size);
  let parsed: ParsedManifest;
  try {
    parsed = parseManifest(body, d.mediaType);
  } catch (e) {
    throw invalid(`manifest ${d.digest}: ${(e as Error).message}`, { digest: d.digest });
  }
  return { digest: d.digest, mediaType: parsed.mediaType, body, parsed };
}

/** Every manifest and blob below `root`, checked present and of the declared sizes. */
export async function walk(staging: Staging, root: PlannedManifest, limits: Limits): Promise<{ children: PlannedManifest[]; blobs: Digest[] }> {
  const children: PlannedManifest[] = [];
  const seen = new Set<Digest>([root.digest]);
  const blobs = new Set<Digest>();
  const visit = async (m: PlannedManifest, depth: number): Promise<void> => {
    if (depth > MAX_DEPTH) throw invalid(`image indexes are nested more than ${MAX_DEPTH} deep`);
    for (const b of m.parsed.requiredBlobs) {
      const staged = staging.blobs.get(b.digest);
      if (!staged) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', `blob ${b.digest} (referenced by ${m.digest}) is not in the archive`, { detail: { digest: b.digest, manifest: m.digest } });
      if (staged.size !== b.size) throw invalid(`blob ${b.digest} is ${staged.size} bytes, manifest ${m.digest} says ${b.size}`);
      blobs.add(b.digest);
    }
    // Foreign layers (urls, non-distributable) may be absent; kept when the archive has them.
    for (const b of m.parsed.allBlobs) if (staging.blobs.has(b.digest)) blobs.add(b.digest);
    for (const c of m.parsed.requiredManifests) {
      if (seen.has(c.digest)) continue;
      seen.add(c.digest);
      const child = await readManifest(staging, c, limits);
      await visit(child, depth + 1);
      children.push(child); // after its own children: a valid push order
    }
  };
  await visit(root, 0);
  return { children, blobs: [...blobs] };
}

/** The entries of the archive's index.json (which must be an image index). */
export function indexEntries(indexFile: Buffer): Descriptor[] {
  let index: ParsedManifest;
  try {
    index = parseManifest(indexFile, '');
  } catch (e) {
    throw invalid(`index.json: ${(e as Error).message}`);
  }
  if (!isIndexType(index.mediaType)) throw invalid('index.json is not an image index');
  return index.requiredManifests;
}

/** A name:tag the archive gives twice must mean one image (`tags`: name:tag -> digest so far). */
export function claimTag(tags: Map<string, Digest>, repo: RepoName, tag: Tag | null, digest: Digest, where: string): boolean {
  const key = `${repo}:${tag ?? digest}`;
  const other = tags.get(key);
  if (other !== undefined && other !== digest) throw invalid(`${where} names ${repo}:${tag} twice, for different images`);
  tags.set(key, digest);
  return other === undefined;
}

/** Plan index.json entry `i`: its name from its annotations, everything below it checked present. */
export async function planIndexEntry(staging: Staging, d: Descriptor, i: number, target: ImportTarget, limits: Limits, tags: Map<string, Digest>): Promise<PlannedImage> {
  if (!isManifestType(d.mediaType)) throw invalid(`index.json entry ${i} has unsupported media type ${d.mediaType.slice(0, 100)}`);
  const { repo, tag } = targetOf(d.annotations, target, i);
  claimTag(tags, repo, tag, d.digest, 'index.json');
  // parseManifest refuses a body whose mediaType field contradicts the descriptor's.
  const root = await readManifest(staging, d, limits);
  return { repo, tag, root, ...(await walk(staging, root, limits)) };
}

/** Plan every image of an OCI layout; throws a 400/413 naming the first problem found. */
export async function planOciLayout(staging: Staging, target: ImportTarget, limits: Limits): Promise<PlannedImage[]> {
  const layoutFile = staging.files.get('oci-layout');
  const indexFile = staging.files.get('index.json');
  if (!layoutFile || !indexFile) {
    throw invalid(`not an OCI image layout or a docker-save archive: ${layoutFile ? '' : 'oci-layout '}${indexFile ? '' : 'index.json '}missing (and no manifest.json)`.replace(/ +/g, ' '));
  }
  const layout = parseJson(layoutFile, 'oci-layout') as { imageLayoutVersion?: unknown } | null;
  if (layout?.imageLayoutVersion !== '1.0.0') throw invalid('oci-layout: imageLayoutVersion must be "1.0.0"');
  const entries = indexEntries(indexFile);
  if (entries.length === 0) throw invalid('index.json lists no images');
  const images: PlannedImage[] = [];
  const tags = new Map<string, Digest>();
  for (const [i, d] of entries.entries()) images.push(await planIndexEntry(staging, d, i, target, limits, tags));
  return images;
}
