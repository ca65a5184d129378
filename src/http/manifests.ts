/** GET | HEAD | PUT | DELETE /v2/<name>/manifests/<reference> */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { parseAccept } from '../registry/mediatypes.js';
import { type RepoName, parseReference, parseTag } from '../registry/names.js';
import type { RegistryService } from '../registry/service.js';
import { queryOf, queryParams, readBodyCapped } from './request.js';

export async function getManifest(svc: RegistryService, repo: RepoName, rawRef: string, req: FastifyRequest, reply: FastifyReply) {
  const ref = parseReference(rawRef);
  const m = svc.getManifest(repo, ref, parseAccept(req.headers.accept));
  const digest = ref.kind === 'digest' ? ref.digest : m.digest;
  reply
    .header('content-type', m.mediaType)
    .header('content-length', m.size)
    .header('docker-content-digest', digest)
    .header('etag', `"${digest}"`);
  if (req.headers['if-none-match'] === `"${digest}"`) return reply.code(304).send();
  if (req.method === 'HEAD') return reply.send();
  return reply.send(m.body);
}

export async function putManifest(svc: RegistryService, repo: RepoName, rawRef: string, req: FastifyRequest, reply: FastifyReply) {
  const ref = parseReference(rawRef);
  const max = svc.limits.maxManifestBytes;
  const body = await readBodyCapped(req, max, () => new RegistryError('MANIFEST_INVALID', `manifest exceeds ${max} bytes`, { status: 413 }));
  // [main] tag parameters: PUT /manifests/<digest>?tag=a&tag=b creates several tags at once.
  const extraTags = queryParams(queryOf(req), 'tag').map(parseTag);
  const { digest, subject } = svc.putManifest(repo, ref, String(req.headers['content-type'] ?? ''), body);
  for (const t of extraTags) svc.putManifest(repo, { kind: 'tag', tag: t }, String(req.headers['content-type'] ?? ''), body);
  reply.code(201).header('location', `/v2/${repo}/manifests/${digest}`).header('docker-content-digest', digest);
  if (subject) reply.header('oci-subject', subject);
  if (extraTags.length > 0) reply.header('oci-tag', extraTags.join(', '));
  return reply.send();
}

export async function deleteManifest(svc: RegistryService, repo: RepoName, rawRef: string, _req: FastifyRequest, reply: FastifyReply) {
  svc.deleteManifest(repo, parseReference(rawRef));
  return reply.code(202).send();
}
