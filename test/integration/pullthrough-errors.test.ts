/**
 * Upstream failures as the downstream client sees them (protocol.md 6.1 step 4, 6.10):
 * stale-if-error with a Warning header for cached tags; 503/502/429 (+ Retry-After) for
 * uncached content; Docker Hub's 401-for-missing-repo as 404 NAME_UNKNOWN with no upstream
 * challenge leaked; endpoint failover. Every test counts the upstream's requests and bytes.
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http, sha256 } from '../helpers/http.js';
import type { FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import { sampleImage } from './_support.js';
import { ACCEPT_ALL, sleep, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'hub.test';

async function setup(
  t: ExecutionContext,
  opts: { fake?: FakeUpstreamOptions; upstream?: Record<string, unknown> } = {},
): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, opts.fake);
  const s = await startServer(t, {
    // ttl 0: every tag request revalidates, so every request meets the failure.
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, tags: { ttl: '0s' }, ...opts.upstream }) },
    defaultUpstream: UP,
  });
  return { fake, s };
}

const get = (s: TestServer, p: string) => http('GET', `${s.url}${p}`, { headers: { accept: ACCEPT_ALL } });
const head = (s: TestServer, p: string) => http('HEAD', `${s.url}${p}`, { headers: { accept: ACCEPT_ALL } });

test('upstream down (connection refused): cached tag served stale with a Warning; uncached content 503', async (t) => {
  // offline: 0s so recovery is seen at once (the fail-fast window has its own test).
  const { fake, s } = await setup(t, { upstream: { timeouts: { offline: '0s' } } });
  const img = sampleImage('down');
  const other = sampleImage('down-other');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/app', other, 'v2');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  t.is((await get(s, `/v2/library/app/blobs/${img.config.digest}`)).status, 200);
  const bytesBefore = fake.bytesSent;
  t.is(bytesBefore, img.manifest.size + img.config.size);
  await fake.stop();
  fake.resetCounters();

  const stale = await get(s, '/v2/library/app/manifests/v1');
  t.is(stale.status, 200);
  t.deepEqual(stale.body, img.manifest.bytes);
  t.regex(stale.header('warning') ?? '', /^299 /, 'Warning: 299 on stale content');
  const staleHead = await head(s, '/v2/library/app/manifests/v1');
  t.is(staleHead.status, 200);
  t.is(staleHead.header('docker-content-digest'), img.manifest.digest);
  t.regex(staleHead.header('warning') ?? '', /^299 /);
  const blob = await get(s, `/v2/library/app/blobs/${img.config.digest}`);
  t.is(blob.status, 200, 'cached blob still served');
  t.is(blob.header('warning'), undefined, 'digest content is never stale');

  const uncachedTag = await get(s, '/v2/library/app/manifests/v2');
  t.is(uncachedTag.status, 503);
  t.is(errorCode(uncachedTag), 'UNAVAILABLE');
  const uncachedDigest = await get(s, `/v2/library/app/manifests/${other.manifest.digest}`);
  t.is(uncachedDigest.status, 503);
  const uncachedHead = await head(s, '/v2/library/app/manifests/v2');
  t.is(uncachedHead.status, 503);
  t.is(uncachedHead.body.length, 0);
  t.is(fake.totalRequests, 0, 'nothing reached the stopped upstream');

  // Back up: the tag revalidates normally again (one HEAD), no Warning.
  await fake.start();
  const back = await get(s, '/v2/library/app/manifests/v1');
  t.is(back.status, 200);
  t.is(back.header('warning'), undefined);
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.manifestRequests('GET').length, 0);
  t.is(fake.bytesSent, 0);
});

test('upstream 5xx: cached tag served stale with a Warning; uncached tag 502/503 with an error body', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('5xx');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/app', sampleImage('5xx-b'), 'v2');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  fake.resetCounters();
  fake.faults.push({ path: /\/manifests\//, status: 503 });

  const stale = await get(s, '/v2/library/app/manifests/v1');
  t.is(stale.status, 200);
  t.deepEqual(stale.body, img.manifest.bytes);
  t.regex(stale.header('warning') ?? '', /^299 /);
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.manifestRequests('GET').length, 0);

  const uncached = await get(s, '/v2/library/app/manifests/v2');
  t.true(uncached.status === 502 || uncached.status === 503, `status ${uncached.status}`);
  t.is(errorCode(uncached), 'UNAVAILABLE');
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.count(), 2);
});

test('upstream 429: stale tag served (the HEAD is never turned into a GET); uncached -> 429 TOOMANYREQUESTS with Retry-After', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('429');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/app', sampleImage('429-b'), 'v2');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  fake.resetCounters();
  fake.faults.push({ path: /\/manifests\//, status: 429, headers: { 'retry-after': '7' } });

  for (let i = 0; i < 3; i++) {
    const stale = await get(s, '/v2/library/app/manifests/v1');
    t.is(stale.status, 200);
    t.regex(stale.header('warning') ?? '', /^299 /);
    t.is(stale.header('retry-after'), undefined);
  }
  t.is(fake.manifestRequests('HEAD').length, 3);
  t.is(fake.manifestRequests('GET').length, 0, 'revalidation never spends a pull (GET)');

  const uncached = await get(s, '/v2/library/app/manifests/v2');
  t.is(uncached.status, 429);
  t.is(errorCode(uncached), 'TOOMANYREQUESTS');
  t.is(uncached.header('retry-after'), '7');
  // A HEAD on an uncached tag is a miss, filled with a GET (as the client's next step would be).
  const uncachedHead = await head(s, '/v2/library/app/manifests/v2');
  t.is(uncachedHead.status, 429);
  t.is(uncachedHead.header('retry-after'), '7');
  t.is(fake.manifestRequests('GET').length, 2);
  t.is(fake.manifestRequests('HEAD').length, 3);
  t.is(fake.blobBytes(), 0);
});

test('tag moved upstream but the GET of the new digest is rate-limited: the old digest is served stale', async (t) => {
  const { fake, s } = await setup(t);
  const v1 = sampleImage('moved-429-v1');
  const v2 = sampleImage('moved-429-v2');
  fake.addImage('library/app', v1, 'v1');
  fake.addImage('library/app', v2);
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  fake.setTag('library/app', 'v1', v2.manifest.digest);
  fake.resetCounters();
  fake.faults.push({ method: 'GET', path: /\/manifests\//, times: 1, status: 429, headers: { 'retry-after': '30' } });

  const stale = await get(s, '/v2/library/app/manifests/v1');
  t.is(stale.status, 200);
  t.is(stale.header('docker-content-digest'), v1.manifest.digest);
  t.regex(stale.header('warning') ?? '', /^299 /);
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.manifestRequests('GET')[0]!.path, `/v2/library/app/manifests/${v2.manifest.digest}`);

  // Once the limit lifts, the new digest arrives.
  const fresh = await get(s, '/v2/library/app/manifests/v1');
  t.is(fresh.header('docker-content-digest'), v2.manifest.digest);
  t.is(fresh.header('warning'), undefined);
  t.is(fake.manifestRequests('GET').length, 2);
  t.is(fake.blobBytes(), 0);
  t.is(fake.bytesSent - fake.find().filter((r) => r.status === 429).reduce((n, r) => n + r.bytes, 0), v2.manifest.size);
});

test('slow upstream beyond the headers timeout: cached tag stale, uncached tag 503', async (t) => {
  const { fake, s } = await setup(t, { upstream: { timeouts: { headers: '1s' } } });
  const img = sampleImage('slow');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/app', sampleImage('slow-b'), 'v2');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  // The upstream would answer after a minute. No wall-clock bound (CI load varies): the
  // proof that the mirror gave up is that it dropped both requests unanswered.
  fake.faults.push({ path: /\/manifests\//, headerDelayMs: 60_000 });

  const [stale, uncached] = await Promise.all([get(s, '/v2/library/app/manifests/v1'), get(s, '/v2/library/app/manifests/v2')]);
  t.is(stale.status, 200);
  t.regex(stale.header('warning') ?? '', /^299 /);
  t.is(uncached.status, 503);
  t.is(errorCode(uncached), 'UNAVAILABLE');
  const hung = fake.find({ path: /\/manifests\// }).slice(1);
  t.is(hung.length, 2, 'one revalidation HEAD and one GET');
  t.deepEqual(hung.map((r) => r.method).sort(), ['GET', 'HEAD']);
  await waitFor(() => hung.every((r) => r.aborted), 30_000, 'the mirror closed the hung requests');
  t.true(hung.every((r) => r.status === 0), 'never answered');
  t.is(fake.bytesSent, img.manifest.size, 'only the first (fast) GET carried a body');
});

test('Docker Hub-style 401 for a missing repository -> 404 NAME_UNKNOWN, and no upstream WWW-Authenticate', async (t) => {
  const { fake, s } = await setup(t, { fake: { auth: 'bearer', missingRepo: '401' } });
  fake.addImage('library/exists', sampleImage('exists'), 'v1');

  for (const p of ['/v2/library/nope/manifests/latest', `/v2/library/nope/manifests/${sha256('x')}`, `/v2/library/nope/blobs/${sha256('y')}`]) {
    for (const method of ['GET', 'HEAD'] as const) {
      const r = await http(method, `${s.url}${p}`, { headers: { accept: ACCEPT_ALL } });
      t.is(r.status, 404, `${method} ${p}`);
      if (method === 'GET') t.is(errorCode(r), 'NAME_UNKNOWN', p);
      t.is(r.header('www-authenticate'), undefined, 'the upstream challenge is not forwarded');
      t.false(JSON.stringify(r.headers).includes(fake.tokenUrl), 'the upstream realm appears nowhere');
    }
  }
  const tags = await get(s, '/v2/library/nope/tags/list');
  t.is(tags.status, 404);
  t.is(tags.header('www-authenticate'), undefined);

  // The mirror did get a token and retried with it before concluding "not found".
  t.true(fake.tokenRequests >= 1);
  const withToken = fake.find({ path: /^\/v2\/library\/nope\// }).filter((r) => r.headers.authorization?.startsWith('Bearer '));
  t.true(withToken.length >= 1, 'retried with a Bearer token');
  t.is(fake.blobBytes(), 0);

  // The same upstream still serves repositories that exist.
  const ok = await get(s, '/v2/library/exists/manifests/v1');
  t.is(ok.status, 200);
});

test('upstream 404 and 403 map to MANIFEST_UNKNOWN / BLOB_UNKNOWN and DENIED', async (t) => {
  const { fake, s } = await setup(t);
  fake.addImage('library/app', sampleImage('codes'), 'v1');
  const m = await get(s, '/v2/library/app/manifests/missing');
  t.is(m.status, 404);
  t.is(errorCode(m), 'MANIFEST_UNKNOWN');
  const repo = await get(s, '/v2/library/other/manifests/v1');
  t.is(repo.status, 404);
  const b = await get(s, `/v2/library/app/blobs/${sha256('missing')}`);
  t.is(b.status, 404);
  t.is(errorCode(b), 'BLOB_UNKNOWN');
  fake.faults.push({ path: /\/manifests\//, status: 403 });
  const denied = await get(s, '/v2/library/app/manifests/v1');
  t.is(denied.status, 403);
  t.is(errorCode(denied), 'DENIED');
  t.is(fake.registryRequests, 4);
  t.is(fake.blobBytes(), 0);
});

test('endpoint failover: a dead first endpoint is skipped, the second serves', async (t) => {
  const dead = await startFake(t);
  const deadUrl = dead.url;
  await dead.stop();
  const fake = await startFake(t);
  const img = sampleImage('failover');
  fake.addImage('library/app', img, 'v1');
  const s = await startServer(t, { upstreams: { [UP]: { endpoints: [deadUrl, fake.url], libraryPrefix: true } }, defaultUpstream: UP });
  const r = await get(s, '/v2/library/app/manifests/v1');
  t.is(r.status, 200);
  t.deepEqual(r.body, img.manifest.bytes);
  const b = await get(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`);
  t.deepEqual(b.body, img.layers[0]!.bytes);
  t.is(fake.registryRequests, 2);
  t.is(dead.totalRequests, 0);
  t.is(fake.bytesSent, img.manifest.size + img.layers[0]!.size);
});

test('tags/list: the upstream list is cached for the tags TTL, so a client paging through it costs one upstream fetch', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '5m' } } });
  fake.addImage('library/app', sampleImage('tags-a'), 'a');
  fake.addImage('library/app', sampleImage('tags-b'), 'b');
  fake.addImage('library/app', sampleImage('tags-c'), 'c');
  const list = await get(s, '/v2/library/app/tags/list');
  t.is(list.status, 200);
  t.deepEqual(list.json(), { name: 'library/app', tags: ['a', 'b', 'c'] });
  const page = await get(s, '/v2/library/app/tags/list?n=2');
  t.deepEqual(page.json<{ tags: string[] }>().tags, ['a', 'b']);
  t.truthy(page.header('link'));
  const page2 = await get(s, '/v2/library/app/tags/list?n=2&last=b');
  t.deepEqual(page2.json<{ tags: string[] }>().tags, ['c']);
  t.is((await get(s, '/v2/library/app/manifests/b')).status, 200);
  t.is(fake.count({ path: '/v2/library/app/tags/list' }), 1, 'one upstream fetch within the TTL');

  await fake.stop();
  // Nothing was listed for `never`: no list to fall back on.
  const none = await get(s, '/v2/library/never/tags/list');
  t.is(none.status, 503);
  t.is(fake.count({ path: '/v2/library/app/tags/list' }), 1);
});

test('tags/list after the TTL: refetched; with the upstream down, the last full list (not only the tags pulled) with a Warning', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '1s' } } });
  for (const tag of ['a', 'b', 'c']) fake.addImage('library/app', sampleImage(`ttl-${tag}`), tag);
  t.deepEqual((await get(s, '/v2/library/app/tags/list')).json<{ tags: string[] }>().tags, ['a', 'b', 'c']);
  fake.addImage('library/app', sampleImage('ttl-d'), 'd');
  await sleep(1100);
  t.deepEqual((await get(s, '/v2/library/app/tags/list')).json<{ tags: string[] }>().tags, ['a', 'b', 'c', 'd']);
  t.is(fake.count({ path: '/v2/library/app/tags/list' }), 2);
  await sleep(1100);
  await fake.stop();
  const stale = await get(s, '/v2/library/app/tags/list');
  t.is(stale.status, 200);
  t.deepEqual(stale.json<{ tags: string[] }>().tags, ['a', 'b', 'c', 'd']);
  t.regex(stale.header('warning') ?? '', /^299 /);
});

test('tags/list: an upstream that paginates is followed to the end (same host only)', async (t) => {
  const { fake, s } = await setup(t, { fake: { tagsPageSize: 2 } });
  const tags = ['v1', 'v2', 'v3', 'v4', 'v5'];
  for (const tag of tags) fake.addImage('library/app', sampleImage(`page-${tag}`), tag);
  t.deepEqual((await get(s, '/v2/library/app/tags/list')).json<{ tags: string[] }>().tags, tags);
  const pages = fake.find({ path: '/v2/library/app/tags/list' });
  t.is(pages.length, 3);
  t.deepEqual(pages.map((p) => p.query.get('last')), [null, 'v2', 'v4']);
});

test('a dead upstream is marked offline: within the window stale tags and misses answer at once without dialling', async (t) => {
  // probe: 0s keeps the window open after the upstream is back (probing: pullthrough-stale).
  const { fake, s } = await setup(t, { upstream: { timeouts: { offline: '30s', probe: '0s' } } });
  const img = sampleImage('offline');
  fake.addImage('library/app', img, 'v1');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  await fake.stop();
  // The first failure marks the upstream offline.
  const first = await get(s, '/v2/library/app/manifests/v1');
  t.is(first.status, 200);
  t.truthy(first.header('warning'));
  await fake.start();
  fake.resetCounters();
  // Back up, but inside the window: nothing is sent upstream; stale tag and 503 for misses.
  const stale = await get(s, '/v2/library/app/manifests/v1');
  t.is(stale.status, 200);
  t.truthy(stale.header('warning'));
  const miss = await get(s, '/v2/library/app/manifests/never-seen');
  t.is(miss.status, 503);
  t.is(fake.totalRequests, 0, 'no request while the upstream is marked offline');
  t.true(s.logs.some((l) => l.includes('upstream marked offline')));
});

test('a hung upstream: revalidation gives up after tags.revalidateTimeout and serves the stale tag', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '0s', revalidateTimeout: '300ms' } } });
  const img = sampleImage('hung');
  fake.addImage('library/app', img, 'v1');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  fake.faults.push({ method: 'HEAD', path: /\/manifests\//, times: 1, headerDelayMs: 60_000 });
  const started = Date.now();
  const stale = await get(s, '/v2/library/app/manifests/v1');
  t.is(stale.status, 200);
  t.deepEqual(stale.body, img.manifest.bytes);
  t.truthy(stale.header('warning'));
  t.true(Date.now() - started < 30_000, 'answered long before the upstream would have');
});
