/**
 * GET /api/v1/resolve?path=<repository path>[&ns=<registry host>][&reference=<tag|digest>]
 * Read-only: shows which routing rule matched, the upstream and remote repository a miss
 * would use, and what is held locally. Never shows credentials.
 */
import type { FastifyInstance } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { parseReference, parseRepoName } from '../registry/names.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, sendJson } from './request.js';

export function registerExplain(app: FastifyInstance, { svc, pull, access }: Deps): void {
  app.get('/api/v1/resolve', async (req, reply) => {
    const q = queryOf(req);
    const rawPath = (queryParam(q, 'path') ?? '').replace(/^\/+|\/+$/g, '').replace(/^v2\//, '');
    if (!rawPath) throw new RegistryError('NAME_INVALID', 'the path query parameter is required');
    const repo = parseRepoName(rawPath);
    await access?.check(req, repo, 'pull');
    const ns = queryParam(q, 'ns');
    const r = pull.resolve(repo, ns);
    const meta = svc.meta;
    const rawRef = queryParam(q, 'reference');
    let reference: Record<string, unknown> | undefined;
    if (rawRef) {
      const ref = parseReference(rawRef);
      const pushedTag = ref.kind === 'tag' ? await meta.tag(repo, ref.tag) : undefined;
      const digest = ref.kind === 'digest' ? ref.digest : pushedTag?.digest;
      reference = {
        reference: rawRef,
        pushedTag: pushedTag ? { digest: pushedTag.digest } : null,
        manifestLocal: digest ? await meta.hasManifest(repo, digest) : false,
        cachedTagNames: ref.kind === 'tag' ? (await meta.upstreamTagNames(repo)).includes(ref.tag) : undefined,
      };
    }
    const repositoryKnown = await meta.repoExists(repo);
    const pushedTags = repositoryKnown ? (await meta.listTags(repo, '', 1000)).length : 0;
    const cachedTags = (await meta.upstreamTagNames(repo)).length;
    return sendJson(reply, {
      path: repo,
      ns: ns ?? null,
      rule: r.rule,
      error: r.error,
      namespace: r.namespace ? { prefix: r.namespace.prefix, upstream: r.namespace.upstream, push: r.namespace.push } : null,
      upstream: r.upstream ? { name: r.upstream.name, endpoints: r.upstream.endpoints, credentials: r.upstream.credentials ? r.upstream.credentials.kind : null } : null,
      remoteRepository: r.remoteName,
      local: {
        repositoryKnown,
        pushedTags,
        cachedTags,
      },
      reference,
    });
  });
}
