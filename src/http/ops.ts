/**
 * GET /metrics (Prometheus text) and GET /healthz (liveness): open like the status page,
 * and neither names a repository or a credential. Also the per-request metrics and
 * access log line.
 */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { Metrics } from '../ops/metrics.js';
import { parseApiPath } from './route.js';

export interface OpsDeps {
  metrics: Metrics;
  /** Rejects when the metadata store cannot answer; the error handler turns that into a 5xx. */
  ping: () => Promise<void>;
}

export function registerOps(app: FastifyInstance, { metrics, ping }: OpsDeps): void {
  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.header('content-type', metrics.registry.contentType).send(text);
  });
  app.get('/healthz', async (_req, reply) => {
    await ping();
    return reply.header('content-type', 'application/json').send(Buffer.from('{"status":"ok"}'));
  });
}

/** A finished request: its count and duration by API area, and its access log line. */
export interface FinishedRequest {
  method: string;
  url: string;
  /** The API area when the caller knows it (else parsed from `url`). */
  area?: string;
  status: number;
  ms: number;
  ua: string | undefined;
  /** Answered by the warm small-blob path (http/hotblobs.ts), not by fastify. */
  hot?: true;
}

export function recordRequest(metrics: Metrics, log: FastifyBaseLogger, r: FinishedRequest): void {
  const area = r.area ?? (r.url.startsWith('/v2') ? parseApiPath(r.url.split('?', 1)[0]!).kind : r.url.split('?', 1)[0]!.split('/')[1] || 'root');
  metrics.httpRequests.inc({ area, method: r.method, status: `${Math.floor(r.status / 100)}xx` });
  metrics.httpDuration.observe({ area }, r.ms / 1000);
  log.info({ method: r.method, url: r.url, status: r.status, ms: Math.round(r.ms), ua: r.ua, ...(r.hot ? { hot: true } : {}) }, 'request');
}

/** Request counts and durations by API area, and one access log line per request. */
export function instrumentRequests(app: FastifyInstance, metrics: Metrics): void {
  // Callback style, not async: no promise per request.
  app.addHook('onResponse', (req, reply, done) => {
    recordRequest(metrics, req.log, { method: req.method, url: req.raw.url ?? '/', status: reply.statusCode, ms: reply.elapsedTime, ua: req.headers['user-agent'] });
    done();
  });
  // A client that closes before the response ends (containerd's parallel range reads do
  // this by design) gets no onResponse: log it here so the access log stays complete.
  app.addHook('onRequestAbort', async (req) => {
    req.log.info({ method: req.method, url: req.url, aborted: true, ua: req.headers['user-agent'] }, 'request');
  });
}
