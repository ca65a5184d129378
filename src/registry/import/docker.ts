/**
 * Decide what a `docker save` archive (staged by stage.ts) contains (formats.md section 2):
 * the legacy layout (Docker <=24, skopeo `docker-archive:`: `manifest.json`, layers as
 * `<v1id>/layer.tar` or `<diffid>.tar`, often links) and the Docker 25+ one (an OCI layout
 * plus `manifest.json`). `manifest.json` is the truth for both: each entry's config and
 * layers are found by name (links followed inside the archive only). When `index.json`
 * holds a registry manifest with exactly that config and those layers in that order, it is
 * kept (its digest unchanged); otherwise (legacy archives; Docker 25.0.0's shuffled layers,
 * untagged images missing from index.json before 25.0.3) one is built: OCI image manifest,
 * config bytes verbatim, one `application/vnd.oci.image.layer.v1.tar` layer per diff_id,
 * each layer file required to hash to its diff_id. Nothing is stored here.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { RegistryError } from '../errors.js';
import { type ParsedManifest, parseManifest } from '../manifests.js';
import { MT, isManifestType } from '../mediatypes.js';
import { type Digest, type RepoName, type Tag, parseRepoName, parseTag } from '../names.js';
import {
  type ImportTarget, type Limits, type PlannedImage, type PlannedManifest, invalid, parseJson, readManifest, splitImageName, walk,
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

/** Image manifests listed in index.json (Docker 25+), by config digest; none for a legacy archive. */
async function archivedManifests(staging: Staging, limits: Limits): Promise<Map<Digest, PlannedManifest[]>> {
  const out = new Map<Digest, PlannedManifest[]>();
  const indexFile = staging.files.get('index.json');
  if (!indexFile) return out;
  let index: ParsedManifest;
  try {
    index = parseManifest(indexFile, '');
  } catch (e) {
    throw invalid(`index.json: ${(e as Error).message}`);
  }
  for (const d of index.requiredManifests) {
    // Index entries (containerd-store saves of multi-platform images) are not matched:
    // manifest.json names one platform's config, and its image is built if nothing matches.
    if (!isManifestType(d.mediaType) || d.mediaType === MT.ociIndex || d.mediaType === MT.dockerList) continue;
    if (!staging.blobs.has(d.digest)) continue; // manifest.json decides what must be present
    const m = await readManifest(staging, d, limits);
    const config = m.parsed.requiredBlobs[0]?.digest;
    if (config) out.set(config, [...(out.get(config) ?? []), m]);
  }
  return out;
}

function layersOf(m: PlannedManifest): Digest[] {
  const doc = JSON.parse(m.body.toString('utf8')) as { layers?: Array<{ digest?: string }> };
  return (doc.layers ?? []).map((l) => l.digest as Digest);
}

/** The OCI image manifest for a config and its uncompressed layers (descriptor digest = diff_id). */
function buildManifest(config: StagedBlob, layers: StagedBlob[]): PlannedManifest {
  const doc = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: BUILT_LAYER, digest: l.digest, size: l.size })),
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
  const archived = await archivedManifests(staging, limits);
  const images: PlannedImage[] = [];
  const tags = new Map<string, Digest>();
  for (const [i, rawEntry] of raw.entries()) {
    const entry = entryOf(rawEntry, i);
    const config = fileOf(staging, entry.Config, `entry ${i}'s config`);
    if (config.size > limits.maxManifestBytes) throw new RegistryError('MANIFEST_INVALID', `the config of manifest.json entry ${i} exceeds ${limits.maxManifestBytes} bytes`, { status: 413 });
    const configBytes = await fs.readFile(config.tempPath);
    const diffIds = diffIdsOf(configBytes, i);
    if (diffIds.length !== entry.Layers.length) throw invalid(`manifest.json entry ${i} lists ${entry.Layers.length} layers, its config ${diffIds.length} diff_ids`);
    const layers = entry.Layers.map((l, j) => fileOf(staging, l, `entry ${i}'s layer ${j}`));
    const fileDigests = layers.map((l) => l.digest);
    const kept = (archived.get(config.digest) ?? []).find((m) => layersOf(m).join() === fileDigests.join());
    let planned: Omit<PlannedImage, 'repo' | 'tag'>;
    if (kept) {
      // The archive's own manifest for exactly these files (layers may be compressed: the
      // manifest's digests are what a client verifies, so diff_ids need no decompression here).
      planned = { root: kept, ...(await walk(staging, kept, limits)) };
    } else {
      for (const [j, l] of layers.entries()) {
        if (l.digest !== diffIds[j]) {
          throw new RegistryError('DIGEST_INVALID', `layer ${JSON.stringify(entry.Layers[j]!.slice(0, 200))} of manifest.json entry ${i} does not hash to its diff_id ${diffIds[j]}`, {
            detail: { file: entry.Layers[j]!.slice(0, 200), expected: diffIds[j], actual: l.digest },
          });
        }
      }
      planned = { root: buildManifest(config, layers), children: [], blobs: [...new Set([config.digest, ...fileDigests])], built: true };
    }
    if (entry.RepoTags.length === 0 && !target.repository) {
      throw invalid(`manifest.json entry ${i} has no RepoTags (an untagged image); import it with repository=<name> to store it by digest`);
    }
    const targets = entry.RepoTags.length === 0 ? [{ repo: target.repository!, tag: null }] : entry.RepoTags.map((rt) => targetOfRepoTag(rt, target, i));
    for (const t of targets) {
      const key = `${t.repo}:${t.tag ?? planned.root.digest}`;
      const other = tags.get(key);
      if (other !== undefined && other !== planned.root.digest) throw invalid(`manifest.json names ${t.repo}:${t.tag} twice, for different images`);
      if (other !== undefined) continue; // the same image under the same name twice: once is enough
      tags.set(key, planned.root.digest);
      images.push({ repo: t.repo, tag: t.tag, ...planned });
    }
  }
  return images;
}
