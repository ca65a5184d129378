/**
 * The warm small-blob GET/HEAD (issue #14 item 2) answered on the raw node:http request,
 * before fastify sees it. For a request this small, fastify's routing, request and reply
 * objects, per-request child logger and hook runs cost more than the answer itself
 * (bench/results/small-requests). Only the plainest case is taken here; everything else,
 * and any failure, goes to fastify unchanged (`next()`), so every other rule (OCI errors,
 * access control, ranges, `ns` routing, fills, redirects, 503 while closing) keeps its one
 * home. Taken only when all hold:
 * - no `auth` section (access checks stay in fastify: http/auth.ts);
 * - GET or HEAD of `/v2/<name>/blobs/<digest>` with no query string and no Range;
 * - the blob's bytes are in the small-blob memory (smallblobs.ts: verified when loaded);
 * - the repository holds the blob (PullThrough.heldBlob: the same lookup, hit count and
 *   eviction note as blobs.ts's first answer; never cached when missing, see readcache.ts).
 * The answer carries blobs.ts's headers, and the request its metrics, served-bytes count
 * and access log line (ops.ts, marked `hot`), once the response finished.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { Metrics } from '../ops/metrics.js';
import { type Digest, type RepoName, parseRepoName } from '../registry/names.js';
import { upstreamLabel } from '../registry/pullthrough.js';
import type { Deps } from './deps.js';
import { recordRequest } from './ops.js';
import { parseApiPath } from './route.js';

export type RawHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface HotBlobOptions {
  deps: Deps;
  metrics: Metrics;
  log: FastifyBaseLogger;
  /** True once the app is closing: fastify then answers 503 (return503OnClosing). */
  closing: () => boolean;
}

/** Wrap fastify's request handler: the warm small-blob case here, the rest to `next`. */
export function hotBlobHandler(opts: HotBlobOptions, next: RawHandler): RawHandler {
  const { deps, closing } = opts;
  const small = deps.smallBlobs;
  if (deps.access || !small) return next;
  return (req, res) => {
    const method = req.method;
    const url = req.url ?? '/';
    // Cheap refusals first: most requests leave here after a few comparisons.
    if ((method !== 'GET' && method !== 'HEAD') || !url.startsWith('/v2/') || url.includes('?') || req.headers.range !== undefined || closing()) {
      return next(req, res);
    }
    const route = parseApiPath(url);
    if (route.kind !== 'blob') return next(req, res);
    // Only verified digests are kept there: anything else misses (and fastify refuses it).
    const digest = route.digest as Digest;
    const bytes = small.peek(digest);
    if (!bytes) return next(req, res);
    let repo: RepoName;
    try {
      repo = parseRepoName(route.name);
    } catch {
      return next(req, res);
    }
    const started = performance.now();
    deps.pull
      .heldBlob(repo, digest)
      .then(
        (held) => {
          // The size check cannot fail for verified bytes; it keeps this path from ever
          // answering other bytes than the store's, whatever happens to the cache.
          if (!held || held.size !== bytes.length) return next(req, res);
          answer(opts, req, res, method, url, digest, bytes, held.headers, repo, started);
        },
        // The lookup failed (e.g. the database is down): fastify asks again and answers the OCI error.
        () => next(req, res),
      )
      .catch((err: unknown) => {
        opts.log.error({ err }, 'hot blob path failed');
        if (res.headersSent) res.destroy();
        else next(req, res);
      });
  };
}

function answer(
  { deps, metrics, log }: HotBlobOptions,
  req: IncomingMessage,
  res: ServerResponse,
  method: string,
  url: string,
  digest: Digest,
  bytes: Buffer,
  nsHeaders: Record<string, string>,
  repo: RepoName,
  started: number,
): void {
  const head = method === 'HEAD';
  res.once('finish', () => {
    recordRequest(metrics, log, { method, url, area: 'blob', status: 200, ms: performance.now() - started, ua: req.headers['user-agent'], hot: true });
    if (!head && bytes.length > 0) deps.onBlobServed?.('disk', bytes.length, upstreamLabel(deps.pull.resolve(repo, undefined)));
  });
  // blobs.ts's headers, in its order (the onRequest hook's API version first).
  res.writeHead(200, {
    'docker-distribution-api-version': 'registry/2.0',
    ...nsHeaders,
    'docker-content-digest': digest,
    'accept-ranges': 'bytes',
    etag: `"${digest}"`,
    'cache-control': 'max-age=31536000, immutable',
    'content-type': 'application/octet-stream',
    'content-length': bytes.length,
  });
  res.end(head ? undefined : bytes);
}
