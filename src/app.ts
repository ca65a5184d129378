/**
 * buildApp(config): wiring only. Creates storage, the registry service and the fastify
 * instance with its HTTP plugins; never listens (cli.ts and tests do that).
 */
import fs from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Config, TlsConfig } from './config/schema.js';
import { installErrorHandler, installNotFoundHandler } from './http/errors.js';
import { registerV2 } from './http/v2.js';
import { SmallBlobCache } from './http/smallblobs.js';
import { registerExplain } from './http/explain.js';
import { registerImport } from './http/import.js';
import { registerExport } from './http/export.js';
import { AccessControl } from './http/auth.js';
import { Metrics } from './ops/metrics.js';
import { StatusCollector, packageVersion } from './ops/status.js';
import { registerStatus } from './http/status.js';
import { instrumentRequests, registerOps } from './http/ops.js';
import { createLogger } from './ops/logger.js';
import { RegistryService } from './registry/service.js';
import { openStorage } from './storage/open.js';
import { withReadCache } from './storage/readcache.js';
import { storagePaths } from './storage/paths.js';
import { FillManager } from './cache/fill.js';
import { type EvictionResult, Evictor } from './cache/eviction.js';
import { AccessRecorder } from './storage/access.js';
import { PullThrough } from './registry/pullthrough.js';
import { UpstreamClient } from './upstream/client.js';
import { Router } from './upstream/routing.js';

export interface App {
  fastify: FastifyInstance;
  service: RegistryService;
  pull: PullThrough;
  metrics: Metrics;
  config: Config;
  /** Re-read the TLS certificate and key (SIGHUP); open connections are kept. */
  reloadTls(): void;
  /** The extra plain-HTTP listener (tls.httpListen), once listening. */
  httpAddress(): { host: string; port: number } | null;
  /**
   * Run one cache eviction pass now (the server also runs one every cache.evictInterval);
   * `at` measures ages as if it were that time (tests, without waiting out cache.maxAge).
   */
  evict(at?: number): Promise<EvictionResult>;
  /** Listen on config.listen (or the given port) and return the bound address. */
  listen(port?: number, host?: string): Promise<{ host: string; port: number; url: string }>;
  close(): Promise<void>;
}

export interface BuildOptions {
  logger?: Logger;
  /** How often batched last-access times are written (tests); default ACCESS_FLUSH_MS. */
  accessFlushMs?: number;
}

const SWEEP_INTERVAL_MS = 10 * 60_000;
/** Batched last-access times are written this often (one transaction). */
const ACCESS_FLUSH_MS = 5_000;
/** The cached-bytes gauge runs a query over all blobs: at most this often. */
const CACHED_BYTES_TTL_MS = 30_000;

function tlsOptions(tls: TlsConfig): https.ServerOptions {
  return {
    cert: readFileSync(tls.cert),
    key: readFileSync(tls.key),
    ...(tls.clientCA ? { ca: readFileSync(tls.clientCA), requestCert: true, rejectUnauthorized: true } : {}),
  };
}

export async function buildApp(config: Config, opts: BuildOptions = {}): Promise<App> {
  const logger = opts.logger ?? createLogger(config);
  const paths = storagePaths(config.storage);
  await fs.mkdir(paths.root, { recursive: true });
  const storage = await openStorage(config.store, paths, logger.child({ component: 'metadata-db' }));
  // Manifest GET/HEAD by tag or digest without a database round trip (rule in readcache.ts).
  const meta = withReadCache(storage.metadata);
  const blobs = storage.blobs;
  await blobs.recover();
  const maxBlob = config.limits.maxBlobBytes > 0 ? config.limits.maxBlobBytes : Number.MAX_SAFE_INTEGER;
  const uploads = storage.uploads();
  await uploads.sweep(config.limits.uploadTtlMs);
  const service = new RegistryService(meta, blobs, uploads, config.limits);
  const clients = new Map<string, UpstreamClient>();
  for (const u of config.upstreams.values()) clients.set(u.name, new UpstreamClient(u, logger.child({ upstream: u.name })));
  const fills = new FillManager(blobs, logger.child({ component: 'fill' }), maxBlob);
  const pull = new PullThrough(service, new Router(config), clients, fills, logger.child({ component: 'pullthrough' }));
  const lastAccess = new AccessRecorder(meta);
  pull.access = lastAccess;
  const s3 = config.store.s3;
  if (s3?.redirect && blobs.redirectUrl) pull.redirect = (digest) => blobs.redirectUrl!(digest, s3.redirectExpiresSeconds);
  // With the disk full every flush fails until space is freed: say so once (warn), then
  // only at debug, and once more when it works again; the times stay pending meanwhile.
  let accessFailing = false;
  lastAccess.onError = (err) => logger.warn({ err }, 'writing last-access times failed');
  const flushAccess = async () => {
    try {
      await lastAccess.flush();
      if (accessFailing) logger.info('writing last-access times works again');
      accessFailing = false;
    } catch (err) {
      if (accessFailing) logger.debug({ err: (err as Error).message }, 'writing last-access times still failing');
      else logger.warn({ err }, 'writing last-access times failed; retrying every flush, next report when it works');
      accessFailing = true;
    }
  };
  const evictor = new Evictor(meta, blobs, config.cache, {
    busy: (digest) => fills.inFlight(digest) !== undefined,
    flush: flushAccess,
    log: logger.child({ component: 'evict' }),
  });

  // With TLS, the same request handler also serves an optional plain-HTTP listener
  // (loopback/dev), so both share one app, one database and one set of fills.
  let plain: http.Server | null = null;
  const tls = config.tls;
  const serverFactory = tls
    ? (handler: http.RequestListener) => {
        if (tls.httpListen) plain = http.createServer(handler);
        return https.createServer(tlsOptions(tls), handler);
      }
    : undefined;
  const fastify = Fastify({
    ...(serverFactory ? { serverFactory } : {}),
    loggerInstance: logger as FastifyBaseLogger,
    // One access line per request (onResponse below) instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    // Upload bodies can take hours; only a stalled socket is cut (protocol.md 6.8).
    requestTimeout: 0,
    connectionTimeout: config.http.idleTimeoutMs,
    keepAliveTimeout: config.http.keepAliveTimeoutMs,
    routerOptions: { maxParamLength: 4096, ignoreDuplicateSlashes: false },
    return503OnClosing: true,
  });
  for (const srv of [fastify.server, plain as http.Server | null]) {
    if (!srv) continue;
    srv.headersTimeout = config.http.headersTimeoutMs;
    srv.keepAliveTimeout = config.http.keepAliveTimeoutMs;
    srv.requestTimeout = 0;
    srv.setTimeout(config.http.idleTimeoutMs);
  }

  // Every body reaches handlers unread: blobs are streamed to disk, manifests are read
  // with a cap. fastify's JSON/text parsers would buffer and re-parse them.
  fastify.removeAllContentTypeParsers();
  fastify.addContentTypeParser('*', (_req, _payload, done) => done(null));

  // Callback style, not async: no promise per request on every route.
  fastify.addHook('onRequest', (_req, reply, done) => {
    reply.header('docker-distribution-api-version', 'registry/2.0');
    done();
  });
  let cachedBytes = { value: 0, at: -Infinity };
  const cachedBytesNow = async () => {
    if (Date.now() - cachedBytes.at > CACHED_BYTES_TTL_MS) cachedBytes = { value: await meta.cachedBytes(), at: Date.now() };
    return cachedBytes.value;
  };
  const metrics = new Metrics({ inflightFills: () => fills.size, cachedBytes: cachedBytesNow });
  const status = new StatusCollector({
    version: packageVersion(),
    maxBytes: config.cache.maxBytes,
    cachedBytes: cachedBytesNow,
    fills: () => fills.list(),
    upstreams: [...clients.values()].map((c) => ({ name: c.name, offline: () => c.offline })),
  });
  evictor.onEvicted = (r) => {
    status.evicted(r);
    metrics.evictedBytes.inc(r.bytes);
    metrics.evictedBlobs.inc(r.blobs);
    metrics.evictedImages.inc(r.images);
    cachedBytes = { value: r.cachedBytes, at: Date.now() };
  };
  for (const c of clients.values()) {
    c.health.onChange = (offline) => status.offlineChanged(c.name, offline);
    c.onResponse = (method, code, headers, error) => {
      status.upstreamResponse(c.name, method, code, headers, error);
      metrics.upstreamRequests.inc({ upstream: c.name, method, status: String(code) });
      // Docker Hub: `ratelimit-remaining: 76;w=21600`.
      const remaining = Number.parseInt(String(headers?.['ratelimit-remaining'] ?? ''), 10);
      if (Number.isFinite(remaining)) metrics.rateLimitRemaining.set({ upstream: c.name }, remaining);
    };
  }
  fills.onBytes = (origin, bytes) => {
    const upstream = origin.split('|', 1)[0]!;
    metrics.upstreamBytes.inc({ upstream }, bytes);
    status.fetched(upstream, bytes);
  };
  pull.onCache = (kind, result, upstream) => {
    metrics.cacheResults.inc({ kind, result, upstream });
    status.cache(kind, result, upstream);
  };
  instrumentRequests(fastify, metrics);
  installErrorHandler(fastify);
  installNotFoundHandler(fastify);
  const access = config.auth ? new AccessControl(config.auth, paths.root, logger.child({ component: 'auth' })) : null;
  const onBlobServed = (source: 'disk' | 'fill', bytes: number, upstream: string) => {
    metrics.blobBytesServed.inc({ source, upstream }, bytes);
    status.served(source, bytes, upstream);
  };
  const deps = { svc: service, pull, access, onBlobServed, smallBlobs: new SmallBlobCache() };
  registerV2(fastify, deps);
  registerExplain(fastify, deps);
  registerImport(fastify, deps);
  registerExport(fastify, deps);
  registerOps(fastify, {
    metrics,
    ping: async () => {
      await meta.ping();
      await blobs.ping?.();
    },
  });
  access?.registerTokenEndpoint(fastify);
  if (config.status.enabled) registerStatus(fastify, status, access);

  const sweep = setInterval(() => {
    uploads.sweep(config.limits.uploadTtlMs).catch((err: unknown) => logger.warn({ err }, 'upload sweep failed'));
  }, SWEEP_INTERVAL_MS);
  sweep.unref();
  const accessFlush = setInterval(() => void flushAccess(), opts.accessFlushMs ?? ACCESS_FLUSH_MS);
  accessFlush.unref();
  const eviction = evictor.enabled
    ? setInterval(() => {
        evictor.run().catch((err: unknown) => logger.warn({ err }, 'cache eviction failed'));
      }, config.cache.evictIntervalMs)
    : null;
  eviction?.unref();
  let closing: Promise<void> | null = null;

  return {
    fastify,
    service,
    pull,
    metrics,
    config,
    reloadTls() {
      if (!tls) return;
      (fastify.server as unknown as https.Server).setSecureContext(tlsOptions(tls));
      logger.info({ cert: tls.cert }, 'TLS certificate reloaded');
    },
    httpAddress() {
      const a = (plain as http.Server | null)?.address();
      return a && typeof a !== 'string' ? { host: a.address, port: a.port } : null;
    },
    evict: (at) => evictor.run(at),
    async listen(port = config.listen.port, host = config.listen.host) {
      await fastify.listen({ port, host });
      const p = plain as http.Server | null;
      if (p && tls?.httpListen) {
        const { host: h, port: pt } = tls.httpListen;
        await new Promise<void>((resolve, reject) => {
          p.once('error', reject);
          p.listen(pt, h, () => resolve());
        });
      }
      const addr = fastify.server.address();
      if (!addr || typeof addr === 'string') throw new Error('server has no TCP address');
      const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      return { host: addr.address, port: addr.port, url: `${tls ? 'https' : 'http'}://${h}:${addr.port}` };
    },
    close() {
      // Idempotent: a test (or a signal) may close an app that its teardown closes again.
      closing ??= (async () => {
        clearInterval(sweep);
        clearInterval(accessFlush);
        if (eviction) clearInterval(eviction);
        const evicting = evictor.stop();
        const p = plain as http.Server | null;
        if (p?.listening) {
          p.closeAllConnections();
          await new Promise<void>((resolve) => p.close(() => resolve()));
        }
        await fastify.close();
        await Promise.all([...clients.values()].map((c) => c.close()));
        await evicting;
        await flushAccess();
        await storage.close(); // metadata store and, for the shared driver, the object store client
      })();
      return closing;
    },
  };
}
