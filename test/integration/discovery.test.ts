/**
 * Content discovery over a real socket: GET /v2/, tags list, _catalog and the referrers
 * API (protocol.md 1.3, 1.7, 1.8; conformance v1.1.1 03_discovery and main "empty").
 */
import test from 'ava';
import { http, pushBlob, sha256 } from '../helpers/http.js';
import { EMPTY_BLOB, descriptor, jsonBlob, makeArtifact, makeBlob } from '../fixtures/images.js';
import { assertError, noServerErrors, OCI_INDEX, OCI_MANIFEST, pushArtifact, pushBlobs, pushImage, putManifest, randomDigest, sampleImage, serve } from './_support.js';

test.afterEach(noServerErrors);

interface TagList {
  name: string;
  tags: string[];
}
interface ReferrersIndex {
  schemaVersion: number;
  mediaType: string;
  manifests: Array<{ mediaType: string; digest: string; size: number; artifactType?: string; annotations?: Record<string, string> }>;
}

test('GET /v2/ and HEAD /v2/: 200, {} as application/json, API version header', async (t) => {
  const s = await serve(t);
  for (const path of ['/v2/', '/v2']) {
    const r = await http('GET', `${s.url}${path}`);
    t.is(r.status, 200, path);
    t.is(r.header('content-type'), 'application/json');
    t.deepEqual(r.json(), {});
    t.is(r.header('docker-distribution-api-version'), 'registry/2.0');
  }
  const h = await http('HEAD', `${s.url}/v2/`);
  t.is(h.status, 200);
  t.is(h.body.length, 0);
  t.is(h.header('docker-distribution-api-version'), 'registry/2.0');
});

test('tags list: byte-order sorting, exact body and Content-Type', async (t) => {
  const s = await serve(t);
  const img = sampleImage('tags-order');
  const tags = ['v1.10', 'v1.9', 'latest', 'Latest', '1.0', '_private', 'A-tag', 'z', 'v1.9-rc.1'];
  t.is((await pushImage(s.url, 'tags/order', img, tags[0])).status, 201);
  for (const tag of tags.slice(1)) t.is((await putManifest(s.url, 'tags/order', tag, img.manifest)).status, 201);
  const r = await http('GET', `${s.url}/v2/tags/order/tags/list`);
  t.is(r.status, 200);
  t.is(r.header('content-type'), 'application/json');
  t.is(r.header('link'), undefined);
  const body = r.json<TagList>();
  t.is(body.name, 'tags/order');
  // Byte order (what distribution and Go's sort.Strings produce).
  t.deepEqual(body.tags, [...tags].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  t.deepEqual(body.tags, ['1.0', 'A-tag', 'Latest', '_private', 'latest', 'v1.10', 'v1.9', 'v1.9-rc.1', 'z']);
});

test('tags list pagination: n, last, exact Link header, following it, n=0', async (t) => {
  const s = await serve(t);
  const img = sampleImage('tags-page');
  const repo = 'conformance/repo1';
  t.is((await pushImage(s.url, repo, img, 'test0')).status, 201);
  for (const tag of ['test1', 'test2', 'test3']) t.is((await putManifest(s.url, repo, tag, img.manifest)).status, 201);

  const p1 = await http('GET', `${s.url}/v2/${repo}/tags/list?n=2`);
  t.is(p1.status, 200);
  t.deepEqual(p1.json<TagList>().tags, ['test0', 'test1']);
  t.is(p1.header('link'), `</v2/${repo}/tags/list?last=test1&n=2>; rel="next"`);

  const next = /^<([^>]+)>; rel="next"$/.exec(p1.header('link') ?? '')![1]!;
  const p2 = await http('GET', `${s.url}${next}`);
  t.deepEqual(p2.json<TagList>(), { name: repo, tags: ['test2', 'test3'] });
  t.is(p2.header('link'), undefined, 'no Link on the last page');

  const exact = await http('GET', `${s.url}/v2/${repo}/tags/list?n=4`);
  t.deepEqual(exact.json<TagList>().tags, ['test0', 'test1', 'test2', 'test3']);
  t.is(exact.header('link'), undefined, 'exactly n left: no further page');

  const more = await http('GET', `${s.url}/v2/${repo}/tags/list?n=100`);
  t.is(more.json<TagList>().tags.length, 4);
  t.is(more.header('link'), undefined);

  const zero = await http('GET', `${s.url}/v2/${repo}/tags/list?n=0`);
  t.is(zero.status, 200);
  t.deepEqual(zero.json<TagList>(), { name: repo, tags: [] });
  t.is(zero.header('link'), undefined);

  const afterLast = await http('GET', `${s.url}/v2/${repo}/tags/list?last=test1`);
  t.deepEqual(afterLast.json<TagList>().tags, ['test2', 'test3']);
  const between = await http('GET', `${s.url}/v2/${repo}/tags/list?last=test1a&n=1`);
  t.deepEqual(between.json<TagList>().tags, ['test2'], 'last need not be an existing tag');
  t.is(between.header('link'), `</v2/${repo}/tags/list?last=test2&n=1>; rel="next"`);
  const pastEnd = await http('GET', `${s.url}/v2/${repo}/tags/list?last=zzz&n=2`);
  t.deepEqual(pastEnd.json<TagList>().tags, []);
  t.is(pastEnd.header('link'), undefined);
});

test('tags list errors: invalid n is 400 PAGINATION_NUMBER_INVALID, unknown repo is 404 NAME_UNKNOWN', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'tags/err', sampleImage('tags-err'), 'v1')).status, 201);
  for (const n of ['-1', 'abc', '1.5', '1e3', '0x10', ' 2']) {
    assertError(t, await http('GET', `${s.url}/v2/tags/err/tags/list?n=${encodeURIComponent(n)}`), 400, 'PAGINATION_NUMBER_INVALID');
  }
  assertError(t, await http('GET', `${s.url}/v2/no/such/repo/tags/list`), 404, 'NAME_UNKNOWN');
  assertError(t, await http('GET', `${s.url}/v2/no/such/repo/tags/list?n=0`), 404, 'NAME_UNKNOWN');
  // A huge n is capped, not an error.
  t.is((await http('GET', `${s.url}/v2/tags/err/tags/list?n=99999999999999999999`)).status, 200);
  // Fresh repository with no content yet (new conformance "empty"): 200 or 404.
  const fresh = await http('GET', `${s.url}/v2/conformance/fresh/tags/list`);
  t.true(fresh.status === 200 || fresh.status === 404);
});

test('_catalog lists repositories holding content, with n/last pagination and a Link header', async (t) => {
  const s = await serve(t);
  const repos = ['b/two', 'a/one', 'c', 'a/one/deeper', 'a-x/y'];
  for (const r of repos) t.is((await pushImage(s.url, r, sampleImage(`cat-${r}`), 'v1')).status, 201);
  await pushBlob(s.url, 'only/blobs', 'a blob but no manifest');
  const sorted = [...repos].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));

  const all = await http('GET', `${s.url}/v2/_catalog`);
  t.is(all.status, 200);
  t.is(all.header('content-type'), 'application/json');
  const listed = all.json<{ repositories: string[] }>().repositories;
  t.deepEqual(listed.filter((r) => r !== 'only/blobs'), sorted);

  const p1 = await http('GET', `${s.url}/v2/_catalog?n=2`);
  t.deepEqual(p1.json<{ repositories: string[] }>().repositories, sorted.slice(0, 2));
  t.is(p1.header('link'), `</v2/_catalog?last=${encodeURIComponent(sorted[1]!)}&n=2>; rel="next"`);
  // Follow the links to the end (bounded).
  const seen: string[] = [...sorted.slice(0, 2)];
  let link = p1.header('link');
  for (let i = 0; link && i < 10; i++) {
    const page = await http('GET', `${s.url}${/^<([^>]+)>/.exec(link)![1]}`);
    t.is(page.status, 200);
    seen.push(...page.json<{ repositories: string[] }>().repositories);
    link = page.header('link');
  }
  t.deepEqual(seen, listed);

  const zero = await http('GET', `${s.url}/v2/_catalog?n=0`);
  t.deepEqual(zero.json(), { repositories: [] });
  t.is(zero.header('link'), undefined);
  assertError(t, await http('GET', `${s.url}/v2/_catalog?n=-3`), 400, 'PAGINATION_NUMBER_INVALID');
  assertError(t, await http('GET', `${s.url}/v2/_catalog?n=x`), 400, 'PAGINATION_NUMBER_INVALID');
  t.is((await http('HEAD', `${s.url}/v2/_catalog`)).status, 200);
});

/** The referrers data set of conformance v1.1.1 03_discovery. */
async function pushReferrersSetup(base: string, repo: string) {
  const subject = sampleImage('referrers-subject');
  t_assert((await pushImage(base, repo, subject, 'tagtest0')).status === 201, 'subject push');
  t_assert((await pushBlob(base, repo, EMPTY_BLOB.bytes)) === EMPTY_BLOB.digest, 'empty blob digest');
  const ann = (n: string) => ({ 'org.opencontainers.conformance.test': n });
  const layerA = makeBlob('NHL Peanut Butter on my NHL bagel', 'application/vnd.nhl.peanut.butter.bagel');
  const layerB = makeBlob('NBA Strawberry Jam on my NBA croissant', 'application/vnd.nba.strawberry.jam.croissant');
  await pushBlobs(base, repo, [layerA, layerB]);
  const configTypeA = makeBlob('{"a":1}', 'application/vnd.nhl.peanut.butter.bagel');
  const configTypeB = makeBlob('{"b":2}', 'application/vnd.nba.strawberry.jam.croissant');
  await pushBlobs(base, repo, [configTypeA, configTypeB]);
  // Two artifacts typed by their config media type (no artifactType field).
  const byConfigA = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: descriptor(configTypeA), layers: [descriptor(layerA)], subject: descriptor(subject.manifest), annotations: ann('config A') }, OCI_MANIFEST);
  const byConfigB = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: descriptor(configTypeB), layers: [descriptor(layerB)], subject: descriptor(subject.manifest), annotations: ann('config B') }, OCI_MANIFEST);
  // Two with artifactType and the empty config.
  const byTypeA = makeArtifact(subject.manifest, 'application/vnd.nhl.peanut.butter.bagel', { layer: layerA.bytes, layerMediaType: layerA.mediaType, annotations: ann('artifactType A') });
  const byTypeB = makeArtifact(subject.manifest, 'application/vnd.nba.strawberry.jam.croissant', { layer: layerB.bytes, layerMediaType: layerB.mediaType, annotations: ann('artifactType B') });
  // An index with artifactType and a subject.
  const index = jsonBlob({ schemaVersion: 2, mediaType: OCI_INDEX, artifactType: 'application/vnd.food.stand', manifests: [descriptor(byTypeA.manifest)], subject: descriptor(subject.manifest), annotations: ann('index') }, OCI_INDEX);
  // An artifact whose subject was never pushed.
  const missingSubject = { mediaType: OCI_MANIFEST, digest: sha256('missing content'), size: 123 };
  const dangling = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.nhl.peanut.butter.bagel', config: descriptor(EMPTY_BLOB), layers: [descriptor(layerA)], subject: missingSubject, annotations: ann('dangling') }, OCI_MANIFEST);
  const puts: Array<[string, typeof byConfigA]> = [
    ['byConfigA', byConfigA],
    ['byConfigB', byConfigB],
    ['byTypeA', byTypeA.manifest],
    ['byTypeB', byTypeB.manifest],
    ['index', index],
    ['dangling', dangling],
  ];
  const subjects: Record<string, string | undefined> = {};
  for (const [name, m] of puts) {
    const r = await putManifest(base, repo, m.digest, m);
    t_assert(r.status === 201, `${name}: ${r.status} ${r.body.toString()}`);
    subjects[name] = r.header('oci-subject');
  }
  return { subject, byConfigA, byConfigB, byTypeA: byTypeA.manifest, byTypeB: byTypeB.manifest, index, dangling, missingSubject, subjects };
}

function t_assert(cond: boolean, msg: string): void {
  if (!cond) throw new Error(msg);
}

test('referrers: the v1.1.1 data set lists 5 referrers with artifactType and annotations', async (t) => {
  const s = await serve(t);
  const repo = 'ref/repo';
  const d = await pushReferrersSetup(s.url, repo);
  for (const name of ['byConfigA', 'byConfigB', 'byTypeA', 'byTypeB', 'index']) t.is(d.subjects[name], d.subject.manifest.digest, `OCI-Subject on ${name}`);
  t.is(d.subjects.dangling, d.missingSubject.digest);

  const r = await http('GET', `${s.url}/v2/${repo}/referrers/${d.subject.manifest.digest}`);
  t.is(r.status, 200);
  t.is(r.header('content-type'), OCI_INDEX, 'exact, no charset');
  t.is(r.header('oci-filters-applied'), undefined, 'no filter, no header');
  const idx = r.json<ReferrersIndex>();
  t.is(idx.schemaVersion, 2);
  t.is(idx.mediaType, OCI_INDEX);
  t.is(idx.manifests.length, 5);
  const byDigest = new Map(idx.manifests.map((m) => [m.digest, m]));
  const expect = (blob: { digest: string; size: number }, mediaType: string, artifactType: string, note: string) => {
    const e = byDigest.get(blob.digest);
    t.truthy(e, note);
    t.is(e?.mediaType, mediaType, note);
    t.is(e?.size, blob.size, note);
    t.is(e?.artifactType, artifactType, note);
    t.deepEqual(e?.annotations, { 'org.opencontainers.conformance.test': note });
  };
  expect(d.byConfigA, OCI_MANIFEST, 'application/vnd.nhl.peanut.butter.bagel', 'config A');
  expect(d.byConfigB, OCI_MANIFEST, 'application/vnd.nba.strawberry.jam.croissant', 'config B');
  expect(d.byTypeA, OCI_MANIFEST, 'application/vnd.nhl.peanut.butter.bagel', 'artifactType A');
  expect(d.byTypeB, OCI_MANIFEST, 'application/vnd.nba.strawberry.jam.croissant', 'artifactType B');
  expect(d.index, OCI_INDEX, 'application/vnd.food.stand', 'index');
  t.false(byDigest.has(d.dangling.digest), 'listed under its own subject only');

  const f = await http('GET', `${s.url}/v2/${repo}/referrers/${d.subject.manifest.digest}?artifactType=application/vnd.nhl.peanut.butter.bagel`);
  t.is(f.status, 200);
  t.is(f.header('oci-filters-applied'), 'artifactType');
  const filtered = f.json<ReferrersIndex>().manifests.map((m) => m.digest).sort();
  t.deepEqual(filtered, [d.byConfigA.digest, d.byTypeA.digest].sort());
  const none = await http('GET', `${s.url}/v2/${repo}/referrers/${d.subject.manifest.digest}?artifactType=application/vnd.nobody`);
  t.deepEqual(none.json<ReferrersIndex>().manifests, []);
  t.is(none.header('oci-filters-applied'), 'artifactType');

  const m = await http('GET', `${s.url}/v2/${repo}/referrers/${d.missingSubject.digest}`);
  t.is(m.status, 200);
  const ml = m.json<ReferrersIndex>().manifests;
  t.is(ml.length, 1);
  t.is(ml[0]!.digest, d.dangling.digest);
  t.deepEqual(ml[0]!.annotations, { 'org.opencontainers.conformance.test': 'dangling' });
});

test('referrers: unknown digests and unknown repositories give 200 and an empty index; malformed digest is 400', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'ref/known', sampleImage('ref-known'), 'v1')).status, 201);
  for (const url of [`/v2/ref/known/referrers/${randomDigest('a')}`, `/v2/conformance/never/pushed/referrers/${randomDigest('b')}`, `/v2/ref/known/referrers/sha512:${'ab'.repeat(64)}`]) {
    const r = await http('GET', `${s.url}${url}`);
    t.is(r.status, 200, url);
    t.is(r.header('content-type'), OCI_INDEX);
    t.deepEqual(r.json(), { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
  }
  for (const bad of ['sha256:totallywrong', 'latest', `sha256:${'A'.repeat(64)}`, 'md5:d41d8cd98f00b204e9800998ecf8427e']) {
    assertError(t, await http('GET', `${s.url}/v2/ref/known/referrers/${bad}`), 400, 'DIGEST_INVALID');
  }
});

test('referrers are per repository and follow deletes', async (t) => {
  const s = await serve(t);
  const subject = sampleImage('ref-scope');
  t.is((await pushImage(s.url, 'scope/a', subject, 'v1')).status, 201);
  t.is((await pushImage(s.url, 'scope/b', subject, 'v1')).status, 201);
  const sig = makeArtifact(subject.manifest, 'application/vnd.example.sig', { layer: 'signature bytes' });
  t.is((await pushArtifact(s.url, 'scope/a', sig)).status, 201);
  const inA = (await http('GET', `${s.url}/v2/scope/a/referrers/${subject.manifest.digest}`)).json<ReferrersIndex>();
  t.deepEqual(inA.manifests.map((m) => m.digest), [sig.manifest.digest]);
  const inB = (await http('GET', `${s.url}/v2/scope/b/referrers/${subject.manifest.digest}`)).json<ReferrersIndex>();
  t.deepEqual(inB.manifests, [], 'another repository does not see it');
  // An artifact without artifactType and without a config typed for it falls back to the config media type.
  t.is(inA.manifests[0]!.artifactType, 'application/vnd.example.sig');

  t.is((await http('DELETE', `${s.url}/v2/scope/a/manifests/${sig.manifest.digest}`)).status, 202);
  const after = (await http('GET', `${s.url}/v2/scope/a/referrers/${subject.manifest.digest}`)).json<ReferrersIndex>();
  t.deepEqual(after.manifests, []);
  // Deleting the subject does not break the referrers endpoint.
  t.is((await http('DELETE', `${s.url}/v2/scope/a/manifests/${subject.manifest.digest}`)).status, 202);
  t.is((await http('GET', `${s.url}/v2/scope/a/referrers/${subject.manifest.digest}`)).status, 200);
});

test('referrers: an index referrer without artifactType has no artifactType field', async (t) => {
  const s = await serve(t);
  const subject = sampleImage('ref-index-untyped');
  t.is((await pushImage(s.url, 'ref/untyped', subject, 'v1')).status, 201);
  const idx = jsonBlob({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [], subject: descriptor(subject.manifest) }, OCI_INDEX);
  t.is((await putManifest(s.url, 'ref/untyped', 'idx', idx)).status, 201);
  const l = (await http('GET', `${s.url}/v2/ref/untyped/referrers/${subject.manifest.digest}`)).json<ReferrersIndex>();
  t.is(l.manifests.length, 1);
  t.deepEqual(l.manifests[0], { mediaType: OCI_INDEX, digest: idx.digest, size: idx.size });
});
