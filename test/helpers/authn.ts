/**
 * Client-auth plumbing for the security suites: htpasswd files (the real `htpasswd -B`
 * when installed, bcryptjs otherwise), Basic headers, JWT decoding, token requests, and
 * an `http`-like request function over any undici dispatcher (TLS agents, mTLS).
 */
import { type KeyObject, sign } from 'node:crypto';
import fs from 'node:fs/promises';
import bcrypt from 'bcryptjs';
import type { Dispatcher } from 'undici';
import { http, type Method, type Res } from './http.js';
import { findOnPath, runOk } from './tools.js';

/** Write an htpasswd file with bcrypt entries (cost 5: fast, still real bcrypt). */
export async function writeHtpasswd(file: string, users: Record<string, string>): Promise<void> {
  const bin = findOnPath('htpasswd');
  const lines: string[] = [];
  for (const [user, pass] of Object.entries(users)) {
    if (bin) {
      const r = await runOk(bin, ['-nbB', '-C', '5', user, pass], { timeoutMs: 10_000 });
      lines.push(r.stdout.trim());
    } else {
      lines.push(`${user}:${bcrypt.hashSync(pass, 5).replace(/^\$2b\$/, '$2y$')}`);
    }
  }
  await fs.writeFile(file, `${lines.join('\n')}\n`);
}

export function basic(user: string, pass: string): string {
  return `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
}

export interface Jwt {
  header: Record<string, unknown>;
  claims: { iss: string; sub: string; aud: string; exp: number; nbf: number; iat: number; jti: string; access: Array<{ type: string; name: string; actions: string[] }> };
  signature: string;
}

export function decodeJwt(token: string): Jwt {
  const [h, b, s] = token.split('.');
  if (!h || !b || s === undefined) throw new Error(`not a JWT: ${token.slice(0, 40)}`);
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Jwt['header'],
    claims: JSON.parse(Buffer.from(b, 'base64url').toString('utf8')) as Jwt['claims'],
    signature: s,
  };
}

/** helpers/http.ts `http`, through the given dispatcher (default: the shared agent); any method name. */
export function req(
  method: Method | string,
  url: string,
  opts: { headers?: Record<string, string | string[]>; body?: Buffer | string; dispatcher?: Dispatcher } = {},
): Promise<Res> {
  return http(method as Method, url, opts);
}

/** GET <base>/token for `scopes`, optionally with Basic credentials; returns the raw response. */
export function getToken(
  base: string,
  scopes: string[],
  opts: { service?: string; auth?: string; dispatcher?: Dispatcher } = {},
): Promise<Res> {
  const q = new URLSearchParams();
  if (opts.service) q.set('service', opts.service);
  for (const s of scopes) q.append('scope', s);
  return req('GET', `${base}/token?${q.toString()}`, { headers: opts.auth ? { authorization: opts.auth } : {}, dispatcher: opts.dispatcher });
}

/** Parse `Bearer realm="...",service="...",scope="..."` into its parameters. */
export function parseChallenge(header: string | undefined): { scheme: string; params: Record<string, string> } | null {
  if (!header) return null;
  const sp = header.indexOf(' ');
  if (sp < 0) return { scheme: header.toLowerCase(), params: {} };
  const params: Record<string, string> = {};
  for (const m of header.slice(sp + 1).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) params[m[1]!] = m[2]!;
  return { scheme: header.slice(0, sp).toLowerCase(), params };
}

/** Sign a JWT the way regmirror does (ES256, raw r||s signature), for forged/expired-token tests. */
export function signJwt(header: Record<string, unknown>, claims: Record<string, unknown>, key: KeyObject): string {
  const h = Buffer.from(JSON.stringify(header)).toString('base64url');
  const b = Buffer.from(JSON.stringify(claims)).toString('base64url');
  const sig = sign('sha256', Buffer.from(`${h}.${b}`), { key, dsaEncoding: 'ieee-p1363' });
  return `${h}.${b}.${sig.toString('base64url')}`;
}

export interface PushableImage {
  manifest: { bytes: Buffer; mediaType: string; digest: string };
  config: { bytes: Buffer; digest: string };
  layers: Array<{ bytes: Buffer; digest: string }>;
}

/** Push an image's blobs (monolithic POST) and its manifest under `ref`, with extra headers. */
export async function pushImageWith(
  base: string,
  repo: string,
  image: PushableImage,
  ref: string,
  opts: { headers?: Record<string, string>; dispatcher?: Dispatcher } = {},
): Promise<Res> {
  for (const b of [...image.layers, image.config]) {
    const r = await req('POST', `${base}/v2/${repo}/blobs/uploads/?digest=${b.digest}`, {
      headers: { ...opts.headers, 'content-type': 'application/octet-stream' },
      body: b.bytes,
      dispatcher: opts.dispatcher,
    });
    if (r.status !== 201) return r;
  }
  return req('PUT', `${base}/v2/${repo}/manifests/${ref}`, {
    headers: { ...opts.headers, 'content-type': image.manifest.mediaType },
    body: image.manifest.bytes,
    dispatcher: opts.dispatcher,
  });
}
