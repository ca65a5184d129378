/**
 * GET /internal/fills/<digest>: another replica streams this replica's fill of a blob
 * instead of fetching it from the upstream (issue #13; decisions in cache/clusterfill.ts).
 * Bearer `cluster.secret` only: absent 401, wrong 403, before anything else is looked at.
 * The last byte goes out only once the digest matched here (sendFillRange); the reader
 * verifies again as it stores.
 */
import type { FastifyInstance } from 'fastify';
import { INTERNAL_FILLS_PATH, type ClusterFills } from '../cache/clusterfill.js';
import { RegistryError } from '../registry/errors.js';
import { parseDigest } from '../registry/names.js';
import { parseRangeHeader } from '../registry/range.js';
import { sendFillRange } from './sendfile.js';

export function registerInternalFills(app: FastifyInstance, cluster: ClusterFills): void {
  app.get<{ Params: { digest: string } }>(`${INTERNAL_FILLS_PATH}/:digest`, async (req, reply) => {
    const auth = cluster.authorize(req.headers.authorization);
    if (auth === 'absent') {
      throw new RegistryError('UNAUTHORIZED', 'the cluster secret is required', { headers: { 'WWW-Authenticate': 'Bearer realm="regmirror-cluster"' } });
    }
    if (auth === 'wrong') throw new RegistryError('DENIED', 'wrong cluster secret');
    const digest = parseDigest(req.params.digest);
    const fill = await cluster.servable(digest);
    if (!fill || fill.size === null) throw new RegistryError('BLOB_UNKNOWN', 'no fill of this blob in progress on this replica', { detail: { digest } });
    const size = fill.size;
    reply.header('content-type', 'application/octet-stream').header('docker-content-digest', digest).header('cache-control', 'no-store');
    const ranges = parseRangeHeader(req.headers.range, size);
    if (ranges === 'unsatisfiable' || (ranges && ranges.length > 1)) {
      throw new RegistryError('RANGE_INVALID', 'one satisfiable range only', { status: 416, headers: { 'Content-Range': `bytes */${size}` } });
    }
    if (size === 0) return reply.header('content-length', 0).send();
    const r = ranges?.[0];
    if (!r) return sendFillRange(reply.header('content-length', size), fill, 0, size - 1);
    reply.code(206).header('content-range', `bytes ${r.start}-${r.end}/${size}`).header('content-length', r.end - r.start + 1);
    return sendFillRange(reply, fill, r.start, r.end);
  });
}
