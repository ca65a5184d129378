/** GET | HEAD | PUT | DELETE /v2/<name>/manifests/<reference> */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError, isRegistryError } from '../registry/errors.js';
import { parseAccept } from '../registry/mediatypes.js';
import { type Reference, type RepoName, parseReference, parseTag } from '../registry/names.js';
import { pushManifest } from '../registry/manifestpush.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, queryParams, readBodyCapped } from './request.js';

/**
 * The reference of a GET/HEAD. A string that is not a valid tag can never name a manifest,
 * so reads answer 404 MANIFEST_UNKNOWN, as distribution's router does: conformance v1.1.1
 * GETs and HEADs `.INVALID_MANIFEST_NAME` and requires 404. Malformed digests stay 400
 * DIGEST_INVALID, and PUT keeps 400 TAG_INVALID, where the client can fix its request.
 */
function readReference(rawRef: string): Reference {
  try {
    return parseReference(rawRef);
  } catch (e) {
    if (isRegistryError(e) && e.code === 'TAG_INVALID') {
      throw new RegistryError('MANIFEST_UNKNOWN', undefined, { detail: { reference: rawRef.slice(0, 200) } });
    }
    throw e;
  }
}

/** If-None-Match (RFC 9110 13.1.2): `*` or a list of entity tags, compared weakly. */
function ifNoneMatch(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((v) => {
    const tag = v.trim();
    return tag === '*' || tag.replace(/^W\//, '') === etag;
  });
}

export async function getManifest({ pull }: Deps, repo: RepoName, rawRef: string, req: FastifyRequest, reply: FastifyReply) {
  const ref = readReference(rawRef);
  const { record: m, headers } = await pull.getManifest(repo, queryParam(queryOf(req), 'ns'), ref, parseAccept(req.headers.accept));
  const digest = ref.kind === 'digest' ? ref.digest : m.digest;
  reply.headers(headers);
  const etag = `"${digest}"`;
  reply.header('content-type', m.mediaType).header('docker-content-digest', digest).header('etag', etag);
  // No Content-Length on a 304 (RFC 9110 allows omitting it): the response has no body,
  // and undici (Node's fetch) rejects a bodiless response that declares a length.
  if (ifNoneMatch(req.headers['if-none-match'], etag)) return reply.code(304).send();
  reply.header('content-length', m.size);
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
  const { digest, subject } = await pushManifest(svc, pull, { repo, ns: queryParam(q, 'ns'), ref, contentType, body, extraTags });
  reply.code(201).header('location', `/v2/${repo}/manifests/${digest}`).header('docker-content-digest', digest);
  if (subject) reply.header('oci-subject', subject);
  if (extraTags.length > 0) reply.header('oci-tag', extraTags.join(', '));
  return reply.send();
}

export async function deleteManifest({ svc }: Deps, repo: RepoName, rawRef: string, _req: FastifyRequest, reply: FastifyReply) {
  await svc.deleteManifest(repo, parseReference(rawRef));
  return reply.code(202).send();
}
