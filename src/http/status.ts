/**
 * GET / and /ui/ (HTML) and GET /api/v1/status (JSON): the status page and its data.
 * Open like /metrics, so it shows nothing a caller could not see otherwise: a fill names
 * its repository only if the caller may pull it (same rules and credentials as /v2).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { StatusCollector } from '../ops/status.js';
import type { AccessControl } from './auth.js';
import { sendJson } from './request.js';
import { renderStatusPage } from './status-page.js';

export function registerStatus(app: FastifyInstance, status: StatusCollector, access: AccessControl | null): void {
  // With no `auth` section every caller may pull everything. Bad credentials get 401, as
  // on /v2 (never silently anonymous); the check runs once per request, not per fill.
  const snapshot = (req: FastifyRequest) => status.snapshot(async (repos) => (access ? access.filterPullable(req, repos) : repos));
  const page = async (req: FastifyRequest, reply: FastifyReply) => {
    const html = renderStatusPage(await snapshot(req));
    return reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      // Inline styles only: no script, no external fetch, no framing.
      .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
      .header('x-content-type-options', 'nosniff')
      .send(html);
  };
  app.get('/', page);
  app.get('/ui/', page);
  app.get('/ui', (_req, reply) => reply.redirect('/ui/', 301));
  app.get('/api/v1/status', async (req, reply) => sendJson(reply.header('cache-control', 'no-store'), await snapshot(req)));
}
