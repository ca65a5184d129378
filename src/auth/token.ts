/**
 * Registry bearer tokens (distribution docs/spec/auth/jwt.md shape): ES256 JWTs with an
 * `access` claim listing repository scopes. The signing key comes from config or is
 * generated at first start and kept in the storage directory (mode 0600).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import type { Action } from './rules.js';

export interface AccessEntry {
  type: 'repository' | 'registry';
  name: string;
  actions: string[];
}

export interface TokenClaims {
  iss: string;
  sub: string;
  aud: string;
  exp: number;
  nbf: number;
  iat: number;
  jti: string;
  access: AccessEntry[];
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

export function loadOrCreateKey(file: string | null, generatedPath: string): KeyObject {
  const path = file ?? generatedPath;
  if (fs.existsSync(path)) return createPrivateKey(fs.readFileSync(path));
  if (file) throw new Error(`token key file ${file} does not exist`);
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(path, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return privateKey;
}

export class TokenIssuer {
  private readonly publicKey: KeyObject;
  private readonly kid: string;

  constructor(
    private readonly key: KeyObject,
    readonly issuer: string,
    readonly service: string,
    readonly ttlSeconds: number,
  ) {
    this.publicKey = createPublicKey(key);
    this.kid = b64url(this.publicKey.export({ type: 'spki', format: 'der' }).subarray(-16));
  }

  issue(subject: string, access: AccessEntry[]): { token: string; expiresIn: number; issuedAt: string } {
    const now = Math.floor(Date.now() / 1000);
    const claims: TokenClaims = {
      iss: this.issuer,
      sub: subject,
      aud: this.service,
      exp: now + this.ttlSeconds,
      nbf: now - 5,
      iat: now,
      jti: randomBytes(12).toString('hex'),
      access,
    };
    const head = b64url(JSON.stringify({ alg: 'ES256', typ: 'JWT', kid: this.kid }));
    const body = b64url(JSON.stringify(claims));
    const sig = sign('sha256', Buffer.from(`${head}.${body}`), { key: this.key, dsaEncoding: 'ieee-p1363' });
    return { token: `${head}.${body}.${b64url(sig)}`, expiresIn: this.ttlSeconds, issuedAt: new Date(now * 1000).toISOString() };
  }

  /** Verify signature, issuer, audience and time; null when invalid. */
  verify(token: string): TokenClaims | null {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    const [head, body, sig] = parts as [string, string, string];
    let ok = false;
    try {
      ok = verify('sha256', Buffer.from(`${head}.${body}`), { key: this.publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig, 'base64url'));
    } catch {
      return null;
    }
    if (!ok) return null;
    let claims: TokenClaims;
    try {
      const h = JSON.parse(Buffer.from(head, 'base64url').toString('utf8')) as { alg?: string };
      if (h.alg !== 'ES256') return null;
      claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TokenClaims;
    } catch {
      return null;
    }
    const now = Math.floor(Date.now() / 1000);
    if (claims.iss !== this.issuer || claims.aud !== this.service || claims.exp <= now || claims.nbf > now + 30) return null;
    if (!Array.isArray(claims.access)) return null;
    return claims;
  }
}

export function tokenGrants(claims: TokenClaims, repo: string, action: Action): boolean {
  return claims.access.some((a) => a.type === 'repository' && a.name === repo && (a.actions.includes(action) || a.actions.includes('*')));
}

/** Parse `repository:<name>:<actions>` scopes (a name may hold one `:` for host:port). */
export function parseScope(scope: string): { type: string; name: string; actions: string[] } | null {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first) return null;
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions: scope.slice(last + 1).split(',').filter(Boolean) };
}
