/**
 * Credentials and tokens for one upstream: which Authorization header a request to a given
 * host gets (never the configured credentials for a host that is not the upstream's own),
 * Bearer tokens fetched once per scope (single flight) and cached until shortly before
 * they expire.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { UpstreamConfig } from '../config/schema.js';
import { countBounded } from '../lru.js';
import { SingleFlight } from '../singleflight.js';
import type { Challenge } from './challenge.js';
import { type WireCredentials, credentialSource } from './credentials.js';
import { UpstreamProtocolError, UpstreamUnavailableError } from './errors.js';

export const USER_AGENT = 'regmirror/0.1 (+pull-through OCI mirror)';
/** Tokens are refreshed this long before they expire. */
const TOKEN_MARGIN_MS = 10_000;

/** What either transport answers (status, headers, a body to consume or dump()). */
export interface RawResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Readable & { dump(): Promise<void> };
}

/** One HTTP exchange (client.ts: the wire client, or undici behind a proxy). */
export type HttpExchange = (url: URL, opts: { method: 'GET' | 'HEAD'; headers: Record<string, string>; signal?: AbortSignal }) => Promise<RawResponse>;

export class UpstreamAuth {
  private readonly credentials: () => WireCredentials;
  /** Learned challenge per host, so later requests fetch a token before the first try. */
  private readonly hostAuth = new Map<string, { challenge: Challenge }>();
  private readonly tokens = new LRUCache<string, { token: string; expiresAt: number }>(countBounded(10_000));
  private readonly tokenFetches = new SingleFlight<string, string | null>();
  /** host[:port] of every configured endpoint: the only hosts credentials are meant for. */
  private readonly endpointHosts: ReadonlySet<string>;

  constructor(
    private readonly config: UpstreamConfig,
    private readonly log: Logger,
    private readonly http: HttpExchange,
  ) {
    this.credentials = credentialSource(config.credentials, config.name, config.endpoints);
    this.endpointHosts = new Set(config.endpoints.map((e) => new URL(e).host));
  }

  /** A host answered 401 with this challenge: later requests to it authenticate up front. */
  learn(host: string, challenge: Challenge): void {
    this.hostAuth.set(host, { challenge });
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
  async authorizationFor(url: URL, scope: string, refresh: boolean): Promise<string | null> {
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
      this.log.warn({ upstream: this.config.name, realm: realmForLog, status: res.statusCode }, 'token request failed');
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
      this.log.warn({ upstream: this.config.name, realm: realmForLog, contentType: String(res.headers['content-type'] ?? '').slice(0, 100) }, 'token response carries no token');
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
