/**
 * What the pull-through area services share: answer types, the upstream route of a miss,
 * how upstream outcomes map to client errors, and the upstream request plumbing.
 */
import type { Logger } from 'pino';
import type { Readable } from 'node:stream';
import type { UpstreamConfig } from '../../config/schema.js';
import type { BlobFill } from '../../cache/fill.js';
import type { Resolution } from '../../upstream/routing.js';
import { type UpstreamClient, UpstreamProtocolError, type UpstreamResponse, UpstreamUnavailableError } from '../../upstream/client.js';
import { isStorageFull } from '../../storage/space.js';
import type { BlobBody, ManifestRecord } from '../../storage/ports.js';
import { RegistryError } from '../errors.js';
import { MANIFEST_TYPES } from '../mediatypes.js';

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
  /** A presigned URL of the stored blob: the GET answers 307 there (storage.s3.redirect). */
  redirect?: string;
}

export type CacheKind = 'manifest' | 'blob' | 'referrers';
/** `local` (referrers only): the upstream failed and nothing was cached, so the answer is local. */
export type CacheResult = 'hit' | 'miss' | 'joined' | 'stale' | 'revalidated' | 'local';

/** Notes a lookup's outcome for a path (metrics) and passes `value` through. */
export type Count = <T>(kind: CacheKind, result: CacheResult, r: Resolution, value: T) => T;

/** Where a miss goes: the upstream and the repository name there. */
export type UpstreamRoute = {
  upstream: UpstreamConfig;
  remoteName: string;
  /** Bound on manifest and blob lookups: push targets fail fast on a hung upstream. */
  lookupTimeoutMs?: number;
};

export const STALE_WARNING = '299 - "regmirror: upstream unavailable, serving cached content"';

/** A stable key for the set of manifest types a client accepts (tags are cached per key). */
export function acceptKey(accept: readonly string[]): string {
  if (accept.length === 0 || accept.includes('*/*')) return '*';
  const known = MANIFEST_TYPES.filter((t) => accept.includes(t));
  return known.length === 0 ? '*' : [...known].sort().join(',');
}

/** Accept sent upstream: the client's modern types, never schema1 (protocol.md 6.3). */
export function upstreamAccept(accept: readonly string[]): string {
  const key = acceptKey(accept);
  return key === '*' ? MANIFEST_TYPES.join(', ') : key.split(',').join(', ');
}

function retryAfter(res: UpstreamResponse): Record<string, string> {
  const v = res.headers['retry-after'];
  return v ? { 'Retry-After': String(v) } : {};
}

/** Map an upstream status to what the downstream client sees (protocol.md 6.10). */
export function upstreamError(res: UpstreamResponse, notFound: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN'): RegistryError {
  const s = res.status;
  // Docker Hub answers 401 for repositories that do not exist or are private. Never
  // forward the upstream's WWW-Authenticate: its realm is not ours.
  if (s === 401) return new RegistryError('NAME_UNKNOWN', 'repository not found upstream (or not accessible with the configured credentials)');
  if (s === 404) return new RegistryError(notFound, 'not found upstream');
  if (s === 403) return new RegistryError('DENIED', 'upstream denied access');
  if (s === 429) return new RegistryError('TOOMANYREQUESTS', 'upstream rate limit reached', { headers: retryAfter(res) });
  return new RegistryError('UNAVAILABLE', `upstream answered ${s}`, { status: 502 });
}

export function unavailable(e: unknown): RegistryError {
  if (e instanceof RegistryError) return e;
  // The upstream answered, but unusably (redirect loop, failing token service): say so.
  if (e instanceof UpstreamProtocolError) return new RegistryError('UNAVAILABLE', e.message, { status: e.status ?? 502 });
  return new RegistryError('UNAVAILABLE', 'upstream registry unreachable', { status: 503 });
}

/** Whether an upstream outcome allows falling back to a stale cached copy. */
export function isTransient(e: unknown): boolean {
  if (!(e instanceof RegistryError)) return true;
  return e.code === 'UNAVAILABLE' || e.code === 'TOOMANYREQUESTS' || e.code === 'DENIED' || e.code === 'NAME_UNKNOWN';
}

/** The `upstream` metric label of a path: its configured upstream, or `local` (bounded set). */
export function upstreamLabel(r: Resolution): string {
  return r.upstream?.name ?? 'local';
}

/** Push targets fail fast on a hung upstream: their lookups are bounded like a tag revalidation. */
export function routeOf(r: Resolution, upstream: UpstreamConfig, remoteName: string): UpstreamRoute {
  return { upstream, remoteName, lookupTimeoutMs: r.namespace?.push ? upstream.tags.revalidateTimeoutMs : undefined };
}

export function originOf(up: UpstreamRoute): string {
  return `${up.upstream.name}|${up.remoteName}`;
}

/** Upstream requests (errors mapped and logged) and best-effort cache writes. */
export class Upstreams {
  constructor(
    private readonly clients: ReadonlyMap<string, UpstreamClient>,
    private readonly log: Logger,
  ) {}

  async request(
    up: Pick<UpstreamRoute, 'upstream' | 'remoteName'>,
    method: 'GET' | 'HEAD',
    path: string,
    opts: { accept?: string; range?: string; timeoutMs?: number },
  ): Promise<UpstreamResponse> {
    const headers: Record<string, string> = {};
    if (opts.accept) headers.accept = opts.accept;
    if (opts.range) headers.range = opts.range;
    const signal = opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined;
    try {
      return await this.clients.get(up.upstream.name)!.request({ method, path, repository: up.remoteName, headers, signal });
    } catch (e) {
      if (e instanceof UpstreamUnavailableError) this.log.warn({ upstream: up.upstream.name, path, err: e.message }, 'upstream unavailable');
      else this.log.warn({ upstream: up.upstream.name, path, err: (e as Error).message }, 'upstream request failed');
      throw unavailable(e);
    }
  }

  /**
   * A metadata write on the read path that the answer does not depend on (caching a
   * manifest just fetched, a tag's check time, a blob link): with the disk full it is
   * skipped and the read is answered anyway. Returns whether it was written.
   */
  async bestEffort(what: string, write: () => Promise<unknown>): Promise<boolean> {
    try {
      await write();
      return true;
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      this.log.warn({ what, err: (e as Error).message }, 'storage full: served without caching');
      return false;
    }
  }
}

/** Responses on a path reached through `?ns=` name the namespace they came from. */
export function nsHeaders(r: Resolution): Record<string, string> {
  return r.ns && r.upstream ? { 'OCI-Namespace': r.ns } : {};
}

/** The route a miss takes, null for a local-only path; an unroutable path is NAME_UNKNOWN. */
export function routeOrThrow(r: Resolution): UpstreamRoute | null {
  if (r.error) throw new RegistryError('NAME_UNKNOWN', r.error);
  return r.upstream && r.remoteName ? routeOf(r, r.upstream, r.remoteName) : null;
}
