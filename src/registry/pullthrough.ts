/**
 * Pull-through: the layer that decides "local or upstream" for every read, and makes
 * pushes into upstream-backed namespaces work. Local content always wins; only misses
 * go upstream, through the routing table, single-flighted, and verified before storing.
 */
import type { Logger } from 'pino';
import { SingleFlight } from '../singleflight.js';
import type { UpstreamConfig } from '../config/schema.js';
import type { BlobFill, FillManager, FillSource } from '../cache/fill.js';
import { type Resolution, Router } from '../upstream/routing.js';
import { type UpstreamClient, UpstreamProtocolError, type UpstreamResponse, UpstreamUnavailableError, minimumRate, readBody } from '../upstream/client.js';
import type { AccessRecorder } from '../storage/access.js';
import { isStorageFull } from '../storage/space.js';
import type { ManifestRecord } from '../storage/db.js';
import type { BlobBody } from '../storage/ports.js';
import { RegistryError, insufficientStorage } from './errors.js';
import { type Descriptor, parseManifest } from './manifests.js';
import { MANIFEST_TYPES, MT, isIndexType } from './mediatypes.js';
import { type Digest, type Reference, type RepoName, isDigest } from './names.js';
import { type ReferrerDescriptor, ReferrersCache, localReferrer, mergeReferrers } from './referrers.js';
import type { RegistryService } from './service.js';
import { chooseStaleVariant, clientReads, defaultPlatformChild } from './stale.js';
import { UpstreamManifestRefused, type VerifiedManifest, verifyUpstreamManifest } from './upstreammanifest.js';
import { TagListCache, TagListStatusError } from './taglists.js';
import type { Readable } from 'node:stream';

export interface ManifestAnswer {
  record: ManifestRecord;
  headers: Record<string, string>;
}

export interface BlobAnswer {
  size: number;
  headers: Record<string, string>;
  /** Open bytes [start, end] (inclusive); absent for answers from an upstream HEAD. */
  open: ((start: number, end: number) => Readable) | null;
  /** Open the stored blob (null once it is gone), when it is served from local storage. */
  body?: () => Promise<BlobBody | null>;
  /** The fill in progress, when the blob is being fetched from the upstream. */
  fill?: BlobFill;
}

export interface ReferrersAnswer {
  manifests: ReferrerDescriptor[];
  headers: Record<string, string>;
}

export type CacheKind = 'manifest' | 'blob' | 'referrers';
/** `local` (referrers only): the upstream failed and nothing was cached, so the answer is local. */
export type CacheResult = 'hit' | 'miss' | 'joined' | 'stale' | 'revalidated' | 'local';

/** Where a miss goes: the upstream and the repository name there. */
type UpstreamRoute = {
  upstream: UpstreamConfig;
  remoteName: string;
  /** Bound on manifest and blob lookups: push targets fail fast on a hung upstream. */
  lookupTimeoutMs?: number;
};

const STALE_WARNING = '299 - "regmirror: upstream unavailable, serving cached content"';
/** How deep completeFromUpstream follows indexes of indexes (conformance has nested-index). */
const MAX_INDEX_NESTING = 4;

/** A stable key for the set of manifest types a client accepts (tags are cached per key). */
export function acceptKey(accept: readonly string[]): string {
  if (accept.length === 0 || accept.includes('*/*')) return '*';
  const known = MANIFEST_TYPES.filter((t) => accept.includes(t));
  return known.length === 0 ? '*' : [...known].sort().join(',');
}

/** Accept sent upstream: the client's modern types, never schema1 (protocol.md 6.3). */
function upstreamAccept(accept: readonly string[]): string {
  const key = acceptKey(accept);
  return key === '*' ? MANIFEST_TYPES.join(', ') : key.split(',').join(', ');
}

function retryAfter(res: UpstreamResponse): Record<string, string> {
  const v = res.headers['retry-after'];
  return v ? { 'Retry-After': String(v) } : {};
}

/** Map an upstream status to what the downstream client sees (protocol.md 6.10). */
function upstreamError(res: UpstreamResponse, notFound: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN'): RegistryError {
  const s = res.status;
  // Docker Hub answers 401 for repositories that do not exist or are private. Never
  // forward the upstream's WWW-Authenticate: its realm is not ours.
  if (s === 401) return new RegistryError('NAME_UNKNOWN', 'repository not found upstream (or not accessible with the configured credentials)');
  if (s === 404) return new RegistryError(notFound, 'not found upstream');
  if (s === 403) return new RegistryError('DENIED', 'upstream denied access');
  if (s === 429) return new RegistryError('TOOMANYREQUESTS', 'upstream rate limit reached', { headers: retryAfter(res) });
  return new RegistryError('UNAVAILABLE', `upstream answered ${s}`, { status: 502 });
}

function unavailable(e: unknown): RegistryError {
  if (e instanceof RegistryError) return e;
  // The upstream answered, but unusably (redirect loop, failing token service): say so.
  if (e instanceof UpstreamProtocolError) return new RegistryError('UNAVAILABLE', e.message, { status: e.status ?? 502 });
  return new RegistryError('UNAVAILABLE', 'upstream registry unreachable', { status: 503 });
}

/** Whether an upstream outcome allows falling back to a stale cached copy. */
function isTransient(e: unknown): boolean {
  if (!(e instanceof RegistryError)) return true;
  return e.code === 'UNAVAILABLE' || e.code === 'TOOMANYREQUESTS' || e.code === 'DENIED' || e.code === 'NAME_UNKNOWN';
}

export class PullThrough {
  private readonly manifestFlights = new SingleFlight<string, ManifestRecord>();
  private readonly revalidations = new SingleFlight<string, Digest | null>();
  private readonly referrerLists: ReferrersCache;
  private readonly tagLists: TagListCache;
  /** Called with each lookup's outcome and the path's upstream (`local`: none); metrics. */
  onCache: ((kind: CacheKind, result: CacheResult, upstream: string) => void) | null = null;
  /** Notes what was served (last access drives eviction); set by the app. */
  access: AccessRecorder | null = null;

  constructor(
    private readonly local: RegistryService,
    readonly router: Router,
    private readonly clients: ReadonlyMap<string, UpstreamClient>,
    private readonly fills: FillManager,
    private readonly log: Logger,
  ) {
    this.tagLists = new TagListCache((up, path, timeoutMs) => this.upstreamRequest(up, 'GET', path, { accept: 'application/json', timeoutMs }));
    this.referrerLists = new ReferrersCache((up, path, timeoutMs) => this.upstreamRequest(up, 'GET', path, { accept: MT.ociIndex, timeoutMs }), log);
  }

  private count<T>(kind: CacheKind, result: CacheResult, r: Resolution, value: T): T {
    this.onCache?.(kind, result, upstreamLabel(r));
    return value;
  }

  private hit<T>(kind: 'manifest' | 'blob', r: Resolution, value: T): T {
    return this.count(kind, 'hit', r, value);
  }

  private miss<T>(kind: 'manifest' | 'blob', r: Resolution, value: T): T {
    return this.count(kind, 'miss', r, value);
  }

  resolve(repo: RepoName, ns: string | undefined): Resolution {
    return this.router.resolve(repo, ns);
  }

  private client(u: UpstreamConfig): UpstreamClient {
    return this.clients.get(u.name)!;
  }

  private nsHeaders(r: Resolution): Record<string, string> {
    return r.ns && r.upstream ? { 'OCI-Namespace': r.ns } : {};
  }

  private routeOrThrow(r: Resolution): UpstreamRoute | null {
    if (r.error) throw new RegistryError('NAME_UNKNOWN', r.error);
    return r.upstream && r.remoteName ? routeOf(r, r.upstream, r.remoteName) : null;
  }

  // ---- manifests -------------------------------------------------------------------

  /** Serve a manifest (GET or HEAD), noting the access for eviction. */
  async getManifest(repo: RepoName, ns: string | undefined, ref: Reference, accept: readonly string[]): Promise<ManifestAnswer> {
    const answer = await this.findManifest(repo, ns, ref, accept).catch((e: unknown) => {
      throw this.onPushPath(repo, ns, e, () => new RegistryError('MANIFEST_UNKNOWN', 'not held here, and the upstream could not be asked'));
    });
    this.access?.manifest(repo, answer.record.digest);
    return answer;
  }

  private async findManifest(repo: RepoName, ns: string | undefined, ref: Reference, accept: readonly string[]): Promise<ManifestAnswer> {
    const meta = this.local.meta;
    const r = this.resolve(repo, ns);
    const headers = this.nsHeaders(r);
    if (ref.kind === 'digest') {
      if (meta.hasManifest(repo, ref.digest)) return this.hit('manifest', r, { record: this.local.getManifest(repo, ref, accept), headers });
    } else if (meta.tag(repo, ref.tag)) {
      // Pushed tags win, and are never revalidated.
      return this.hit('manifest', r, { record: this.local.getManifest(repo, ref, accept), headers });
    }
    const up = this.routeOrThrow(r);
    if (!up) return { record: this.local.getManifest(repo, ref, accept), headers };
    if (ref.kind === 'digest') return this.miss('manifest', r, { record: await this.fetchManifest(repo, up, ref.digest, accept, null), headers });

    // Keyed by upstream and remote name too: one local path can reach several upstreams
    // (?ns=a vs ?ns=b), and one upstream's tag must never answer for another's.
    const key = `${originOf(up)}|${acceptKey(accept)}`;
    const cached = meta.upstreamTag(repo, ref.tag, key);
    const cachedRecord = cached && meta.manifest(repo, cached.digest);
    try {
      if (!cached || !cachedRecord) {
        return this.miss('manifest', r, { record: await this.fetchManifest(repo, up, ref.tag, accept, { name: ref.tag, acceptKey: key }), headers });
      }
      const fresh = Date.now() - cached.checkedAt < up.upstream.tags.ttlMs || up.upstream.tags.immutable.some((p) => p.test(ref.tag));
      if (fresh) return this.hit('manifest', r, { record: cachedRecord, headers });
      const digest = await this.revalidateTag(repo, up, ref.tag, key, accept, cached.digest);
      if (digest === cached.digest) return this.count('manifest', 'revalidated', r, { record: cachedRecord, headers });
      const record = await this.fetchManifest(repo, up, digest ?? ref.tag, accept, { name: ref.tag, acceptKey: key });
      return this.miss('manifest', r, { record, headers });
    } catch (e) {
      if (!isTransient(e)) throw e;
      // Whichever client cached the tag: any variant this client reads beats a 503.
      const stale = this.staleTag(repo, ref.tag, up, accept);
      if (!stale) throw e;
      this.log.warn({ repo, tag: ref.tag, upstream: up.upstream.name, digest: stale.digest, err: (e as Error).message }, 'serving stale tag: upstream unavailable');
      return this.count('manifest', 'stale', r, { record: stale, headers: { ...headers, Warning: STALE_WARNING } });
    }
  }

  /**
   * A cached manifest of `tag` from this upstream repository that the client reads,
   * whichever client's Accept set cached it (rules in stale.ts); undefined if none.
   */
  private staleTag(repo: RepoName, tag: string, up: UpstreamRoute, accept: readonly string[]): ManifestRecord | undefined {
    const meta = this.local.meta;
    const variants = meta.upstreamTagVariants(tag, `${originOf(up)}|`);
    // A variant cached under another local path of the same upstream repository is
    // linked here first, so this path's child manifest and blob requests find it too.
    const held = (v: (typeof variants)[number]) => {
      if (v.repoId !== meta.repoId(repo)) meta.adoptCachedManifest(v.repoId, repo, v.digest);
      return meta.manifest(repo, v.digest);
    };
    const chosen = chooseStaleVariant(variants, accept);
    if (chosen) return held(chosen);
    // None the client reads: the linux/amd64 entry of a cached index, if held.
    for (const v of variants) {
      if (!isIndexType(v.mediaType)) continue;
      const index = held(v);
      const child = index && defaultPlatformChild(index.body);
      const record = child && clientReads(accept, child.mediaType) ? meta.manifest(repo, child.digest) : undefined;
      if (record) return record;
    }
    return undefined;
  }

  /**
   * HEAD the tag upstream (HEADs do not count against Docker Hub's pull limit). Returns
   * the upstream digest (or null if it did not say); updates checked_at when unchanged.
   */
  private revalidateTag(
    repo: RepoName,
    up: UpstreamRoute,
    tag: string,
    key: string,
    accept: readonly string[],
    current: Digest,
  ): Promise<Digest | null> {
    const flightKey = `${up.upstream.name}|${up.remoteName}|${tag}|${key}|${repo}`;
    return this.revalidations.run(flightKey, async () => {
      // Bounded: a stale copy is waiting to be served if the upstream hangs.
      const res = await this.upstreamRequest(up, 'HEAD', `/v2/${up.remoteName}/manifests/${tag}`, {
        accept: upstreamAccept(accept),
        timeoutMs: up.upstream.tags.revalidateTimeoutMs,
      });
      await res.body.dump();
      if (res.status === 404) {
        this.local.meta.deleteUpstreamTag(repo, tag);
        throw new RegistryError('MANIFEST_UNKNOWN', 'tag no longer exists upstream');
      }
      if (res.status !== 200) throw upstreamError(res, 'MANIFEST_UNKNOWN');
      const d = String(res.headers['docker-content-digest'] ?? '');
      if (!isDigest(d)) return null;
      if (d === current) this.bestEffort('tag check time', () => this.local.meta.touchUpstreamTag(repo, tag, key));
      return d;
    }).promise;
  }

  /** GET a manifest upstream (single-flight), verify it, store it, return it. */
  private fetchManifest(
    repo: RepoName,
    up: UpstreamRoute,
    reference: string,
    accept: readonly string[],
    tag: { name: string; acceptKey: string } | null,
  ): Promise<ManifestRecord> {
    const flightKey = `${up.upstream.name}|${up.remoteName}|${reference}|${acceptKey(accept)}|${repo}`;
    return this.manifestFlights.run(flightKey, () => this.doFetchManifest(repo, up, reference, accept, tag)).promise;
  }

  private async doFetchManifest(
    repo: RepoName,
    up: UpstreamRoute,
    reference: string,
    accept: readonly string[],
    tag: { name: string; acceptKey: string } | null,
  ): Promise<ManifestRecord> {
    const res = await this.upstreamRequest(up, 'GET', `/v2/${up.remoteName}/manifests/${reference}`, { accept: upstreamAccept(accept), timeoutMs: up.lookupTimeoutMs });
    if (res.status !== 200) {
      await res.body.dump();
      if (res.status === 404 && tag) this.bestEffort('upstream tag removal', () => this.local.meta.deleteUpstreamTag(repo, tag.name));
      throw upstreamError(res, 'MANIFEST_UNKNOWN');
    }
    const body = await readBody(res, this.local.limits.maxManifestBytes, up.upstream.bodyTimeoutMs).catch((e: unknown) => {
      throw unavailable(e);
    });
    let verified: VerifiedManifest;
    try {
      verified = verifyUpstreamManifest(body, {
        contentType: String(res.headers['content-type'] ?? ''),
        announcedDigest: String(res.headers['docker-content-digest'] ?? ''),
        reference,
        accept: tag ? accept : null,
      });
    } catch (e) {
      if (e instanceof UpstreamManifestRefused) {
        this.log.error(
          { upstream: up.upstream.name, repo: up.remoteName, reference, reason: e.reason, contentType: String(res.headers['content-type'] ?? '').slice(0, 100), bytes: body.length },
          `upstream integrity error: ${e.reason === 'digest' ? 'manifest digest mismatch' : e.message}, not cached`,
        );
      }
      throw e;
    }
    const { digest, mediaType, parsed } = verified;
    const refs = [...parsed.allBlobs.map((d) => ({ digest: d.digest, kind: 'blob' as const })), ...parsed.requiredManifests.map((d) => ({ digest: d.digest, kind: 'manifest' as const }))];
    const subject = parsed.subject;
    const artifactType = parsed.artifactType;
    const annotations = parsed.annotations ? JSON.stringify(parsed.annotations) : null;
    const record: ManifestRecord = { digest, mediaType, size: body.length, artifactType, subject, annotations, body };
    if (this.bestEffort('manifest cache', () => this.local.meta.putCachedManifest(repo, { ...record, refs }, tag))) {
      this.log.info({ upstream: up.upstream.name, repo: up.remoteName, reference, digest }, 'manifest cached');
    }
    return record;
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

  // ---- blobs -----------------------------------------------------------------------

  /** Serve a blob (GET or HEAD), noting the access for eviction unless only the upstream answered. */
  async getBlob(repo: RepoName, ns: string | undefined, digest: Digest, head: boolean): Promise<BlobAnswer> {
    const answer = await this.findBlob(repo, ns, digest, head).catch((e: unknown) => {
      throw this.onPushPath(repo, ns, e, () => new RegistryError('BLOB_UNKNOWN', 'not held here, and the upstream could not be asked', { detail: { digest } }));
    });
    if (answer.open) this.access?.blob(digest);
    return answer;
  }

  private async findBlob(repo: RepoName, ns: string | undefined, digest: Digest, head: boolean): Promise<BlobAnswer> {
    const meta = this.local.meta;
    const r = this.resolve(repo, ns);
    const headers = this.nsHeaders(r);
    const localSize = meta.repoBlobSize(repo, digest);
    if (localSize !== undefined) return this.hit('blob', r, this.localBlob(digest, localSize, headers));
    // Stored for another repository: serve here only if a manifest this repository got
    // from upstream references it, or the upstream confirms it below.
    const stored = meta.blobSize(digest);
    if (stored !== undefined && meta.referencedInRepo(repo, digest)) {
      this.bestEffort('blob link', () => meta.linkBlob(repo, digest, 'cached'));
      return this.hit('blob', r, this.localBlob(digest, stored, headers));
    }
    const up = this.routeOrThrow(r);
    if (!up) throw new RegistryError('BLOB_UNKNOWN', undefined, { detail: { digest } });

    // Joining a fill from the same upstream repository needs no confirmation; a fill
    // for another repository does (digest guessing must not reveal private blobs).
    const fill0 = this.fills.inFlight(digest);
    const inflight = fill0 && fill0.origin !== originOf(up) ? fill0 : undefined;
    if (stored !== undefined || (head && !fill0) || inflight) {
      const res = await this.upstreamRequest(up, 'HEAD', `/v2/${up.remoteName}/blobs/${digest}`, { timeoutMs: up.lookupTimeoutMs });
      await res.body.dump();
      if (res.status !== 200) throw upstreamError(res, 'BLOB_UNKNOWN');
      // Re-read: a fill may have committed the blob while the HEAD was in flight.
      const storedNow = stored ?? meta.blobSize(digest);
      if (storedNow !== undefined) {
        this.bestEffort('blob link', () => meta.linkBlob(repo, digest, 'cached'));
        return this.hit('blob', r, this.localBlob(digest, storedNow, headers));
      }
      if (head) {
        const len = Number(res.headers['content-length']);
        if (!Number.isSafeInteger(len)) throw new RegistryError('UNAVAILABLE', 'upstream did not give the blob size', { status: 502 });
        return { size: len, headers, open: null };
      }
    }
    // A request that finds the fill running shares it: counted as `joined`, not a miss.
    this.onCache?.('blob', this.fills.inFlight(digest) ? 'joined' : 'miss', upstreamLabel(r));
    const fill = this.startFill(repo, up, digest);
    fill.done.then(() => meta.linkBlob(repo, digest, 'cached')).catch(() => undefined);
    await fill.ready;
    if (fill.size === null) {
      // The upstream sent no length: wait for the whole blob, then serve it from disk.
      await fill.done;
      return this.localBlob(digest, fill.written, headers);
    }
    return { size: fill.size, headers, fill, open: (start, end) => fill.reader(start, end) };
  }

  private localBlob(digest: Digest, size: number, headers: Record<string, string>): BlobAnswer {
    return { size, headers, body: () => this.local.blobs.open(digest), open: (start, end) => this.local.openBlob(digest, start, end) };
  }

  private startFill(repo: RepoName, up: UpstreamRoute, digest: Digest, expectedSize?: number): BlobFill {
    const source: FillSource = {
      open: async (offset) => {
        const res = await this.upstreamRequest(up, 'GET', `/v2/${up.remoteName}/blobs/${digest}`, offset > 0 ? { range: `bytes=${offset}-` } : {});
        // A trickling upstream fails the fill for good (a RegistryError is not resumed): a
        // new request starts afresh instead of every client waiting on it.
        const release = () => void res.body.dump().catch(() => undefined);
        const body = () => minimumRate(res.body, up.upstream.bodyTimeoutMs, () => new RegistryError('UNAVAILABLE', 'upstream sends the blob too slowly', { status: 503 }));
        if (offset === 0 && res.status === 200) {
          const len = res.headers['content-length'];
          return { size: len === undefined ? null : Number(len), body: body(), abort: release };
        }
        if (offset > 0 && res.status === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          if (m && Number(m[1]) === offset) return { size: null, body: body(), abort: release };
        }
        await res.body.dump();
        if (offset > 0) throw new Error(`upstream cannot resume at ${offset} (status ${res.status})`);
        throw upstreamError(res, 'BLOB_UNKNOWN');
      },
    };
    return this.fills.fill(digest, repo, originOf(up), source, expectedSize);
  }

  // ---- push into upstream-backed namespaces ----------------------------------------

  /**
   * Rule for bulk pushes (skopeo/crane/bmctl) into a path that also pulls through: push
   * tools HEAD each blob and skip those answering 200, and that HEAD may have been
   * answered from upstream. So before a manifest PUT is checked, references the
   * repository lacks are fetched from the upstream (blobs fully, verified) and linked.
   * Afterwards the content is local: served even when the upstream is gone.
   */
  async completeFromUpstream(repo: RepoName, ns: string | undefined, blobs: Descriptor[], manifests: Descriptor[]): Promise<void> {
    const r = this.resolve(repo, ns);
    if (r.error || !r.upstream || !r.remoteName) return; // local only: the normal check reports them
    await this.completeTree(repo, routeOf(r, r.upstream, r.remoteName), blobs, manifests, 0);
  }

  private async completeTree(
    repo: RepoName,
    up: UpstreamRoute,
    blobs: Descriptor[],
    manifests: Descriptor[],
    depth: number,
  ): Promise<void> {
    const meta = this.local.meta;
    const missingBlobs = blobs.filter((d) => meta.repoBlobSize(repo, d.digest) === undefined);
    const missingManifests = manifests.filter((d) => !meta.hasManifest(repo, d.digest));
    const tasks: Array<Promise<unknown>> = [];
    // A reference the disk had no room for must fail the push with 507, not with a
    // misleading MANIFEST_BLOB_UNKNOWN; other upstream failures leave it to the normal check.
    let full = false;
    const noteFull = (e: unknown) => void (full ||= isStorageFull(e));
    for (const d of missingManifests) {
      tasks.push(
        this.fetchManifest(repo, up, d.digest, [d.mediaType], null).then(
          // Fetched but not stored: only when the disk is full (see bestEffort in doFetchManifest).
          () => void (full ||= !meta.hasManifest(repo, d.digest)),
          () => undefined,
        ),
      );
    }
    for (const d of missingBlobs) {
      tasks.push(
        (async () => {
          if (meta.blobSize(d.digest) !== undefined) {
            const res = await this.upstreamRequest(up, 'HEAD', `/v2/${up.remoteName}/blobs/${d.digest}`, {});
            await res.body.dump();
            if (res.status === 200) meta.linkBlob(repo, d.digest, 'cached');
            return;
          }
          const fill = this.startFill(repo, up, d.digest, d.size);
          await fill.done;
          meta.linkBlob(repo, d.digest, 'cached');
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
      const child = meta.manifest(repo, d.digest);
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

  // ---- tags list -------------------------------------------------------------------

  /** Tag list: local when the repository has pushed tags, else upstream first, cache as fallback. */
  async listTags(repo: RepoName, ns: string | undefined, last: string, n: number): Promise<{ tags: string[]; headers: Record<string, string> }> {
    const meta = this.local.meta;
    const r = this.resolve(repo, ns);
    const headers = this.nsHeaders(r);
    const pushed = meta.repoId(repo) !== undefined && meta.listTags(repo, '', 1).length > 0;
    const up = r.error ? null : r.upstream && r.remoteName ? { upstream: r.upstream, remoteName: r.remoteName } : null;
    if (pushed || !up) return { tags: this.local.listTags(repo, last, n), headers };
    try {
      const { tags, stale } = await this.tagLists.lookup(up);
      const page = tags.filter((t) => t > last).slice(0, n);
      return { tags: page, headers: stale ? { ...headers, Warning: STALE_WARNING } : headers };
    } catch (e) {
      const err = e instanceof TagListStatusError ? upstreamError(e.response, 'NAME_UNKNOWN') : unavailable(e);
      // Nothing listed since the start: the tags this mirror has resolved there.
      const cachedTags = meta.upstreamTagNames(repo);
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
    let headers = this.nsHeaders(r);
    const local = this.local.referrers(repo, subject, undefined).map(localReferrer);
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

  // ---- plumbing --------------------------------------------------------------------

  /**
   * A metadata write on the read path that the answer does not depend on (caching a
   * manifest just fetched, a tag's check time, a blob link): with the disk full it is
   * skipped and the read is answered anyway. Returns whether it was written.
   */
  private bestEffort(what: string, write: () => void): boolean {
    try {
      write();
      return true;
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      this.log.warn({ what, err: (e as Error).message }, 'storage full: served without caching');
      return false;
    }
  }

  private async upstreamRequest(
    up: UpstreamRoute,
    method: 'GET' | 'HEAD',
    path: string,
    opts: { accept?: string; range?: string; timeoutMs?: number },
  ): Promise<UpstreamResponse> {
    const headers: Record<string, string> = {};
    if (opts.accept) headers.accept = opts.accept;
    if (opts.range) headers.range = opts.range;
    const signal = opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined;
    try {
      return await this.client(up.upstream).request({ method, path, repository: up.remoteName, headers, signal });
    } catch (e) {
      if (e instanceof UpstreamUnavailableError) this.log.warn({ upstream: up.upstream.name, path, err: e.message }, 'upstream unavailable');
      else this.log.warn({ upstream: up.upstream.name, path, err: (e as Error).message }, 'upstream request failed');
      throw unavailable(e);
    }
  }
}

/** The `upstream` metric label of a path: its configured upstream, or `local` (bounded set). */
export function upstreamLabel(r: Resolution): string {
  return r.upstream?.name ?? 'local';
}

/** Push targets fail fast on a hung upstream: their lookups are bounded like a tag revalidation. */
function routeOf(r: Resolution, upstream: UpstreamConfig, remoteName: string): UpstreamRoute {
  return { upstream, remoteName, lookupTimeoutMs: r.namespace?.push ? upstream.tags.revalidateTimeoutMs : undefined };
}

function originOf(up: UpstreamRoute): string {
  return `${up.upstream.name}|${up.remoteName}`;
}
