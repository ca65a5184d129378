/**
 * GET /api/v1/status (and the HTML at / and /ui/) over a real socket: the JSON shape,
 * figures that follow real traffic, offline and error reporting without secrets, fills
 * filtered by the pull rules, and `status.enabled: false`.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { basic, writeHtpasswd } from '../helpers/authn.js';
import { http } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { makeBlob, randomBytes } from '../fixtures/images.js';
import { configFromObject } from '../../src/config/load.js';
import type { StatusSnapshot } from '../../src/ops/status.js';
import type { Res } from '../helpers/http.js';
import { assertError, sampleImage } from './_support.js';
import { ACCEPT_ALL, fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'status.test';
const SECRET = 'hunter2-upstream-secret';

/** The JSON 404 that unknown paths answer (as before the status page existed). */
function isNotFound(res: Res): boolean {
  return res.status === 404 && res.json<{ errors: Array<{ code: string }> }>().errors[0]?.code === 'NAME_UNKNOWN';
}

async function status(url: string, headers: Record<string, string> = {}): Promise<StatusSnapshot> {
  const res = await http('GET', `${url}/api/v1/status`, { headers });
  if (res.status !== 200) throw new Error(`status answered ${res.status}: ${res.body.toString()}`);
  if (!res.header('content-type')?.startsWith('application/json')) throw new Error('not JSON');
  return res.json<StatusSnapshot>();
}

test('JSON shape and figures follow real pulls: requests, hit ratio, bytes served vs fetched, rate limit, cache budget, version', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake) }, defaultUpstream: UP, cache: { maxBytes: '1GiB' } });
  const img = sampleImage('status-shape');
  fake.addImage('app', img, 'v1');
  const accept = { accept: ACCEPT_ALL };
  for (let i = 0; i < 2; i++) t.is((await http('GET', `${s.url}/v2/app/manifests/v1`, { headers: accept })).status, 200);
  const layer = img.layers[0]!;
  const url = `${s.url}/v2/app/blobs/${layer.digest}`;
  t.is((await http('GET', url)).status, 200);
  await waitFor(() => s.db().blobSize(layer.digest as never) !== undefined, 10_000, 'blob committed');
  t.is((await http('GET', url)).status, 200);

  const st = await status(s.url);
  const pkg = JSON.parse(await fs.readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  t.is(st.version, pkg.version);
  t.true(st.uptimeSeconds >= 0 && !Number.isNaN(Date.parse(st.startedAt)));
  t.is(st.upstreams.length, 1);
  const u = st.upstreams[0]!;
  t.is(u.name, UP);
  t.is(u.state, 'ok');
  t.is(u.offlineSince, null);
  t.is(u.requests, fake.totalRequests, 'every upstream request counted');
  t.is(u.errors, 0);
  t.deepEqual(u.rateLimit, { remaining: 99, limit: 100 }, 'Docker Hub style ratelimit headers of the fake');
  t.is(u.lookups, 4);
  t.is(u.hits, 2);
  t.is(u.hitRatio, 0.5);
  t.deepEqual(u.bytesServed, { disk: layer.size, fill: layer.size });
  t.is(u.bytesFetched, layer.size);
  t.is(u.bytesSaved, layer.size);
  t.is(st.cache.maxBytes, 1024 ** 3);
  t.true(st.cache.bytes >= 0);
  t.is(st.cache.lastEviction, null);
  t.deepEqual(st.fills, []);
  t.deepEqual(st.recentErrors, []);
  t.deepEqual(st.local, { lookups: 0, hits: 0, bytesServed: 0 });

  for (const p of ['/', '/ui/']) {
    const page = await http('GET', `${s.url}${p}`);
    t.is(page.status, 200, p);
    t.regex(page.header('content-type') ?? '', /^text\/html/);
    t.regex(page.header('content-security-policy') ?? '', /default-src 'none'/);
    const html = page.body.toString();
    t.true(html.includes(`data-upstream="${UP}"`) && html.includes('http-equiv="refresh"') && html.includes(pkg.version));
    t.false(/<script/i.test(html), 'no scripts');
  }
  const bare = await http('GET', `${s.url}/ui`);
  t.is(bare.status, 301);
  t.is(bare.header('location'), '/ui/');
  // Other paths keep answering the JSON 404 as before.
  t.true(isNotFound(await http('GET', `${s.url}/nothing-here`)));
});

test('an offline upstream: state offline, recent errors without credentials or upstream URLs', async (t) => {
  const fake = await startFake(t, { auth: 'basic', basic: { username: 'robot', password: SECRET } });
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake, { credentials: { username: 'robot', password: SECRET }, timeouts: { offline: '1h', probe: '1h' } }) },
    defaultUpstream: UP,
  });
  const img = sampleImage('status-offline');
  fake.addImage('secret-team/app', img, 'v1');
  t.is((await http('GET', `${s.url}/v2/secret-team/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status, 200);
  await fake.stop();
  t.is((await http('GET', `${s.url}/v2/secret-team/app/manifests/${img.layers[0]!.digest}`, { headers: { accept: ACCEPT_ALL } })).status, 503);

  const res = await http('GET', `${s.url}/api/v1/status`);
  const st = res.json<StatusSnapshot>();
  const u = st.upstreams[0]!;
  t.is(u.state, 'offline');
  t.false(Number.isNaN(Date.parse(u.offlineSince ?? '')));
  t.true(u.errors >= 1);
  t.true(st.recentErrors.length >= 2, JSON.stringify(st.recentErrors));
  t.true(st.recentErrors.some((e) => e.upstream === UP && /marked offline/.test(e.message)));
  t.true(st.recentErrors.some((e) => /failed: .*ECONNREFUSED/.test(e.message)), JSON.stringify(st.recentErrors));
  const text = res.body.toString();
  // The endpoint's address may appear in a transport error (ECONNREFUSED 127.0.0.1:port);
  // URLs, credentials and repository paths never do.
  for (const leak of [SECRET, 'robot', 'secret-team', 'http://', '@']) t.false(text.includes(leak), `no ${leak} in the status`);
  const html = (await http('GET', `${s.url}/`)).body.toString();
  t.true(html.includes('data-state="offline"'));
  for (const leak of [SECRET, 'robot', 'secret-team', `http://${fake.host}`]) t.false(html.includes(leak), `no ${leak} in the page`);
});

test('fills in progress: bytes so far; the repository and digest only for callers who may pull it; bad credentials 401', async (t) => {
  const dir = await tempDir(t);
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-pass', bob: 'bob-pass' });
  const fake = await startFake(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake) },
    defaultUpstream: UP,
    auth: {
      htpasswd,
      loginRateLimit: { maxFailures: 1000 },
      rules: [
        { repositories: 'private/**', pull: ['alice'], push: ['alice'], delete: ['alice'] },
        { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: ['authenticated'] },
      ],
    },
  });
  const SIZE = 96 * 1024;
  const pub = makeBlob(randomBytes(SIZE, 'status-public'), 'application/octet-stream');
  const priv = makeBlob(randomBytes(SIZE, 'status-private'), 'application/octet-stream');
  fake.addBlob('public/app', pub);
  fake.addBlob('private/app', priv);
  // About 5 s per blob: long enough to look at, bounded for the test.
  fake.faults.push({ path: /\/blobs\//, method: 'GET', throttle: { chunkBytes: 2048, intervalMs: 100 } });
  const alice = { authorization: basic('alice', 'alice-pass') };
  const pulls = [fetchStream(`${s.url}/v2/public/app/blobs/${pub.digest}`), fetchStream(`${s.url}/v2/private/app/blobs/${priv.digest}`, { headers: alice })];

  let anon!: StatusSnapshot;
  await waitFor(async () => {
    anon = await status(s.url);
    return anon.fills.length === 2 && anon.fills.every((f) => f.bytes > 0);
  }, 30_000, 'two fills with bytes');
  const shown = anon.fills.find((f) => f.repository !== null)!;
  const hidden = anon.fills.find((f) => f.repository === null)!;
  t.is(shown.repository, 'public/app');
  t.is(shown.digest, pub.digest);
  t.is(shown.size, SIZE);
  t.true(shown.bytes > 0 && shown.bytes < SIZE);
  t.is(shown.upstream, UP);
  t.is(hidden.digest, null);
  t.is(hidden.upstream, UP);
  t.true(hidden.bytes > 0);
  const anonText = JSON.stringify(anon);
  t.false(anonText.includes('private/app') || anonText.includes(priv.digest), 'nothing names the private fill');
  const anonHtml = (await http('GET', `${s.url}/`)).body.toString();
  t.false(anonHtml.includes('private/app') || anonHtml.includes(priv.digest));
  t.true(anonHtml.includes('public/app'));

  const asAlice = await status(s.url, alice);
  t.deepEqual(asAlice.fills.map((f) => f.repository).sort(), ['private/app', 'public/app']);
  t.is(asAlice.fills.find((f) => f.repository === 'private/app')!.digest, priv.digest);
  const asBob = await status(s.url, { authorization: basic('bob', 'bob-pass') });
  t.deepEqual(asBob.fills.map((f) => f.repository).sort(), [null, 'public/app'].sort());
  const bad = await http('GET', `${s.url}/api/v1/status`, { headers: { authorization: basic('alice', 'wrong') } });
  assertError(t, bad, 401, 'UNAUTHORIZED');

  const done = await Promise.all(pulls);
  t.deepEqual(done[0]!.body, pub.bytes);
  t.deepEqual(done[1]!.body, priv.bytes);
  await waitFor(async () => (await status(s.url)).fills.length === 0, 10_000, 'fills finished');
});

test('status.enabled: false answers 404 at /, /ui/ and /api/v1/status as before; unknown status keys are refused', async (t) => {
  const s = await startServer(t, { status: { enabled: false } });
  for (const p of ['/', '/ui/', '/api/v1/status']) t.true(isNotFound(await http('GET', `${s.url}${p}`)), p);
  t.is((await http('GET', `${s.url}/metrics`)).status, 200);
  t.is((await http('GET', `${s.url}/healthz`)).status, 200);
  t.throws(() => configFromObject({ status: { enable: false } }), { message: /status\.enable: unknown key/ });
  t.throws(() => configFromObject({ status: { enabled: 'no' } }), { message: /status\.enabled: must be true or false/ });
  t.true(configFromObject({}).status.enabled, 'on by default');
});
