/**
 * Manifest and tag lookups: local first, then the upstream (single-flighted, verified,
 * cached); tags revalidated after their TTL, and served stale when the upstream fails.
 */
import type { Logger } from 'pino';
import { SingleFlight } from '../../singleflight.js';
import type { Resolution } from '../../upstream/routing.js';
import { readBody } from '../../upstream/client.js';
import type { ManifestRecord } from '../../storage/ports.js';
import { RegistryError } from '../errors.js';
import { isIndexType } from '../mediatypes.js';
import { type Digest, type Reference, type RepoName, isDigest } from '../names.js';
import type { RegistryService } from '../service.js';
import { chooseStaleVariant, clientReads, defaultPlatformChild } from '../stale.js';
import { UpstreamManifestRefused, type VerifiedManifest, verifyUpstreamManifest } from '../upstreammanifest.js';
import type { SharedLookups } from './cluster.js';
import {
  type Count,
  type ManifestAnswer,
  STALE_WARNING,
  type UpstreamRoute,
  type Upstreams,
  acceptKey,
  isTransient,
  nsHeaders,
  originOf,
  routeOrThrow,
  unavailable,
  upstreamAccept,
  upstreamError,
} from './shared.js';

/** How long a replica waits for another one's cold manifest GET before asking itself. */
const COLD_WAIT_MS = 30_000;

type TagAnswer = { record: ManifestRecord; result: 'hit' | 'miss' | 'revalidated' };

export class ManifestLookups {
  private readonly flights = new SingleFlight<string, ManifestRecord>();
  private readonly revalidations = new SingleFlight<string, Digest | null>();

  constructor(
    private readonly local: RegistryService,
    private readonly upstreams: Upstreams,
    private readonly count: Count,
    private readonly log: Logger,
    private readonly shared: SharedLookups | null = null,
  ) {}

  async find(repo: RepoName, r: Resolution, ref: Reference, accept: readonly string[]): Promise<ManifestAnswer> {
    const meta = this.local.meta;
    const headers = nsHeaders(r);
    if (ref.kind === 'digest') {
      // By digest a held manifest is the answer whatever the Accept (as getManifest).
      const held = await meta.manifest(repo, ref.digest);
      if (held) return this.count('manifest', 'hit', r, { record: held, headers });
    } else if (await meta.tag(repo, ref.tag)) {
      // Pushed tags win, and are never revalidated.
      return this.count('manifest', 'hit', r, { record: await this.local.getManifest(repo, ref, accept), headers });
    }
    const up = routeOrThrow(r);
    if (!up) return { record: await this.local.getManifest(repo, ref, accept), headers };
    if (ref.kind === 'digest') return this.count('manifest', 'miss', r, { record: await this.fetch(repo, up, ref.digest, accept, null), headers });

    // Keyed by upstream and remote name too: one local path can reach several upstreams
    // (?ns=a vs ?ns=b), and one upstream's tag must never answer for another's.
    const key = `${originOf(up)}|${acceptKey(accept)}`;
    const cached = await meta.upstreamTag(repo, ref.tag, key);
    const cachedRecord = cached && (await meta.manifest(repo, cached.digest));
    try {
      if (cached && cachedRecord && fresh(up, ref.tag, cached.checkedAt)) return this.count('manifest', 'hit', r, { record: cachedRecord, headers });
      const held = cached && cachedRecord ? { digest: cached.digest, record: cachedRecord } : null;
      const { record, result } = await this.resolveTag(repo, up, ref.tag, key, accept, held);
      return this.count('manifest', result, r, { record, headers });
    } catch (e) {
      if (!isTransient(e)) throw e;
      // Whichever client cached the tag: any variant this client reads beats a 503.
      const stale = await this.staleTag(repo, ref.tag, up, accept);
      if (!stale) throw e;
      this.log.warn({ repo, tag: ref.tag, upstream: up.upstream.name, digest: stale.digest, err: (e as Error).message }, 'serving stale tag: upstream unavailable');
      return this.count('manifest', 'stale', r, { record: stale, headers: { ...headers, Warning: STALE_WARNING } });
    }
  }

  /**
   * Ask the upstream what `tag` is now: GET it when nothing is held, else HEAD it and GET
   * only a moved tag. With replicas, one of them asks per tag per TTL: the others take the
   * row it writes (fresh within the TTL, so never an answer older than the TTL allows).
   */
  private async resolveTag(
    repo: RepoName,
    up: UpstreamRoute,
    tag: string,
    key: string,
    accept: readonly string[],
    held: { digest: Digest; record: ManifestRecord } | null,
  ): Promise<TagAnswer> {
    const resolve = async (): Promise<TagAnswer> => {
      if (!held) return { record: await this.fetch(repo, up, tag, accept, { name: tag, acceptKey: key }), result: 'miss' };
      const digest = await this.revalidateTag(repo, up, tag, key, accept, held.digest);
      if (digest === held.digest) return { record: held.record, result: 'revalidated' };
      return { record: await this.fetch(repo, up, digest ?? tag, accept, { name: tag, acceptKey: key }), result: 'miss' };
    };
    if (!this.shared) return resolve();
    const meta = this.shared.meta;
    const settled = async (): Promise<TagAnswer | undefined> => {
      const row = await meta.upstreamTag(repo, tag, key);
      if (!row || !fresh(up, tag, row.checkedAt)) return undefined;
      const record = await meta.manifest(repo, row.digest);
      return record && { record, result: 'hit' };
    };
    // With a copy held, a waiter is bounded like a revalidation, and when the replica
    // checking failed or is that slow, the upstream counts as unavailable: the copy is
    // served stale (find's catch) instead of every replica waiting out its own check.
    const name = `tag|${key}|${repo}|${tag}`;
    if (!held) return (await this.shared.flights.once(name, { waitMs: COLD_WAIT_MS, settled, work: resolve })).value;
    const giveUp = async (): Promise<TagAnswer> => {
      throw new RegistryError('UNAVAILABLE', 'the upstream check of this tag failed or is slow on another replica', { status: 503 });
    };
    return (await this.shared.flights.once(name, { waitMs: up.upstream.tags.revalidateTimeoutMs, settled, work: resolve, giveUp })).value;
  }

  /**
   * A cached manifest of `tag` from this upstream repository that the client reads,
   * whichever client's Accept set cached it (rules in stale.ts); undefined if none.
   */
  private async staleTag(repo: RepoName, tag: string, up: UpstreamRoute, accept: readonly string[]): Promise<ManifestRecord | undefined> {
    const meta = this.local.meta;
    const variants = await meta.upstreamTagVariants(tag, `${originOf(up)}|`);
    // A variant cached under another local path of the same upstream repository is
    // linked here first, so this path's child manifest and blob requests find it too.
    const held = async (v: (typeof variants)[number]) => {
      await meta.adoptCachedManifest(v.repo, repo, v.digest);
      return meta.manifest(repo, v.digest);
    };
    const chosen = chooseStaleVariant(variants, accept);
    if (chosen) return held(chosen);
    // None the client reads: the linux/amd64 entry of a cached index, if held.
    for (const v of variants) {
      if (!isIndexType(v.mediaType)) continue;
      const index = await held(v);
      const child = index && defaultPlatformChild(index.body);
      const record = child && clientReads(accept, child.mediaType) ? await meta.manifest(repo, child.digest) : undefined;
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
      const res = await this.upstreams.request(up, 'HEAD', `/v2/${up.remoteName}/manifests/${tag}`, {
        accept: upstreamAccept(accept),
        timeoutMs: up.upstream.tags.revalidateTimeoutMs,
      });
      await res.body.dump();
      if (res.status === 404) {
        await this.local.meta.deleteUpstreamTag(repo, tag);
        throw new RegistryError('MANIFEST_UNKNOWN', 'tag no longer exists upstream');
      }
      if (res.status !== 200) throw upstreamError(res, 'MANIFEST_UNKNOWN');
      const d = String(res.headers['docker-content-digest'] ?? '');
      if (!isDigest(d)) return null;
      if (d === current) await this.upstreams.bestEffort('tag check time', () => this.local.meta.touchUpstreamTag(repo, tag, key));
      return d;
    }).promise;
  }

  /** GET a manifest upstream (single-flight), verify it, store it, return it. */
  fetch(
    repo: RepoName,
    up: UpstreamRoute,
    reference: string,
    accept: readonly string[],
    tag: { name: string; acceptKey: string } | null,
  ): Promise<ManifestRecord> {
    const flightKey = `${up.upstream.name}|${up.remoteName}|${reference}|${acceptKey(accept)}|${repo}`;
    const run = () => this.doFetch(repo, up, reference, accept, tag);
    const shared = this.shared;
    // By digest alone, another replica's stored copy is the answer (a by-tag fetch also
    // writes the tag row: that one runs under resolveTag's lease instead).
    if (!shared || tag !== null || !isDigest(reference)) return this.flights.run(flightKey, run).promise;
    const settled = () => shared.meta.manifest(repo, reference);
    const once = async () => (await shared.flights.once(`manifest|${originOf(up)}|${repo}|${reference}`, { waitMs: COLD_WAIT_MS, settled, work: run })).value;
    return this.flights.run(flightKey, once).promise;
  }

  private async doFetch(
    repo: RepoName,
    up: UpstreamRoute,
    reference: string,
    accept: readonly string[],
    tag: { name: string; acceptKey: string } | null,
  ): Promise<ManifestRecord> {
    const res = await this.upstreams.request(up, 'GET', `/v2/${up.remoteName}/manifests/${reference}`, { accept: upstreamAccept(accept), timeoutMs: up.lookupTimeoutMs });
    if (res.status !== 200) {
      await res.body.dump();
      if (res.status === 404 && tag) await this.upstreams.bestEffort('upstream tag removal', () => this.local.meta.deleteUpstreamTag(repo, tag.name));
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
    if (await this.upstreams.bestEffort('manifest cache', () => this.local.meta.putCachedManifest(repo, { ...record, refs }, tag))) {
      this.log.info({ upstream: up.upstream.name, repo: up.remoteName, reference, digest }, 'manifest cached');
    }
    return record;
  }
}

/** Whether a tag checked upstream at `checkedAt` is still answered without asking again. */
function fresh(up: UpstreamRoute, tag: string, checkedAt: number): boolean {
  return Date.now() - checkedAt < up.upstream.tags.ttlMs || up.upstream.tags.immutable.some((p) => p.test(tag));
}
