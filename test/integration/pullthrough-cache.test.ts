/**
 * Pull-through caching semantics against an in-process fake upstream (protocol.md 6.1-6.3,
 * 6.5): what is served locally, when the upstream is asked, and with which request.
 * Every test counts the upstream's requests and body bytes.
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http, sha256 } from '../helpers/http.js';
import { makeIndex } from '../fixtures/images.js';
import type { FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import { ALL_MANIFEST_TYPES, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, pushImage, sampleImage } from './_support.js';
import { ACCEPT_ALL, sleep, startFake, upstreamEntry } from './_pullthrough.js';

const UP = 'hub.test';

async function setup(
  t: ExecutionContext,
  opts: { fake?: FakeUpstreamOptions; upstream?: Record<string, unknown>; server?: Record<string, unknown> } = {},
): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, opts.fake);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, ...opts.upstream }) },
    defaultUpstream: UP,
    ...opts.server,
  });
  return { fake, s };
}

const get = (s: TestServer, path: string, accept = ACCEPT_ALL) => http('GET', `${s.url}${path}`, { headers: { accept } });
const head = (s: TestServer, path: string, accept = ACCEPT_ALL) => http('HEAD', `${s.url}${path}`, { headers: { accept } });

test('by-digest content is served with zero upstream requests once stored (even with the upstream down)', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('digest-refs');
  fake.addImage('library/app', img, '1.0');

  const byTag = await get(s, '/v2/library/app/manifests/1.0');
  t.is(byTag.status, 200);
  t.deepEqual(byTag.body, img.manifest.bytes);
  t.is(byTag.header('docker-content-digest'), img.manifest.digest);
  for (const b of [img.config, ...img.layers]) {
    const r = await get(s, `/v2/library/app/blobs/${b.digest}`);
    t.is(r.status, 200);
    t.deepEqual(r.body, b.bytes);
  }
  // First pull: one manifest GET, one GET per blob, exactly the blob bytes.
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.manifestRequests('HEAD').length, 0);
  for (const b of [img.config, ...img.layers]) t.is(fake.blobGets(b.digest), 1);
  t.is(fake.registryRequests, 4);
  const blobTotal = img.config.size + img.layers.reduce((n, l) => n + l.size, 0);
  t.is(fake.blobBytes(), blobTotal);
  t.is(fake.bytesSent, blobTotal + img.manifest.size);

  fake.resetCounters();
  for (let round = 0; round < 2; round++) {
    const m = await get(s, `/v2/library/app/manifests/${img.manifest.digest}`);
    t.is(m.status, 200);
    t.deepEqual(m.body, img.manifest.bytes);
    const mh = await head(s, `/v2/library/app/manifests/${img.manifest.digest}`);
    t.is(mh.status, 200);
    t.is(mh.header('content-length'), String(img.manifest.size));
    for (const b of [img.config, ...img.layers]) {
      const r = await get(s, `/v2/library/app/blobs/${b.digest}`);
      t.deepEqual(r.body, b.bytes);
      const h = await head(s, `/v2/library/app/blobs/${b.digest}`);
      t.is(h.header('content-length'), String(b.size));
    }
    if (round === 0) await fake.stop();
  }
  t.is(fake.totalRequests, 0, 'no upstream request for stored digests');
  t.is(fake.bytesSent, 0);
});

test('pushed content wins: a pushed tag is served locally with ?ns=, the upstream is never asked', async (t) => {
  const { fake, s } = await setup(t);
  const upstreamImg = sampleImage('upstream-version');
  const pushedImg = sampleImage('pushed-version');
  fake.addImage('library/app', upstreamImg, '1.0');
  t.is((await pushImage(s.url, 'library/app', pushedImg, '1.0')).status, 201);

  const r = await get(s, `/v2/library/app/manifests/1.0?ns=${UP}`);
  t.is(r.status, 200);
  t.deepEqual(r.body, pushedImg.manifest.bytes);
  t.is(r.header('docker-content-digest'), pushedImg.manifest.digest);
  const h = await head(s, `/v2/library/app/manifests/1.0?ns=${UP}`);
  t.is(h.header('docker-content-digest'), pushedImg.manifest.digest);
  for (const b of [pushedImg.config, ...pushedImg.layers]) {
    const blob = await get(s, `/v2/library/app/blobs/${b.digest}?ns=${UP}`);
    t.deepEqual(blob.body, b.bytes);
  }
  t.is(fake.totalRequests, 0, 'pushed tag and blobs never go upstream');
  t.is(fake.bytesSent, 0);
});

/**
 * One run of the TTL scenario on a fresh server; false when the machine was too slow to make
 * the "within the TTL" requests inside the TTL (the run proves nothing then, so the caller
 * tries again with a longer TTL instead of failing or always waiting long).
 */
async function tagTtlScenario(t: ExecutionContext, TTL_MS: number): Promise<boolean> {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: `${TTL_MS}ms` } } });
  const v1 = sampleImage(`ttl-v1-${TTL_MS}`);
  const v2 = sampleImage(`ttl-v2-${TTL_MS}`);
  fake.addImage('library/app', v1, 'latest');
  fake.addImage('library/app', v2);

  // The server's checked_at lies between `sent` and `answered`: fresh is certain while
  // now - sent < TTL, stale once now - answered >= TTL.
  let sent = Date.now();
  t.deepEqual((await get(s, '/v2/library/app/manifests/latest')).body, v1.manifest.bytes);
  let answered = Date.now();
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.bytesSent, v1.manifest.size);

  // The upstream moves the tag; within the TTL the old digest is served, no request made.
  fake.setTag('library/app', 'latest', v2.manifest.digest);
  fake.resetCounters();
  const fresh = await get(s, '/v2/library/app/manifests/latest');
  const freshHead = await head(s, '/v2/library/app/manifests/latest');
  if (Date.now() - sent >= TTL_MS) return false;
  t.is(fresh.header('docker-content-digest'), v1.manifest.digest);
  t.is(freshHead.header('docker-content-digest'), v1.manifest.digest);
  t.is(fake.totalRequests, 0, 'within the TTL: no upstream request');

  await sleep(answered + TTL_MS + 50 - Date.now());
  sent = Date.now();
  const changed = await get(s, '/v2/library/app/manifests/latest');
  answered = Date.now();
  t.is(changed.status, 200);
  t.deepEqual(changed.body, v2.manifest.bytes, 'the new digest is served');
  const heads = fake.manifestRequests('HEAD');
  const gets = fake.manifestRequests('GET');
  t.is(heads.length, 1, 'exactly one revalidation HEAD');
  t.is(heads[0]!.path, '/v2/library/app/manifests/latest');
  t.is(gets.length, 1, 'one GET, by digest');
  t.is(gets[0]!.path, `/v2/library/app/manifests/${v2.manifest.digest}`);
  t.is(fake.totalRequests, 2);
  t.is(fake.bytesSent, v2.manifest.size);

  // Within the new TTL: nothing. After it, unchanged digest: one HEAD and no GET.
  fake.resetCounters();
  t.is((await get(s, '/v2/library/app/manifests/latest')).header('docker-content-digest'), v2.manifest.digest);
  if (Date.now() - sent >= TTL_MS) return false;
  t.is(fake.totalRequests, 0);
  await sleep(answered + TTL_MS + 50 - Date.now());
  t.is((await get(s, '/v2/library/app/manifests/latest')).header('docker-content-digest'), v2.manifest.digest);
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.manifestRequests('GET').length, 0, 'unchanged digest: no manifest GET (no pull counted)');
  t.is(fake.bytesSent, 0);
  // The HEAD refreshed checked_at: the next request is fresh again.
  t.is((await get(s, '/v2/library/app/manifests/latest')).status, 200);
  t.is(fake.totalRequests, 1);

  return true;
}

test('tag TTL: fresh tags are not revalidated; after the TTL one HEAD, and a GET by digest only when it changed', async (t) => {
  for (const ttlMs of [4000, 12_000, 30_000]) {
    if (await tagTtlScenario(t, ttlMs)) return;
    t.log(`requests did not fit in the ${ttlMs} ms TTL (busy machine): again with a longer TTL`);
  }
  t.fail('the scenario never fitted in a 30 s TTL: machine far too slow');
});

test('immutable tag patterns are never revalidated, other tags are', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '0s', immutable: ['^v\\d+\\.\\d+\\.\\d+$'] } } });
  const a = sampleImage('immutable-a');
  const b = sampleImage('immutable-b');
  fake.addImage('library/app', a, 'v1.2.3');
  fake.addImage('library/app', a, 'latest');
  fake.addImage('library/app', b);

  t.is((await get(s, '/v2/library/app/manifests/v1.2.3')).status, 200);
  t.is((await get(s, '/v2/library/app/manifests/latest')).status, 200);
  t.is(fake.manifestRequests('GET').length, 2);
  fake.setTag('library/app', 'v1.2.3', b.manifest.digest);
  fake.setTag('library/app', 'latest', b.manifest.digest);
  fake.resetCounters();

  for (let i = 0; i < 3; i++) {
    const r = await get(s, '/v2/library/app/manifests/v1.2.3');
    t.is(r.header('docker-content-digest'), a.manifest.digest, 'immutable tag keeps its first digest');
  }
  t.is(fake.totalRequests, 0, 'immutable: never revalidated even with ttl 0');

  for (let i = 0; i < 3; i++) {
    const r = await get(s, '/v2/library/app/manifests/latest');
    t.is(r.header('docker-content-digest'), b.manifest.digest);
  }
  // ttl 0: every request revalidates with HEAD; only the first saw a new digest.
  t.is(fake.manifestRequests('HEAD').length, 3);
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.bytesSent, b.manifest.size);
});

test('tags are cached per Accept set: an index for one client, the single manifest for another', async (t) => {
  const { fake, s } = await setup(t);
  const amd = sampleImage('accept-amd64', { arch: 'amd64' });
  const arm = sampleImage('accept-arm64', { arch: 'arm64' });
  const idx = makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  fake.addIndex('library/multi', idx, 'latest');

  const modern = await get(s, '/v2/library/multi/manifests/latest', ALL_MANIFEST_TYPES);
  t.is(modern.status, 200);
  t.is(modern.header('content-type'), OCI_INDEX);
  t.deepEqual(modern.body, idx.index.bytes);

  const legacy = await get(s, '/v2/library/multi/manifests/latest', OCI_MANIFEST);
  t.is(legacy.status, 200);
  t.is(legacy.header('content-type'), OCI_MANIFEST);
  t.deepEqual(legacy.body, amd.manifest.bytes, 'a client without index support gets the amd64 manifest');
  t.is(legacy.header('docker-content-digest'), amd.manifest.digest);

  const gets = fake.manifestRequests('GET');
  t.is(gets.length, 2, 'one upstream GET per Accept set');
  t.false(String(gets[1]!.headers.accept).includes(OCI_INDEX), 'the narrow Accept is forwarded as is');
  for (const g of gets) t.false(String(g.headers.accept).includes('distribution.manifest.v1'), 'schema1 is never asked for');
  t.is(fake.bytesSent, idx.index.size + amd.manifest.size);

  fake.resetCounters();
  for (let i = 0; i < 2; i++) {
    t.deepEqual((await get(s, '/v2/library/multi/manifests/latest', ALL_MANIFEST_TYPES)).body, idx.index.bytes);
    t.deepEqual((await get(s, '/v2/library/multi/manifests/latest', OCI_MANIFEST)).body, amd.manifest.bytes);
  }
  t.is(fake.totalRequests, 0, 'both variants are served from cache');

  // The arm64 child is fetched by digest alone (pull-only mirrors), without touching the tag.
  const child = await get(s, `/v2/library/multi/manifests/${arm.manifest.digest}`);
  t.deepEqual(child.body, arm.manifest.bytes);
  t.is(fake.totalRequests, 1);
  t.is(fake.manifestRequests('GET')[0]!.path, `/v2/library/multi/manifests/${arm.manifest.digest}`);
  t.is(fake.bytesSent, arm.manifest.size);
});

test('manifests are served byte for byte (odd whitespace, key order, generic Content-Type)', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('bytes');
  for (const b of [img.config, ...img.layers]) fake.addBlob('library/odd', b);
  const c = img.config;
  const l = img.layers[0]!;
  const odd =
    `{\n\t"layers" : [ {"size":${l.size} ,  "digest":"${l.digest}","mediaType":"${l.mediaType}"}\n],\r\n` +
    `  "config":{"digest":"${c.digest}",\n"size":${c.size},"mediaType":"${c.mediaType}"},"schemaVersion":2,\n` +
    `     "mediaType":   "${DOCKER_MANIFEST}"   }\n\n\n`;
  const digest = fake.addManifest('library/odd', odd, DOCKER_MANIFEST, { tag: 'v1', contentType: 'application/json; charset=utf-8' });
  t.is(digest, sha256(odd));

  for (const ref of ['v1', digest]) {
    const r = await get(s, `/v2/library/odd/manifests/${ref}`);
    t.is(r.status, 200, ref);
    t.deepEqual(r.body, Buffer.from(odd), 'identical bytes');
    t.is(sha256(r.body), digest);
    t.is(r.header('content-length'), String(Buffer.byteLength(odd)));
    t.is(r.header('docker-content-digest'), digest);
    t.is(r.header('content-type'), DOCKER_MANIFEST, 'generic upstream Content-Type replaced by the body mediaType');
    const h = await head(s, `/v2/library/odd/manifests/${ref}`);
    t.is(h.header('content-length'), String(Buffer.byteLength(odd)));
  }
  t.is(fake.manifestRequests('GET').length, 1, 'the by-digest GET was answered from the tag fetch');
  t.is(fake.bytesSent, Buffer.byteLength(odd));
  // undici's fetch would decode compressed bodies and break the digest (protocol.md 6.9).
  t.is(fake.find()[0]!.headers['accept-encoding'], 'identity');
});

test('an upstream that sends no Docker-Content-Digest: the digest is computed; revalidation falls back to a GET by tag', async (t) => {
  const { fake, s } = await setup(t, { fake: { omitManifestDigest: true }, upstream: { tags: { ttl: '0s' } } });
  const img = sampleImage('no-digest-header');
  fake.addImage('library/app', img, 'v1');
  const r = await get(s, '/v2/library/app/manifests/v1');
  t.is(r.status, 200);
  t.is(r.header('docker-content-digest'), img.manifest.digest);
  t.is(r.header('content-length'), String(img.manifest.size));
  fake.resetCounters();
  const again = await get(s, '/v2/library/app/manifests/v1');
  t.deepEqual(again.body, img.manifest.bytes);
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.manifestRequests('GET').length, 1, 'a HEAD without a digest cannot confirm the tag');
  t.is(fake.bytesSent, img.manifest.size);
});

test('a manifest whose bytes do not match its digest is rejected (502) and not cached', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('bad-manifest');
  const other = sampleImage('bad-manifest-other');
  fake.addImage('library/bad', img);
  // The upstream stores wrong bytes under other's digest, and tags them.
  fake.repos.get('library/bad')!.manifests.set(other.manifest.digest, { bytes: img.manifest.bytes, mediaType: img.manifest.mediaType });
  fake.setTag('library/bad', 'v1', other.manifest.digest);
  for (const ref of [other.manifest.digest, other.manifest.digest, 'v1', 'v1']) {
    const r = await get(s, `/v2/library/bad/manifests/${ref}`);
    t.is(r.status, 502, ref);
    t.is(errorCode(r), 'UNAVAILABLE');
  }
  t.is(fake.manifestRequests('GET').length, 4, 'nothing cached: asked every time');
  t.is(fake.bytesSent, 4 * img.manifest.size);
  t.true(s.logs.some((l) => l.includes('manifest digest mismatch')));
});

test('manifests are single-flight: 8 concurrent misses of one tag cost one upstream GET', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('mf-single-flight');
  fake.addImage('library/app', img, 'latest');
  fake.faults.push({ method: 'GET', path: /\/manifests\//, headerDelayMs: 400 });

  const all = await Promise.all(Array.from({ length: 8 }, () => get(s, '/v2/library/app/manifests/latest')));
  for (const r of all) {
    t.is(r.status, 200);
    t.deepEqual(r.body, img.manifest.bytes);
  }
  t.is(fake.manifestRequests('GET').length, 1);
  t.is(fake.registryRequests, 1);
  t.is(fake.bytesSent, img.manifest.size);
});

test('blob HEAD on a cold blob is answered from an upstream HEAD without downloading', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('cold-head');
  fake.addImage('library/app', img, 'v1');
  const layer = img.layers[1]!;

  const h = await head(s, `/v2/library/app/blobs/${layer.digest}`);
  t.is(h.status, 200);
  t.is(h.header('content-length'), String(layer.size));
  t.is(h.header('docker-content-digest'), layer.digest);
  t.is(h.body.length, 0);
  t.is(fake.count({ method: 'HEAD' }), 1);
  t.is(fake.count({ method: 'GET' }), 0, 'nothing downloaded');
  t.is(fake.bytesSent, 0);

  const missing = await head(s, `/v2/library/app/blobs/${sha256('nope')}`);
  t.is(missing.status, 404);
  t.is(fake.count({ method: 'GET' }), 0);

  // GET downloads once; later HEADs and GETs are local.
  t.deepEqual((await get(s, `/v2/library/app/blobs/${layer.digest}`)).body, layer.bytes);
  fake.resetCounters();
  t.is((await head(s, `/v2/library/app/blobs/${layer.digest}`)).status, 200);
  t.deepEqual((await get(s, `/v2/library/app/blobs/${layer.digest}`)).body, layer.bytes);
  t.is(fake.totalRequests, 0);
  t.is(fake.bytesSent, 0);
});

test('a blob stored for one repository is served for another only if linked or confirmed upstream', async (t) => {
  const { fake, s } = await setup(t, { server: { namespaces: [{ prefix: 'airgap', upstream: 'local' }] } });
  const img = sampleImage('cross-repo');
  const layer = img.layers[1]!;
  fake.addImage('team/a', img, 'v1');
  fake.addBlob('team/b', layer); // the upstream has it in team/b too
  fake.addImage('team/d', img, 'v1'); // team/d's manifest references it
  // team/c exists upstream but does not hold the blob.
  fake.addBlob('team/c', img.config);

  t.deepEqual((await get(s, `/v2/team/a/blobs/${layer.digest}`)).body, layer.bytes);
  t.is(fake.blobGets(layer.digest), 1);
  fake.resetCounters();

  const c = await get(s, `/v2/team/c/blobs/${layer.digest}`);
  t.is(c.status, 404, 'not in team/c upstream: not revealed');
  t.is(errorCode(c), 'BLOB_UNKNOWN');
  t.is(fake.count({ method: 'HEAD', path: `/v2/team/c/blobs/${layer.digest}` }), 1);
  t.is(fake.count({ method: 'GET' }), 0);

  const b = await get(s, `/v2/team/b/blobs/${layer.digest}`);
  t.is(b.status, 200, 'confirmed by an upstream HEAD');
  t.deepEqual(b.body, layer.bytes);
  t.is(fake.count({ method: 'HEAD', path: `/v2/team/b/blobs/${layer.digest}` }), 1);
  t.is(fake.count({ method: 'GET' }), 0, 'served from the local copy');
  t.is(fake.bytesSent, 0);

  // team/d: its cached manifest references the blob, which links it without any blob request.
  t.is((await get(s, '/v2/team/d/manifests/v1')).status, 200);
  fake.resetCounters();
  t.deepEqual((await get(s, `/v2/team/d/blobs/${layer.digest}`)).body, layer.bytes);
  t.is(fake.totalRequests, 0);

  // Once linked, team/b is local too; a local-only namespace never sees it and never dials.
  t.is((await get(s, `/v2/team/b/blobs/${layer.digest}`)).status, 200);
  const local = await get(s, `/v2/airgap/team/a/blobs/${layer.digest}`);
  t.is(local.status, 404);
  t.is(errorCode(local), 'BLOB_UNKNOWN');
  t.is(fake.totalRequests, 0);
});

test('a fill in flight for one repository is not joined by another without upstream confirmation', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('inflight-cross');
  const layer = img.layers[1]!;
  fake.addImage('team/a', img, 'v1');
  fake.addBlob('team/c', img.config);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 256, intervalMs: 40 } });

  const fillA = get(s, `/v2/team/a/blobs/${layer.digest}`);
  await sleep(100);
  const c = await get(s, `/v2/team/c/blobs/${layer.digest}`);
  t.is(c.status, 404);
  t.is(errorCode(c), 'BLOB_UNKNOWN');
  t.deepEqual((await fillA).body, layer.bytes);
  t.is(fake.blobGets(layer.digest), 1);
  t.is(fake.count({ method: 'HEAD', path: `/v2/team/c/blobs/${layer.digest}` }), 1);
  t.is(fake.blobBytes(layer.digest), layer.size);
});

test('a tag deleted upstream answers 404 after the TTL and is dropped', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '0s' } } });
  const img = sampleImage('deleted-tag');
  fake.addImage('library/app', img, 'gone');
  t.is((await get(s, '/v2/library/app/manifests/gone')).status, 200);
  fake.repos.get('library/app')!.tags.delete('gone');
  fake.resetCounters();
  const r = await get(s, '/v2/library/app/manifests/gone');
  t.is(r.status, 404);
  t.is(errorCode(r), 'MANIFEST_UNKNOWN');
  t.is(fake.manifestRequests('HEAD').length, 1);
  t.is(fake.bytesSent, 0);
  // By digest it is still served (content is immutable).
  t.is((await get(s, `/v2/library/app/manifests/${img.manifest.digest}`)).status, 200);
  t.is(fake.totalRequests, 1);
});
