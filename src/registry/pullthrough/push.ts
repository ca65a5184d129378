/**
 * Rule for bulk pushes (skopeo/crane/bmctl) into a path that also pulls through: push
 * tools HEAD each blob and skip those answering 200, and that HEAD may have been
 * answered from upstream. So before a manifest PUT is checked, references the
 * repository lacks are fetched from the upstream (blobs fully, verified) and linked.
 * Afterwards the content is local: served even when the upstream is gone.
 */
import { isStorageFull } from '../../storage/space.js';
import { insufficientStorage } from '../errors.js';
import { type Descriptor, parseManifest } from '../manifests.js';
import type { RepoName } from '../names.js';
import type { RegistryService } from '../service.js';
import type { BlobLookups } from './blobs.js';
import type { ManifestLookups } from './manifests.js';
import type { UpstreamRoute, Upstreams } from './shared.js';

/** How deep completion follows indexes of indexes (conformance has nested-index). */
const MAX_INDEX_NESTING = 4;

export class PushCompletion {
  constructor(
    private readonly local: RegistryService,
    private readonly upstreams: Upstreams,
    private readonly manifests: ManifestLookups,
    private readonly blobs: BlobLookups,
  ) {}

  /** Fetch and link what `repo` lacks of these references (and of held children's trees). */
  complete(repo: RepoName, up: UpstreamRoute, blobs: Descriptor[], manifests: Descriptor[]): Promise<void> {
    return this.completeTree(repo, up, blobs, manifests, 0);
  }

  private async completeTree(
    repo: RepoName,
    up: UpstreamRoute,
    blobs: Descriptor[],
    manifests: Descriptor[],
    depth: number,
  ): Promise<void> {
    const meta = this.local.meta;
    const missingBlobs: Descriptor[] = [];
    for (const d of blobs) if ((await meta.repoBlobSize(repo, d.digest)) === undefined) missingBlobs.push(d);
    const missingManifests: Descriptor[] = [];
    for (const d of manifests) if (!(await meta.hasManifest(repo, d.digest))) missingManifests.push(d);
    const tasks: Array<Promise<unknown>> = [];
    // A reference the disk had no room for must fail the push with 507, not with a
    // misleading MANIFEST_BLOB_UNKNOWN; other upstream failures leave it to the normal check.
    let full = false;
    const noteFull = (e: unknown) => void (full ||= isStorageFull(e));
    for (const d of missingManifests) {
      tasks.push(
        this.manifests.fetch(repo, up, d.digest, [d.mediaType], null).then(
          // Fetched but not stored: only when the disk is full (see bestEffort in ManifestLookups.doFetch).
          async () => void (full ||= !(await meta.hasManifest(repo, d.digest))),
          () => undefined,
        ),
      );
    }
    for (const d of missingBlobs) {
      tasks.push(
        (async () => {
          if ((await meta.blobSize(d.digest)) !== undefined) {
            const res = await this.upstreams.request(up, 'HEAD', `/v2/${up.remoteName}/blobs/${d.digest}`, {});
            await res.body.dump();
            if (res.status === 200) await meta.linkBlob(repo, d.digest, 'cached');
            return;
          }
          const fill = this.blobs.startFill(repo, up, d.digest, d.size);
          await fill.done;
          await meta.linkBlob(repo, d.digest, 'cached');
        })().catch(noteFull),
      );
    }
    await Promise.all(tasks);
    if (full) throw insufficientStorage();
    // An index's children may be held only as cached copies: tools such as crane skip the
    // PUT of a child manifest whose HEAD answers 200, and that HEAD fetched just the
    // manifest from upstream, never its blobs. The pushed index must be local content as a
    // whole, so complete every child the same way (nested indexes too, to a bounded depth).
    if (depth >= MAX_INDEX_NESTING) return;
    for (const d of manifests) {
      const child = await meta.manifest(repo, d.digest);
      if (!child) continue; // still missing: the normal check reports it
      let parsed: ReturnType<typeof parseManifest>;
      try {
        parsed = parseManifest(child.body, child.mediaType);
      } catch {
        continue; // stored as served upstream; nothing we can interpret to complete
      }
      if (parsed.requiredBlobs.length > 0 || parsed.requiredManifests.length > 0) {
        await this.completeTree(repo, up, parsed.requiredBlobs, parsed.requiredManifests, depth + 1);
      }
    }
  }
}
