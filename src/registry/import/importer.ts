/**
 * Import one archive: detect, stage, plan, authorize, then commit image by image. Every
 * check that can fail on the archive's content runs before anything is stored, so a
 * malformed archive stores nothing; within an image, blobs are committed first, then child
 * manifests by digest, and the tag last, so a tag never points at incomplete content
 * (the same order, and the same `pushed` provenance, as a client push).
 */
import type { Readable } from 'node:stream';
import { RegistryError, insufficientStorage, isRegistryError } from '../errors.js';
import type { Digest, RepoName } from '../names.js';
import type { RegistryService } from '../service.js';
import { isStorageFull } from '../../storage/space.js';
import { type BundleError, importBundle, isBundle } from './bundle.js';
import { malformed, openTar } from './detect.js';
import { planDockerArchive } from './docker.js';
import { type ImportTarget, type PlannedImage, planOciLayout } from './oci.js';
import { type StagedBlob, type Staging, type TarEntries, stageArchive, tarEntries } from './stage.js';

export type { ImportTarget } from './oci.js';

export interface ImageResult {
  name: string;
  tag: string | null;
  digest: Digest;
  mediaType: string;
  blobs: { new: number; existing: number };
  /** Bytes of the image's blobs and manifests, and of those newly written. */
  bytes: number;
  newBytes: number;
  /** The manifest was built from a docker-save archive's config and layers (README, "Air-gapped import"). */
  built?: true;
  /** The inner archive of a bundle this image came from. */
  entry?: string;
}

export interface ImportOptions {
  /** Throws (401/403) unless the caller may push to `repo`; called for every target before any commit. */
  authorize(repo: RepoName): Promise<void>;
  /** Called as each image is committed (progress reporting). */
  onImage?(result: ImageResult): void;
  /** Called as each inner archive of a bundle fails. */
  onBundleError?(error: BundleError): void;
}

export interface ImportOutcome {
  images: ImageResult[];
  /** Inner archives of a bundle that failed (a bundle is not atomic, each image is). */
  errors: BundleError[];
}

async function commitImage(svc: RegistryService, staging: Staging, img: PlannedImage): Promise<ImageResult> {
  let fresh = 0;
  let existing = 0;
  let bytes = 0;
  let newBytes = 0;
  for (const d of img.blobs) {
    const staged = staging.blobs.get(d)!;
    bytes += staged.size;
    if (svc.meta.blobSize(d) !== undefined) existing++;
    else {
      fresh++;
      newBytes += staged.size;
    }
    await commitStaged(svc, staged, img.repo);
  }
  for (const m of img.children) {
    bytes += m.body.length;
    svc.putManifest(img.repo, { kind: 'digest', digest: m.digest }, m.mediaType, m.body, m.parsed, 'pushed');
  }
  bytes += img.root.body.length;
  const ref = img.tag === null ? { kind: 'digest' as const, digest: img.root.digest } : { kind: 'tag' as const, tag: img.tag };
  svc.putManifest(img.repo, ref, img.root.mediaType, img.root.body, img.root.parsed, 'pushed');
  return { name: img.repo, tag: img.tag, digest: img.root.digest, mediaType: img.root.mediaType, blobs: { new: fresh, existing }, bytes, newBytes, ...(img.built ? { built: true as const } : {}) };
}

/** Repositories each staged blob was committed to (an archive's images may share blobs). */
const committedTo = new WeakMap<StagedBlob, RepoName>();

/**
 * Commit a staged blob for `repo`: its stage the first time (durable first, and deduped
 * against the store: an existing blob is only linked), a link from the repository it was
 * committed to afterwards.
 */
async function commitStaged(svc: RegistryService, staged: StagedBlob, repo: RepoName): Promise<void> {
  const first = committedTo.get(staged);
  if (first === undefined) {
    await staged.writer.commit(staged.digest, { repo, provenance: 'pushed' });
    committedTo.set(staged, repo);
  } else if (first !== repo && !svc.mountBlob(repo, staged.digest, first)) {
    throw new RegistryError('UNAVAILABLE', `blob ${staged.digest} was deleted while the archive was being imported; retry`, { status: 503 });
  }
}

async function openEntries(input: Readable): Promise<TarEntries> {
  const { tar } = await openTar(input).catch((e: unknown) => {
    // A body that fails while its first bytes are read (the client went away) is not a server fault.
    throw isRegistryError(e) ? e : malformed(`the archive could not be read: ${(e as Error).message}`);
  });
  return tarEntries(tar);
}

/** Import one archive: an image archive (all or nothing per image), or a bundle of them. */
export async function importArchive(svc: RegistryService, input: Readable, target: ImportTarget, opts: ImportOptions): Promise<ImportOutcome> {
  const entries = await openEntries(input);
  let bundle: boolean;
  try {
    bundle = await isBundle(entries);
  } catch (e) {
    entries.destroy();
    throw isRegistryError(e) ? e : malformed(`the archive is truncated or corrupt: ${(e as Error).message}`);
  }
  if (!bundle) return { images: await importImages(svc, entries, target, opts), errors: [] };
  const images: ImageResult[] = [];
  const errors = await importBundle(
    entries,
    async (entry, body) => {
      const inner = await importImages(svc, await openEntries(body), target, { ...opts, onImage: (r) => opts.onImage?.({ ...r, entry }) });
      images.push(...inner.map((r) => ({ ...r, entry })));
    },
    (e) => opts.onBundleError?.(e),
  );
  return { images, errors };
}

async function importImages(svc: RegistryService, entries: TarEntries, target: ImportTarget, opts: ImportOptions): Promise<ImageResult[]> {
  const maxBlobBytes = svc.limits.maxBlobBytes > 0 ? svc.limits.maxBlobBytes : Number.MAX_SAFE_INTEGER;
  let staging: Staging;
  try {
    staging = await stageArchive(entries, svc.blobs, { maxBlobBytes, maxManifestBytes: svc.limits.maxManifestBytes });
  } catch (e) {
    throw isStorageFull(e) ? insufficientStorage() : e;
  }
  try {
    // A docker-save archive (legacy or Docker 25+) has manifest.json; an OCI layout has not.
    const plan = staging.files.has('manifest.json') ? planDockerArchive : planOciLayout;
    const images = await plan(staging, target, svc.limits);
    for (const repo of new Set(images.map((i) => i.repo))) await opts.authorize(repo);
    const results: ImageResult[] = [];
    for (const img of images) {
      try {
        const result = await commitImage(svc, staging, img);
        results.push(result);
        opts.onImage?.(result);
      } catch (e) {
        // Images already committed stay (each is complete); this one has no tag.
        throw isStorageFull(e) ? insufficientStorage() : e;
      }
    }
    return results;
  } finally {
    await staging.discard();
  }
}
