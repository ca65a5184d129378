/**
 * Client authentication and authorization for /v2 and the token endpoint.
 *
 *   Basic:  `Authorization: Basic` checked against the htpasswd file. Empty credentials
 *           (`Basic Og==`, i.e. ":") are anonymous: skopeo, podman and CRI-O answer a Basic
 *           challenge that way when they have no credentials for the registry.
 *   Bearer: JWTs issued by GET/POST /token (Docker token auth), scoped per repository.
 * Rules (first match wins) decide who may pull, push and delete. An anonymous request
 * that is not allowed gets 401 with a challenge; a signed-in user who is not allowed
 * gets 403 DENIED. Failed logins are rate-limited per client address.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AuthConfig } from '../config/schema.js';
import { Htpasswd } from '../auth/htpasswd.js';
import { LoginLimiter } from '../auth/ratelimit.js';
import { type AccessRule, type Action, DEFAULT_RULES, type Principal, allowedActions, isAllowed, makeRule } from '../auth/rules.js';
import { type AccessEntry, type TokenClaims, TokenIssuer, loadOrCreateKey, parseScope, tokenGrants } from '../auth/token.js';
import { RegistryError } from '../registry/errors.js';
import { parseRepoName } from '../registry/names.js';
import { queryOf, queryParam, queryParams, readBodyCapped, sendJson } from './request.js';

interface AuthResult {
  principal: Principal;
  /** Present when the request carried a valid bearer token. */
  claims: TokenClaims | null;
}

const ANONYMOUS: Principal = { user: null, groups: [] };
const ALL_ACTIONS: Action[] = ['pull', 'push', 'delete'];

export class AccessControl {
  private readonly rules: readonly AccessRule[];
  private readonly htpasswd: Htpasswd | null;
  private readonly issuer: TokenIssuer | null;
  private readonly limiter: LoginLimiter;
  private readonly results = new WeakMap<FastifyRequest, AuthResult>();

  constructor(
    private readonly cfg: AuthConfig,
    storageRoot: string,
    private readonly log: Logger,
  ) {
    this.rules = cfg.rules.length > 0 ? cfg.rules.map((r) => makeRule(r.repositories, [...r.pull], [...r.push], [...r.delete])) : DEFAULT_RULES;
    this.htpasswd = cfg.htpasswd ? new Htpasswd(cfg.htpasswd) : null;
    this.issuer = cfg.token
      ? new TokenIssuer(loadOrCreateKey(cfg.token.key, path.join(storageRoot, 'token-key.pem')), cfg.token.issuer, cfg.token.service, cfg.token.ttlSeconds)
      : null;
    this.limiter = new LoginLimiter(cfg.loginRateLimit.maxFailures, cfg.loginRateLimit.windowMs);
  }

  private principalFor(user: string): Principal {
    const groups: string[] = [];
    for (const [g, members] of this.cfg.groups) if (members.includes(user)) groups.push(g);
    return { user, groups };
  }

  private clientAddress(req: FastifyRequest): string {
    return req.socket.remoteAddress ?? 'unknown';
  }

  private rateLimited(req: FastifyRequest): void {
    const wait = this.limiter.blockedFor(this.clientAddress(req));
    if (wait > 0) throw new RegistryError('TOOMANYREQUESTS', 'too many failed logins; try again later', { headers: { 'Retry-After': String(wait) } });
  }

  /**
   * Verify Basic credentials: the user name, or null for empty credentials (anonymous, not a
   * login attempt, so never rate-limited or counted). Anything else that does not verify,
   * including a user without a password or a password without a user, is a failed login:
   * 401, never silently anonymous.
   */
  private async basicUser(req: FastifyRequest, value: string): Promise<string | null> {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    if (decoded === ':') return null;
    this.rateLimited(req);
    const i = decoded.indexOf(':');
    const user = i > 0 ? decoded.slice(0, i) : '';
    const pass = i > 0 ? decoded.slice(i + 1) : '';
    if (this.htpasswd && user && (await this.htpasswd.verify(user, pass))) {
      this.limiter.succeed(this.clientAddress(req));
      return user;
    }
    this.limiter.fail(this.clientAddress(req), decoded);
    this.log.warn({ user: user.slice(0, 64), remote: this.clientAddress(req) }, 'failed login');
    throw this.unauthorized(req, null, 'invalid username or password');
  }

  private async authenticate(req: FastifyRequest): Promise<AuthResult> {
    const known = this.results.get(req);
    if (known) return known;
    const header = req.headers.authorization ?? '';
    const sp = header.indexOf(' ');
    const scheme = sp > 0 ? header.slice(0, sp).toLowerCase() : '';
    const value = sp > 0 ? header.slice(sp + 1).trim() : '';
    let result: AuthResult = { principal: ANONYMOUS, claims: null };
    if (scheme === 'basic') {
      const user = await this.basicUser(req, value);
      result = { principal: user === null ? ANONYMOUS : this.principalFor(user), claims: null };
    } else if (scheme === 'bearer') {
      const claims = this.issuer?.verify(value) ?? null;
      if (!claims) throw this.unauthorized(req, null, 'invalid or expired token', 'invalid_token');
      result = { principal: claims.sub ? this.principalFor(claims.sub) : ANONYMOUS, claims };
    }
    this.results.set(req, result);
    return result;
  }

  /** The WWW-Authenticate challenge for this server. */
  private challenge(req: FastifyRequest, scope: string | null, error?: string): string {
    if (!this.issuer) return 'Basic realm="regmirror"';
    const realm = this.cfg.token?.realm ?? `${req.protocol}://${req.headers.host ?? 'localhost'}/token`;
    let c = `Bearer realm="${realm}",service="${this.issuer.service}"`;
    if (scope) c += `,scope="${scope}"`;
    if (error) c += `,error="${error}"`;
    return c;
  }

  private unauthorized(req: FastifyRequest, scope: string | null, message: string, error?: string): RegistryError {
    return new RegistryError('UNAUTHORIZED', message, { headers: { 'WWW-Authenticate': this.challenge(req, scope, error) } });
  }

  /** GET /v2/: anonymous clients are told how to authenticate (podman/skopeo read it here). */
  async checkBase(req: FastifyRequest): Promise<void> {
    const { principal, claims } = await this.authenticate(req);
    if (principal.user === null && claims === null) throw this.unauthorized(req, null, 'authentication required');
  }

  /** Throw unless the request may perform `action` on `repo`. */
  async check(req: FastifyRequest, repo: string, action: Action): Promise<void> {
    const { principal, claims } = await this.authenticate(req);
    const scope = `repository:${repo}:${action === 'pull' ? 'pull' : action === 'push' ? 'pull,push' : 'delete'}`;
    if (claims) {
      if (tokenGrants(claims, repo, action) && isAllowed(this.rules, repo, action, principal)) return;
      if (principal.user !== null && !isAllowed(this.rules, repo, action, principal)) throw new RegistryError('DENIED', `${action} on ${repo} is not allowed`);
      throw this.unauthorized(req, scope, 'token does not grant this access', 'insufficient_scope');
    }
    if (isAllowed(this.rules, repo, action, principal)) return;
    if (principal.user === null) throw this.unauthorized(req, scope, 'authentication required');
    throw new RegistryError('DENIED', `${action} on ${repo} is not allowed`);
  }

  /**
   * For requests whose target repositories are known only from their body (archive
   * imports): an anonymous caller whom no rule lets push anywhere gets the 401 before the
   * body is read, not after staging all of it. Every target is still checked with check().
   */
  async checkMayPushSomewhere(req: FastifyRequest): Promise<void> {
    const { principal, claims } = await this.authenticate(req);
    if (principal.user !== null || claims !== null) return;
    if (this.rules.some((r) => r.push.includes('anonymous'))) return;
    throw this.unauthorized(req, null, 'authentication required');
  }

  /** Non-throwing check (cross-repository mount source, catalog filtering). */
  async can(req: FastifyRequest, repo: string, action: Action): Promise<boolean> {
    try {
      await this.check(req, repo, action);
      return true;
    } catch {
      return false;
    }
  }

  /** GET and POST /token (distribution docs/spec/auth/token.md and oauth.md). */
  registerTokenEndpoint(app: FastifyInstance): void {
    if (!this.issuer) return;
    const issuer = this.issuer;
    const grant = (principal: Principal, scopes: string[]) => {
      const access: AccessEntry[] = [];
      for (const s of scopes.flatMap((x) => x.split(' ')).filter(Boolean)) {
        const p = parseScope(s);
        if (!p || p.type !== 'repository') continue;
        try {
          parseRepoName(p.name);
        } catch {
          continue;
        }
        const wanted = p.actions.includes('*') ? ALL_ACTIONS : ALL_ACTIONS.filter((a) => p.actions.includes(a));
        access.push({ type: 'repository', name: p.name, actions: allowedActions(this.rules, p.name, wanted, principal) });
      }
      return issuer.issue(principal.user ?? '', access);
    };
    app.get('/token', async (req, reply) => {
      const q = queryOf(req);
      const service = queryParam(q, 'service');
      if (service !== undefined && service !== issuer.service) throw new RegistryError('DENIED', 'unknown service');
      const { principal, claims } = await this.authenticate(req);
      // Only Basic (or no) credentials buy a token: exchanging a bearer token for a fresh
      // one would let any token, or a removed user's token, be renewed forever.
      if (claims) throw new RegistryError('UNAUTHORIZED', 'the token endpoint takes Basic credentials', { headers: { 'WWW-Authenticate': 'Basic realm="regmirror"' } });
      const t = grant(principal, queryParams(q, 'scope'));
      return sendJson(reply.header('cache-control', 'no-store'), { token: t.token, access_token: t.token, expires_in: t.expiresIn, issued_at: t.issuedAt });
    });
    app.post('/token', async (req, reply) => {
      const body = await readBodyCapped(req, 64 * 1024, () => new RegistryError('SIZE_INVALID', 'form too large', { status: 413 }));
      const form = new URLSearchParams(body.toString('utf8'));
      if (form.get('grant_type') !== 'password') {
        // containerd falls back to GET on 400 (refresh tokens are not issued).
        return reply.code(400).header('content-type', 'application/json').send(Buffer.from('{"error":"unsupported_grant_type"}'));
      }
      const user = form.get('username') ?? '';
      const pass = form.get('password') ?? '';
      // An empty user and password is anonymous here too (the same rule as empty Basic).
      const who = await this.basicUser(req, Buffer.from(`${user}:${pass}`).toString('base64'));
      const t = grant(who === null ? ANONYMOUS : this.principalFor(who), form.getAll('scope'));
      return sendJson(reply.header('cache-control', 'no-store'), { access_token: t.token, token: t.token, expires_in: t.expiresIn, issued_at: t.issuedAt });
    });
  }

  /** Filter for _catalog: only repositories the caller may pull. */
  async filterPullable(req: FastifyRequest, repos: string[]): Promise<string[]> {
    const { principal, claims } = await this.authenticate(req);
    return repos.filter((r) => isAllowed(this.rules, r, 'pull', principal) && (!claims || principal.user !== null || tokenGrants(claims, r, 'pull')));
  }
}

