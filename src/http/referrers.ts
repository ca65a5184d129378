/**
 * GET /v2/<name>/referrers/<digest>[?artifactType=] (distribution-spec 1.1 "Listing
 * Referrers"). Always 200 with an image index, never 404: clients read 404 as "API
 * unsupported" and fall back to the tag schema.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { MT } from '../registry/mediatypes.js';
import { type RepoName, parseDigest } from '../registry/names.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, sendJson } from './request.js';

export async function listReferrers({ svc }: Deps, repo: RepoName, rawDigest: string, req: FastifyRequest, reply: FastifyReply) {
  const subject = parseDigest(rawDigest);
  const artifactType = queryParam(queryOf(req), 'artifactType');
  const manifests = svc.referrers(repo, subject, artifactType).map((m) => {
    const d: Record<string, unknown> = { mediaType: m.mediaType, digest: m.digest, size: m.size };
    if (m.artifactType) d.artifactType = m.artifactType;
    if (m.annotations) d.annotations = JSON.parse(m.annotations) as unknown;
    return d;
  });
  if (artifactType !== undefined) reply.header('oci-filters-applied', 'artifactType');
  return sendJson(reply, { schemaVersion: 2, mediaType: MT.ociIndex, manifests }, MT.ociIndex);
}
