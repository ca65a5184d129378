/**
 * POST | PATCH | PUT | GET | DELETE /v2/<name>/blobs/uploads/[<id>]
 * (distribution-spec "Pushing blobs": monolithic, POST+PUT, chunked, streamed, mount).
 * Handlers only: the decisions are in registry/uploads.ts.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RepoName } from '../registry/names.js';
import { type PushBody, uploadRangeHeader } from '../registry/uploads.js';
import type { Deps } from './deps.js';
import { bodyStream, declaredLength, hasBody, queryOf, queryParam } from './request.js';

function sessionHeaders(reply: FastifyReply, s: { id: string; repo: RepoName }, size: number): FastifyReply {
  reply.header('location', `/v2/${s.repo}/blobs/uploads/${s.id}`).header('docker-upload-uuid', s.id);
  for (const [k, v] of Object.entries(uploadRangeHeader(size))) reply.header(k, v);
  return reply;
}

function blobCreated(reply: FastifyReply, repo: RepoName, digest: string): FastifyReply {
  return reply.code(201).header('location', `/v2/${repo}/blobs/${digest}`).header('docker-content-digest', digest).send();
}

function pushBody(req: FastifyRequest): PushBody {
  return {
    stream: bodyStream(req),
    present: hasBody(req),
    length: declaredLength(req),
    contentRange: req.headers['content-range'] as string | undefined,
  };
}

export async function startUpload({ svc, access }: Deps, repo: RepoName, req: FastifyRequest, reply: FastifyReply) {
  const q = queryOf(req);
  const params = {
    mount: queryParam(q, 'mount'),
    from: queryParam(q, 'from'),
    digest: queryParam(q, 'digest'),
    algorithm: queryParam(q, 'digest-algorithm'),
    mayRead: async (from: RepoName) => !access || access.can(req, from, 'pull'),
  };
  const r = await svc.pushes.start(repo, params, pushBody(req));
  if (r.kind === 'created') return blobCreated(reply, repo, r.digest);
  return sessionHeaders(reply.code(202), r.session, 0).send();
}

export async function patchUpload({ svc }: Deps, repo: RepoName, id: string, req: FastifyRequest, reply: FastifyReply) {
  const s = await svc.pushes.append(repo, id, pushBody(req));
  return sessionHeaders(reply.code(202), s, s.offset).send();
}

export async function putUpload({ svc }: Deps, repo: RepoName, id: string, req: FastifyRequest, reply: FastifyReply) {
  const digest = await svc.pushes.finish(repo, id, queryParam(queryOf(req), 'digest'), pushBody(req));
  return blobCreated(reply, repo, digest);
}

export async function getUpload({ svc }: Deps, repo: RepoName, id: string, _req: FastifyRequest, reply: FastifyReply) {
  const s = await svc.pushes.session(repo, id);
  return sessionHeaders(reply.code(204), s, s.offset).send();
}

export async function cancelUpload({ svc }: Deps, repo: RepoName, id: string, _req: FastifyRequest, reply: FastifyReply) {
  await svc.pushes.cancel(repo, id);
  return reply.code(204).send();
}
