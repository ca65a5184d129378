/**
 * HTTP client for one upstream registry: endpoint failover, Bearer/Basic auth with a
 * token cache, redirects followed by hand (credentials never cross hosts), no
 * decompression (`undici.request`, `Accept-Encoding: identity`; protocol.md 6.9).
 */
import fs from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { SingleFlight } from '../singleflight.js';
import { countBounded } from '../lru.js';
import type { UpstreamConfig } from '../config/schema.js';
import { type Challenge, parseChallenges } from './challenge.js';
import { UpstreamHealth } from './health.js';
import { type WireCredentials, credentialSource } from './credentials.js';
import { RateGuardedBody } from './minrate.js';
import { Wire } from './wire.js';

export { MIN_BODY_BYTES_PER_SEC, RateGuardedBody } from './minrate.js';

export const USER_AGENT = 'regmirror/0.1 (+pull-through OCI mirror)';
const MAX_REDIRECTS = 10;
/** Tokens are refreshed this long before they expire. */
const TOKEN_MARGIN_MS = 10_000;
/** Upper bound on one liveness probe while the upstream is marked offline. */
const PROBE_TIMEOUT_MS = 5_000;

export interface UpstreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable & { dump(): Promise<void> };
  /** Final URL after redirects. */
  url: string;
}

/** The upstream could not be reached (every endpoint failed at the transport level or 5xx). */
export class UpstreamUnavailableError extends Error {
  override name = 'UpstreamUnavailableError';
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * The upstream answered, but unusably: a redirect loop, a token service that fails or
 * hands out tokens the registry then rejects. Not a reason to mark the upstream offline
 * (`status` is set); the message is safe to show to clients (no URLs, no secrets).
 */
export class UpstreamProtocolError extends UpstreamUnavailableError {
  override name = 'UpstreamProtocolError';
  constructor(message: string, status = 502) {
    super(message, status);
  }
}

/** What either transport answers (status, headers, a body to consume or dump()). */
interface RawResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Readable & { dump(): Promise<void> };
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

interface HostAuth {
  challenge: Challenge;
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
  private readonly credentials: () => WireCredentials;
  /** Learned challenge per host, so later requests fetch a token before the first try. */
  private readonly hostAuth = new Map<string, HostAuth>();
  private readonly tokens = new LRUCache<string, { token: string; expiresAt: number }>(countBounded(10_000));
  private readonly tokenFetches = new SingleFlight<string, string | null>();
  readonly health: UpstreamHealth;
  /** Called for every upstream response (status) or transport failure ('error', with its summary); metrics, status. */
  onResponse: ((method: string, status: number | 'error', headers: IncomingHttpHeaders | null, error?: string) => void) | null = null;
  /** host[:port] of every configured endpoint: the only hosts credentials are meant for. */
  private readonly endpointHosts: ReadonlySet<string>;

  constructor(
    readonly config: UpstreamConfig,
    private readonly log: Logger,
    dispatcher?: Dispatcher,
  ) {
    this.name = config.name;
    this.credentials = credentialSource(config.credentials, config.name, config.endpoints);
    this.endpointHosts = new Set(config.endpoints.map((e) => new URL(e).host));
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
      const auth = challengeAuth ?? (await this.authorizationFor(url, scope, false));
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
          this.hostAuth.set(url.host, { challenge: chosen });
          const challengeScope = chosen.params.scope;
          const retryAuth = await this.authorizationFor(url, challengeScope && challengeScope.includes(req.repository) ? challengeScope : scope, true);
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

  /**
   * The Authorization header for `url`, or null.
   *
   * Configured credentials belong to the upstream's own endpoint hosts. Any other host a
   * redirect leads to (a CDN, signed storage, a registry.k8s.io backend) may challenge too,
   * but it never gets the password or static token: with Basic it gets nothing, with Bearer
   * an anonymous token, unless its realm is the one an endpoint host itself named.
   * Otherwise any host a redirect points at could collect the credentials just by answering
   * 401 (protocol.md 3.4: credentials only to the realm; 3.8).
   */
  private async authorizationFor(url: URL, scope: string, refresh: boolean): Promise<string | null> {
    const known = this.hostAuth.get(url.host);
    const isEndpointHost = this.endpointHosts.has(url.host);
    const creds = isEndpointHost ? this.credentials() : null;
    if (!known) {
      if (creds?.kind === 'bearer') return `Bearer ${creds.token}`;
      return null;
    }
    const { challenge } = known;
    if (challenge.scheme === 'basic') {
      return creds?.kind === 'basic' ? basicHeader(creds.username, creds.password) : null;
    }
    if (challenge.scheme !== 'bearer') return null;
    if (creds?.kind === 'bearer') return `Bearer ${creds.token}`;
    const realm = challenge.params.realm;
    if (!realm) return null;
    const realmUrl = new URL(realm, url);
    const realmCreds = isEndpointHost || this.isEndpointRealm(realmUrl) ? this.credentials() : null;
    const basic = realmCreds?.kind === 'basic' ? realmCreds : null;
    // Artifact Registry omits `service` on some challenges: fall back to the realm host.
    const service = challenge.params.service ?? url.host;
    const key = `${basic ? 'creds' : 'anonymous'}|${realmUrl.toString()}|${service}|${scope}`;
    const cached = this.tokens.get(key);
    if (cached && !refresh && cached.expiresAt - TOKEN_MARGIN_MS > Date.now()) return `Bearer ${cached.token}`;
    const token = await this.tokenFetches.run(key, () => this.fetchToken(realmUrl, service, scope, basic, key)).promise;
    return token ? `Bearer ${token}` : null;
  }

  /** Whether a Bearer challenge from one of the endpoint hosts named this realm (same origin). */
  private isEndpointRealm(realm: URL): boolean {
    for (const endpoint of this.config.endpoints) {
      const c = this.hostAuth.get(new URL(endpoint).host)?.challenge;
      if (c?.scheme !== 'bearer' || !c.params.realm) continue;
      try {
        if (new URL(c.params.realm, endpoint).origin === realm.origin) return true;
      } catch {
        // an unparsable realm names nothing
      }
    }
    return false;
  }

  private async fetchToken(realm: URL, service: string, scope: string, creds: WireCredentials, key: string): Promise<string | null> {
    const u = new URL(realm);
    u.searchParams.set('service', service);
    u.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, accept: 'application/json' };
    // Basic credentials go to the realm named by the upstream's own challenge, nowhere else.
    if (creds?.kind === 'basic') headers.authorization = basicHeader(creds.username, creds.password);
    const res = await this.http(u, { method: 'GET', headers });
    const realmForLog = `${u.origin}${u.pathname}`;
    if (res.statusCode !== 200) {
      await res.body.dump();
      this.log.warn({ upstream: this.name, realm: realmForLog, status: res.statusCode }, 'token request failed');
      // 401/403: the credentials (or anonymous access) were refused, so the request goes on
      // without a token and the registry's answer decides. A failing token service is the
      // upstream being unavailable, not a missing repository.
      if (res.statusCode >= 500 || res.statusCode === 429) throw new UpstreamProtocolError(`upstream token service answered ${res.statusCode}`);
      return null;
    }
    // A captive portal or proxy page in place of the token service: unavailable too.
    const text = await readCapped(res.body, 1024 * 1024);
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown } | null;
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch {
      doc = null;
    }
    const token = doc?.token ?? doc?.access_token;
    if (!doc || typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
      this.log.warn({ upstream: this.name, realm: realmForLog, contentType: String(res.headers['content-type'] ?? '').slice(0, 100) }, 'token response carries no token');
      throw new UpstreamProtocolError('upstream token service answered without a token');
    }
    // expires_in defaults to 60 s and is never less than 60 s (token.md).
    const ttlMs = Math.max(60, typeof doc.expires_in === 'number' ? doc.expires_in : 60) * 1000;
    const issued = typeof doc.issued_at === 'string' ? Date.parse(doc.issued_at) : NaN;
    const start = Number.isFinite(issued) && issued <= Date.now() ? issued : Date.now();
    this.tokens.set(key, { token, expiresAt: start + ttlMs });
    return token;
  }
}

function basicHeader(user: string, pass: string): string {
  return `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
}

async function readCapped(body: AsyncIterable<Buffer>, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += c.length;
    if (n > max) throw new UpstreamUnavailableError('upstream response too large');
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
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

export function errorSummary(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as Error & { code?: string }).code;
    return code ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
