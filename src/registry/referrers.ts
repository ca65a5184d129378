/**
 * Referrers lists from upstreams (distribution-spec 1.1 "Listing Referrers"), for
 * pull-through repositories: signatures and SBOMs attached upstream (cosign, notation,
 * ratify) must be visible through the mirror.
 *
 * The upstream list is fetched unfiltered (one cache entry serves every `artifactType`),
 * following `Link: rel="next"` within bounds, validated descriptor by descriptor, and kept
 * in memory only: a referrers list changes whenever someone attaches a signature, so it is
 * cached like a tag (`upstreams[].tags.ttl`), served stale when the upstream fails, and
 * lost on restart (the referenced manifests themselves are cached on disk as usual when
 * clients pull them by digest). Replicas on one shared store fetch a list once per TTL
 * between them and keep it in the store (pullthrough/cluster.ts).
 */
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { SingleFlight } from '../singleflight.js';
import type { UpstreamConfig } from '../config/schema.js';
import { type UpstreamResponse, readBody } from '../upstream/client.js';
import { nextLink, nextPagePath } from '../upstream/pagination.js';
import type { ManifestMeta } from '../storage/ports.js';
import { MT } from './mediatypes.js';
import { type SharedLookups, sharedList, storedList } from './pullthrough/cluster.js';
import { type Digest, isDigest } from './names.js';

export interface ReferrerDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** Bounds on what one upstream list may cost (pages, bytes per page, entries in all). */
export const REFERRERS_MAX_PAGES = 10;
export const REFERRERS_MAX_PAGE_BYTES = 4 * 1024 * 1024;
const MAX_ENTRIES = 10_000;
/** In-memory cache: at most this many lists, and roughly this many bytes of descriptors. */
const CACHE_MAX_LISTS = 10_000;
const CACHE_MAX_BYTES = 64 * 1024 * 1024;
/** How long a replica waits for another one's cold list fetch before fetching itself. */
const COLD_WAIT_MS = 30_000;

type Route = { upstream: UpstreamConfig; remoteName: string };
export type FetchPage = (up: Route, path: string, timeoutMs: number | undefined) => Promise<UpstreamResponse>;

export interface UpstreamReferrers {
  manifests: ReferrerDescriptor[];
  /** hit: fresh cache; miss: fetched; joined: shared a fetch in flight; stale: cached copy
   *  after an upstream failure; local: upstream failed and nothing cached (empty list). */
  result: 'hit' | 'miss' | 'joined' | 'stale' | 'local';
}

interface Entry {
  manifests: ReferrerDescriptor[];
  fetchedAt: number;
}

/** Upstream answers meaning "nothing visible there": cached as an empty list. */
const ABSENT = new Set([401, 403, 404]);

class ReferrersFetchError extends Error {
  override name = 'ReferrersFetchError';
}

function isStringRecord(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');
}

/** One descriptor as listed upstream, or null when it lacks what a client needs. */
function referrerDescriptor(v: unknown): ReferrerDescriptor | null {
  if (typeof v !== 'object' || v === null) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.mediaType !== 'string' || o.mediaType === '' || typeof o.digest !== 'string' || !isDigest(o.digest)) return null;
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) return null;
  const d: ReferrerDescriptor = { mediaType: o.mediaType, digest: o.digest, size: o.size };
  if (typeof o.artifactType === 'string') d.artifactType = o.artifactType;
  if (isStringRecord(o.annotations)) d.annotations = o.annotations;
  return d;
}

/** An upstream referrers page: its valid descriptors (malformed entries dropped), or null if it is no index. */
export function parseReferrersPage(body: Buffer): ReferrerDescriptor[] | null {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { manifests?: unknown }).manifests)) return null;
  const mt = (doc as { mediaType?: unknown }).mediaType;
  if (mt !== undefined && mt !== MT.ociIndex) return null;
  return (doc as { manifests: unknown[] }).manifests.map(referrerDescriptor).filter((d) => d !== null);
}

export function localReferrer(m: ManifestMeta): ReferrerDescriptor {
  const d: ReferrerDescriptor = { mediaType: m.mediaType, digest: m.digest, size: m.size };
  if (m.artifactType) d.artifactType = m.artifactType;
  if (m.annotations) {
    try {
      const a = JSON.parse(m.annotations) as unknown;
      if (isStringRecord(a)) d.annotations = a;
    } catch {
      // stored by us from a parsed manifest; unreadable means leave it out
    }
  }
  return d;
}

/** Union by digest; local descriptors win (they describe bytes this mirror holds). */
export function mergeReferrers(local: readonly ReferrerDescriptor[], upstream: readonly ReferrerDescriptor[]): ReferrerDescriptor[] {
  const out = [...local];
  const seen = new Set(local.map((d) => d.digest));
  for (const d of upstream) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    out.push(d);
  }
  return out;
}

function entryBytes(e: Entry): number {
  return 64 + e.manifests.reduce((n, d) => n + 128 + d.mediaType.length + (d.artifactType?.length ?? 0) + JSON.stringify(d.annotations ?? {}).length, 0);
}

/** Cached, single-flighted upstream referrers lists, keyed by upstream, remote name and subject. */
export class ReferrersCache {
  private readonly lists = new LRUCache<string, Entry>({ max: CACHE_MAX_LISTS, maxSize: CACHE_MAX_BYTES, sizeCalculation: entryBytes });
  private readonly flights = new SingleFlight<string, Entry>();

  constructor(
    private readonly fetchPage: FetchPage,
    private readonly log: Logger,
    private readonly shared: SharedLookups | null = null,
  ) {}

  async lookup(up: Route, subject: Digest): Promise<UpstreamReferrers> {
    const key = `${up.upstream.name}|${up.remoteName}|${subject}`;
    const ttlMs = up.upstream.tags.ttlMs;
    const cached = this.lists.get(key);
    if (cached && Date.now() - cached.fetchedAt < ttlMs) return { manifests: cached.manifests, result: 'hit' };
    // With a stale copy to fall back on, a hung upstream must not hold the client long.
    const timeoutMs = cached ? up.upstream.tags.revalidateTimeoutMs : undefined;
    const fetch = () => this.fetchAll(up, subject, timeoutMs);
    const shared = this.shared;
    const { promise: flight, joined } = this.flights.run(key, async () => {
      let entry: Entry;
      if (shared) {
        const e = await sharedList(shared, this.log, `referrers|${key}`, { ttlMs, waitMs: timeoutMs ?? COLD_WAIT_MS, held: cached !== undefined }, fetch);
        entry = { manifests: e.value, fetchedAt: e.fetchedAt };
      } else entry = { manifests: await fetch(), fetchedAt: Date.now() };
      this.lists.set(key, entry);
      return entry;
    });
    try {
      return { manifests: (await flight).manifests, result: joined ? 'joined' : 'miss' };
    } catch (e) {
      const ctx = { upstream: up.upstream.name, repo: up.remoteName, subject, err: (e as Error).message };
      const older = cached?.manifests ?? (shared ? (await storedList<ReferrerDescriptor[]>(shared, `referrers|${key}`))?.value : undefined);
      if (older) {
        this.log.warn(ctx, 'serving stale referrers: upstream unavailable');
        return { manifests: older, result: 'stale' };
      }
      this.log.warn(ctx, 'upstream referrers unavailable: serving local referrers only');
      return { manifests: [], result: 'local' };
    }
  }

  /**
   * The referrers tag schema (distribution-spec 1.1 "Referrers Tag Schema"): an image index
   * tagged `<alg>-<hex>` whose entries are the referrers, kept by registries without the
   * API. Absent or unreadable: no referrers.
   */
  private async fromTagSchema(up: Route, subject: Digest, timeoutMs: number | undefined): Promise<ReferrerDescriptor[]> {
    const [alg, hex] = subject.split(':') as [string, string];
    const res = await this.fetchPage(up, `/v2/${up.remoteName}/manifests/${alg}-${hex.slice(0, 64)}`, timeoutMs);
    if (res.status !== 200) {
      await res.body.dump();
      if (res.status >= 500 || res.status === 429) throw new ReferrersFetchError(`upstream answered ${res.status} for the referrers tag`);
      return [];
    }
    return (parseReferrersPage(await readBody(res, REFERRERS_MAX_PAGE_BYTES)) ?? []).slice(0, MAX_ENTRIES);
  }

  /** Every page of the upstream list (bounded). Throws on failures worth a stale answer. */
  private async fetchAll(up: Route, subject: Digest, timeoutMs: number | undefined): Promise<ReferrerDescriptor[]> {
    const path = `/v2/${up.remoteName}/referrers/${subject}`;
    const all: ReferrerDescriptor[] = [];
    const requested = new Set<string>();
    let next: string | null = path;
    for (let page = 0; next !== null; page++) {
      if (page >= REFERRERS_MAX_PAGES || all.length >= MAX_ENTRIES) {
        this.log.warn({ upstream: up.upstream.name, repo: up.remoteName, subject, pages: page }, 'upstream referrers list truncated');
        break;
      }
      requested.add(next);
      const res = await this.fetchPage(up, next, timeoutMs);
      if (res.status !== 200) {
        await res.body.dump();
        // No referrers API, unknown repository, or no access: nothing upstream to add.
        // The upstream's WWW-Authenticate stays here (its realm is not ours).
        if (page === 0 && ABSENT.has(res.status)) {
          this.log.debug({ upstream: up.upstream.name, repo: up.remoteName, status: res.status }, 'upstream lists no referrers');
          // 404 = no referrers API: what clients would do next is read the tag schema. They
          // never will here (the mirror answers 200), so the mirror reads it for them.
          return res.status === 404 ? this.fromTagSchema(up, subject, timeoutMs) : [];
        }
        throw new ReferrersFetchError(`upstream answered ${res.status}`);
      }
      const items = parseReferrersPage(await readBody(res, REFERRERS_MAX_PAGE_BYTES));
      if (!items) throw new ReferrersFetchError('upstream referrers response is not an image index');
      all.push(...items);
      const link = nextLink(res.headers.link);
      next = link === null ? null : nextPagePath(link, res.url, up.upstream.endpoints, path);
      if (link !== null && next === null) {
        this.log.warn({ upstream: up.upstream.name, repo: up.remoteName, subject }, 'upstream referrers Link leaves the upstream: not followed');
      }
      if (next !== null && requested.has(next)) next = null; // a link back to a page already read
    }
    return all.slice(0, MAX_ENTRIES);
  }
}
