/**
 * The hot-path caches (issue #14 item 2) never serve stale answers in this process: the
 * metadata read cache (src/storage/readcache.ts: tags and manifests) and the small blob
 * bytes (src/http/smallblobs.ts). Each test first warms the caches with repeated requests,
 * then changes the state over HTTP or by eviction and asks again right away.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { http, pushBlob } from '../helpers/http.js';
import { basic, writeHtpasswd } from '../helpers/authn.js';
import { type TestServer, tempDir } from '../helpers/server.js';
import { type Blob, type Image, makeBlob, randomBytes } from '../fixtures/images.js';
import type { Digest } from '../../src/registry/names.js';
import { ALL_MANIFEST_TYPES, assertError, noServerErrors, pushImage, sampleImage, serve } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

test.afterEach(noServerErrors);

const manifestUrl = (s: TestServer, repo: string, ref: string) => `${s.url}/v2/${repo}/manifests/${ref}`;

/** GET and HEAD `ref` a few times: each answers `img`'s manifest (and the caches are warm). */
async function warm(t: ExecutionContext, s: TestServer, repo: string, ref: string, img: Image): Promise<void> {
  for (let i = 0; i < 3; i++) {
    for (const method of ['GET', 'HEAD'] as const) {
      const r = await http(method, manifestUrl(s, repo, ref), { headers: { accept: ALL_MANIFEST_TYPES } });
      t.is(r.status, 200, `${method} ${ref}`);
      t.is(r.header('docker-content-digest'), img.manifest.digest, `${method} ${ref}`);
      if (method === 'GET') t.true(r.body.equals(img.manifest.bytes));
    }
  }
}

test('a tag moved by a push is served moved on the very next request, also under concurrent HEADs', async (t) => {
  const s = await serve(t);
  const a = sampleImage('hot-move-a');
  const b = sampleImage('hot-move-b');
  t.is((await pushImage(s.url, 'hot/move', a, 'v1')).status, 201);
  t.is((await pushImage(s.url, 'hot/move', b)).status, 201);
  await warm(t, s, 'hot/move', 'v1', a);
  await warm(t, s, 'hot/move', b.manifest.digest, b);

  // HEAD loops run while the tag moves: any HEAD sent after the PUT's 201 must see b.
  let movedAt = Infinity;
  const stale: string[] = [];
  const loop = async () => {
    for (let i = 0; i < 60; i++) {
      const sent = Date.now();
      const r = await http('HEAD', manifestUrl(s, 'hot/move', 'v1'), { headers: { accept: ALL_MANIFEST_TYPES } });
      if (r.status !== 200) stale.push(`status ${r.status}`);
      else if (sent > movedAt && r.header('docker-content-digest') !== b.manifest.digest) stale.push(`stale digest ${r.header('docker-content-digest')}`);
    }
  };
  const loops = [loop(), loop(), loop(), loop()];
  const put = await http('PUT', manifestUrl(s, 'hot/move', 'v1'), { headers: { 'content-type': b.manifest.mediaType }, body: b.manifest.bytes });
  t.is(put.status, 201);
  movedAt = Date.now();
  await Promise.all(loops);
  t.deepEqual(stale, []);
  await warm(t, s, 'hot/move', 'v1', b);
});

test('a deleted manifest and a deleted tag answer 404 on the very next request', async (t) => {
  const s = await serve(t);
  const img = sampleImage('hot-delete');
  t.is((await pushImage(s.url, 'hot/delete', img, 'v1')).status, 201);
  const other = sampleImage('hot-delete-other');
  t.is((await pushImage(s.url, 'hot/delete', other, 'keep')).status, 201);
  await warm(t, s, 'hot/delete', 'keep', other);
  await http('PUT', manifestUrl(s, 'hot/delete', 'gone'), { headers: { 'content-type': other.manifest.mediaType }, body: other.manifest.bytes });
  await warm(t, s, 'hot/delete', 'gone', other);

  t.is((await http('DELETE', manifestUrl(s, 'hot/delete', 'gone'))).status, 202);
  assertError(t, await http('GET', manifestUrl(s, 'hot/delete', 'gone'), { headers: { accept: ALL_MANIFEST_TYPES } }), 404, 'MANIFEST_UNKNOWN');
  await warm(t, s, 'hot/delete', 'keep', other);

  await warm(t, s, 'hot/delete', 'v1', img);
  await warm(t, s, 'hot/delete', img.manifest.digest, img);
  t.is((await http('DELETE', manifestUrl(s, 'hot/delete', img.manifest.digest))).status, 202);
  for (const ref of [img.manifest.digest, 'v1']) {
    assertError(t, await http('GET', manifestUrl(s, 'hot/delete', ref), { headers: { accept: ALL_MANIFEST_TYPES } }), 404, 'MANIFEST_UNKNOWN');
    assertError(t, await http('HEAD', manifestUrl(s, 'hot/delete', ref), { headers: { accept: ALL_MANIFEST_TYPES } }), 404, 'MANIFEST_UNKNOWN', true);
  }
});

test('small blobs: exact bytes and ranges from memory; a deleted blob answers 404 on the very next request', async (t) => {
  const s = await serve(t);
  // A blob no manifest references: a manifest's blob would be linked again on lookup.
  const small = makeBlob(randomBytes(3000, 'hot-blob'), 'application/octet-stream');
  t.is(await pushBlob(s.url, 'hot/blob', small.bytes), small.digest);
  const url = `${s.url}/v2/hot/blob/blobs/${small.digest}`;
  for (let i = 0; i < 3; i++) {
    const r = await http('GET', url);
    t.is(r.status, 200);
    t.true(r.body.equals(small.bytes));
    t.is(r.header('content-length'), String(small.size));
    t.is(r.header('docker-content-digest'), small.digest);
  }
  const part = await http('GET', url, { headers: { range: 'bytes=3-12' } });
  t.is(part.status, 206);
  t.is(part.header('content-range'), `bytes 3-12/${small.size}`);
  t.true(part.body.equals(small.bytes.subarray(3, 13)));

  t.is((await http('DELETE', url)).status, 202);
  assertError(t, await http('GET', url), 404, 'BLOB_UNKNOWN');
});

test('small blobs: the hot path (http/hotblobs.ts) answers what fastify answers; ranges, other repositories and auth stay with fastify', async (t) => {
  const s = await serve(t);
  const small = makeBlob(randomBytes(4000, 'hot-same'), 'application/octet-stream');
  t.is(await pushBlob(s.url, 'hot/same', small.bytes), small.digest);
  const url = `${s.url}/v2/hot/same/blobs/${small.digest}`;
  t.true((await http('GET', url)).body.equals(small.bytes), 'loaded into memory');
  const hotLines = () => s.logs.filter((l) => l.includes('"hot":true')).length;
  // A query string keeps a request with fastify: the reference answer.
  const headersOf = (r: Awaited<ReturnType<typeof http>>) => {
    const h = { ...r.headers } as Record<string, unknown>;
    delete h.date;
    return h;
  };
  for (const method of ['GET', 'HEAD'] as const) {
    const before = hotLines();
    const hot = await http(method, url);
    t.is(hotLines(), before + 1, `${method}: answered by the hot path`);
    const ref = await http(method, `${url}?via=fastify`);
    t.is(hotLines(), before + 1, `${method} with a query: answered by fastify`);
    t.is(hot.status, 200);
    t.is(ref.status, 200);
    t.deepEqual(headersOf(hot), headersOf(ref), `${method}: same headers`);
    t.true(hot.body.equals(method === 'GET' ? small.bytes : Buffer.alloc(0)), `${method}: body`);
    t.true(hot.body.equals(ref.body));
  }
  const before = hotLines();
  const part = await http('GET', url, { headers: { range: 'bytes=10-19' } });
  t.is(part.status, 206);
  t.true(part.body.equals(small.bytes.subarray(10, 20)));
  // The same digest asked for under a repository that does not hold it: fastify's 404.
  assertError(t, await http('GET', `${s.url}/v2/hot/other/blobs/${small.digest}`), 404, 'BLOB_UNKNOWN');
  assertError(t, await http('GET', `${s.url}/v2/Bad_Name/blobs/${small.digest}`), 400, 'NAME_INVALID');
  t.is(hotLines(), before, 'none of these by the hot path');
});

test('small blobs: with auth configured every request goes through access control (no hot path)', async (t) => {
  const dir = await tempDir(t);
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-pass' });
  const s = await serve(t, { auth: { htpasswd, rules: [{ repositories: '**', pull: ['alice'], push: ['alice'], delete: ['alice'] }] } });
  const alice = { authorization: basic('alice', 'alice-pass') };
  const small = makeBlob(randomBytes(2500, 'hot-auth'), 'application/octet-stream');
  const up = await http('POST', `${s.url}/v2/hot/auth/blobs/uploads/?digest=${small.digest}`, { headers: { ...alice, 'content-type': 'application/octet-stream' }, body: small.bytes });
  t.is(up.status, 201);
  const url = `${s.url}/v2/hot/auth/blobs/${small.digest}`;
  for (let i = 0; i < 3; i++) t.true((await http('GET', url, { headers: alice })).body.equals(small.bytes), 'warm');
  const anon = await http('GET', url);
  t.is(anon.status, 401, 'no credentials: refused although the bytes are in memory');
  t.false(anon.body.equals(small.bytes));
  t.is((await http('GET', url, { headers: { authorization: basic('alice', 'wrong') } })).status, 401);
});

test('small blobs: a damaged file is never kept in memory (served as before, right bytes once repaired)', async (t) => {
  const s = await serve(t);
  const small = makeBlob(randomBytes(2000, 'hot-damaged'), 'application/octet-stream');
  t.is(await pushBlob(s.url, 'hot/damaged', small.bytes), small.digest);
  const hex = small.digest.slice('sha256:'.length);
  const file = path.join(s.dataDir, 'storage', 'blobs', 'sha256', hex.slice(0, 2), hex);
  const damaged = Buffer.from(small.bytes);
  damaged[100] ^= 0xff;
  await fs.writeFile(file, damaged);
  const url = `${s.url}/v2/hot/damaged/blobs/${small.digest}`;
  t.true((await http('GET', url)).body.equals(damaged), 'the file as it is (what fsck reports)');
  await fs.writeFile(file, small.bytes);
  t.true((await http('GET', url)).body.equals(small.bytes), 'the damaged bytes were not kept');
});

test('evicted pulled-through content is fetched from the upstream again, never answered from memory', async (t) => {
  const fake = await startFake(t);
  const UP = 'hub.test';
  const s = await serve(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP, cache: { evictInterval: '1h', maxAge: '1h' } });
  const img = sampleImage('hot-evict');
  fake.addImage('library/hot', img, '1');
  await warm(t, s, 'library/hot', '1', img);
  await warm(t, s, 'library/hot', img.manifest.digest, img);
  const blobs: Blob[] = [img.config, ...img.layers];
  for (let i = 0; i < 2; i++) {
    for (const b of blobs) t.true((await http('GET', `${s.url}/v2/library/hot/blobs/${b.digest}`)).body.equals(b.bytes));
  }
  // The last byte goes out before the fill commits: wait for the rows, then evict everything.
  await waitFor(async () => (await Promise.all(blobs.map((b) => s.app.service.meta.blobSize(b.digest as Digest)))).every((n) => n !== undefined), 30_000, 'blobs committed');
  const result = await s.app.evict(Date.now() + 2 * 3_600_000);
  t.is(result.images, 1);

  const manifestGets = () => fake.manifestRequests('GET', 'library/hot').length;
  const before = manifestGets();
  await warm(t, s, 'library/hot', img.manifest.digest, img);
  t.is(manifestGets(), before + 1, 'the evicted manifest came from the upstream again (once)');
  const configGets = fake.blobGets(img.config.digest);
  const r = await http('GET', `${s.url}/v2/library/hot/blobs/${img.config.digest}`);
  t.true(r.body.equals(img.config.bytes));
  t.is(fake.blobGets(img.config.digest), configGets + 1, 'the evicted small blob came from the upstream again');
  // And the cached tag is gone with the image: the next pull by tag asks the upstream.
  const tagGets = manifestGets();
  await warm(t, s, 'library/hot', '1', img);
  t.true(manifestGets() > tagGets, 'the evicted tag was resolved upstream again');
  t.is((await http('GET', `${s.url}/v2/library/hot/manifests/1`, { headers: { accept: ACCEPT_ALL } })).status, 200);
});
