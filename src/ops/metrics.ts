/**
 * Prometheus metrics (prom-client), exposed at GET /metrics. Labels never carry
 * repository names or credentials: cardinality stays bounded and nothing secret leaks.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests = new Counter({
    name: 'regmirror_http_requests_total',
    help: 'HTTP requests served, by API area, method and status class',
    labelNames: ['area', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly httpDuration = new Histogram({
    name: 'regmirror_http_request_duration_seconds',
    help: 'Time to response end, by API area',
    labelNames: ['area'] as const,
    buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60],
    registers: [this.registry],
  });
  readonly cacheResults = new Counter({
    name: 'regmirror_cache_requests_total',
    help: 'Pull-through lookups by kind (manifest|blob|referrers), result (hit|miss|joined|stale|revalidated; referrers: local = upstream failed, nothing cached) and upstream (the path\'s configured upstream, or local)',
    labelNames: ['kind', 'result', 'upstream'] as const,
    registers: [this.registry],
  });
  readonly upstreamRequests = new Counter({
    name: 'regmirror_upstream_requests_total',
    help: 'Requests sent to upstream registries, by upstream, method and status (error = no response)',
    labelNames: ['upstream', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly upstreamBytes = new Counter({
    name: 'regmirror_upstream_blob_bytes_total',
    help: 'Blob bytes downloaded from upstream registries',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly blobBytesServed = new Counter({
    name: 'regmirror_blob_bytes_served_total',
    help: 'Blob bytes of complete GET responses, by source: disk (stored, pushed or cached) or fill (streamed while downloading from an upstream), and upstream (the path\'s configured upstream, or local). Minus regmirror_upstream_blob_bytes_total: upstream traffic saved',
    labelNames: ['source', 'upstream'] as const,
    registers: [this.registry],
  });
  readonly rateLimitRemaining = new Gauge({
    name: 'regmirror_upstream_ratelimit_remaining',
    help: 'Last ratelimit-remaining value an upstream reported (Docker Hub pulls left in the window)',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });

  readonly evictedBytes = new Counter({
    name: 'regmirror_cache_evicted_bytes_total',
    help: 'Blob bytes deleted by cache eviction (cache.maxBytes, cache.maxAge)',
    registers: [this.registry],
  });
  readonly evictedBlobs = new Counter({
    name: 'regmirror_cache_evicted_blobs_total',
    help: 'Blobs deleted by cache eviction',
    registers: [this.registry],
  });
  readonly evictionPasses = new Counter({
    name: 'regmirror_cache_eviction_passes_total',
    help: 'Eviction passes: ran here, or skipped because another replica holds the gc-leader lease (storage.driver shared) or the server stopped during its scan',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly evictedImages = new Counter({
    name: 'regmirror_cache_evicted_images_total',
    help: 'Cached images (manifest with its child manifests and blob links) evicted',
    registers: [this.registry],
  });

  constructor(opts: { inflightFills: () => number; cachedBytes: () => number | Promise<number> }) {
    collectDefaultMetrics({ register: this.registry, prefix: 'regmirror_' });
    new Gauge({
      name: 'regmirror_cache_bytes',
      help: 'Bytes of cached (pulled-through, evictable) blobs on disk; pushed content is not counted',
      registers: [this.registry],
      async collect() {
        this.set(await opts.cachedBytes());
      },
    });
    new Gauge({
      name: 'regmirror_blob_fills_inflight',
      help: 'Upstream blob downloads in progress',
      registers: [this.registry],
      collect() {
        this.set(opts.inflightFills());
      },
    });
  }
}
