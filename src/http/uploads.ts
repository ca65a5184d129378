/**
 * POST | PATCH | PUT | GET | DELETE /v2/<name>/blobs/uploads/[<id>]
 * (distribution-spec "Pushing blobs": monolithic, POST+PUT, chunked, streamed, mount).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { type DigestAlgorithm, type RepoName, digestAlgorithm, parseDigest, parseRepoName } from '../registry/names.js';
import { parseContentRange } from '../registry/range.js';
import type { RegistryService } from '../registry/service.js';
import type { Deps } from './deps.js';
import { type UploadSession, rangeHeader } from '../storage/uploads.js';
import { bodyStream, declaredLength, discardBody, hasBody, queryOf, queryParam } from './request.js';

function sessionHeaders(reply: FastifyReply, s: { id: string; repo: RepoName }, size: number): FastifyReply {
  reply.header('location', `/v2/${s.repo}/blobs/uploads/${s.id}`).header('docker-upload-uuid', s.id);
  for (const [k, v] of Object.entries(rangeHeader(size))) reply.header(k, v);
  return reply;
}

function blobCreated(reply: FastifyReply, repo: RepoName, digest: string): FastifyReply {
  return reply.code(201).header('location', `/v2/${repo}/blobs/${digest}`).header('docker-content-digest', digest).send();
}

function maxBlobBytes(svc: RegistryService): number {
  return svc.limits.maxBlobBytes > 0 ? svc.limits.maxBlobBytes : Number.MAX_SAFE_INTEGER;
}

export async function startUpload({ svc, access }: Deps, repo: RepoName, req: FastifyRequest, reply: FastifyReply) {
  const q = queryOf(req);
  const mount = queryParam(q, 'mount');
  const from = queryParam(q, 'from');
  const digestParam = queryParam(q, 'digest');
  if (mount !== undefined && from !== undefined) {
    const d = parseDigest(mount);
    let fromRepo: RepoName | undefined;
    try {
      fromRepo = parseRepoName(from);
    } catch {
      fromRepo = undefined; // an unusable `from` just means "no mount": fall back to an upload
    }
    // Mounting reads the source repository: the caller must be allowed to pull from it.
    const mayRead = fromRepo !== undefined && (!access || (await access.can(req, fromRepo, 'pull')));
    if (fromRepo && mayRead && (await svc.mountBlob(repo, d, fromRepo))) {
      discardBody(req);
      return blobCreated(reply, repo, d);
    }
  }
  if (digestParam !== undefined) {
    // Monolithic upload: the whole blob in the POST body.
    const digest = parseDigest(digestParam);
    const len = declaredLength(req);
    const limit = maxBlobBytes(svc);
    if (len !== undefined && len > limit) throw new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${limit} bytes`, { status: 413 });
    const stage = svc.blobs.stage({ algorithm: digestAlgorithm(digest), maxBytes: limit, ...(len === undefined ? {} : { expectedBytes: len }) });
    await stage.appendStream(bodyStream(req)); // a failure drops the stage
    if (stage.digest() !== digest || (len !== undefined && stage.received !== len)) {
      await stage.abort();
      throw stage.digest() !== digest ? new RegistryError('DIGEST_INVALID', undefined, { detail: { expected: digest } }) : new RegistryError('SIZE_INVALID');
    }
    await stage.commit(digest, { repo, provenance: 'pushed' }); // a failure (e.g. SQLITE_FULL) drops the stage
    return blobCreated(reply, repo, digest);
  }
  discardBody(req);
  const algParam = queryParam(q, 'digest-algorithm');
  if (algParam !== undefined && algParam !== 'sha256' && algParam !== 'sha512') {
    throw new RegistryError('DIGEST_INVALID', 'unsupported digest algorithm');
  }
  const session = await svc.uploads.start(repo, (algParam ?? 'sha256') as DigestAlgorithm);
  return sessionHeaders(reply.code(202), session, 0).send();
}

async function appendBody(svc: RegistryService, session: UploadSession, req: FastifyRequest): Promise<number> {
  const cr = parseContentRange(req.headers['content-range'] as string | undefined);
  if (cr === 'invalid') {
    req.raw.resume();
    throw new RegistryError('RANGE_INVALID', 'invalid Content-Range', { status: 416, headers: rangeHeader(session.size) });
  }
  return svc.uploads.append(session, bodyStream(req), cr ?? undefined, declaredLength(req));
}

export async function patchUpload({ svc }: Deps, repo: RepoName, id: string, req: FastifyRequest, reply: FastifyReply) {
  const session = await svc.uploads.get(repo, id);
  const size = await appendBody(svc, session, req);
  return sessionHeaders(reply.code(202), session, size).send();
}

export async function putUpload({ svc }: Deps, repo: RepoName, id: string, req: FastifyRequest, reply: FastifyReply) {
  const session = await svc.uploads.get(repo, id);
  const digestParam = queryParam(queryOf(req), 'digest');
  if (digestParam === undefined) {
    discardBody(req);
    throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required to complete an upload');
  }
  const digest = parseDigest(digestParam);
  if (hasBody(req)) session.size = await appendBody(svc, session, req);
  await svc.uploads.finish(session, digest);
  return blobCreated(reply, repo, digest);
}

export async function getUpload({ svc }: Deps, repo: RepoName, id: string, _req: FastifyRequest, reply: FastifyReply) {
  const session = await svc.uploads.get(repo, id);
  return sessionHeaders(reply.code(204), session, session.size).send();
}

export async function cancelUpload({ svc }: Deps, repo: RepoName, id: string, _req: FastifyRequest, reply: FastifyReply) {
  const session = await svc.uploads.get(repo, id);
  await svc.uploads.cancel(session);
  return reply.code(204).send();
}
