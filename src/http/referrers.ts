/**
 * GET /v2/<name>/referrers/<digest>[?artifactType=] (distribution-spec 1.1 "Listing
 * Referrers"). Always 200 with an image index, never 404: clients read 404 as "API
 * unsupported" and fall back to the tag schema. Pull-through paths merge the upstream's
 * list (registry/referrers.ts); filtering happens here, after the merge.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { MT } from '../registry/mediatypes.js';
import { type RepoName, parseDigest } from '../registry/names.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, sendJson } from './request.js';

export async function listReferrers({ pull }: Deps, repo: RepoName, rawDigest: string, req: FastifyRequest, reply: FastifyReply) {
  const subject = parseDigest(rawDigest);
  const q = queryOf(req);
  const artifactType = queryParam(q, 'artifactType');
  const { manifests, headers } = await pull.referrers(repo, queryParam(q, 'ns'), subject, artifactType);
  reply.headers(headers);
  if (artifactType !== undefined) reply.header('oci-filters-applied', 'artifactType');
  return sendJson(reply, { schemaVersion: 2, mediaType: MT.ociIndex, manifests }, MT.ociIndex);
}
