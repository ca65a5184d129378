/**
 * Pull-through: the layer that decides "local or upstream" for every read, and makes
 * pushes into upstream-backed namespaces work. Local content always wins; only misses
 * go upstream, through the routing table, single-flighted, and verified before storing.
 *
 * This facade resolves the path and applies the rules common to every area (pushes
 * never depend on the upstream; served content is noted for eviction); the areas live
 * in pullthrough/ (manifests, blobs, push completion) and in taglists.ts/referrers.ts.
 */
import type { Logger } from 'pino';
import type { FillManager, FillSource } from '../cache/fill.js';
import type { Resolution, Router } from '../upstream/routing.js';
import type { UpstreamClient } from '../upstream/client.js';
import type { AccessRecorder } from '../storage/access.js';
import { RegistryError } from './errors.js';
import type { Descriptor } from './manifests.js';
import { MT } from './mediatypes.js';
import type { Digest, Reference, RepoName } from './names.js';
import { type ReferrerDescriptor, ReferrersCache, localReferrer, mergeReferrers } from './referrers.js';
import type { RegistryService } from './service.js';
import { TagListCache, TagListStatusError } from './taglists.js';
import { BlobLookups } from './pullthrough/blobs.js';
import { ManifestLookups } from './pullthrough/manifests.js';
import { PushCompletion } from './pullthrough/push.js';
import type { SharedLookups } from './pullthrough/cluster.js';
import {
  type BlobAnswer,
  type CacheKind,
  type CacheResult,
  type ManifestAnswer,
  STALE_WARNING,
  Upstreams,
  isTransient,
  nsHeaders,
  routeOf,
  unavailable,
  upstreamError,
  upstreamLabel,
} from './pullthrough/shared.js';

export { type BlobAnswer, type CacheKind, type CacheResult, type ManifestAnswer, acceptKey, upstreamLabel } from './pullthrough/shared.js';

export interface ReferrersAnswer {
  manifests: ReferrerDescriptor[];
  headers: Record<string, string>;
}

export class PullThrough {
  private readonly manifests: ManifestLookups;
  private readonly blobs: BlobLookups;
  private readonly push: PushCompletion;
  private readonly referrerLists: ReferrersCache;
  private readonly tagLists: TagListCache;
  /** Called with each lookup's outcome and the path's upstream (`local`: none); metrics. */
  onCache: ((kind: CacheKind, result: CacheResult, upstream: string) => void) | null = null;
  /** Notes what was served (last access drives eviction); set by the app. */
  access: AccessRecorder | null = null;
  /** storage.s3.redirect: a presigned URL for a stored blob (null = serve every byte here); set by the app. */
  redirect: ((digest: Digest) => Promise<string>) | null = null;

  constructor(
    private readonly local: RegistryService,
    readonly router: Router,
    clients: ReadonlyMap<string, UpstreamClient>,
    fills: FillManager,
    log: Logger,
    /** Replicas on one shared store: upstream lookups made once across them (null: one process). */
    shared: SharedLookups | null = null,
  ) {
    const upstreams = new Upstreams(clients, log);
    // onCache is set after construction (by the app), so the areas read it per call.
    const count = <T>(kind: CacheKind, result: CacheResult, r: Resolution, value: T): T => {
      this.onCache?.(kind, result, upstreamLabel(r));
      return value;
    };
    this.manifests = new ManifestLookups(local, upstreams, count, log, shared);
    this.blobs = new BlobLookups(local, upstreams, fills, count);
    this.push = new PushCompletion(local, upstreams, this.manifests, this.blobs);
    this.tagLists = new TagListCache((up, path, timeoutMs) => upstreams.request(up, 'GET', path, { accept: 'application/json', timeoutMs }), log, shared);
    this.referrerLists = new ReferrersCache((up, path, timeoutMs) => upstreams.request(up, 'GET', path, { accept: MT.ociIndex, timeoutMs }), log, shared);
  }

  /** Shared storage: wraps each blob fill's upstream source (cache/clusterfill.ts); set by the app. */
  set coordinateFills(wrap: ((digest: Digest, source: FillSource) => FillSource) | null) {
    this.blobs.coordinate = wrap;
  }

  resolve(repo: RepoName, ns: string | undefined): Resolution {
    return this.router.resolve(repo, ns);
  }

  /** Serve a manifest (GET or HEAD), noting the access for eviction. */
  async getManifest(repo: RepoName, ns: string | undefined, ref: Reference, accept: readonly string[]): Promise<ManifestAnswer> {
    const answer = await this.manifests.find(repo, this.resolve(repo, ns), ref, accept).catch((e: unknown) => {
      throw this.onPushPath(repo, ns, e, () => new RegistryError('MANIFEST_UNKNOWN', 'not held here, and the upstream could not be asked'));
    });
    this.access?.manifest(repo, answer.record.digest);
    return answer;
  }

  /** Serve a blob (GET or HEAD), noting the access for eviction unless only the upstream answered. */
  async getBlob(repo: RepoName, ns: string | undefined, digest: Digest, head: boolean, opts: { multiRange?: boolean } = {}): Promise<BlobAnswer> {
    const answer = await this.blobs.find(repo, this.resolve(repo, ns), digest, head).catch((e: unknown) => {
      throw this.onPushPath(repo, ns, e, () => new RegistryError('BLOB_UNKNOWN', 'not held here, and the upstream could not be asked', { detail: { digest } }));
    });
    if (answer.open) this.access?.blob(digest);
    // Only committed content the store holds: a fill in progress (not in the store yet) and
    // HEAD (size and digest, no bytes) are answered here; so is an empty blob (no bytes to move)
    // and a multi-range GET (an object store answers one range per request, not multipart/byteranges).
    if (this.redirect && !head && !opts.multiRange && answer.body && !answer.fill && answer.size > 0) return { ...answer, redirect: await this.redirect(digest) };
    return answer;
  }

  /**
   * A blob this repository holds, answered as getBlob's first (local) answer would be:
   * counted as a hit and noted for eviction. Undefined, with nothing counted, for anything
   * else (not held here, `ns` routing, redirects): the caller then asks getBlob. The warm
   * small-blob path (http/hotblobs.ts) decides with it whether to answer by itself.
   */
  async heldBlob(repo: RepoName, digest: Digest): Promise<{ size: number; headers: Record<string, string> } | undefined> {
    if (this.redirect) return undefined;
    const size = await this.local.meta.repoBlobSize(repo, digest);
    if (size === undefined) return undefined;
    const r = this.resolve(repo, undefined);
    this.onCache?.('blob', 'hit', upstreamLabel(r));
    this.access?.blob(digest);
    return { size, headers: nsHeaders(r) };
  }

  /**
   * Pushes never depend on the upstream: under a namespace with `push: true` (the bulk-load
   * target, often air-gapped) a lookup the upstream could not answer is a plain miss, 404,
   * so push tools upload the content instead of aborting on a 503.
   */
  private onPushPath(repo: RepoName, ns: string | undefined, e: unknown, miss: () => RegistryError): unknown {
    if (!(e instanceof RegistryError) || !isTransient(e)) return e;
    const r = this.resolve(repo, ns);
    if (r.error || !r.namespace?.push) return e;
    return miss();
  }

  /** Before a manifest PUT into a pull-through path is checked: see pullthrough/push.ts. */
  async completeFromUpstream(repo: RepoName, ns: string | undefined, blobs: Descriptor[], manifests: Descriptor[]): Promise<void> {
    const r = this.resolve(repo, ns);
    if (r.error || !r.upstream || !r.remoteName) return; // local only: the normal check reports them
    await this.push.complete(repo, routeOf(r, r.upstream, r.remoteName), blobs, manifests);
  }

  // ---- tags list -------------------------------------------------------------------

  /** Tag list: local when the repository has pushed tags, else upstream first, cache as fallback. */
  async listTags(repo: RepoName, ns: string | undefined, last: string, n: number): Promise<{ tags: string[]; headers: Record<string, string> }> {
    const meta = this.local.meta;
    const r = this.resolve(repo, ns);
    const headers = nsHeaders(r);
    const pushed = (await meta.listTags(repo, '', 1)).length > 0;
    const up = r.error ? null : r.upstream && r.remoteName ? { upstream: r.upstream, remoteName: r.remoteName } : null;
    if (pushed || !up) return { tags: await this.local.listTags(repo, last, n), headers };
    try {
      const { tags, stale } = await this.tagLists.lookup(up);
      const page = tags.filter((t) => t > last).slice(0, n);
      return { tags: page, headers: stale ? { ...headers, Warning: STALE_WARNING } : headers };
    } catch (e) {
      const err = e instanceof TagListStatusError ? upstreamError(e.response, 'NAME_UNKNOWN') : unavailable(e);
      // Nothing listed since the start: the tags this mirror has resolved there.
      const cachedTags = await meta.upstreamTagNames(repo);
      if (cachedTags.length === 0 || !isTransient(err)) throw err;
      return { tags: cachedTags.sort().filter((t) => t > last).slice(0, n), headers: { ...headers, Warning: STALE_WARNING } };
    }
  }

  // ---- referrers -------------------------------------------------------------------

  /**
   * Referrers of `subject`: the local ones (pushed, or cached manifests naming it) merged
   * with the upstream's list when the path pulls through, then filtered. Upstream trouble
   * never fails the request: the API must not answer 404 (clients would fall back to the
   * tag schema) or 5xx (verification would fail outright).
   */
  async referrers(repo: RepoName, ns: string | undefined, subject: Digest, artifactType: string | undefined): Promise<ReferrersAnswer> {
    const r = this.resolve(repo, ns);
    let headers = nsHeaders(r);
    const local = (await this.local.referrers(repo, subject, undefined)).map(localReferrer);
    let all = local;
    // An unconfigured ?ns= host or a `local` namespace is never dialled: local list only.
    if (!r.error && r.upstream && r.remoteName) {
      const found = await this.referrerLists.lookup({ upstream: r.upstream, remoteName: r.remoteName }, subject);
      this.onCache?.('referrers', found.result, upstreamLabel(r));
      if (found.result === 'stale') headers = { ...headers, Warning: STALE_WARNING };
      all = mergeReferrers(local, found.manifests);
    }
    return { manifests: artifactType === undefined ? all : all.filter((d) => d.artifactType === artifactType), headers };
  }
}
