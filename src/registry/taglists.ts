/**
 * Upstream tag lists (`GET /v2/<name>/tags/list`) for pull-through repositories: fetched
 * whole (following `Link: rel="next"` on the same upstream and path, bounded), cached in
 * memory for the upstream's tags TTL and single-flighted, so a client paging with `n` and
 * `last` costs one upstream fetch, and the last list is served (stale, with a Warning)
 * when the upstream is down (anchors.md: "tag lists not served offline"). Replicas on one
 * shared store fetch a list once per TTL between them (pullthrough/cluster.ts).
 */
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { SingleFlight } from '../singleflight.js';
import type { UpstreamConfig } from '../config/schema.js';
import { type UpstreamResponse, readBody } from '../upstream/client.js';
import { nextLink, nextPagePath } from '../upstream/pagination.js';
import { type SharedLookups, sharedList, storedList } from './pullthrough/cluster.js';

const MAX_PAGES = 50;
const MAX_PAGE_BYTES = 16 * 1024 * 1024;
const CACHE_MAX_LISTS = 10_000;
/** Roughly this many bytes of tag names in the cache. */
const CACHE_MAX_BYTES = 64 * 1024 * 1024;
/** How long a replica waits for another one's cold list fetch before fetching itself. */
const COLD_WAIT_MS = 30_000;

type Route = { upstream: UpstreamConfig; remoteName: string };
type FetchPage = (up: Route, path: string, timeoutMs: number | undefined) => Promise<UpstreamResponse>;

interface Entry {
  tags: string[];
  fetchedAt: number;
}

/** A non-200 answer; the caller maps it like any upstream error. */
export class TagListStatusError extends Error {
  constructor(readonly response: UpstreamResponse) {
    super(`upstream answered ${response.status}`);
  }
}

export class TagListCache {
  private readonly lists = new LRUCache<string, Entry>({
    max: CACHE_MAX_LISTS,
    maxSize: CACHE_MAX_BYTES,
    sizeCalculation: (e) => 64 + e.tags.reduce((n, t) => n + t.length + 16, 0),
  });
  private readonly flights = new SingleFlight<string, Entry>();

  constructor(
    private readonly fetchPage: FetchPage,
    private readonly log: Logger,
    private readonly shared: SharedLookups | null = null,
  ) {}

  /**
   * The upstream's sorted, de-duplicated tags. `stale` is set when the upstream failed and
   * an older list was served; without one, the failure is thrown.
   */
  async lookup(up: Route): Promise<{ tags: string[]; stale: boolean }> {
    const key = `${up.upstream.name}|${up.remoteName}`;
    const ttlMs = up.upstream.tags.ttlMs;
    const cached = this.lists.get(key);
    if (cached && Date.now() - cached.fetchedAt < ttlMs) return { tags: cached.tags, stale: false };
    // With an older list to fall back on, a hung upstream must not hold the client long.
    const timeoutMs = cached ? up.upstream.tags.revalidateTimeoutMs : undefined;
    const fetch = () => this.fetchAll(up, timeoutMs);
    const shared = this.shared;
    const flight = this.flights.run(key, async () => {
      if (!shared) return { tags: await fetch(), fetchedAt: Date.now() };
      const e = await sharedList(shared, this.log, `tags|${key}`, { ttlMs, waitMs: timeoutMs ?? COLD_WAIT_MS, held: cached !== undefined }, fetch);
      return { tags: e.value, fetchedAt: e.fetchedAt };
    }).promise;
    try {
      const entry = await flight;
      this.lists.set(key, entry);
      return { tags: entry.tags, stale: false };
    } catch (e) {
      // A 404 (the repository is gone upstream) is believed; anything else (no answer, 5xx,
      // 429, auth trouble) falls back to the older list, like stale manifests; with
      // replicas, to the one another replica stored if this one has none.
      if (e instanceof TagListStatusError && e.response.status === 404) throw e;
      const older = cached?.tags ?? (shared ? (await storedList<string[]>(shared, `tags|${key}`))?.value : undefined);
      if (!older) throw e;
      return { tags: older, stale: true };
    }
  }

  private async fetchAll(up: Route, timeoutMs: number | undefined): Promise<string[]> {
    const path = `/v2/${up.remoteName}/tags/list`;
    const all = new Set<string>();
    const seen = new Set<string>();
    let next: string | null = path;
    for (let page = 0; next !== null && page < MAX_PAGES; page++) {
      seen.add(next);
      const res = await this.fetchPage(up, next, timeoutMs);
      if (res.status !== 200) {
        await res.body.dump();
        throw new TagListStatusError(res);
      }
      const doc = JSON.parse((await readBody(res, MAX_PAGE_BYTES)).toString('utf8')) as { tags?: unknown };
      if (Array.isArray(doc.tags)) for (const t of doc.tags) if (typeof t === 'string') all.add(t);
      const link = nextLink(res.headers.link);
      next = link === null ? null : nextPagePath(link, res.url, up.upstream.endpoints, path);
      if (next !== null && seen.has(next)) next = null;
    }
    return [...all].sort();
  }
}
