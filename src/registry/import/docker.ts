/**
 * Decide what a `docker save` archive (staged by stage.ts) contains (formats.md section 2):
 * the legacy layout (Docker <=24, skopeo `docker-archive:`: `manifest.json`, layers as
 * `<v1id>/layer.tar` or `<diffid>.tar`, often links) and the OCI-layout style (Docker 25+,
 * containerd exports: an OCI layout plus `manifest.json`). `manifest.json` is the truth:
 * each entry's config and layers are found by name (links followed inside the archive only).
 * When index.json holds a registry manifest with exactly that config and those layer files
 * in that order, it is kept (digests unchanged; its whole index when every platform is
 * present); otherwise (legacy archives; Docker 25.0.0's shuffled layers, untagged images
 * missing from index.json before 25.0.3) one is built: OCI image manifest, config bytes
 * verbatim, one layer per diff_id, each layer file required to hash to it (README, "Air-gapped
 * import"). index.json entries manifest.json does not describe are planned as in oci.ts.
 * Nothing is stored here.
 */
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { RegistryError, isRegistryError } from '../errors.js';
import { type Descriptor, parseManifest } from '../manifests.js';
import { MT, isIndexType, isManifestType } from '../mediatypes.js';
import { type Digest, type RepoName, type Tag, parseRepoName, parseTag } from '../names.js';
import {
  type ImportTarget, type Limits, type PlannedImage, type PlannedManifest, claimTag, indexEntries, invalid, parseJson, planIndexEntry, readManifest, splitImageName, walk,
} from './oci.js';
import { malformed } from './detect.js';
import { type StagedBlob, type Staging, archiveKey, resolveFile } from './stage.js';

const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const BUILT_LAYER = 'application/vnd.oci.image.layer.v1.tar';
const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

interface Entry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

function entryOf(raw: unknown, i: number): Entry {
  const e = raw as Partial<Record<keyof Entry, unknown>> | null;
  const strings = (v: unknown) => Array.isArray(v) && v.every((s) => typeof s === 'string');
  if (typeof e !== 'object' || e === null || typeof e.Config !== 'string' || !strings(e.Layers) || !(e.RepoTags == null || strings(e.RepoTags))) {
    throw invalid(`manifest.json entry ${i} must have Config (a string), Layers (strings) and RepoTags (strings or null)`);
  }
  return { Config: e.Config, Layers: e.Layers as string[], RepoTags: (e.RepoTags as string[] | null) ?? [] };
}

/** The staged file `name` denotes, or a 400 naming it (a missing file, or a link to one). */
function fileOf(staging: Staging, name: string, what: string): StagedBlob {
  try {
    archiveKey(name);
  } catch (e) {
    throw malformed(`manifest.json names ${what} ${JSON.stringify(name.slice(0, 200))}: ${(e as Error).message}`, { file: name.slice(0, 200) });
  }
  const f = resolveFile(staging, name);
  if (!f) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', `manifest.json names ${what} ${JSON.stringify(name.slice(0, 200))}, which is not in the archive`, { detail: { file: name.slice(0, 200) } });
  return f;
}

/**
 * Where a RepoTags entry goes. Docker writes familiar names (`alpine:3.19`), skopeo full
 * ones (`docker.io/library/alpine:3.19`): both become `library/alpine` (Docker's
 * normalization for a one-component Docker Hub name), so the image lands where a client
 * pulling `docker.io/alpine` through `<namespace>` looks for it; the registry host is dropped.
 */
function targetOfRepoTag(repoTag: string, target: ImportTarget, i: number): { repo: RepoName; tag: Tag } {
  const { path, tag } = splitImageName(repoTag);
  const bad = (why: string) => invalid(`manifest.json entry ${i} has an invalid RepoTag ${JSON.stringify(repoTag.slice(0, 200))}: ${why}`);
  if (tag === undefined || repoTag.includes('@')) throw bad('expected name:tag');
  const first = repoTag.split('/', 1)[0]!;
  const hub = !repoTag.includes('/') || first === 'docker.io' || first === 'index.docker.io' || !(first.includes('.') || first.includes(':') || first === 'localhost');
  const full = hub && !path.includes('/') ? `library/${path}` : path;
  try {
    return { repo: parseRepoName(target.repository ?? `${target.namespace}/${full}`), tag: parseTag(tag) };
  } catch (e) {
    throw bad((e as Error).message);
  }
}

/** An image manifest the archive holds, listed in index.json (`top`) or as a child of an index listed there. */
interface Candidate {
  entry: number;
  top: PlannedManifest;
  image: PlannedManifest;
  config: Digest;
  layers: Digest[];
}

function layersOf(m: PlannedManifest): { config: Digest; layers: Digest[] } {
  const doc = JSON.parse(m.body.toString('utf8')) as { config?: { digest?: string }; layers?: Array<{ digest?: string }> };
  return { config: doc.config?.digest as Digest, layers: (doc.layers ?? []).map((l) => l.digest as Digest) };
}

/**
 * The registry manifests of a Docker 25+ (or containerd `ctr export`, or containerd-store
 * `docker save`) archive: every image manifest index.json lists, directly or one index deep,
 * when present in the archive. None for a legacy archive.
 */
async function archivedManifests(staging: Staging, entries: Descriptor[], limits: Limits): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const [entry, d] of entries.entries()) {
    if (!isManifestType(d.mediaType) || !staging.blobs.has(d.digest)) continue; // judged later, if uncovered
    const top = await readManifest(staging, d, limits);
    const images = isIndexType(top.mediaType)
      ? await Promise.all(top.parsed.requiredManifests.filter((c) => !isIndexType(c.mediaType) && staging.blobs.has(c.digest)).map((c) => readManifest(staging, c, limits)))
      : [top];
    for (const image of images) out.push({ entry, top, image, ...layersOf(image) });
  }
  return out;
}

/** Where a matched archive manifest is imported from: its whole index when every platform is present, else itself. */
async function keptRoot(staging: Staging, c: Candidate, limits: Limits): Promise<Omit<PlannedImage, 'repo' | 'tag'>> {
  if (c.top !== c.image) {
    try {
      return { root: c.top, ...(await walk(staging, c.top, limits)) };
    } catch (e) {
      if (!isRegistryError(e) || e.code !== 'MANIFEST_BLOB_UNKNOWN') throw e; // a one-platform save: keep that platform
    }
  }
  return { root: c.image, ...(await walk(staging, c.image, limits)) };
}

/** sha256 of the gunzipped file, or undefined when it is not gzip (streamed: layers can be large). */
async function gunzippedDigest(file: StagedBlob): Promise<Digest | undefined> {
  const head = await file.read(0, 3);
  if (head[0] !== 0x1f || head[1] !== 0x8b || head[2] !== 0x08) return undefined;
  const h = createHash('sha256');
  try {
    await pipeline(file.stream(), createGunzip(), async (src: AsyncIterable<Buffer>) => {
      for await (const chunk of src) h.update(chunk);
    });
  } catch {
    return undefined; // corrupt gzip: reported as not matching its diff_id
  }
  return `sha256:${h.digest('hex')}` as Digest;
}

/** Each layer file as a built-manifest layer: uncompressed (digest = diff_id), or gzip whose content is the diff_id. */
async function builtLayers(layers: StagedBlob[], diffIds: Digest[], names: string[], i: number): Promise<Array<{ file: StagedBlob; mediaType: string }>> {
  const out: Array<{ file: StagedBlob; mediaType: string }> = [];
  for (const [j, l] of layers.entries()) {
    if (l.digest === diffIds[j]) out.push({ file: l, mediaType: BUILT_LAYER });
    else if ((await gunzippedDigest(l)) === diffIds[j]) out.push({ file: l, mediaType: `${BUILT_LAYER}+gzip` });
    else {
      throw new RegistryError('DIGEST_INVALID', `layer ${JSON.stringify(names[j]!.slice(0, 200))} of manifest.json entry ${i} does not hash to its diff_id ${diffIds[j]}`, {
        detail: { file: names[j]!.slice(0, 200), expected: diffIds[j], actual: l.digest },
      });
    }
  }
  return out;
}

/** The OCI image manifest for a config and its uncompressed layers (descriptor digest = diff_id). */
function buildManifest(config: StagedBlob, layers: Array<{ file: StagedBlob; mediaType: string }>): PlannedManifest {
  const doc = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.file.digest, size: l.file.size })),
  };
  const body = Buffer.from(JSON.stringify(doc));
  const parsed = parseManifest(body, MT.ociManifest);
  return { digest: `sha256:${createHash('sha256').update(body).digest('hex')}` as Digest, mediaType: MT.ociManifest, body, parsed };
}

/** The diff_ids of a config, or a 400 naming the entry. */
function diffIdsOf(configBytes: Buffer, i: number): Digest[] {
  const cfg = parseJson(configBytes, `manifest.json entry ${i}'s config`) as { rootfs?: { diff_ids?: unknown } } | null;
  const ids = cfg?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((d) => typeof d === 'string' && DIGEST_RE.test(d))) {
    throw invalid(`manifest.json entry ${i}: the config has no valid rootfs.diff_ids (sha256 digests)`);
  }
  return ids as Digest[];
}

/** Plan every image of a docker-save archive; throws a 400/413 naming the first problem found. */
export async function planDockerArchive(staging: Staging, target: ImportTarget, limits: Limits): Promise<PlannedImage[]> {
  const raw = parseJson(staging.files.get('manifest.json')!, 'manifest.json');
  if (!Array.isArray(raw) || raw.length === 0) throw invalid('manifest.json must be a non-empty array of images');
  const indexFile = staging.files.get('index.json');
  const entries = indexFile ? indexEntries(indexFile) : [];
  const archived = await archivedManifests(staging, entries, limits);
  const images: PlannedImage[] = [];
  const tags = new Map<string, Digest>();
  const configs = new Set<Digest>();
  for (const [i, rawEntry] of raw.entries()) {
    const entry = entryOf(rawEntry, i);
    const config = fileOf(staging, entry.Config, `entry ${i}'s config`);
    configs.add(config.digest);
    if (config.size > limits.maxManifestBytes) throw new RegistryError('MANIFEST_INVALID', `the config of manifest.json entry ${i} exceeds ${limits.maxManifestBytes} bytes`, { status: 413 });
    const diffIds = diffIdsOf(await config.read(0, config.size), i);
    if (diffIds.length !== entry.Layers.length) throw invalid(`manifest.json entry ${i} lists ${entry.Layers.length} layers, its config ${diffIds.length} diff_ids`);
    const layers = entry.Layers.map((l, j) => fileOf(staging, l, `entry ${i}'s layer ${j}`));
    const fileDigests = layers.map((l) => l.digest).join();
    const kept = archived.find((c) => c.config === config.digest && c.layers.join() === fileDigests);
    // The archive's own manifest for exactly these files is what a client verifies (its
    // layers may be compressed, so diff_ids would need decompression to check: not needed).
    const planned = kept
      ? await keptRoot(staging, kept, limits)
      : { root: buildManifest(config, await builtLayers(layers, diffIds, entry.Layers, i)), children: [], blobs: [...new Set([config.digest, ...layers.map((l) => l.digest)])], built: true };
    if (entry.RepoTags.length === 0 && !target.repository) {
      throw invalid(`manifest.json entry ${i} has no RepoTags (an untagged image); import it with repository=<name> to store it by digest`);
    }
    const targets = entry.RepoTags.length === 0 ? [{ repo: target.repository!, tag: null }] : entry.RepoTags.map((rt) => targetOfRepoTag(rt, target, i));
    for (const t of targets) {
      if (claimTag(tags, t.repo, t.tag, planned.root.digest, 'manifest.json')) images.push({ repo: t.repo, tag: t.tag, ...planned });
    }
  }
  // index.json entries manifest.json does not describe (other platforms' or non-image
  // entries: containerd writes manifest.json for one platform) are imported as from an OCI layout.
  for (const [i, d] of entries.entries()) {
    if (archived.some((c) => c.entry === i && configs.has(c.config))) continue;
    images.push(await planIndexEntry(staging, d, i, target, limits, tags));
  }
  return images;
}
