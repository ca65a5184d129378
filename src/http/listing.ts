/**
 * GET /v2/<name>/tags/list and GET /v2/_catalog with `n`/`last` pagination
 * (distribution-spec "Listing Tags"; RFC 5988 Link header, relative like distribution).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import type { RepoName } from '../registry/names.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam, sendJson } from './request.js';

/** Without `n` a page still has an upper bound; a Link header says there is more. */
const MAX_PAGE = 10_000;

function pagination(req: FastifyRequest): { n: number; last: string; explicitN: boolean } {
  const q = queryOf(req);
  const rawN = queryParam(q, 'n');
  const last = queryParam(q, 'last') ?? '';
  if (rawN === undefined || rawN === '') return { n: MAX_PAGE, last, explicitN: false };
  if (!/^\d+$/.test(rawN)) throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer', { detail: { n: rawN.slice(0, 50) } });
  return { n: Math.min(Number(rawN), MAX_PAGE), last, explicitN: true };
}

function page(items: string[], n: number, path: string, reply: FastifyReply): string[] {
  // One extra row was fetched to learn whether another page exists.
  if (items.length > n) {
    const shown = items.slice(0, n);
    const lastShown = shown[shown.length - 1]!;
    reply.header('link', `<${path}?last=${encodeURIComponent(lastShown)}&n=${n}>; rel="next"`);
    return shown;
  }
  return items;
}

export async function listTags({ pull }: Deps, repo: RepoName, req: FastifyRequest, reply: FastifyReply) {
  const { n, last } = pagination(req);
  // One extra row tells whether another page exists (n = 0 still checks the repo exists).
  const { tags: rows, headers } = await pull.listTags(repo, queryParam(queryOf(req), 'ns'), last, n === 0 ? 0 : n + 1);
  reply.headers(headers);
  const tags = page(n === 0 ? [] : rows, n, `/v2/${repo}/tags/list`, reply);
  return sendJson(reply, { name: repo, tags });
}

export async function catalog({ svc, access }: Deps, req: FastifyRequest, reply: FastifyReply) {
  const { n, last } = pagination(req);
  let rows = n === 0 ? [] : await svc.catalog(last, n + 1);
  // Only repositories the caller may pull are listed (pages may then be shorter than n).
  if (access) rows = await access.filterPullable(req, rows);
  const repositories = page(rows, n, '/v2/_catalog', reply);
  return sendJson(reply, { repositories });
}
