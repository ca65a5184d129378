/**
 * Upstream authentication (protocol.md 3): Docker Hub-style Bearer challenge with the realm
 * on another port, token caching and expiry, Basic credentials only to the realm, gcr-style
 * `_json_key` from googleKeyFile, docker config.json auths, a static bearer token, and
 * blob redirects to a CDN that rejects any Authorization header. Secrets must never reach
 * the logs. Every test counts the requests each fake server saw and the bytes it sent.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { startServer, tempDir, type TestServer } from '../helpers/server.js';
import { http } from '../helpers/http.js';
import type { FakeUpstream, FakeUpstreamOptions, RequestRecord } from '../fixtures/fake-upstream.js';
import type { Image } from '../fixtures/images.js';
import { sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry } from './_pullthrough.js';

const UP = 'auth.test';
const PASSWORD = 'pw-Sup3r-s3cret-7731';

async function setup(t: ExecutionContext, fakeOpts: FakeUpstreamOptions, upstream: Record<string, unknown> = {}): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, fakeOpts);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, upstream) }, defaultUpstream: UP });
  return { fake, s };
}

/** Pull a whole image (manifest by tag, then config and layers) and check the bytes. */
async function pull(t: ExecutionContext, s: TestServer, repo: string, img: Image, tag = 'v1'): Promise<void> {
  const m = await http('GET', `${s.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ACCEPT_ALL } });
  t.is(m.status, 200, `${repo}:${tag} manifest: ${m.body.toString().slice(0, 200)}`);
  t.deepEqual(m.body, img.manifest.bytes);
  for (const b of [img.config, ...img.layers]) {
    const r = await http('GET', `${s.url}/v2/${repo}/blobs/${b.digest}`);
    t.is(r.status, 200, `${repo} blob ${b.digest}: ${r.body.toString().slice(0, 200)}`);
    t.true(r.body.equals(b.bytes));
  }
}

function imageBytes(img: Image): number {
  return img.manifest.size + img.config.size + img.layers.reduce((n, l) => n + l.size, 0);
}

function bearer(r: RequestRecord): string | undefined {
  const h = r.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7) : undefined;
}

/** No secret in any captured log line. */
function assertNoSecrets(t: ExecutionContext, s: TestServer, secrets: string[]): void {
  const all = s.logs.join('\n');
  t.true(s.logs.length > 0);
  for (const secret of secrets) t.false(all.includes(secret), `log leaks ${secret.slice(0, 12)}...`);
}

test('Bearer flow: realm on another port, Basic credentials only to the realm, token cached and reused', async (t) => {
  const { fake, s } = await setup(
    t,
    { auth: 'bearer', token: { username: 'alice', password: PASSWORD } },
    { credentials: { username: 'alice', password: PASSWORD } },
  );
  const img = sampleImage('bearer');
  const other = sampleImage('bearer-other');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('team/other', other, 'v1');

  await pull(t, s, 'library/app', img);
  const tokens = fake.find({ server: 'token' });
  t.is(tokens.length, 1, 'one token for the repository');
  t.is(tokens[0]!.query.get('service'), 'fake-registry');
  t.deepEqual(tokens[0]!.query.getAll('scope'), ['repository:library/app:pull']);
  t.is(tokens[0]!.headers.authorization, `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`, 'Basic goes to the realm');
  const reg = fake.find();
  t.is(reg.filter((r) => r.status === 401).length, 1, 'only the very first request was challenged');
  t.is(reg[0]!.headers.authorization, undefined, 'nothing sent before the challenge');
  const issued = [...fake.issuedTokens.keys()][0]!;
  for (const r of reg.slice(1)) t.is(bearer(r), issued, `${r.method} ${r.path} reuses the token`);
  t.false(reg.some((r) => r.headers.authorization?.startsWith('Basic ')), 'the registry never sees the Basic credentials');
  t.is(reg.length, 1 + 1 + 3, '401, manifest, three blobs');
  t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);

  // Another repository needs its own scope: one more token, then reuse again.
  await pull(t, s, 'team/other', other);
  t.is(fake.tokenRequests, 2);
  t.deepEqual(fake.find({ server: 'token' })[1]!.query.getAll('scope'), ['repository:team/other:pull']);
  // The challenge is remembered per host: the second repository was never challenged.
  t.is(fake.find().filter((r) => r.status === 401).length, 1);

  // Back to the first repository: still the cached token.
  t.is((await http('GET', `${s.url}/v2/library/app/manifests/${img.manifest.digest}`)).status, 200, 'local');
  const cold = sampleImage('bearer-cold');
  fake.addImage('library/app', cold, 'v2');
  t.is((await http('GET', `${s.url}/v2/library/app/manifests/v2`, { headers: { accept: ACCEPT_ALL } })).status, 200);
  t.is(fake.tokenRequests, 2, 'token for library/app reused');

  assertNoSecrets(t, s, [PASSWORD, Buffer.from(`alice:${PASSWORD}`).toString('base64'), ...fake.issuedTokens.keys()]);
});

test('concurrent cold requests share one token fetch', async (t) => {
  const { fake, s } = await setup(t, { auth: 'bearer' });
  const imgs = Array.from({ length: 6 }, (_, i) => sampleImage(`tok-sf-${i}`));
  imgs.forEach((img, i) => fake.addImage('library/app', img, `t${i}`));
  fake.faults.push({ server: 'token', headerDelayMs: 200 });
  const rs = await Promise.all(imgs.map((_, i) => http('GET', `${s.url}/v2/library/app/manifests/t${i}`, { headers: { accept: ACCEPT_ALL } })));
  rs.forEach((r, i) => t.deepEqual(r.body, imgs[i]!.manifest.bytes));
  t.is(fake.tokenRequests, 1);
  t.is(fake.manifestRequests('GET').filter((r) => r.status === 200).length, 6);
  const manifestBytes = fake.manifestRequests('GET').filter((r) => r.status === 200).reduce((n, r) => n + r.bytes, 0);
  t.is(manifestBytes, imgs.reduce((n, i) => n + i.manifest.size, 0), 'each manifest body sent once');
  t.is(fake.blobBytes(), 0);
});

const expiryCases: Array<{ title: string; token: FakeUpstreamOptions['token']; expectTokens: (requests: number) => number }> = [
  { title: 'fresh token (expires_in 300): reused', token: { expiresIn: 300 }, expectTokens: () => 1 },
  { title: 'expires_in missing: 60 s default, reused', token: { expiresIn: null }, expectTokens: () => 1 },
  { title: 'expires_in 10 issued 30 s ago: raised to the 60 s minimum, reused', token: { expiresIn: 10, issuedAtOffsetSec: -30 }, expectTokens: () => 1 },
  { title: 'issued an hour ago (expired): fetched again for every request', token: { expiresIn: 60, issuedAtOffsetSec: -3600 }, expectTokens: (n) => n },
  { title: 'expires in 5 s (inside the refresh margin): fetched again', token: { expiresIn: 60, issuedAtOffsetSec: -55 }, expectTokens: (n) => n },
  { title: 'access_token field only: accepted and reused', token: { field: 'access_token' }, expectTokens: () => 1 },
  { title: 'token and access_token both present: reused', token: { field: 'both' }, expectTokens: () => 1 },
];

for (const c of expiryCases) {
  test(`token expiry: ${c.title}`, async (t) => {
    const { fake, s } = await setup(t, { auth: 'bearer', token: c.token });
    const img = sampleImage(`expiry-${c.title}`);
    fake.addImage('library/app', img, 'v1');
    await pull(t, s, 'library/app', img);
    // Authorised requests: manifest + 3 blobs. Each needs a valid token at the time it is made.
    const authorised = fake.find().filter((r) => r.status === 200);
    t.is(authorised.length, 4);
    t.is(fake.tokenRequests, c.expectTokens(authorised.length));
    for (const r of authorised) t.true(fake.issuedTokens.has(bearer(r) ?? ''), 'a token the realm issued');
    t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);
  });
}

test('a challenge without `service` still yields a token (service falls back to the registry host)', async (t) => {
  const { fake, s } = await setup(t, { auth: 'bearer', service: null });
  const img = sampleImage('no-service');
  fake.addImage('proj/img', img, 'v1');
  await pull(t, s, 'proj/img', img);
  const tok = fake.find({ server: 'token' });
  t.is(tok.length, 1);
  t.is(tok[0]!.query.get('service'), fake.host);
  t.deepEqual(tok[0]!.query.getAll('scope'), ['repository:proj/img:pull']);
});

test('gcr-style `_json_key` Basic from googleKeyFile goes to the token realm only, and is never logged', async (t) => {
  const dir = await tempDir(t);
  const key = JSON.stringify({
    type: 'service_account',
    project_id: 'fake-project',
    private_key_id: 'k-0123456789',
    private_key: '-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSj-FAKE-KEY\\n-----END PRIVATE KEY-----\\n',
    client_email: 'mirror@fake-project.iam.gserviceaccount.com',
  });
  const keyFile = path.join(dir, 'key.json');
  await fs.writeFile(keyFile, key);
  const { fake, s } = await setup(t, { auth: 'bearer', service: 'gcr.test', token: { username: '_json_key', password: key } }, { credentials: { googleKeyFile: keyFile } });
  const img = sampleImage('json-key');
  fake.addImage('fake-project/app', img, 'v1');
  await pull(t, s, 'fake-project/app', img);
  const tok = fake.find({ server: 'token' });
  t.is(tok.length, 1);
  t.is(Buffer.from(String(tok[0]!.headers.authorization).slice(6), 'base64').toString('utf8'), `_json_key:${key}`);
  t.false(fake.find().some((r) => r.headers.authorization?.startsWith('Basic ')), 'the key never goes to the registry');
  t.is(fake.count({ server: 'cdn' }), 0);
  t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);
  assertNoSecrets(t, s, ['MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSj-FAKE-KEY', Buffer.from(`_json_key:${key}`).toString('base64'), ...fake.issuedTokens.keys()]);
});

test('docker config.json auths: Basic to a Basic-challenging registry, sent up front after the first challenge', async (t) => {
  const dir = await tempDir(t);
  const cfgFile = path.join(dir, 'config.json');
  const auth = Buffer.from(`robot$mirror:${PASSWORD}`).toString('base64');
  await fs.writeFile(cfgFile, JSON.stringify({ auths: { 'other.example': { auth: 'b3RoZXI6b3RoZXI=' }, [UP]: { auth } } }));
  const { fake, s } = await setup(t, { auth: 'basic', basic: { username: 'robot$mirror', password: PASSWORD } }, { credentials: { dockerConfig: cfgFile } });
  const img = sampleImage('docker-config');
  fake.addImage('team/app', img, 'v1');
  await pull(t, s, 'team/app', img);
  const reg = fake.find();
  t.is(reg.filter((r) => r.status === 401).length, 1, 'challenged once');
  t.is(reg.length, 5);
  for (const r of reg.slice(1)) t.is(r.headers.authorization, `Basic ${auth}`);
  t.is(fake.tokenRequests, 0);
  t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);
  assertNoSecrets(t, s, [PASSWORD, auth]);
});

test('docker config.json keyed by the endpoint host:port also works', async (t) => {
  const dir = await tempDir(t);
  const cfgFile = path.join(dir, 'config.json');
  const fake = await startFake(t, { auth: 'basic', basic: { username: 'u', password: PASSWORD } });
  await fs.writeFile(cfgFile, JSON.stringify({ auths: { [fake.host]: { username: 'u', password: PASSWORD } } }));
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { credentials: { dockerConfig: cfgFile } }) }, defaultUpstream: UP });
  const img = sampleImage('docker-config-host');
  fake.addImage('team/app', img, 'v1');
  await pull(t, s, 'team/app', img);
  t.is(fake.find().filter((r) => r.status === 401).length, 1);
  t.is(fake.registryRequests, 5);
  assertNoSecrets(t, s, [PASSWORD]);
});

test('static bearer token: sent from the first request, no realm round trip', async (t) => {
  const TOKEN = 'static-tok-9f8e7d6c5b4a';
  const { fake, s } = await setup(t, { auth: 'bearer', staticToken: TOKEN }, { credentials: { token: TOKEN } });
  const img = sampleImage('static');
  fake.addImage('team/app', img, 'v1');
  await pull(t, s, 'team/app', img);
  t.is(fake.tokenRequests, 0);
  const reg = fake.find();
  t.is(reg.length, 4, 'no 401 round trip');
  for (const r of reg) t.is(bearer(r), TOKEN);
  t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);
  assertNoSecrets(t, s, [TOKEN]);
});

test('rejected credentials at the realm: 404/403 to the client, no challenge leaked, no secret logged', async (t) => {
  const { fake, s } = await setup(t, { auth: 'bearer', token: { username: 'alice', password: 'the-right-one' } }, { credentials: { username: 'alice', password: PASSWORD } });
  fake.addImage('library/app', sampleImage('rejected'), 'v1');
  const r = await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
  t.true(r.status === 404 || r.status === 403, `status ${r.status}`);
  t.is(r.header('www-authenticate'), undefined);
  t.is(fake.tokenRequests, 1);
  t.is(fake.find().filter((x) => x.status === 200).length, 0);
  t.is(fake.blobBytes(), 0);
  assertNoSecrets(t, s, [PASSWORD]);
});

for (const mode of ['cdn', 'cdn-relative', 'self-relative'] as const) {
  test(`blob redirects (${mode}): followed by hand, Authorization never sent to the CDN`, async (t) => {
    const { fake, s } = await setup(t, { auth: 'bearer', blobRedirect: mode, token: { username: 'alice', password: PASSWORD } }, { credentials: { username: 'alice', password: PASSWORD } });
    const img = sampleImage(`redirect-${mode}`);
    fake.addImage('library/app', img, 'v1');
    await pull(t, s, 'library/app', img);
    const blobGets = fake.find({ method: 'GET', path: /\/blobs\// });
    t.is(blobGets.length, 3);
    t.true(blobGets.every((r) => r.status === (mode === 'self-relative' ? 302 : 307) && bearer(r) !== undefined));
    const cdn = fake.find({ server: 'cdn' });
    if (mode === 'self-relative') {
      t.is(cdn.length, 0);
      const dl = fake.find({ path: /^\/artifacts-downloads\// });
      t.is(dl.length, 3, 'relative Location resolved against the registry URL');
      t.true(dl.every((r) => r.status === 200));
    } else {
      t.is(cdn.length, mode === 'cdn' ? 3 : 6, 'every blob went through the CDN');
      t.true(cdn.every((r) => r.headers.authorization === undefined), 'no Authorization to the CDN host');
      t.true(cdn.every((r) => r.status !== 400));
      if (mode === 'cdn-relative') t.is(cdn.filter((r) => r.path.startsWith('/cdn/') && r.status === 200).length, 3, 'relative Location on the CDN resolved against the CDN URL');
    }
    t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size, 'each blob body sent once');
    t.is(fake.tokenRequests, 1);
    // Blob HEADs are answered without following a redirect (no body to fetch).
    const h = await http('HEAD', `${s.url}/v2/library/app/blobs/${img.layers[0]!.digest}`);
    t.is(h.status, 200);
    assertNoSecrets(t, s, [PASSWORD, ...fake.issuedTokens.keys()]);
  });
}

test('registry.k8s.io-style: every request redirected to a backend that challenges again; the pull succeeds', async (t) => {
  const backend = await startFake(t, { auth: 'bearer', service: 'backend' });
  const img = sampleImage('k8s-redirect');
  backend.addImage('pause', img, '3.9');
  const front = await startFake(t, { redirectTo: backend.url });
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(front) }, defaultUpstream: UP });
  await pull(t, s, 'pause', img, '3.9');
  t.is(front.registryRequests, 4, 'manifest + 3 blobs, each answered 307');
  t.true(front.find().every((r) => r.status === 307));
  const tok = backend.find({ server: 'token' });
  t.is(tok.length, 1, 'the backend challenge was answered once, then the token reused');
  t.is(tok[0]!.query.get('service'), 'backend');
  t.is(backend.find().filter((r) => r.status === 401).length, 1);
  t.is(backend.find().filter((r) => r.status === 200).length, 4);
  t.is(backend.blobBytes(), imageBytes(img) - img.manifest.size);
});

for (const variant of ['basic', 'bearer-realm', 'static-token'] as const) {
  test(`a redirect target that challenges (${variant}) never receives the configured credentials`, async (t) => {
    const evil = await startFake(t); // its token server plays a third-party realm
    const STATIC = 'static-tok-never-to-cdn-42';
    const fake = await startFake(t, {
      auth: 'bearer',
      blobRedirect: 'cdn',
      staticToken: STATIC,
      token: { username: 'alice', password: PASSWORD },
      cdnChallenge: variant === 'basic' ? { scheme: 'basic' } : { scheme: 'bearer', realm: evil.tokenUrl },
    });
    const creds = variant === 'static-token' ? { token: STATIC } : { username: 'alice', password: PASSWORD };
    const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { credentials: creds }) }, defaultUpstream: UP });
    const img = sampleImage(`cdn-challenge-${variant}`);
    fake.addImage('library/app', img, 'v1');
    const m = await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
    t.is(m.status, 200, 'the registry itself is fine');
    const b = await http('GET', `${s.url}/v2/library/app/blobs/${img.config.digest}`);
    t.true(b.status >= 400, `a CDN demanding auth fails the blob (${b.status})`);
    const basic = `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`;
    for (const r of fake.find({ server: 'cdn' })) {
      t.not(r.headers.authorization, basic, 'no Basic credentials to the CDN');
      t.not(r.headers.authorization, `Bearer ${STATIC}`, 'no static token to the CDN');
      t.false([...fake.issuedTokens.keys()].some((k) => r.headers.authorization === `Bearer ${k}`), 'no upstream token to the CDN');
    }
    for (const r of evil.find({ server: 'token' })) t.is(r.headers.authorization, undefined, 'no credentials to a realm the upstream never named');
    t.is(fake.blobBytes(), 0);
    assertNoSecrets(t, s, [PASSWORD, STATIC]);
  });
}

test('token realm down: a still-valid cached token keeps revalidation working; a new scope gets 503', async (t) => {
  const { fake, s } = await setup(t, { auth: 'bearer' }, { tags: { ttl: '0s' } });
  const img = sampleImage('realm-down');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/other', sampleImage('realm-down-other'), 'v1');
  t.is((await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status, 200);
  t.is(fake.tokenRequests, 1);
  await fake.stop(['token']);
  fake.resetCounters();

  const again = await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
  t.is(again.status, 200);
  t.is(again.header('warning'), undefined, 'revalidated for real, with the cached token');
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.truthy(bearer(fake.manifestRequests('HEAD')[0]!));

  const other = await http('GET', `${s.url}/v2/library/other/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
  t.is(other.status, 503, 'no token obtainable: upstream unavailable');
  t.is(other.header('www-authenticate'), undefined);
  t.is(fake.tokenRequests, 0, 'the stopped realm saw nothing');
  t.is(fake.bytesSent, 0);
});

test("a redirect target naming the upstream's own realm gets a token obtained with the configured credentials", async (t) => {
  const fake = await startFake(t, { auth: 'bearer', blobRedirect: 'cdn', token: { username: 'alice', password: PASSWORD } });
  fake.cdnChallenge = { scheme: 'bearer', realm: fake.tokenUrl };
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { credentials: { username: 'alice', password: PASSWORD } }) }, defaultUpstream: UP });
  const img = sampleImage('cdn-same-realm');
  fake.addImage('library/app', img, 'v1');
  await pull(t, s, 'library/app', img);
  const basic = `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`;
  const tok = fake.find({ server: 'token' });
  t.is(tok.length, 2, 'one token for the registry, one for the CDN service');
  t.true(tok.every((r) => r.headers.authorization === basic));
  t.deepEqual(tok.map((r) => r.query.get('service')).sort(), ['cdn', 'fake-registry']);
  const cdn = fake.find({ server: 'cdn' });
  t.true(cdn.filter((r) => r.status === 200).every((r) => fake.issuedTokens.has(bearer(r) ?? '')), 'the CDN got a token, never the password');
  t.false(cdn.some((r) => r.headers.authorization === basic));
  t.is(fake.blobBytes(), imageBytes(img) - img.manifest.size);
  assertNoSecrets(t, s, [PASSWORD]);
});
