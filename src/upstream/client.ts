/**
 * HTTP client for one upstream registry: endpoint failover, Bearer/Basic auth (auth.ts),
 * redirects followed by hand (credentials never cross hosts), no decompression
 * (`Accept-Encoding: identity`; protocol.md 6.9). Bytes travel through wire.ts, or undici
 * behind a proxy.
 */
import fs from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import type { UpstreamConfig } from '../config/schema.js';
import { type RawResponse, USER_AGENT, UpstreamAuth } from './auth.js';
import { parseChallenges } from './challenge.js';
import { UpstreamProtocolError, UpstreamUnavailableError, errorSummary } from './errors.js';
import { UpstreamHealth } from './health.js';
import { RateGuardedBody } from './minrate.js';
import { Wire } from './wire.js';

export { MIN_BODY_BYTES_PER_SEC, RateGuardedBody } from './minrate.js';
export { UpstreamProtocolError, UpstreamUnavailableError, errorSummary } from './errors.js';
export { USER_AGENT } from './auth.js';

const MAX_REDIRECTS = 10;
/** Upper bound on one liveness probe while the upstream is marked offline. */
const PROBE_TIMEOUT_MS = 5_000;

export interface UpstreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable & { dump(): Promise<void> };
  /** Final URL after redirects. */
  url: string;
}

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Path under the endpoint, starting with /v2/. */
  path: string;
  /** Repository for the `repository:<name>:pull` token scope. */
  repository: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface UpstreamStats {
  requests: number;
  byPath: Map<string, number>;
}

export class UpstreamClient {
  readonly name: string;
  /** The HTTP/1.1 client every request goes through (wire.ts), unless a proxy is configured. */
  private readonly wire: Wire | null;
  /**
   * With a proxy: undici (~6 MiB of heap, ~18 MiB RSS with its index) is imported, and the
   * agent created, by the first upstream request, not at start (issue #14 item 3).
   */
  private dispatcher: Promise<Dispatcher> | null;
  private readonly newDispatcher: () => Promise<Dispatcher>;
  private readonly auth: UpstreamAuth;
  readonly health: UpstreamHealth;
  /** Called for every upstream response (status) or transport failure ('error', with its summary); metrics, status. */
  onResponse: ((method: string, status: number | 'error', headers: IncomingHttpHeaders | null, error?: string) => void) | null = null;

  constructor(
    readonly config: UpstreamConfig,
    private readonly log: Logger,
    dispatcher?: Dispatcher,
  ) {
    this.name = config.name;
    this.auth = new UpstreamAuth(config, log, (url, opts) => this.http(url, opts));
    const connect = {
      timeout: config.connectTimeoutMs,
      ca: config.caFile ? fs.readFileSync(config.caFile) : undefined,
      rejectUnauthorized: !config.insecureSkipVerify,
    };
    const opts = {
      connections: config.maxConnections,
      connect,
      headersTimeout: config.headersTimeoutMs,
      bodyTimeout: config.bodyTimeoutMs,
      keepAliveTimeout: 30_000,
    };
    this.dispatcher = dispatcher ? Promise.resolve(dispatcher) : null;
    this.wire =
      dispatcher || config.proxy
        ? null
        : new Wire({
            connectTimeoutMs: config.connectTimeoutMs,
            headersTimeoutMs: config.headersTimeoutMs,
            bodyTimeoutMs: config.bodyTimeoutMs,
            keepAliveMs: opts.keepAliveTimeout,
            maxConnections: config.maxConnections,
            ca: connect.ca,
            rejectUnauthorized: connect.rejectUnauthorized,
          });
    this.newDispatcher = async () => {
      const { Agent, ProxyAgent } = await import('undici');
      return config.proxy ? new ProxyAgent({ uri: config.proxy, ...opts, requestTls: connect }) : new Agent(opts);
    };
    if (config.insecureSkipVerify) log.warn({ upstream: config.name }, 'TLS verification is disabled for this upstream');
    this.health = new UpstreamHealth(config.name, config.offlineMs, config.probeIntervalMs, () => this.probe(), log);
  }

  async close(): Promise<void> {
    this.health.close();
    await this.wire?.close();
    if (this.dispatcher) await (await this.dispatcher).close();
  }

  /** One HTTP exchange: through the wire client, or undici's `request` through the proxy agent (both created on first use). */
  private async http(url: string | URL, opts: { method: 'GET' | 'HEAD'; headers: Record<string, string>; signal?: AbortSignal }): Promise<RawResponse> {
    if (this.wire) return this.wire.request(new URL(url), opts);
    const [{ request }, dispatcher] = await Promise.all([import('undici'), (this.dispatcher ??= this.newDispatcher())]);
    const res = await request(url, { ...opts, dispatcher });
    return { statusCode: res.statusCode, headers: res.headers, body: res.body as unknown as RawResponse['body'] };
  }

  /**
   * Whether the upstream answers at all: `GET /v2/` on each endpoint, no credentials,
   * short timeout. Any status below 500 (401 included) means it is back.
   */
  private async probe(): Promise<boolean> {
    for (const endpoint of this.config.endpoints) {
      try {
        const res = await this.http(`${endpoint}/v2/`, {
          method: 'GET',
          headers: { 'user-agent': USER_AGENT },
          signal: AbortSignal.timeout(Math.min(this.config.headersTimeoutMs, PROBE_TIMEOUT_MS)),
        });
        await res.body.dump();
        if (res.statusCode < 500) return true;
      } catch {
        // still down: try the next endpoint
      }
    }
    return false;
  }

  /**
   * Send a request, trying endpoints in order on transport errors and 5xx. The caller
   * must consume or `dump()` the body.
   */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    // A hung or dead upstream must not make every request wait for timeouts: after a
    // complete failure, fail fast (callers serve stale content) until a probe or the end
    // of the window lets one trial request through (health.ts).
    const admission = this.health.admit();
    if (admission === 'reject') throw new UpstreamUnavailableError('upstream marked offline after a failure');
    if (admission === 'ok') return this.send(req);
    try {
      const res = await this.send(req);
      this.health.trialDone(true);
      return res;
    } catch (e) {
      this.health.trialDone(false, errorSummary(e));
      throw e;
    }
  }

  private async send(req: UpstreamRequest): Promise<UpstreamResponse> {
    let lastError: unknown;
    const endpoints = this.config.endpoints;
    for (let i = 0; i < endpoints.length; i++) {
      const last = i === endpoints.length - 1;
      try {
        const res = await this.sendWithAuth(`${endpoints[i]}${req.path}`, req);
        if (res.status >= 500 && !last) {
          await res.body.dump();
          lastError = new UpstreamUnavailableError(`endpoint ${i} answered ${res.status}`, res.status);
          continue;
        }
        return res;
      } catch (e) {
        if (req.signal?.aborted) {
          this.markOffline('request timed out');
          throw e;
        }
        lastError = e;
        this.log.warn({ upstream: this.name, endpoint: i, err: errorSummary(e) }, 'upstream endpoint failed');
      }
    }
    if (!(lastError instanceof UpstreamUnavailableError && lastError.status !== undefined)) this.markOffline(errorSummary(lastError));
    throw lastError instanceof UpstreamUnavailableError ? lastError : new UpstreamUnavailableError(errorSummary(lastError));
  }

  private markOffline(reason: string): void {
    this.health.markOffline(reason);
  }

  /** Whether requests currently fail fast. */
  get offline(): boolean {
    return this.health.offline;
  }

  private async sendWithAuth(startUrl: string, req: UpstreamRequest): Promise<UpstreamResponse> {
    let url = new URL(startUrl);
    const scope = `repository:${req.repository}:pull`;
    const retriedHosts = new Set<string>();
    // The Authorization obtained for a challenge, used as is for the retry that follows.
    // Looking it up again would fetch a second token whenever the first is cached under the
    // challenge's own scope, or is already inside the refresh margin (an issued_at in the
    // past, e.g. a realm whose clock lags ours).
    let challengeAuth: string | null = null;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const auth = challengeAuth ?? (await this.auth.authorizationFor(url, scope, false));
      challengeAuth = null;
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...req.headers };
      if (auth) headers.authorization = auth;
      let res: RawResponse;
      try {
        res = await this.http(url, { method: req.method, headers, signal: req.signal });
      } catch (e) {
        this.onResponse?.(req.method, 'error', null, errorSummary(e));
        throw e;
      }
      this.onResponse?.(req.method, res.statusCode, res.headers);
      const status = res.statusCode;
      if (status >= 300 && status < 400 && res.headers.location) {
        await res.body.dump();
        // Credentials are attached per host by authorizationFor, so a CDN host gets none.
        url = new URL(String(res.headers.location), url);
        continue;
      }
      if (status === 401 && !retriedHosts.has(url.host)) {
        const challenges = parseChallenges(res.headers['www-authenticate']);
        await res.body.dump();
        const chosen = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
        if (chosen) {
          retriedHosts.add(url.host);
          this.auth.learn(url.host, chosen);
          const challengeScope = chosen.params.scope;
          const retryAuth = await this.auth.authorizationFor(url, challengeScope && challengeScope.includes(req.repository) ? challengeScope : scope, true);
          if (retryAuth) {
            challengeAuth = retryAuth;
            hop--;
            continue;
          }
        }
        // No way to authenticate: hand the 401 to the caller (body already consumed).
        return { status, headers: res.headers, body: emptyBody(), url: url.toString() };
      }
      if (status === 401 && auth?.startsWith('Bearer ') && parseChallenges(res.headers['www-authenticate']).some((c) => c.params.error === 'invalid_token')) {
        // Even a token fetched just now was refused: an expired token (a realm whose clock
        // or expires_in is wrong) or a broken realm, not a missing repository.
        await res.body.dump();
        throw new UpstreamProtocolError('upstream rejected the token its token service issued (expired or invalid)');
      }
      return { status, headers: res.headers, body: res.body, url: url.toString() };
    }
    throw new UpstreamProtocolError(`upstream redirect loop (more than ${MAX_REDIRECTS} redirects)`);
  }
}

/**
 * `body`'s chunks, failing (destroying it) once the time spent waiting for them adds up to
 * `windowMs` with fewer than MIN_BODY_BYTES_PER_SEC * windowMs/1000 bytes received.
 * The dispatcher's bodyTimeout only catches silence; a body dripping a byte a second never
 * trips it, and would keep a fill (and every client joined to it) busy for days. Only time
 * spent waiting on the upstream counts, never time the consumer takes (disk backpressure).
 * Read it with `for await`, or with `pump` (blob fills), which costs no promise per chunk.
 */
export function minimumRate(
  body: Readable,
  windowMs: number,
  tooSlow: () => Error = () => new UpstreamProtocolError('upstream sends the body too slowly', 503),
): RateGuardedBody {
  return new RateGuardedBody(body, windowMs, tooSlow);
}

/** Read a whole (small) body; a stall past the body timeout or an oversized body is an UpstreamProtocolError. */
export async function readBody(res: UpstreamResponse, max: number, minRateWindowMs?: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  const source: AsyncIterable<Buffer> = minRateWindowMs ? minimumRate(res.body, minRateWindowMs) : (res.body as AsyncIterable<Buffer>);
  try {
    for await (const c of source) {
      n += c.length;
      if (n > max) {
        res.body.destroy();
        throw new UpstreamProtocolError('upstream response exceeds the size limit');
      }
      chunks.push(c);
    }
  } catch (e) {
    if ((e as { code?: string }).code === 'UND_ERR_BODY_TIMEOUT') throw new UpstreamProtocolError('upstream stalled while sending the body (body timeout)', 503);
    throw e;
  }
  return Buffer.concat(chunks, n);
}

function emptyBody(): UpstreamResponse['body'] {
  const r = Readable.from([]) as UpstreamResponse['body'];
  r.dump = async () => undefined;
  return r;
}
