/**
 * A read cache in front of a MetadataStore for the reads every manifest GET/HEAD and blob
 * GET/HEAD makes (issue #14 item 2): `tag`, `manifest`, `upstreamTag` and `repoBlobSize`.
 * With it, such a request by tag or by digest costs no database round trip while nothing
 * changes.
 *
 * The rule (also in README.md, "Metadata read cache"):
 * - Only those reads are cached, keyed by their arguments; for the first three "not found"
 *   too. `repoBlobSize` only when found: the blob store records committed blobs itself
 *   (not through this port), so "not linked" may end without this cache seeing it, while
 *   "linked" ends only by an unlink, delete, eviction or GC, all through this port.
 * - In this process, never stale: every call on the store other than the plain reads in
 *   PASS_THROUGH is taken as a write (push, tag move, delete, cache fill, eviction, GC,
 *   transaction; also any method added to the port later). It empties the cache when it
 *   starts and again when it settles, and a read that started before a write settled is
 *   not kept (generation counter). Tags and manifests change only through this port
 *   (the blob store writes blob rows directly, but only adds rows or drops unlinked ones,
 *   which no cached answer contradicts; see repoBlobSize above).
 * - Other processes (`regmirror gc`/`fsck` on the same database; replicas sharing one
 *   database, issue #13) do not reach this cache: every entry expires `ttlMs` (1 s) after
 *   it was read, so their tag moves and deletes are served here at most that late.
 * Cached records are frozen and shared between requests.
 */
import { LRUCache } from 'lru-cache';
import type { MetadataStore } from './ports.js';

/** Reads (and access-time writes) that no cached answer depends on: passed straight through. */
const PASS_THROUGH = new Set([
  'repoExists',
  'listRepositories',
  'blobSize',
  'referencedInRepo',
  'hasManifest',
  'listTags',
  'referrers',
  'upstreamTagVariants',
  'upstreamTagNames',
  // Upstream tag and referrers lists: no cached read returns them (their writer keeps its own copy).
  'upstreamList',
  'putUpstreamList',
  'deleteUpstreamListsBefore',
  // Only last-access times: read by eviction, never by a cached read. Runs every few seconds.
  'touchAccess',
  'cachedBytes',
  'cachedImages',
  'looseBlobs',
  'evictionCandidates',
  'unreferencedBlobs',
  'allBlobs',
  'blobPushed',
  'ping',
]);
const CACHED = new Set(['tag', 'manifest', 'upstreamTag']);
/** Cached only when the answer is not undefined (see the rule above). */
const CACHED_WHEN_FOUND = new Set(['repoBlobSize']);

export const READ_CACHE_TTL_MS = 1000;

export interface ReadCacheOptions {
  /** How long another process's change may go unseen here. */
  ttlMs?: number;
  /** Bound on cached manifest bytes. */
  maxBytes?: number;
}

interface Entry {
  value: unknown;
}

export interface CachedMetadataStore extends MetadataStore {
  /** Drop everything cached (tests, and anything that changed the database behind the port). */
  invalidate(): void;
}

export function withReadCache(inner: MetadataStore, opts: ReadCacheOptions = {}): CachedMetadataStore {
  const lru = new LRUCache<string, Entry>({
    // Bounded by size only: a `max` count would allocate its index arrays up front (about
    // 2 MiB for 50,000 entries in a process that has read nothing; src/lru.ts). Entries
    // without a body count 640 bytes, so the default still holds at most ~52,000 of them.
    maxSize: opts.maxBytes ?? 32 * 1024 * 1024,
    sizeCalculation: (e) => 640 + ((e.value as { body?: Buffer } | undefined)?.body?.length ?? 0),
    ttl: opts.ttlMs ?? READ_CACHE_TTL_MS,
  });
  let generation = 0;
  const invalidate = () => {
    generation++;
    lru.clear();
  };
  const target = inner as unknown as Record<string, (...args: unknown[]) => unknown>;
  const out: Record<string, unknown> = { invalidate };

  const cachedRead = (name: string, keepMissing: boolean) => {
    const fn = target[name]!;
    return (...args: unknown[]) => {
      const key = `${name}\0${args.join('\0')}`;
      const hit = lru.get(key);
      if (hit) return Promise.resolve(hit.value);
      const gen = generation;
      return (fn.apply(inner, args) as Promise<unknown>).then((v) => {
        // A write started or settled meanwhile: this answer may predate it, so it is not kept.
        if (gen === generation && (keepMissing || v !== undefined)) lru.set(key, { value: v === undefined ? v : Object.freeze(v) });
        return v;
      });
    };
  };
  const write = (name: string) => {
    const fn = target[name]!;
    return (...args: unknown[]) => {
      invalidate();
      const r = fn.apply(inner, args);
      if (r && typeof (r as Promise<unknown>).then === 'function') {
        const settle = () => invalidate();
        (r as Promise<unknown>).then(settle, settle);
      } else invalidate();
      return r;
    };
  };

  // Every method of the store, whatever class in its chain defines it.
  const names = new Set<string>();
  for (let p = Object.getPrototypeOf(inner); p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    for (const n of Object.getOwnPropertyNames(p)) if (n !== 'constructor' && typeof target[n] === 'function') names.add(n);
  }
  for (const n of Object.keys(inner)) if (typeof target[n] === 'function') names.add(n);
  for (const n of names) {
    out[n] = CACHED.has(n) || CACHED_WHEN_FOUND.has(n) ? cachedRead(n, CACHED.has(n)) : PASS_THROUGH.has(n) ? target[n]!.bind(inner) : write(n);
  }
  for (const n of CACHED) if (!names.has(n)) throw new Error(`read cache: the store has no ${n}()`);
  return out as unknown as CachedMetadataStore;
}
