/**
 * The /v2/ API: one wildcard route, dispatched by parsing the path from the right
 * (route.ts), then by method. Registering one route per API area is impossible with
 * multi-component names, which is why distribution also uses a custom router.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { type RepoName, parseRepoName } from '../registry/names.js';
import { writeRefusal } from '../registry/pushpolicy.js';
import type { Deps } from './deps.js';
import type { Action } from '../auth/rules.js';
import { deleteBlob, getBlob } from './blobs.js';
import { catalog, listTags } from './listing.js';
import { deleteManifest, getManifest, putManifest } from './manifests.js';
import { listReferrers } from './referrers.js';
import { discardBody, sendJson } from './request.js';
import { parseApiPath } from './route.js';
import { cancelUpload, getUpload, patchUpload, putUpload, startUpload } from './uploads.js';

type Method = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

function unsupported(req: FastifyRequest): never {
  discardBody(req);
  throw new RegistryError('UNSUPPORTED', `method ${req.method} is not allowed here`, { status: 405 });
}

/** The access a request needs: reads pull, writes push, deletes of content delete. */
function actionFor(kind: string, method: Method): Action {
  if (kind === 'upload' || kind === 'uploadStart') return 'push';
  if (method === 'GET' || method === 'HEAD') return 'pull';
  if (method === 'DELETE') return 'delete';
  return 'push';
}

/** Refuses a write the push policy (registry/pushpolicy.ts) does not allow, unread body discarded. */
export function checkWritable(deps: Deps, repo: RepoName, req: FastifyRequest): void {
  const refused = writeRefusal(deps.pull.resolve(repo, undefined));
  if (refused) {
    discardBody(req);
    throw refused;
  }
}

export function registerV2(app: FastifyInstance, deps: Deps): void {
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    const url = req.raw.url ?? '/';
    const q = url.indexOf('?');
    const route = parseApiPath(q === -1 ? url : url.slice(0, q));
    const method = req.method as Method;
    const read = method === 'GET' || method === 'HEAD';
    switch (route.kind) {
      case 'base':
        if (!read) return unsupported(req);
        await deps.access?.checkBase(req);
        return sendJson(reply, {});
      case 'catalog':
        if (!read) return unsupported(req);
        return catalog(deps, req, reply);
      case 'invalid':
        discardBody(req);
        throw new RegistryError('NAME_INVALID', route.reason);
      case 'unknown':
        discardBody(req);
        throw new RegistryError('NAME_UNKNOWN', 'no such API endpoint', { status: 404 });
      default:
        break;
    }
    let repo: RepoName;
    try {
      repo = parseRepoName(route.name);
    } catch (e) {
      discardBody(req);
      throw e;
    }
    await deps.access?.check(req, repo, actionFor(route.kind, method));
    if (!read) checkWritable(deps, repo, req);
    switch (route.kind) {
      case 'manifest':
        if (read) return getManifest(deps, repo, route.reference, req, reply);
        if (method === 'PUT') return putManifest(deps, repo, route.reference, req, reply);
        if (method === 'DELETE') return deleteManifest(deps, repo, route.reference, req, reply);
        return unsupported(req);
      case 'blob':
        if (read) return getBlob(deps, repo, route.digest, req, reply);
        if (method === 'DELETE') return deleteBlob(deps, repo, route.digest, req, reply);
        return unsupported(req);
      case 'uploadStart':
        if (method === 'POST') return startUpload(deps, repo, req, reply);
        return unsupported(req);
      case 'upload':
        if (method === 'PATCH') return patchUpload(deps, repo, route.id, req, reply);
        if (method === 'PUT') return putUpload(deps, repo, route.id, req, reply);
        if (read) return getUpload(deps, repo, route.id, req, reply);
        if (method === 'DELETE') return cancelUpload(deps, repo, route.id, req, reply);
        return unsupported(req);
      case 'tags':
        if (!read) return unsupported(req);
        return listTags(deps, repo, req, reply);
      case 'referrers':
        if (!read) return unsupported(req);
        return listReferrers(deps, repo, route.digest, req, reply);
    }
  };
  for (const url of ['/v2', '/v2/', '/v2/*']) {
    app.route({ method: ['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE'], url, handler });
  }
}
