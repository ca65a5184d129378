/** GET | HEAD | PUT | DELETE /v2/<name>/manifests/<reference> */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { parseAccept } from '../registry/mediatypes.js';
import { type RepoName, parseReference, parseTag } from '../registry/names.js';
import { parseManifest } from '../registry/manifests.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, queryParams, readBodyCapped } from './request.js';

export async function getManifest({ pull }: Deps, repo: RepoName, rawRef: string, req: FastifyRequest, reply: FastifyReply) {
  const ref = parseReference(rawRef);
  const { record: m, headers } = await pull.getManifest(repo, queryParam(queryOf(req), 'ns'), ref, parseAccept(req.headers.accept));
  const digest = ref.kind === 'digest' ? ref.digest : m.digest;
  reply.headers(headers);
  reply
    .header('content-type', m.mediaType)
    .header('content-length', m.size)
    .header('docker-content-digest', digest)
    .header('etag', `"${digest}"`);
  if (req.headers['if-none-match'] === `"${digest}"`) return reply.code(304).send();
  if (req.method === 'HEAD') return reply.send();
  return reply.send(m.body);
}

export async function putManifest({ svc, pull }: Deps, repo: RepoName, rawRef: string, req: FastifyRequest, reply: FastifyReply) {
  const ref = parseReference(rawRef);
  const max = svc.limits.maxManifestBytes;
  const body = await readBodyCapped(req, max, () => new RegistryError('MANIFEST_INVALID', `manifest exceeds ${max} bytes`, { status: 413 }));
  // [main] tag parameters: PUT /manifests/<digest>?tag=a&tag=b creates several tags at once.
  const q = queryOf(req);
  const extraTags = queryParams(q, 'tag').map(parseTag);
  const contentType = String(req.headers['content-type'] ?? '');
  const parsed = parseManifest(body, contentType);
  await pull.completeFromUpstream(repo, queryParam(q, 'ns'), parsed.requiredBlobs, parsed.requiredManifests);
  const { digest, subject } = svc.putManifest(repo, ref, contentType, body, parsed);
  for (const t of extraTags) svc.putManifest(repo, { kind: 'tag', tag: t }, contentType, body, parsed);
  reply.code(201).header('location', `/v2/${repo}/manifests/${digest}`).header('docker-content-digest', digest);
  if (subject) reply.header('oci-subject', subject);
  if (extraTags.length > 0) reply.header('oci-tag', extraTags.join(', '));
  return reply.send();
}

export async function deleteManifest({ svc }: Deps, repo: RepoName, rawRef: string, _req: FastifyRequest, reply: FastifyReply) {
  svc.deleteManifest(repo, parseReference(rawRef));
  return reply.code(202).send();
}
