/**
 * What the status page and `GET /api/v1/status` show: per-upstream health and traffic,
 * the cache budget, fills in progress, recent upstream errors, version and uptime.
 * Plain data, fed by the same hooks as the metrics (app.ts wires them); no HTTP here.
 *
 * Nothing kept here may carry a secret: upstream paths (they name repositories) are never
 * recorded, error messages lose every URL (userinfo could hide in one), and fills name
 * their repository only when the caller's `mayPull` says so.
 */
import { readFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FillInfo } from '../cache/fill.js';
import type { EvictionResult } from '../cache/eviction.js';
import type { CacheKind, CacheResult } from '../registry/pullthrough.js';

/** Recent upstream errors kept (oldest dropped first). */
const MAX_RECENT_ERRORS = 20;
const MAX_MESSAGE_CHARS = 200;
/** An upstream that answered 429 this recently counts as rate-limited. */
const RATE_LIMITED_FOR_MS = 60_000;

export type UpstreamState = 'ok' | 'offline' | 'rate-limited';

export interface UpstreamStatus {
  name: string;
  state: UpstreamState;
  /** When the current offline window began (ISO time), null when online. */
  offlineSince: string | null;
  /** Requests sent to the upstream (every response or transport failure). */
  requests: number;
  /** Transport failures, 5xx and 429 answers. */
  errors: number;
  /** Last `ratelimit-remaining` / `ratelimit-limit` the upstream sent (Docker Hub), null if never. */
  rateLimit: { remaining: number; limit: number | null } | null;
  /** Manifest and blob lookups for paths routed here, and those answered without a new download. */
  lookups: number;
  hits: number;
  /** hits / lookups; null before the first lookup. */
  hitRatio: number | null;
  /** Blob bytes sent to clients: from disk (cached) and streamed while filling. */
  bytesServed: { disk: number; fill: number };
  /** Blob bytes downloaded from the upstream. */
  bytesFetched: number;
  /** bytesServed minus bytesFetched (never below 0): upstream traffic the cache saved. */
  bytesSaved: number;
}

export interface FillStatus {
  /** null when the caller may not pull the repository (then the digest is hidden too). */
  repository: string | null;
  digest: string | null;
  upstream: string;
  bytes: number;
  size: number | null;
  startedAt: string;
}

export interface StatusSnapshot {
  version: string;
  startedAt: string;
  uptimeSeconds: number;
  upstreams: UpstreamStatus[];
  /** Paths with no upstream (pushed content): lookups and bytes served. */
  local: { lookups: number; hits: number; bytesServed: number };
  cache: {
    bytes: number;
    maxBytes: number | null;
    lastEviction: { at: string; bytes: number; blobs: number; images: number } | null;
  };
  fills: FillStatus[];
  recentErrors: Array<{ at: string; upstream: string; message: string }>;
}

export interface StatusSources {
  version: string;
  maxBytes: number | null;
  cachedBytes: () => number | Promise<number>;
  fills: () => FillInfo[];
  /** Configured upstreams and whether each fails fast right now. */
  upstreams: ReadonlyArray<{ name: string; offline: () => boolean }>;
}

interface Counters {
  requests: number;
  errors: number;
  remaining: number | null;
  limit: number | null;
  rateLimitedAt: number;
  offlineSince: number | null;
  lookups: number;
  hits: number;
  servedDisk: number;
  servedFill: number;
  fetched: number;
}

const HIT_RESULTS: ReadonlySet<CacheResult> = new Set(['hit', 'joined', 'stale', 'revalidated']);

function newCounters(): Counters {
  return { requests: 0, errors: 0, remaining: null, limit: null, rateLimitedAt: -Infinity, offlineSince: null, lookups: 0, hits: 0, servedDisk: 0, servedFill: 0, fetched: 0 };
}

/** Drop every URL (userinfo, tokens in query strings) and control characters; cap the length. */
export function sanitizeMessage(msg: string): string {
  const clean = msg
    .replace(/[a-z][a-z0-9+.-]*:\/\/\S*/gi, '<url>')
    .replace(/\S+:\S+@\S+/g, '<redacted>')
    .replace(/[\u0000-\u001f\u007f]/g, ' ');
  return clean.length > MAX_MESSAGE_CHARS ? `${clean.slice(0, MAX_MESSAGE_CHARS)}…` : clean;
}

/** The first number of a `ratelimit-*` header (`76;w=21600`), or null. */
function headerNumber(headers: IncomingHttpHeaders | null, name: string): number | null {
  const n = Number.parseInt(String(headers?.[name] ?? ''), 10);
  return Number.isFinite(n) ? n : null;
}

/** This package's version, from the package.json above the compiled file. */
export function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'regmirror' && pkg.version) return pkg.version;
    } catch {
      // not here: one level up
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

export class StatusCollector {
  private readonly startedAt = Date.now();
  private readonly byUpstream = new Map<string, Counters>();
  private readonly local = { lookups: 0, hits: 0, bytesServed: 0 };
  private readonly errors: Array<{ at: number; upstream: string; message: string }> = [];
  private lastEviction: { at: number; bytes: number; blobs: number; images: number } | null = null;

  constructor(private readonly src: StatusSources) {
    for (const u of src.upstreams) this.byUpstream.set(u.name, newCounters());
  }

  private counters(upstream: string): Counters | undefined {
    return this.byUpstream.get(upstream);
  }

  private noteError(upstream: string, message: string): void {
    this.errors.push({ at: Date.now(), upstream, message: sanitizeMessage(message) });
    if (this.errors.length > MAX_RECENT_ERRORS) this.errors.shift();
  }

  /** Every upstream response or transport failure (UpstreamClient.onResponse). */
  upstreamResponse(upstream: string, method: string, status: number | 'error', headers: IncomingHttpHeaders | null, error?: string): void {
    const c = this.counters(upstream);
    if (!c) return;
    c.requests++;
    const remaining = headerNumber(headers, 'ratelimit-remaining');
    if (remaining !== null) {
      c.remaining = remaining;
      c.limit = headerNumber(headers, 'ratelimit-limit');
    }
    if (status === 'error') {
      c.errors++;
      this.noteError(upstream, `${method} failed: ${error ?? 'no response'}`);
    } else if (status >= 500 || status === 429) {
      c.errors++;
      if (status === 429) c.rateLimitedAt = Date.now();
      this.noteError(upstream, `${method} answered ${status}${status === 429 ? ' (rate limited)' : ''}`);
    }
  }

  /** The upstream's offline window opened or closed (UpstreamHealth.onChange). */
  offlineChanged(upstream: string, offline: boolean): void {
    const c = this.counters(upstream);
    if (!c) return;
    if (offline) {
      c.offlineSince = Date.now();
      this.noteError(upstream, 'marked offline: requests fail fast until it answers again');
    } else c.offlineSince = null;
  }

  /** A pull-through lookup's outcome (PullThrough.onCache). Referrer lookups are not counted. */
  cache(kind: CacheKind, result: CacheResult, upstream: string): void {
    if (kind === 'referrers') return;
    const hit = HIT_RESULTS.has(result) ? 1 : 0;
    if (upstream === 'local') {
      this.local.lookups++;
      this.local.hits += hit;
      return;
    }
    const c = this.counters(upstream);
    if (!c) return;
    c.lookups++;
    c.hits += hit;
  }

  /** A complete blob GET body went out. */
  served(source: 'disk' | 'fill', bytes: number, upstream: string): void {
    if (upstream === 'local') {
      this.local.bytesServed += bytes;
      return;
    }
    const c = this.counters(upstream);
    if (!c) return;
    if (source === 'disk') c.servedDisk += bytes;
    else c.servedFill += bytes;
  }

  /** Blob bytes downloaded from an upstream (FillManager.onBytes). */
  fetched(upstream: string, bytes: number): void {
    const c = this.counters(upstream);
    if (c) c.fetched += bytes;
  }

  evicted(r: EvictionResult): void {
    this.lastEviction = { at: Date.now(), bytes: r.bytes, blobs: r.blobs, images: r.images };
  }

  /**
   * The current picture; fills name their repository only if `pullable` (given every
   * fill's repository, answering those the caller may pull) includes it.
   */
  async snapshot(pullable: (repositories: string[]) => Promise<readonly string[]>): Promise<StatusSnapshot> {
    const now = Date.now();
    const iso = (t: number) => new Date(t).toISOString();
    const upstreams: UpstreamStatus[] = this.src.upstreams.map((u) => {
      const c = this.byUpstream.get(u.name) ?? newCounters();
      const offline = u.offline();
      const limited = now - c.rateLimitedAt < RATE_LIMITED_FOR_MS || c.remaining === 0;
      const served = c.servedDisk + c.servedFill;
      return {
        name: u.name,
        state: offline ? 'offline' : limited ? 'rate-limited' : 'ok',
        offlineSince: offline && c.offlineSince !== null ? iso(c.offlineSince) : null,
        requests: c.requests,
        errors: c.errors,
        rateLimit: c.remaining === null ? null : { remaining: c.remaining, limit: c.limit },
        lookups: c.lookups,
        hits: c.hits,
        hitRatio: c.lookups > 0 ? c.hits / c.lookups : null,
        bytesServed: { disk: c.servedDisk, fill: c.servedFill },
        bytesFetched: c.fetched,
        bytesSaved: Math.max(0, served - c.fetched),
      };
    });
    const inFlight = this.src.fills();
    // Asked even with no fills: bad credentials fail the same way whatever is downloading.
    const allowed = new Set(await pullable([...new Set(inFlight.map((f) => f.repository))]));
    const fills: FillStatus[] = [];
    for (const f of inFlight) {
      const visible = allowed.has(f.repository);
      fills.push({
        repository: visible ? f.repository : null,
        digest: visible ? f.digest : null,
        upstream: f.origin.split('|', 1)[0]!,
        bytes: f.bytes,
        size: f.size,
        startedAt: iso(f.startedAt),
      });
    }
    const ev = this.lastEviction;
    return {
      version: this.src.version,
      startedAt: iso(this.startedAt),
      uptimeSeconds: Math.floor((now - this.startedAt) / 1000),
      upstreams,
      local: { ...this.local },
      cache: {
        bytes: await this.src.cachedBytes(),
        maxBytes: this.src.maxBytes,
        lastEviction: ev ? { at: iso(ev.at), bytes: ev.bytes, blobs: ev.blobs, images: ev.images } : null,
      },
      fills,
      recentErrors: this.errors.map((e) => ({ at: iso(e.at), upstream: e.upstream, message: e.message })).reverse(),
    };
  }
}
