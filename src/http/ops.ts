/**
 * GET /metrics (Prometheus text) and GET /healthz (liveness): open like the status page,
 * and neither names a repository or a credential.
 */
import type { FastifyInstance } from 'fastify';
import type { Metrics } from '../ops/metrics.js';

export interface OpsDeps {
  metrics: Metrics;
  /** Throws when the metadata store cannot answer; the error handler turns that into a 5xx. */
  ping: () => void;
}

export function registerOps(app: FastifyInstance, { metrics, ping }: OpsDeps): void {
  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.header('content-type', metrics.registry.contentType).send(text);
  });
  app.get('/healthz', async (_req, reply) => {
    ping();
    return reply.header('content-type', 'application/json').send(Buffer.from('{"status":"ok"}'));
  });
}
