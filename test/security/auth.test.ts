/**
 * Client authentication and authorization against a live server (in-process, plain HTTP;
 * TLS is covered by tls.test.ts and realclients.test.ts):
 *  - htpasswd bcrypt Basic, safe default rules (anonymous pull, authenticated push/delete);
 *  - Docker token auth: the /v2/ challenge, GET and POST /token, scopes intersected with
 *    the rules, tokens enforced per repository, forged/tampered/expired tokens refused;
 *  - per-repository rules for anonymous, users and groups (first match wins), catalog
 *    filtering, cross-repository mount needing pull on the source;
 *  - namespaces[].push for upstream-mapped prefixes;
 *  - failed-login rate limiting per client address (429 + Retry-After);
 *  - empty Basic credentials (":", what skopeo/podman/CRI-O send without credentials) are
 *    anonymous everywhere, including /token, and never count as a failed login;
 *  - timing: unknown users cost the same as known users with a wrong password.
 */
import test, { type ExecutionContext } from 'ava';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Agent } from 'undici';
import { Htpasswd } from '../../src/auth/htpasswd.js';
import { basic, decodeJwt, getToken, parseChallenge, pushImageWith, req, signJwt, writeHtpasswd } from '../helpers/authn.js';
import { errorCode, sha256 } from '../helpers/http.js';
import { type TestServer, startServer, tempDir } from '../helpers/server.js';
import { waitFor } from '../helpers/tools.js';
import { sampleImage } from '../integration/_support.js';

const USERS = { alice: 'alice-Pw-1', bob: 'bob-Pw-2', carol: 'carol-Pw-3', dave: 'dave-Pw-4', colon: 'pa:ss:word' };
const A = basic('alice', USERS.alice);
const B = basic('bob', USERS.bob);
const C = basic('carol', USERS.carol);
const D = basic('dave', USERS.dave);

async function authServer(t: ExecutionContext, auth: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<TestServer & { htpasswd: string }> {
  const dir = await tempDir(t, 'regmirror-auth-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, USERS);
  const s = await startServer(t, { auth: { htpasswd, loginRateLimit: { maxFailures: 1000 }, ...auth }, ...extra });
  return { ...s, htpasswd };
}

function h(auth?: string): Record<string, string> {
  return auth ? { authorization: auth } : {};
}

/** Start an upload session as `auth` (the cheapest "push" request). */
function startUpload(base: string, repo: string, auth?: string) {
  return req('POST', `${base}/v2/${repo}/blobs/uploads/`, { headers: h(auth) });
}

test('default rules: anonymous pull; push and delete need a signed-in user (Basic challenge without token auth)', async (t) => {
  const s = await authServer(t);
  const base = s.url;

  const ping = await req('GET', `${base}/v2/`);
  t.is(ping.status, 401);
  t.is(ping.header('www-authenticate'), 'Basic realm="regmirror"');
  t.is((await req('GET', `${base}/v2/`, { headers: h(A) })).status, 200);

  const img = sampleImage('default-rules');
  const anonPush = await pushImageWith(base, 'lib/app', img, 'v1');
  t.is(anonPush.status, 401);
  t.is(errorCode(anonPush), 'UNAUTHORIZED');
  t.is(anonPush.header('www-authenticate'), 'Basic realm="regmirror"');
  t.is((await req('GET', `${base}/v2/lib/app/blobs/${img.config.digest}`)).status, 404, 'nothing was stored by the refused push');

  t.is((await pushImageWith(base, 'lib/app', img, 'v1', { headers: h(A) })).status, 201);
  const pulled = await req('GET', `${base}/v2/lib/app/manifests/v1`, { headers: { accept: img.manifest.mediaType } });
  t.is(pulled.status, 200, 'anonymous pull');
  t.deepEqual(pulled.body, img.manifest.bytes);
  t.is((await req('GET', `${base}/v2/lib/app/blobs/${img.layers[0]!.digest}`)).status, 200);

  t.is((await req('DELETE', `${base}/v2/lib/app/manifests/v1`)).status, 401, 'anonymous delete');
  t.is((await req('DELETE', `${base}/v2/lib/app/manifests/v1`, { headers: h(B) })).status, 202, 'any signed-in user may delete by default');

  // A password containing ':' (only the first ':' separates user and password).
  t.is((await startUpload(base, 'lib/colon', basic('colon', USERS.colon))).status, 202);
});

test('bad credentials are 401 (never silently anonymous), with the same answer for unknown users', async (t) => {
  const s = await authServer(t);
  const wrong = await req('GET', `${s.url}/v2/lib/app/tags/list`, { headers: h(basic('alice', 'not-her-password')) });
  const unknown = await req('GET', `${s.url}/v2/lib/app/tags/list`, { headers: h(basic('mallory', 'whatever')) });
  // An anonymous client may pull, but a request with wrong credentials must not fall back to anonymous.
  t.is(wrong.status, 401);
  t.is(unknown.status, 401);
  t.is(errorCode(wrong), 'UNAUTHORIZED');
  t.deepEqual(wrong.body, unknown.body, 'unknown user and wrong password look the same');
  t.is(wrong.header('www-authenticate'), unknown.header('www-authenticate'));
  t.false(wrong.body.toString().includes('not-her-password'));
});

test.serial('constant-time-ish: unknown users cost as much as known users with a wrong password', async (t) => {
  // htpasswd -B writes cost 5 by default; the dummy hash for unknown users must not be
  // much slower (or faster), or response time tells which user names exist.
  const dir = await tempDir(t, 'regmirror-timing-');
  const file = path.join(dir, 'htpasswd');
  await writeHtpasswd(file, { alice: USERS.alice });
  const hp = new Htpasswd(file);
  const time = async (user: string) => {
    const t0 = process.hrtime.bigint();
    t.false(await hp.verify(user, 'wrong-password'));
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  await time('alice');
  await time('nobody'); // warm-up (the dummy hash is made on first use)
  const known: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 21; i++) {
    known.push(await time('alice'));
    unknown.push(await time(`nobody${i}`));
  }
  // The fastest of many runs approximates the real cost and ignores load from other workers.
  const k = Math.min(...known);
  const u = Math.min(...unknown);
  t.log(`fastest verify: known user ${k.toFixed(2)} ms, unknown user ${u.toFixed(2)} ms`);
  t.true(Math.max(k, u) / Math.min(k, u) < 3, `known ${k.toFixed(2)} ms vs unknown ${u.toFixed(2)} ms`);
});

test('token auth: /v2/ challenge names realm and service; GET /token grants only what the rules allow', async (t) => {
  const s = await authServer(t, { token: { issuer: 'test-issuer', service: 'test-registry', ttl: '2m' } });
  const base = s.url;

  const ping = await req('GET', `${base}/v2/`);
  t.is(ping.status, 401);
  const ch = parseChallenge(ping.header('www-authenticate'));
  t.is(ch?.scheme, 'bearer');
  t.is(ch?.params.realm, `${base}/token`);
  t.is(ch?.params.service, 'test-registry');

  // Anonymous: pull only (default rules), even when asking for more.
  const anon = await getToken(base, ['repository:lib/app:pull,push'], { service: 'test-registry' });
  t.is(anon.status, 200);
  t.is(anon.header('cache-control'), 'no-store');
  const anonDoc = anon.json<{ token: string; access_token: string; expires_in: number; issued_at: string }>();
  t.is(anonDoc.token, anonDoc.access_token);
  t.is(anonDoc.expires_in, 120);
  const anonJwt = decodeJwt(anonDoc.token);
  t.is(anonJwt.header.alg, 'ES256');
  t.is(anonJwt.claims.iss, 'test-issuer');
  t.is(anonJwt.claims.aud, 'test-registry');
  t.is(anonJwt.claims.sub, '');
  t.is(anonJwt.claims.exp - anonJwt.claims.iat, 120, 'short-lived');
  t.deepEqual(anonJwt.claims.access, [{ type: 'repository', name: 'lib/app', actions: ['pull'] }]);

  // A user: what was asked for and allowed; `*` expands to pull, push, delete.
  const alice = await getToken(base, ['repository:lib/app:pull,push', 'repository:lib/other:*'], { service: 'test-registry', auth: A });
  t.is(alice.status, 200);
  const aliceJwt = decodeJwt(alice.json<{ token: string }>().token);
  t.is(aliceJwt.claims.sub, 'alice');
  t.deepEqual(aliceJwt.claims.access, [
    { type: 'repository', name: 'lib/app', actions: ['pull', 'push'] },
    { type: 'repository', name: 'lib/other', actions: ['pull', 'push', 'delete'] },
  ]);

  // Several scopes in one parameter; invalid names and non-repository scopes are dropped.
  const mixed = await getToken(base, ['repository:a/b:pull repository:../etc:pull registry:catalog:* repository:UPPER:pull nonsense'], { auth: A });
  t.deepEqual(decodeJwt(mixed.json<{ token: string }>().token).claims.access, [{ type: 'repository', name: 'a/b', actions: ['pull'] }]);

  // Wrong service and wrong credentials.
  const badService = await getToken(base, ['repository:lib/app:pull'], { service: 'someone-else' });
  t.is(badService.status, 403);
  t.is(errorCode(badService), 'DENIED');
  const badCreds = await getToken(base, ['repository:lib/app:pull'], { auth: basic('alice', 'wrong') });
  t.is(badCreds.status, 401);
  t.false(badCreds.body.toString().includes('token'), 'no token in an error body');
});

test('token auth: tokens are enforced per repository and per action', async (t) => {
  const s = await authServer(t, { token: { service: 'reg' } });
  const base = s.url;
  const tok = async (scopes: string[], auth?: string) => (await getToken(base, scopes, { service: 'reg', auth })).json<{ token: string }>().token;
  const bearer = (x: string) => ({ authorization: `Bearer ${x}` });

  const aliceApp = await tok(['repository:lib/app:pull,push'], A);
  t.is((await req('GET', `${base}/v2/`, { headers: bearer(aliceApp) })).status, 200);
  const img = sampleImage('token-scopes');
  t.is((await pushImageWith(base, 'lib/app', img, 'v1', { headers: bearer(aliceApp) })).status, 201);

  // Same user, another repository: the token does not cover it.
  const other = await startUpload(base, 'lib/other', `Bearer ${aliceApp}`);
  t.is(other.status, 401);
  const ch = parseChallenge(other.header('www-authenticate'));
  t.is(ch?.params.error, 'insufficient_scope');
  t.is(ch?.params.scope, 'repository:lib/other:pull,push');
  // Same repository, an action not in the token.
  const del = await req('DELETE', `${base}/v2/lib/app/manifests/v1`, { headers: bearer(aliceApp) });
  t.is(del.status, 401);
  t.is(parseChallenge(del.header('www-authenticate'))?.params.scope, 'repository:lib/app:delete');

  // Anonymous pull token: pull works, push does not.
  const anonPull = await tok(['repository:lib/app:pull,push']);
  t.is((await req('GET', `${base}/v2/lib/app/manifests/v1`, { headers: { ...bearer(anonPull), accept: img.manifest.mediaType } })).status, 200);
  t.is((await startUpload(base, 'lib/app', `Bearer ${anonPull}`)).status, 401);

  // Lower-case scheme is accepted (RFC 7235: schemes are case-insensitive).
  t.is((await startUpload(base, 'lib/app', `bearer ${aliceApp}`)).status, 202);

  // POST /token (OAuth2 password grant, what containerd tries first).
  const form = (fields: Record<string, string>) =>
    req('POST', `${base}/token`, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() });
  const posted = await form({ grant_type: 'password', username: 'bob', password: USERS.bob, service: 'reg', scope: 'repository:lib/bob:pull,push', client_id: 'test' });
  t.is(posted.status, 200);
  const bobTok = posted.json<{ access_token: string }>().access_token;
  t.deepEqual(decodeJwt(bobTok).claims.access, [{ type: 'repository', name: 'lib/bob', actions: ['pull', 'push'] }]);
  t.is((await startUpload(base, 'lib/bob', `Bearer ${bobTok}`)).status, 202);
  t.is((await form({ grant_type: 'password', username: 'bob', password: 'nope', scope: 'repository:lib/bob:pull' })).status, 401);
  const refresh = await form({ grant_type: 'refresh_token', refresh_token: 'x', service: 'reg' });
  t.is(refresh.status, 400);
  t.is(refresh.json<{ error: string }>().error, 'unsupported_grant_type');
});

test('token auth: a bearer token cannot be exchanged at /token for a new one (no endless renewal)', async (t) => {
  const s = await authServer(t, { token: { service: 'reg' } });
  const first = (await getToken(s.url, ['repository:lib/app:pull,push'], { auth: A })).json<{ token: string }>().token;
  // Renewing with the token itself would let a leaked (or revoked user's) token live forever.
  const renewed = await getToken(s.url, ['repository:lib/app:pull,push'], { auth: `Bearer ${first}` });
  if (renewed.status === 200) {
    const access = decodeJwt(renewed.json<{ token: string }>().token).claims;
    t.fail(`a bearer token was renewed at /token (sub=${access.sub}, access=${JSON.stringify(access.access)})`);
    return;
  }
  t.is(renewed.status, 401);
});

test('forged, tampered, expired and foreign tokens are refused', async (t) => {
  const s = await authServer(t, { token: { issuer: 'iss', service: 'svc' } });
  const base = s.url;
  const keyFile = path.join(s.dataDir, 'storage', 'token-key.pem');
  const st = await fs.stat(keyFile);
  t.is(st.mode & 0o777, 0o600, 'generated signing key is private');
  const key = createPrivateKey(await fs.readFile(keyFile));
  const good = (await getToken(base, ['repository:lib/app:pull'], { auth: A })).json<{ token: string }>().token;
  const { header, claims } = decodeJwt(good);
  const now = Math.floor(Date.now() / 1000);
  const pushClaims = { ...claims, access: [{ type: 'repository', name: 'lib/app', actions: ['pull', 'push'] }] };

  const tryPush = (token: string) => startUpload(base, 'lib/app', `Bearer ${token}`);
  // Positive control: a token signed with the server key and valid claims works.
  t.is((await tryPush(signJwt(header, pushClaims, key))).status, 202);

  const [h0, , s0] = good.split('.');
  const cases: Record<string, string> = {
    'payload swapped, old signature': `${h0}.${Buffer.from(JSON.stringify(pushClaims)).toString('base64url')}.${s0}`,
    'alg none': `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(pushClaims)).toString('base64url')}.`,
    'alg HS256 header': signJwt({ ...header, alg: 'HS256' }, pushClaims, key),
    'foreign key': signJwt(header, pushClaims, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey),
    expired: signJwt(header, { ...pushClaims, iat: now - 600, nbf: now - 600, exp: now - 1 }, key),
    'not yet valid': signJwt(header, { ...pushClaims, nbf: now + 3600, exp: now + 7200 }, key),
    'wrong audience': signJwt(header, { ...pushClaims, aud: 'other-service' }, key),
    'wrong issuer': signJwt(header, { ...pushClaims, iss: 'other-issuer' }, key),
    'no access claim': signJwt(header, { ...pushClaims, access: undefined }, key),
    'two parts': `${h0}.${s0}`,
    garbage: 'eyJ.eyJ.AAA',
  };
  for (const [what, token] of Object.entries(cases)) {
    const r = await tryPush(token);
    t.is(r.status, 401, what);
    t.is(errorCode(r), 'UNAUTHORIZED', what);
    t.is(parseChallenge(r.header('www-authenticate'))?.params.error, 'invalid_token', what);
  }
  // A bad token is never "anonymous": even pulls (which anonymous may do) are refused.
  t.is((await req('GET', `${base}/v2/lib/app/tags/list`, { headers: { authorization: `Bearer ${cases.expired}` } })).status, 401);
});

test('access rules per repository pattern: users, groups, authenticated and anonymous; first match wins', async (t) => {
  const rules = [
    { repositories: 'team/**', pull: ['group:team'], push: ['group:team'], delete: ['alice'] },
    { repositories: 'public/*', pull: ['anonymous'], push: ['bob'], delete: [] },
    { repositories: 'private/**', pull: ['authenticated'], push: ['authenticated'], delete: ['authenticated'] },
    { repositories: 'private/locked', pull: ['anonymous'], push: ['anonymous'], delete: ['anonymous'] }, // shadowed by the rule above
  ];
  const s = await authServer(t, { groups: { team: ['alice', 'carol'] }, rules, token: { service: 'reg' } });
  const base = s.url;
  type Who = 'anon' | 'alice' | 'bob' | 'carol' | 'dave';
  const creds: Record<Who, string | undefined> = { anon: undefined, alice: A, bob: B, carol: C, dave: D };
  // repo -> who -> allowed actions (p=pull, u=push, d=delete)
  const matrix: Record<string, Record<Who, string>> = {
    'team/app': { anon: '', alice: 'pud', bob: '', carol: 'pu', dave: '' },
    team: { anon: '', alice: 'pud', bob: '', carol: 'pu', dave: '' },
    'team/a/b/c': { anon: '', alice: 'pud', bob: '', carol: 'pu', dave: '' },
    'public/x': { anon: 'p', alice: 'p', bob: 'pu', carol: 'p', dave: 'p' },
    'public/x/deeper': { anon: '', alice: '', bob: '', carol: '', dave: '' }, // `*` stays in one component; no rule matches
    'private/locked': { anon: '', alice: 'pud', bob: 'pud', carol: 'pud', dave: 'pud' },
    'elsewhere/repo': { anon: '', alice: '', bob: '', carol: '', dave: '' }, // no rule: nobody
  };
  const digest = sha256('no such manifest');
  const probes = {
    p: (repo: string, a?: string) => req('GET', `${base}/v2/${repo}/tags/list`, { headers: h(a) }),
    u: (repo: string, a?: string) => startUpload(base, repo, a),
    d: (repo: string, a?: string) => req('DELETE', `${base}/v2/${repo}/manifests/${digest}`, { headers: h(a) }),
  };
  const actionName = { p: 'pull', u: 'push', d: 'delete' } as const;
  for (const [repo, row] of Object.entries(matrix)) {
    for (const [who, allowed] of Object.entries(row) as Array<[Who, string]>) {
      for (const act of ['p', 'u', 'd'] as const) {
        const r = await probes[act](repo, creds[who]);
        const label = `${who} ${actionName[act]} ${repo} -> ${r.status}`;
        if (allowed.includes(act)) t.true(r.status !== 401 && r.status !== 403, label);
        else t.is(r.status, who === 'anon' ? 401 : 403, label);
      }
      // The token endpoint grants exactly the same set.
      const tok = await getToken(base, [`repository:${repo}:pull,push,delete`], { service: 'reg', auth: creds[who] });
      const granted = decodeJwt(tok.json<{ token: string }>().token).claims.access[0]?.actions ?? [];
      const expected = [...allowed].map((c) => actionName[c as 'p' | 'u' | 'd']);
      t.deepEqual(granted, expected, `token for ${who} on ${repo}`);
    }
  }
});

test('catalog lists only pullable repositories; mount needs pull on the source repository', async (t) => {
  const rules = [
    { repositories: 'team/**', pull: ['group:team'], push: ['group:team'], delete: [] },
    { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: [] },
  ];
  const s = await authServer(t, { groups: { team: ['alice'] }, rules });
  const base = s.url;
  t.is((await pushImageWith(base, 'team/secret', sampleImage('catalog-team'), 'v1', { headers: h(A) })).status, 201);
  t.is((await pushImageWith(base, 'open/thing', sampleImage('catalog-open'), 'v1', { headers: h(B) })).status, 201);

  const list = async (a?: string) => (await req('GET', `${base}/v2/_catalog`, { headers: h(a) })).json<{ repositories: string[] }>().repositories;
  t.deepEqual(await list(), ['open/thing']);
  t.deepEqual(await list(B), ['open/thing']);
  t.deepEqual(await list(A), ['open/thing', 'team/secret']);

  const secretBlob = sampleImage('catalog-team').layers[0]!.digest;
  // bob may push to bob/mine but may not read team/secret: no mount, a normal upload starts.
  const denied = await req('POST', `${base}/v2/bob/mine/blobs/uploads/?mount=${secretBlob}&from=team/secret`, { headers: h(B) });
  t.is(denied.status, 202);
  t.is((await req('HEAD', `${base}/v2/bob/mine/blobs/${secretBlob}`)).status, 404, 'blob not linked into bob/mine');
  // alice can read the source: mounted.
  const mounted = await req('POST', `${base}/v2/alice/mine/blobs/uploads/?mount=${secretBlob}&from=team/secret`, { headers: h(A) });
  t.is(mounted.status, 201);
});

test('namespaces[].push: pushing under an upstream-mapped prefix only where configured', async (t) => {
  const s = await authServer(
    t,
    {},
    {
      // Port 9 (discard) on loopback: nothing listens; pushes must never need the upstream anyway.
      upstreams: { 'up.example': { endpoints: ['http://127.0.0.1:9'] } },
      namespaces: [
        { prefix: 'hub', upstream: 'up.example' },
        { prefix: 'hubrw', upstream: 'up.example', push: true },
        { prefix: 'mine', upstream: 'local' },
      ],
    },
  );
  const base = s.url;
  const ro = await startUpload(base, 'hub/app', A);
  t.is(ro.status, 403);
  t.is(errorCode(ro), 'DENIED');
  t.regex(ro.json<{ errors: Array<{ message: string }> }>().errors[0]!.message, /namespaces\[\]\.push/);
  const bytes = Buffer.from('monolithic body into a read-only namespace');
  const mono = await req('POST', `${base}/v2/hub/app/blobs/uploads/?digest=${sha256(bytes)}`, { headers: h(A), body: bytes });
  t.is(mono.status, 403);
  t.is((await req('DELETE', `${base}/v2/hub/app/manifests/${sha256('x')}`, { headers: h(A) })).status, 403);
  t.is((await startUpload(base, 'hub/app')).status, 401, 'authentication is checked first');

  t.is((await startUpload(base, 'hubrw/app', A)).status, 202);
  t.is((await pushImageWith(base, 'hubrw/app', sampleImage('ns-push'), 'v1', { headers: h(A) })).status, 201);
  t.is((await startUpload(base, 'mine/app', A)).status, 202, 'local namespaces accept pushes by default');
  t.is((await startUpload(base, 'elsewhere/app', A)).status, 202, 'paths outside namespaces are local');
});

test('the same wrong credentials sent again count once (containerd resends a refused pull secret); different ones each count', async (t) => {
  const s = await authServer(t, { loginRateLimit: { maxFailures: 3, window: '10m' }, token: { service: 'reg' } });
  const base = s.url;
  const stale = basic('alice', 'last-years-password');
  for (let i = 0; i < 20; i++) t.is((await startUpload(base, 'lib/app', stale)).status, 401, `resend ${i + 1}: still a plain 401`);
  t.is((await getToken(base, ['repository:lib/app:pull'], { auth: stale })).status, 401, 'also at /token');
  t.is((await startUpload(base, 'lib/app', A)).status, 202, 'the address is not blocked');
  // Guessing needs different passwords: each counts (the success above reset the count).
  for (let i = 0; i < 3; i++) t.is((await startUpload(base, 'lib/app', basic('alice', `guess-${i}`))).status, 401);
  t.is((await startUpload(base, 'lib/app', basic('alice', 'guess-3'))).status, 429);
  t.is((await startUpload(base, 'lib/app', A)).status, 429, 'blocked means blocked');
});

test('failed logins are rate-limited per client address: 429 with Retry-After', async (t) => {
  const s = await authServer(t, { loginRateLimit: { maxFailures: 3, window: '30s' }, token: { service: 'reg' } });
  const base = s.url;
  for (let i = 0; i < 3; i++) t.is((await startUpload(base, 'lib/app', basic('alice', `wrong-${i}`))).status, 401, `failure ${i + 1}`);
  const limited = await startUpload(base, 'lib/app', basic('alice', 'wrong-3'));
  t.is(limited.status, 429);
  t.is(errorCode(limited), 'TOOMANYREQUESTS');
  const retry = Number(limited.header('retry-after'));
  t.true(Number.isInteger(retry) && retry >= 1 && retry <= 30, `Retry-After ${limited.header('retry-after')}`);
  // Blocked means blocked: the right password is refused too, also at the token endpoints.
  t.is((await startUpload(base, 'lib/app', A)).status, 429);
  t.is((await getToken(base, ['repository:lib/app:pull'], { auth: A })).status, 429);
  const posted = await req('POST', `${base}/token`, {
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'password', username: 'alice', password: USERS.alice }).toString(),
  });
  t.is(posted.status, 429);
  // Requests without credentials are not login attempts.
  t.is((await req('GET', `${base}/v2/lib/app/tags/list`)).status, 404);

  // Another client address (127.0.0.2 is loopback too) is not affected.
  const other = new Agent({ localAddress: '127.0.0.2' });
  t.teardown(() => other.close());
  const fromOther = await req('POST', `${base}/v2/lib/app/blobs/uploads/`, { headers: h(A), dispatcher: other });
  t.is(fromOther.status, 202);
});

test('failed-login window: a success resets the count, and the block expires', async (t) => {
  // Generous enough that two sequential failures fit in it on a loaded machine; the expiry
  // is awaited by polling (a blocked request is refused before the password check, so
  // polling does not extend the block), and checked against the window from below.
  const windowMs = 8_000;
  const s = await authServer(t, { loginRateLimit: { maxFailures: 2, window: `${windowMs}ms` }, token: { service: 'reg' } });
  const base = s.url;
  const form = (password: string) =>
    req('POST', `${base}/token`, {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'password', username: 'bob', password, scope: 'repository:x/y:pull' }).toString(),
    });
  t.is((await form('bad-1')).status, 401);
  t.is((await form(USERS.bob)).status, 200, 'one failure does not block');
  const firstFailureSent = Date.now();
  t.is((await form('bad-1')).status, 401, 'the success reset the count');
  t.is((await form('bad-2')).status, 401);
  t.is((await form(USERS.bob)).status, 429, 'two failures in the window: blocked');
  const unblockedAt = await waitFor(async () => ((await form(USERS.bob)).status === 200 ? Date.now() : undefined), windowMs + 60_000, 'the block to end', 250);
  t.true(unblockedAt >= firstFailureSent + windowMs, `blocked for the whole window (${unblockedAt - firstFailureSent} ms >= ${windowMs} ms)`);
});

/** What skopeo, podman and CRI-O send to a Basic challenge when they have no credentials. */
const EMPTY = 'Basic Og==';

test('empty Basic credentials (":") are anonymous with Basic-only auth: pull 200, push 401 with the challenge, never a failed login', async (t) => {
  const s = await authServer(t, { token: null, loginRateLimit: { maxFailures: 3, window: '60s' } });
  const base = s.url;
  t.is(basic('', ''), EMPTY);
  const img = sampleImage('empty-basic');
  t.is((await pushImageWith(base, 'lib/app', img, 'v1', { headers: h(A) })).status, 201);

  const pull = await req('GET', `${base}/v2/lib/app/manifests/v1`, { headers: { authorization: EMPTY, accept: img.manifest.mediaType } });
  t.is(pull.status, 200, 'anonymous pull with empty Basic');
  t.deepEqual(pull.body, img.manifest.bytes);
  const blob = await req('GET', `${base}/v2/lib/app/blobs/${img.layers[0]!.digest}`, { headers: h(EMPTY) });
  t.is(blob.status, 200);
  t.deepEqual(blob.body, img.layers[0]!.bytes);

  // Where anonymous may not act, empty Basic gets exactly what no credentials get.
  const noCreds = await startUpload(base, 'lib/app');
  const push = await startUpload(base, 'lib/app', EMPTY);
  t.is(push.status, 401);
  t.is(errorCode(push), 'UNAUTHORIZED');
  t.is(push.header('www-authenticate'), 'Basic realm="regmirror"');
  t.deepEqual(push.body, noCreds.body, 'same answer as a request without credentials');
  t.is((await req('DELETE', `${base}/v2/lib/app/manifests/v1`, { headers: h(EMPTY) })).status, 401);
  const ping = await req('GET', `${base}/v2/`, { headers: h(EMPTY) });
  t.is(ping.status, 401);
  t.is(ping.header('www-authenticate'), 'Basic realm="regmirror"');

  // A busy node sends many of these from one address: none is a failed login (the limit is 3).
  const statuses = new Map<number, number>();
  for (let i = 0; i < 50; i++) {
    const r = i % 2 === 0 ? await req('HEAD', `${base}/v2/lib/app/manifests/v1`, { headers: h(EMPTY) }) : await startUpload(base, 'lib/app', EMPTY);
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  }
  t.deepEqual([...statuses].sort(), [[200, 25], [401, 25]], 'pulls 200, pushes 401, never 429');
  t.is((await startUpload(base, 'lib/app', A)).status, 202, 'the address is not blocked');

  // A user without a password and a password without a user are not anonymous: failed logins.
  for (const half of [basic('alice', ''), basic('', USERS.alice)]) {
    const r = await req('GET', `${base}/v2/lib/app/manifests/v1`, { headers: h(half) });
    t.is(r.status, 401, `${half} is a failed login, not anonymous`);
    t.is(errorCode(r), 'UNAUTHORIZED');
  }
  // ...and they count: with a real wrong password that makes three, then the address is blocked.
  t.is((await startUpload(base, 'lib/app', basic('alice', 'wrong'))).status, 401);
  t.is((await startUpload(base, 'lib/app', basic('alice', 'wrong-again'))).status, 429);
  t.is((await startUpload(base, 'lib/app', A)).status, 429, 'blocked means blocked');
  // Empty Basic is no login attempt, so it still pulls anonymously from the blocked address.
  t.is((await req('GET', `${base}/v2/lib/app/manifests/v1`, { headers: h(EMPTY) })).status, 200);
  t.is((await startUpload(base, 'lib/app', EMPTY)).status, 401);
});

test('token endpoint: empty Basic (GET) or an empty user and password (POST) get an anonymous token, never counted', async (t) => {
  const rules = [
    { repositories: 'private/**', pull: ['authenticated'], push: ['authenticated'], delete: [] },
    { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: ['authenticated'] },
  ];
  const s = await authServer(t, { rules, token: { service: 'reg' }, loginRateLimit: { maxFailures: 2, window: '60s' } });
  const base = s.url;
  const scopes = ['repository:lib/app:pull,push,delete', 'repository:private/x:pull'];
  const anonymous = [
    { type: 'repository', name: 'lib/app', actions: ['pull'] },
    { type: 'repository', name: 'private/x', actions: [] },
  ];
  const form = (username: string, password: string) =>
    req('POST', `${base}/token`, {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'password', username, password, service: 'reg', scope: scopes.join(' ') }).toString(),
    });
  // Both limits (2) are far below the number of requests.
  for (let i = 0; i < 10; i++) {
    const got = await getToken(base, scopes, { service: 'reg', auth: EMPTY });
    t.is(got.status, 200, `GET /token with empty Basic #${i}`);
    const jwt = decodeJwt(got.json<{ token: string }>().token);
    t.is(jwt.claims.sub, '');
    t.deepEqual(jwt.claims.access, anonymous, 'only what anonymous may do');
    const posted = await form('', '');
    t.is(posted.status, 200, `POST /token with an empty user and password #${i}`);
    t.deepEqual(decodeJwt(posted.json<{ token: string }>().token).claims.access, anonymous);
  }
  // The same scopes without any credentials: the identical grant.
  t.deepEqual(decodeJwt((await getToken(base, scopes, { service: 'reg' })).json<{ token: string }>().token).claims.access, anonymous);
  // alice still gets her own grant.
  const alice = decodeJwt((await getToken(base, scopes, { service: 'reg', auth: A })).json<{ token: string }>().token);
  t.deepEqual(alice.claims.access, [
    { type: 'repository', name: 'lib/app', actions: ['pull', 'push', 'delete'] },
    { type: 'repository', name: 'private/x', actions: ['pull'] },
  ]);
  // Half-empty credentials are failed logins at both endpoints, and count towards the limit.
  t.is((await getToken(base, scopes, { service: 'reg', auth: basic('alice', '') })).status, 401);
  t.is((await form('', USERS.alice)).status, 401);
  t.is((await getToken(base, scopes, { service: 'reg', auth: A })).status, 429, 'two failures: blocked');
  t.is((await getToken(base, scopes, { service: 'reg', auth: EMPTY })).status, 200, 'empty Basic is not a login attempt');
});

test('htpasswd changes apply without a restart (add, rotate, remove a user)', async (t) => {
  const s = await authServer(t);
  const probe = (a: string) => startUpload(s.url, 'lib/app', a);
  t.is((await probe(basic('erin', 'erin-pw'))).status, 401);
  const bump = async () => {
    const future = new Date(Date.now() + 5_000 + Math.floor(Math.random() * 10_000));
    await fs.utimes(s.htpasswd, future, future); // make sure mtime changes even on coarse clocks
  };
  await writeHtpasswd(s.htpasswd, { ...USERS, erin: 'erin-pw' });
  await bump();
  t.is((await probe(basic('erin', 'erin-pw'))).status, 202, 'added');
  await writeHtpasswd(s.htpasswd, { ...USERS, erin: 'erin-new' });
  await bump();
  t.is((await probe(basic('erin', 'erin-pw'))).status, 401, 'old password no longer works (success cache dropped)');
  t.is((await probe(basic('erin', 'erin-new'))).status, 202, 'rotated');
  await writeHtpasswd(s.htpasswd, USERS);
  await bump();
  t.is((await probe(basic('erin', 'erin-new'))).status, 401, 'removed');
});

test('malformed Authorization values are 401 or treated as no credentials, never 5xx or a grant', async (t) => {
  const s = await authServer(t, { token: { service: 'reg' } });
  const values = [
    'Basic',
    'Basic ',
    'Basic !!!!',
    'Basic ====',
    `Basic ${Buffer.from('nocolon').toString('base64')}`,
    `Basic ${Buffer.from(':onlypassword').toString('base64')}`,
    `Basic ${Buffer.from('alice:').toString('base64')}`,
    `Basic ${Buffer.from([0xff, 0xfe, 0x3a, 0x00, 0x80]).toString('base64')}`,
    `Basic ${'A'.repeat(6000)}`,
    'Bearer',
    'Bearer ',
    'Bearer a.b.c',
    'Bearer ....',
    `Bearer ${'x'.repeat(6000)}`,
    'Bearer eyJhbGciOiJub25lIn0.e30.',
    'Digest username="alice", realm="x"',
    'Negotiate YIIB',
    'alice:alice-Pw-1',
    ' Basic x',
  ];
  for (const v of values) {
    const r = await startUpload(s.url, 'lib/app', v);
    t.true(r.status === 401, `push with ${JSON.stringify(v.slice(0, 40))} -> ${r.status}`);
    const pull = await req('GET', `${s.url}/v2/lib/app/tags/list`, { headers: { authorization: v } });
    t.true(pull.status < 500 && pull.status !== 200, `pull with ${JSON.stringify(v.slice(0, 40))} -> ${pull.status}`);
  }
  t.is((await req('GET', `${s.url}/v2/`, { headers: h(A) })).status, 200, 'still serving');
});
