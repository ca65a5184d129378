/**
 * buildApp(config): wiring only. Creates storage, the registry service and the fastify
 * instance with its HTTP plugins; never listens (cli.ts and tests do that).
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import fs from 'node:fs/promises';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import https from 'node:https';
import { createRequire } from 'node:module';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Config, TlsConfig } from './config/schema.js';
import { installErrorHandler, installNotFoundHandler } from './http/errors.js';
import { registerV2 } from './http/v2.js';
import { SmallBlobCache } from './http/smallblobs.js';
import { type RawHandler, hotBlobHandler } from './http/hotblobs.js';
import { registerExplain } from './http/explain.js';
import { registerImport } from './http/import.js';
import { registerExport } from './http/export.js';
import { AccessControl } from './http/auth.js';
import { Metrics } from './ops/metrics.js';
import { StatusCollector, packageVersion } from './ops/status.js';
import { StaleValue } from './ops/stalevalue.js';
import { registerStatus } from './http/status.js';
import { instrumentRequests, registerOps } from './http/ops.js';
import { createLogger } from './ops/logger.js';
import { RegistryService } from './registry/service.js';
import { openStorage } from './storage/open.js';
import { withReadCache } from './storage/readcache.js';
import { storagePaths } from './storage/paths.js';
import { FillManager } from './cache/fill.js';
import type { ClusterFills } from './cache/clusterfill.js';
import { type EvictionResult, Evictor } from './cache/eviction.js';
import { AccessRecorder } from './storage/access.js';
import { PullThrough } from './registry/pullthrough.js';
import { ClusterFlights } from './registry/pullthrough/cluster.js';
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
/** The cached-bytes gauge runs a query over all blobs: at most this often, in the background. */
const CACHED_BYTES_TTL_MS = 30_000;

/**
 * fastify's default schema compilers, built only if a route declares a schema. None does
 * (bodies reach handlers unread, answers are written by hand), yet left to fastify
 * `Fastify()` loads ajv and fast-json-stringify (~100 modules, ~4 MiB RSS) at start (issue
 * #14 item 3). Required from fastify's own location: they are its dependencies, not ours.
 */
const fastifyRequire = createRequire(createRequire(import.meta.url).resolve('fastify'));
type Compilers = Required<NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>>;
type Factory = (externalSchemas: unknown, options: unknown) => unknown;
const lazyFactory = (pkg: string) => (externalSchemas: unknown, options: unknown) => (fastifyRequire(pkg) as () => Factory)()(externalSchemas, options);
const lazyCompilers = {
  buildValidator: lazyFactory('@fastify/ajv-compiler') as Compilers['buildValidator'],
  buildSerializer: lazyFactory('@fastify/fast-json-stringify-compiler') as Compilers['buildSerializer'],
};

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
  const pullLog = logger.child({ component: 'pullthrough' });
  // Replicas on one store: one upstream lookup per manifest, tag check and list across them
  // (polling the store itself, past the read cache). One process needs only its own flights.
  const shared = config.store.driver === 'shared' ? { flights: new ClusterFlights(storage.coordination, pullLog), meta: storage.metadata } : null;
  const pull = new PullThrough(service, new Router(config), clients, fills, pullLog, shared);
  // Shared storage: one upstream fetch per digest across replicas (fill leases). The local
  // driver skips this entirely: no lease round trip, today's single flight only, and
  // neither the module nor undici (which it imports) is loaded (issue #14 item 3).
  let cluster: ClusterFills | null = null;
  if (config.store.driver === 'shared') {
    const { ClusterFills } = await import('./cache/clusterfill.js');
    cluster = new ClusterFills(storage.coordination, blobs, fills, config.cluster, logger.child({ component: 'cluster-fill' }), path.join(paths.root, 'relay'));
    await cluster.recover();
  }
  if (cluster) pull.coordinateFills = (digest, source) => cluster.source(digest, source);
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
  // Shared storage: one replica at a time evicts (gc-leader lease), content deleted after the grace.
  const deferred = storage.deferredDeletes;
  const evictor = new Evictor(meta, blobs, config.cache, {
    busy: (digest) => fills.inFlight(digest) !== undefined,
    flush: flushAccess,
    log: logger.child({ component: 'evict' }),
    ...(deferred
      ? {
          leader: { coordination: storage.coordination, owner: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}` },
          deferred: { deletes: deferred, graceMs: config.cache.deleteGraceMs },
        }
      : {}),
  });

  // With TLS, the same request handler also serves an optional plain-HTTP listener
  // (loopback/dev), so both share one app, one database and one set of fills. Every
  // server first offers a request to the warm small-blob path (set once deps exist).
  let plain: http.Server | null = null;
  let hot: RawHandler | null = null;
  let closing: Promise<void> | null = null;
  const tls = config.tls;
  const tune = (srv: http.Server) => {
    srv.headersTimeout = config.http.headersTimeoutMs;
    srv.keepAliveTimeout = config.http.keepAliveTimeoutMs;
    srv.requestTimeout = 0;
    srv.setTimeout(config.http.idleTimeoutMs);
    return srv;
  };
  let fastifyHandler: RawHandler | null = null;
  const serverFactory = (onRequest: http.RequestListener) => {
    fastifyHandler = onRequest;
    const handler: RawHandler = (req, res) => (hot ?? onRequest)(req, res);
    if (tls?.httpListen) plain = tune(http.createServer(handler));
    return tune(tls ? https.createServer(tlsOptions(tls), handler) : http.createServer(handler));
  };
  const fastify = Fastify({
    serverFactory,
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
    schemaController: { compilersFactory: lazyCompilers },
  });

  // Every body reaches handlers unread: blobs are streamed to disk, manifests are read
  // with a cap. fastify's JSON/text parsers would buffer and re-parse them.
  fastify.removeAllContentTypeParsers();
  fastify.addContentTypeParser('*', (_req, _payload, done) => done(null));

  // Callback style, not async: no promise per request on every route.
  fastify.addHook('onRequest', (_req, reply, done) => {
    reply.header('docker-distribution-api-version', 'registry/2.0');
    done();
  });
  // /metrics and /status: the local driver keeps the count in a row (db.ts v7), read each
  // time; the shared driver's is a scan, so they answer its last count at once and it
  // runs in the background (stalevalue.ts).
  const cachedBytes = new StaleValue(() => meta.cachedBytes(), CACHED_BYTES_TTL_MS, (err) => logger.warn({ err }, 'counting cached bytes failed'));
  const cachedBytesNow = config.store.driver === 'local' ? () => meta.cachedBytes() : () => cachedBytes.get();
  const metrics = new Metrics({ inflightFills: () => fills.size, cachedBytes: cachedBytesNow });
  const status = new StatusCollector({
    version: packageVersion(),
    maxBytes: config.cache.maxBytes,
    cachedBytes: cachedBytesNow,
    fills: () => fills.list(),
    upstreams: [...clients.values()].map((c) => ({ name: c.name, offline: () => c.offline })),
  });
  evictor.onPass = (r) => metrics.evictionPasses.inc({ result: r.skipped ? 'skipped' : 'ran' });
  evictor.onEvicted = (r) => {
    status.evicted(r);
    metrics.evictedBytes.inc(r.bytes);
    metrics.evictedBlobs.inc(r.blobs);
    metrics.evictedImages.inc(r.images);
    cachedBytes.set(r.cachedBytes);
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
  if (!fastifyHandler) throw new Error('fastify did not create its server');
  hot = hotBlobHandler({ deps, metrics, log: logger as FastifyBaseLogger, closing: () => closing !== null }, fastifyHandler);
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
  if (cluster && config.cluster.secret) (await import('./http/internal.js')).registerInternalFills(fastify, cluster);
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
      const url = `${tls ? 'https' : 'http'}://${h}:${addr.port}`;
      // A wildcard address names no host other replicas could dial: the host name then
      // (compose, most orchestrators); cluster.advertiseUrl where that does not resolve.
      cluster?.listening(['0.0.0.0', '::'].includes(addr.address) ? `${tls ? 'https' : 'http'}://${os.hostname()}:${addr.port}` : url);
      return { host: addr.address, port: addr.port, url };
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
        await cluster?.close();
        await evicting;
        await flushAccess();
        await storage.close(); // metadata store and, for the shared driver, the object store client
      })();
      return closing;
    },
  };
}
