/**
 * Content management over a real socket: deleting tags, manifests and blobs, and that
 * deletes are atomic (a HEAD right after is 404). Conformance v1.1.1 04_management and
 * the main suite's TestDelete* (protocol.md 1.4 DELETE, 1.5 DELETE).
 */
import test from 'ava';
import { http, sha256 } from '../helpers/http.js';
import { makeIndex } from '../fixtures/images.js';
import { assertError, noServerErrors, OCI_INDEX, OCI_MANIFEST, pushImage, pushIndex, putManifest, sampleImage, serve } from './_support.js';

test.afterEach(noServerErrors);

const ACCEPT = { accept: `${OCI_INDEX}, ${OCI_MANIFEST}` };

test('DELETE by tag removes only that tag (202); the manifest stays reachable by digest', async (t) => {
  const s = await serve(t);
  const img = sampleImage('del-tag');
  t.is((await pushImage(s.url, 'mgmt/tag', img, 'a')).status, 201);
  t.is((await putManifest(s.url, 'mgmt/tag', 'b', img.manifest)).status, 201);

  const del = await http('DELETE', `${s.url}/v2/mgmt/tag/manifests/a`);
  t.is(del.status, 202);
  t.is(del.body.length, 0);
  assertError(t, await http('HEAD', `${s.url}/v2/mgmt/tag/manifests/a`, { headers: ACCEPT }), 404, 'MANIFEST_UNKNOWN', true);
  assertError(t, await http('GET', `${s.url}/v2/mgmt/tag/manifests/a`, { headers: ACCEPT }), 404, 'MANIFEST_UNKNOWN');
  t.is((await http('HEAD', `${s.url}/v2/mgmt/tag/manifests/b`, { headers: ACCEPT })).status, 200);
  t.is((await http('HEAD', `${s.url}/v2/mgmt/tag/manifests/${img.manifest.digest}`, { headers: ACCEPT })).status, 200);
  t.deepEqual((await http('GET', `${s.url}/v2/mgmt/tag/tags/list`)).json(), { name: 'mgmt/tag', tags: ['b'] });
  assertError(t, await http('DELETE', `${s.url}/v2/mgmt/tag/manifests/a`), 404, 'MANIFEST_UNKNOWN');
  // The blobs are untouched.
  t.is((await http('HEAD', `${s.url}/v2/mgmt/tag/blobs/${img.config.digest}`)).status, 200);
});

test('DELETE by digest removes the manifest and every tag pointing at it; HEAD right after is 404', async (t) => {
  const s = await serve(t);
  const img = sampleImage('del-digest');
  const other = sampleImage('del-digest-other');
  t.is((await pushImage(s.url, 'mgmt/dig', img, 'test0')).status, 201);
  for (const tag of ['test1', 'test2']) t.is((await putManifest(s.url, 'mgmt/dig', tag, img.manifest)).status, 201);
  t.is((await pushImage(s.url, 'mgmt/dig', other, 'test3')).status, 201);
  const before = (await http('GET', `${s.url}/v2/mgmt/dig/tags/list`)).json<{ tags: string[] }>().tags;
  t.deepEqual(before, ['test0', 'test1', 'test2', 'test3']);

  const del = await http('DELETE', `${s.url}/v2/mgmt/dig/manifests/${img.manifest.digest}`);
  t.is(del.status, 202);
  assertError(t, await http('HEAD', `${s.url}/v2/mgmt/dig/manifests/${img.manifest.digest}`, { headers: ACCEPT }), 404, 'MANIFEST_UNKNOWN', true);
  assertError(t, await http('GET', `${s.url}/v2/mgmt/dig/manifests/${img.manifest.digest}`, { headers: ACCEPT }), 404, 'MANIFEST_UNKNOWN');
  for (const tag of ['test0', 'test1', 'test2']) {
    t.is((await http('HEAD', `${s.url}/v2/mgmt/dig/manifests/${tag}`, { headers: ACCEPT })).status, 404, tag);
  }
  t.deepEqual((await http('GET', `${s.url}/v2/mgmt/dig/tags/list`)).json<{ tags: string[] }>().tags, ['test3']);
  t.is((await http('HEAD', `${s.url}/v2/mgmt/dig/manifests/test3`, { headers: ACCEPT })).status, 200, 'other manifests untouched');
  assertError(t, await http('DELETE', `${s.url}/v2/mgmt/dig/manifests/${img.manifest.digest}`), 404, 'MANIFEST_UNKNOWN');

  // It can be pushed again.
  t.is((await putManifest(s.url, 'mgmt/dig', 'again', img.manifest)).status, 201);
  const g = await http('GET', `${s.url}/v2/mgmt/dig/manifests/again`, { headers: ACCEPT });
  t.deepEqual(g.body, img.manifest.bytes);
});

test('deleting a manifest in one repository leaves the same manifest in another intact', async (t) => {
  const s = await serve(t);
  const img = sampleImage('del-shared');
  t.is((await pushImage(s.url, 'shared/one', img, 'v1')).status, 201);
  t.is((await pushImage(s.url, 'shared/two', img, 'v1')).status, 201);
  t.is((await http('DELETE', `${s.url}/v2/shared/one/manifests/${img.manifest.digest}`)).status, 202);
  t.is((await http('HEAD', `${s.url}/v2/shared/one/manifests/${img.manifest.digest}`)).status, 404);
  const two = await http('GET', `${s.url}/v2/shared/two/manifests/v1`, { headers: ACCEPT });
  t.is(two.status, 200);
  t.deepEqual(two.body, img.manifest.bytes);
});

test('delete order of the new conformance: tags, then manifests (index first), then blobs', async (t) => {
  const s = await serve(t);
  const a = sampleImage('order-a');
  const b = sampleImage('order-b', { arch: 'arm64' });
  const idx = makeIndex([
    { image: a, platform: { architecture: 'amd64', os: 'linux' } },
    { image: b, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  t.is((await pushIndex(s.url, 'order/repo', idx, 'index')).status, 201);

  t.is((await http('DELETE', `${s.url}/v2/order/repo/manifests/index`)).status, 202);
  t.is((await http('HEAD', `${s.url}/v2/order/repo/manifests/index`, { headers: ACCEPT })).status, 404);
  for (const d of [idx.index.digest, b.manifest.digest, a.manifest.digest]) {
    t.is((await http('DELETE', `${s.url}/v2/order/repo/manifests/${d}`)).status, 202, d);
    t.is((await http('HEAD', `${s.url}/v2/order/repo/manifests/${d}`, { headers: ACCEPT })).status, 404, d);
  }
  for (const blob of [...a.layers, a.config, ...b.layers, b.config]) {
    const r = await http('DELETE', `${s.url}/v2/order/repo/blobs/${blob.digest}`);
    // Layers shared between the two images are deleted once; the second attempt is 404.
    t.true(r.status === 202 || r.status === 404, `${blob.digest}: ${r.status}`);
    t.is((await http('HEAD', `${s.url}/v2/order/repo/blobs/${blob.digest}`)).status, 404);
  }
  const tags = await http('GET', `${s.url}/v2/order/repo/tags/list`);
  t.true(tags.status === 404 || (tags.status === 200 && tags.json<{ tags: string[] }>().tags.length === 0));
});

test('deleting a manifest that an index still references: never a 5xx, and the index stays intact', async (t) => {
  const s = await serve(t);
  const a = sampleImage('child-del');
  const idx = makeIndex([{ image: a, platform: { architecture: 'amd64', os: 'linux' } }]);
  t.is((await pushIndex(s.url, 'child/repo', idx, 'multi')).status, 201);
  const r = await http('DELETE', `${s.url}/v2/child/repo/manifests/${a.manifest.digest}`);
  t.true(r.status === 202 || r.status === 409 || r.status === 400, String(r.status));
  t.true(r.status < 500);
  // The index itself is still served byte for byte.
  const g = await http('GET', `${s.url}/v2/child/repo/manifests/multi`, { headers: ACCEPT });
  t.deepEqual(g.body, idx.index.bytes);
});

test('delete errors: unknown repository, unknown tag, malformed digest, tag that can never exist', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'del/errs', sampleImage('del-errs'), 'v1')).status, 201);
  assertError(t, await http('DELETE', `${s.url}/v2/no/such/repo/manifests/v1`), 404, 'NAME_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/no/such/repo/manifests/${sha256('x')}`), 404, 'NAME_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/del/errs/manifests/nope`), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/del/errs/manifests/${sha256('not stored')}`), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/del/errs/manifests/sha256:totallywrong`), 400, 'DIGEST_INVALID');
  const bad = await http('DELETE', `${s.url}/v2/del/errs/manifests/.INVALID_MANIFEST_NAME`);
  t.true(bad.status === 400 || bad.status === 404, String(bad.status));
  // Nothing was deleted by the failed attempts.
  t.is((await http('HEAD', `${s.url}/v2/del/errs/manifests/v1`, { headers: ACCEPT })).status, 200);
});
