/**
 * A manifest push: parse it, fetch from the path's upstream whatever it refers to that is
 * not held here yet (pushes into upstream-backed namespaces), then store it and its tags
 * in one transaction (a failed write, SQLITE_FULL, leaves none of them).
 */
import type { Reference, RepoName } from './names.js';
import { parseManifest } from './manifests.js';
import type { PullThrough } from './pullthrough.js';
import type { PutManifestResult, RegistryService } from './service.js';

export interface ManifestPush {
  repo: RepoName;
  /** containerd's `?ns=`, if any. */
  ns: string | undefined;
  ref: Reference;
  contentType: string;
  body: Buffer;
  /** More tags for the same manifest (`?tag=`). */
  extraTags: readonly string[];
}

export async function pushManifest(svc: RegistryService, pull: Pick<PullThrough, 'completeFromUpstream'>, p: ManifestPush): Promise<PutManifestResult> {
  const parsed = parseManifest(p.body, p.contentType);
  await pull.completeFromUpstream(p.repo, p.ns, parsed.requiredBlobs, parsed.requiredManifests);
  return svc.putManifest(p.repo, p.ref, p.contentType, p.body, parsed, 'pushed', p.extraTags);
}
