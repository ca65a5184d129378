/**
 * The referrers API for pull-through repositories (distribution-spec 1.1 "Listing
 * Referrers"; protocol.md 1.8): signatures and SBOMs attached upstream are listed through
 * the mirror, merged with local ones, cached with the tags TTL, served stale when the
 * upstream fails, and never turned into a 404 or 5xx. Every test counts upstream requests.
 */
import test, { type ExecutionContext } from 'ava';
import { http, type Res } from '../helpers/http.js';
import type { TestServer } from '../helpers/server.js';
import { type Artifact, type Image, makeArtifact } from '../fixtures/images.js';
import type { FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import { OCI_INDEX, OCI_MANIFEST, noServerErrors, pushArtifact, sampleImage, serve } from './_support.js';
import { sleep, startFake, upstreamEntry } from './_pullthrough.js';

test.afterEach(noServerErrors);

const UP = 'hub.test';
const SIG_TYPE = 'application/vnd.dev.cosign.artifact.sig.v1+json';
const SBOM_TYPE = 'application/spdx+json';
const STALE = '299 - "regmirror: upstream unavailable, serving cached content"';

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}
interface ReferrersIndex {
  schemaVersion: number;
  mediaType: string;
  manifests: Desc[];
}

async function setup(
  t: ExecutionContext,
  opts: { fake?: FakeUpstreamOptions; upstream?: Record<string, unknown> } = {},
): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, opts.fake);
  const s = await serve(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, ...opts.upstream }) },
    defaultUpstream: UP,
    namespaces: [{ prefix: 'airgap', upstream: 'local' }],
  });
  return { fake, s };
}

/** An upstream image with a cosign-style signature and an SBOM attached through `subject`. */
function signedImage(fake: FakeUpstream, repo: string, seed: string): { img: Image; sig: Artifact; sbom: Artifact } {
  const img = sampleImage(seed);
  fake.addImage(repo, img, 'v1');
  const sig = makeArtifact(img.manifest, SIG_TYPE, { layer: `signature of ${seed}`, annotations: { 'dev.cosignproject.cosign/signature': 'MEUCIQ' } });
  const sbom = makeArtifact(img.manifest, SBOM_TYPE, { layer: `{"spdxVersion":"SPDX-2.3","name":"${seed}"}`, layerMediaType: SBOM_TYPE });
  for (const a of [sig, sbom]) addArtifact(fake, repo, a);
  return { img, sig, sbom };
}

function addArtifact(fake: FakeUpstream, repo: string, a: Artifact): void {
  for (const b of a.blobs) fake.addBlob(repo, b);
  fake.addManifest(repo, a.manifest.bytes, a.manifest.mediaType);
}

/** The descriptor a registry lists for an artifact manifest. */
function desc(a: Artifact): Desc {
  const doc = JSON.parse(a.manifest.bytes.toString('utf8')) as { artifactType: string; annotations?: Record<string, string> };
  const d: Desc = { mediaType: OCI_MANIFEST, digest: a.manifest.digest, size: a.manifest.size, artifactType: doc.artifactType };
  if (doc.annotations) d.annotations = doc.annotations;
  return d;
}

const byDigest = (ds: Desc[]) => [...ds].sort((a, b) => a.digest.localeCompare(b.digest));

const referrers = (s: TestServer, repo: string, subject: string, query = '') => http('GET', `${s.url}/v2/${repo}/referrers/${subject}${query}`);

/** A well-formed referrers answer; returns its descriptors sorted by digest. */
function listed(t: ExecutionContext, r: Res, what = ''): Desc[] {
  t.is(r.status, 200, what);
  t.is(r.header('content-type'), OCI_INDEX, what);
  const idx = r.json<ReferrersIndex>();
  t.is(idx.schemaVersion, 2, what);
  t.is(idx.mediaType, OCI_INDEX, what);
  return byDigest(idx.manifests);
}

function metric(text: string, labels: Record<string, string>): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (line.startsWith('regmirror_cache_requests_total{') && want.every((w) => line.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

test('upstream referrers are listed with their descriptors; each referrer then pulls through by digest, byte-identical', async (t) => {
  const { fake, s } = await setup(t);
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'signed');

  const list = listed(t, await referrers(s, 'library/app', img.manifest.digest));
  t.deepEqual(list, byDigest([desc(sig), desc(sbom)]));
  const asked = fake.referrersRequests();
  t.is(asked.length, 1);
  t.is(asked[0]!.path, `/v2/library/app/referrers/${img.manifest.digest}`);
  t.is(asked[0]!.headers.accept, OCI_INDEX);
  t.is(asked[0]!.query.get('artifactType'), null, 'fetched unfiltered');
  t.is(fake.registryRequests, 1, 'listing referrers fetches nothing else');

  // What cosign/notation do next: fetch each referrer by digest, then its layer.
  fake.resetCounters();
  for (const a of [sig, sbom]) {
    const m = await http('GET', `${s.url}/v2/library/app/manifests/${a.manifest.digest}`, { headers: { accept: `${OCI_MANIFEST}, */*` } });
    t.is(m.status, 200);
    t.deepEqual(m.body, a.manifest.bytes);
    t.is(m.header('docker-content-digest'), a.manifest.digest);
    t.is(m.header('content-type'), OCI_MANIFEST);
    const layer = a.blobs[a.blobs.length - 1]!;
    const b = await http('GET', `${s.url}/v2/library/app/blobs/${layer.digest}`);
    t.deepEqual(b.body, layer.bytes);
  }
  t.is(fake.manifestRequests('GET').length, 2, 'one upstream GET per referrer manifest');

  // Now also held locally (cached manifests naming the subject): still listed once each.
  fake.resetCounters();
  t.deepEqual(listed(t, await referrers(s, 'library/app', img.manifest.digest)), byDigest([desc(sig), desc(sbom)]));
  t.is(fake.totalRequests, 0, 'within the TTL: answered from cache');

  const text = (await http('GET', `${s.url}/metrics`)).body.toString('utf8');
  t.is(metric(text, { kind: 'referrers', result: 'miss', upstream: UP }), 1);
  t.is(metric(text, { kind: 'referrers', result: 'hit', upstream: UP }), 1);
});

test('artifactType is filtered locally after the merge, with OCI-Filters-Applied; one upstream fetch serves every filter', async (t) => {
  const { fake, s } = await setup(t);
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'filtered');

  const unfiltered = await referrers(s, 'library/app', img.manifest.digest);
  t.is(listed(t, unfiltered).length, 2);
  t.is(unfiltered.header('oci-filters-applied'), undefined, 'no filter, no header');

  const sigs = await referrers(s, 'library/app', img.manifest.digest, `?artifactType=${encodeURIComponent(SIG_TYPE)}`);
  t.deepEqual(listed(t, sigs), [desc(sig)]);
  t.is(sigs.header('oci-filters-applied'), 'artifactType');
  const sboms = await referrers(s, 'library/app', img.manifest.digest, `?artifactType=${encodeURIComponent(SBOM_TYPE)}`);
  t.deepEqual(listed(t, sboms), [desc(sbom)]);
  t.is(sboms.header('oci-filters-applied'), 'artifactType');
  const none = await referrers(s, 'library/app', img.manifest.digest, '?artifactType=application/vnd.nobody');
  t.deepEqual(listed(t, none), []);
  t.is(none.header('oci-filters-applied'), 'artifactType');

  t.is(fake.referrersRequests().length, 1, 'one cache entry serves every filter');
  t.is(fake.referrersRequests()[0]!.query.get('artifactType'), null);
});

test('local referrers (pushed) and upstream referrers are merged: union by digest, local descriptors win', async (t) => {
  const { fake, s } = await setup(t);
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'merged');
  const attestation = makeArtifact(img.manifest, 'application/vnd.in-toto+json', { layer: 'local attestation' });
  t.is((await pushArtifact(s.url, 'library/app', attestation)).status, 201);
  // The same SBOM pushed locally too: listed once.
  t.is((await pushArtifact(s.url, 'library/app', sbom)).status, 201);

  const list = listed(t, await referrers(s, 'library/app', img.manifest.digest));
  t.deepEqual(list, byDigest([desc(sig), desc(sbom), desc(attestation)]));
  const onlyLocal = await referrers(s, 'library/app', img.manifest.digest, '?artifactType=application/vnd.in-toto%2Bjson');
  t.deepEqual(listed(t, onlyLocal), [desc(attestation)]);
  t.is(fake.referrersRequests().length, 1);

  // An upstream that describes a locally held digest differently does not override it;
  // its malformed entries are dropped, its valid ones kept.
  const subject2 = sampleImage('merged-2');
  const local2 = makeArtifact(subject2.manifest, SIG_TYPE, { layer: 'local sig 2' });
  t.is((await pushArtifact(s.url, 'library/app', local2)).status, 201);
  const foreign = { mediaType: OCI_MANIFEST, digest: `sha256:${'ab'.repeat(32)}`, size: 1234, artifactType: SBOM_TYPE };
  fake.referrers.body = JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { ...desc(local2), size: 1, annotations: { lie: 'from upstream' } },
      foreign,
      { mediaType: OCI_MANIFEST, digest: 'sha256:short', size: 1 },
      { mediaType: OCI_MANIFEST, digest: `sha256:${'cd'.repeat(32)}`, size: -5 },
      { digest: `sha256:${'ef'.repeat(32)}`, size: 5 },
      'junk',
      null,
    ],
  });
  const list2 = listed(t, await referrers(s, 'library/app', subject2.manifest.digest));
  t.deepEqual(list2, byDigest([desc(local2), foreign]));
});

test('within the TTL a second lookup costs no upstream request; after it the list is fetched again', async (t) => {
  // The "within the TTL" half needs two lookups inside one TTL. A loaded machine can take
  // longer than that, which says nothing about the cache: then the scenario runs again on a
  // fresh server with a longer TTL (bounded), instead of failing or always waiting long.
  for (const TTL_MS of [4000, 12_000, 30_000]) {
    const { fake, s } = await setup(t, { upstream: { tags: { ttl: `${TTL_MS}ms` } } });
    const { img, sig, sbom } = signedImage(fake, 'library/app', `ttl-${TTL_MS}`);

    const sent = Date.now();
    t.is(listed(t, await referrers(s, 'library/app', img.manifest.digest)).length, 2);
    const answered = Date.now();
    t.is(fake.referrersRequests().length, 1);

    // Someone attaches a new signature upstream.
    const late = makeArtifact(img.manifest, SIG_TYPE, { layer: 'attached later' });
    addArtifact(fake, 'library/app', late);
    fake.resetCounters();
    const fresh = listed(t, await referrers(s, 'library/app', img.manifest.digest));
    if (Date.now() - sent >= TTL_MS) {
      t.log(`the second lookup came after the ${TTL_MS} ms TTL (busy machine): again with a longer TTL`);
      continue;
    }
    t.deepEqual(fresh, byDigest([desc(sig), desc(sbom)]));
    t.is(fake.totalRequests, 0, 'within the TTL: no upstream request');

    await sleep(answered + TTL_MS + 50 - Date.now());
    const refreshed = listed(t, await referrers(s, 'library/app', img.manifest.digest));
    t.deepEqual(refreshed, byDigest([desc(sig), desc(sbom), desc(late)]));
    t.is(fake.referrersRequests().length, 1, 'after the TTL: fetched again, once');
    t.is(fake.totalRequests, 1);
    return;
  }
  t.fail('two lookups never fitted in a 30 s TTL: machine far too slow');
});

test('concurrent lookups of one list share a single upstream request', async (t) => {
  const { fake, s } = await setup(t);
  const { img } = signedImage(fake, 'library/app', 'flight');
  fake.faults.push({ path: /\/referrers\//, headerDelayMs: 300, times: 1 });
  const all = await Promise.all(Array.from({ length: 5 }, () => referrers(s, 'library/app', img.manifest.digest)));
  for (const r of all) t.is(listed(t, r).length, 2);
  t.is(fake.referrersRequests().length, 1);
});

test('upstream failures (5xx, 429, down) serve the cached list with Warning; with nothing cached, the local list', async (t) => {
  const { fake, s } = await setup(t, { upstream: { tags: { ttl: '100ms' } } });
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'stale');
  const other = sampleImage('stale-other');
  fake.addImage('library/app', other);
  const localOnly = makeArtifact(other.manifest, SIG_TYPE, { layer: 'local only' });
  t.is((await pushArtifact(s.url, 'library/app', localOnly)).status, 201);

  const first = await referrers(s, 'library/app', img.manifest.digest);
  t.deepEqual(listed(t, first), byDigest([desc(sig), desc(sbom)]));
  t.is(first.header('warning'), undefined);

  for (const status of [503, 500, 429]) {
    await sleep(150);
    fake.faults.push({ path: /\/referrers\//, status, times: 1, headers: status === 429 ? { 'retry-after': '30' } : {} });
    const r = await referrers(s, 'library/app', img.manifest.digest);
    t.deepEqual(listed(t, r, `${status}`), byDigest([desc(sig), desc(sbom)]), `${status}`);
    t.is(r.header('warning'), STALE, `${status}`);
    t.is(r.header('retry-after'), undefined, `${status}: nothing of the upstream error is passed on`);
  }
  // Uncached subject with a failing upstream: the local list, no Warning.
  fake.faults.push({ path: /\/referrers\//, status: 503, times: 1 });
  const uncached = await referrers(s, 'library/app', other.manifest.digest);
  t.deepEqual(listed(t, uncached), [desc(localOnly)]);
  t.is(uncached.header('warning'), undefined);

  await sleep(150);
  await fake.stop();
  const down = await referrers(s, 'library/app', img.manifest.digest);
  t.deepEqual(listed(t, down), byDigest([desc(sig), desc(sbom)]));
  t.is(down.header('warning'), STALE);
  const downUncached = await referrers(s, 'library/app', other.manifest.digest);
  t.deepEqual(listed(t, downUncached), [desc(localOnly)]);
  const nothing = await referrers(s, 'library/app', sampleImage('never-seen').manifest.digest);
  t.deepEqual(listed(t, nothing), []);
  t.is(nothing.header('warning'), undefined);
});

test('upstream 404 (no referrers API), 401 and 403 give 200 with the local list; WWW-Authenticate is not passed on', async (t) => {
  const { fake, s } = await setup(t, { fake: { referrers: { enabled: false } } });
  const { img } = signedImage(fake, 'library/app', 'no-api');
  const r = await referrers(s, 'library/app', img.manifest.digest);
  t.deepEqual(listed(t, r), []);
  t.is(fake.referrersRequests().length, 1);
  const local = makeArtifact(img.manifest, SIG_TYPE, { layer: 'pushed here' });
  t.is((await pushArtifact(s.url, 'library/app', local)).status, 201);
  t.deepEqual(listed(t, await referrers(s, 'library/app', img.manifest.digest)), [desc(local)]);
  t.is(fake.referrersRequests().length, 1, 'the 404 is remembered for the TTL');

  // An unknown upstream repository (404 NAME_UNKNOWN) as well.
  t.deepEqual(listed(t, await referrers(s, 'library/nowhere', img.manifest.digest)), []);

  fake.referrers.enabled = true;
  for (const [status, headers] of [
    [401, { 'www-authenticate': 'Basic realm="upstream-realm"' }],
    [403, {}],
  ] as const) {
    const subject = sampleImage(`denied-${status}`);
    fake.addImage('library/app', subject);
    addArtifact(fake, 'library/app', makeArtifact(subject.manifest, SIG_TYPE, { layer: `hidden ${status}` }));
    fake.faults.push({ path: /\/referrers\//, status, headers, times: 1 });
    const d = await referrers(s, 'library/app', subject.manifest.digest);
    t.deepEqual(listed(t, d, `${status}`), [], `${status}`);
    t.is(d.header('www-authenticate'), undefined, `${status}`);
    t.is(d.header('warning'), undefined, `${status}`);
  }
});

test('an upstream without the referrers API: the referrers tag schema (sha256-<hex> index) is read for the client', async (t) => {
  const { fake, s } = await setup(t, { fake: { referrers: { enabled: false } } });
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'tag-schema');
  // What an OCI 1.1 client pushes to a registry without the API: an index under <alg>-<hex>.
  const tag = img.manifest.digest.replace(':', '-');
  const tagIndex = JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [desc(sig), desc(sbom)] });
  fake.addManifest('library/app', tagIndex, OCI_INDEX, { tag });

  t.deepEqual(listed(t, await referrers(s, 'library/app', img.manifest.digest)), byDigest([desc(sig), desc(sbom)]));
  t.is(fake.referrersRequests().length, 1, 'the API was asked first');
  t.is(fake.manifestRequests('GET').filter((r) => r.path === `/v2/library/app/manifests/${tag}`).length, 1, 'then the tag schema');
  const filtered = await referrers(s, 'library/app', img.manifest.digest, `?artifactType=${encodeURIComponent(SBOM_TYPE)}`);
  t.deepEqual(listed(t, filtered), [desc(sbom)]);
  t.is(fake.totalRequests, 2, 'cached for the TTL like an API answer');

  // No tag either: an empty list, still 200.
  const bare = sampleImage('tag-schema-none');
  fake.addImage('library/app', bare);
  t.deepEqual(listed(t, await referrers(s, 'library/app', bare.manifest.digest)), []);
});

test('pagination: Link rel="next" is followed on the upstream, within bounds; a Link to another host is not', async (t) => {
  const { fake, s } = await setup(t, { fake: { referrers: { pageSize: 2 } } });
  const img = sampleImage('paged');
  fake.addImage('library/app', img);
  const arts = Array.from({ length: 5 }, (_, i) => makeArtifact(img.manifest, SIG_TYPE, { layer: `page sig ${i}` }));
  for (const a of arts) addArtifact(fake, 'library/app', a);

  t.deepEqual(listed(t, await referrers(s, 'library/app', img.manifest.digest)), byDigest(arts.map(desc)));
  const pages = fake.referrersRequests();
  t.is(pages.length, 3);
  t.deepEqual(
    pages.map((p) => p.query.get('last')),
    [null, ...byDigest(arts.map(desc)).filter((_, i) => i === 1 || i === 3).map((d) => d.digest)],
  );

  // A next link on another origin (the fake's CDN port): the first page only, nothing dialled there.
  fake.referrers.linkBase = fake.cdnUrl;
  fake.resetCounters();
  const img2 = sampleImage('paged-foreign');
  fake.addImage('library/app', img2);
  const arts2 = Array.from({ length: 4 }, (_, i) => makeArtifact(img2.manifest, SIG_TYPE, { layer: `foreign sig ${i}` }));
  for (const a of arts2) addArtifact(fake, 'library/app', a);
  t.deepEqual(listed(t, await referrers(s, 'library/app', img2.manifest.digest)), byDigest(arts2.map(desc)).slice(0, 2));
  t.is(fake.referrersRequests().length, 1);
  t.is(fake.count({ server: 'cdn' }), 0, 'the foreign host is never dialled');

  // At most 10 pages.
  fake.referrers = { pageSize: 1 };
  fake.resetCounters();
  const img3 = sampleImage('paged-many');
  fake.addImage('library/app', img3);
  const arts3 = Array.from({ length: 12 }, (_, i) => makeArtifact(img3.manifest, SIG_TYPE, { layer: `many ${i}` }));
  for (const a of arts3) addArtifact(fake, 'library/app', a);
  t.deepEqual(listed(t, await referrers(s, 'library/app', img3.manifest.digest)), byDigest(arts3.map(desc)).slice(0, 10));
  t.is(fake.referrersRequests().length, 10);
});

test('routing: ?ns= picks the upstream (echoed, remote name with library/); an unknown ns or a local namespace never dials', async (t) => {
  const { fake, s } = await setup(t);
  const { img, sig, sbom } = signedImage(fake, 'library/app', 'routed');

  const viaNs = await referrers(s, 'app', img.manifest.digest, `?ns=${UP}`);
  t.deepEqual(listed(t, viaNs), byDigest([desc(sig), desc(sbom)]));
  t.is(viaNs.header('oci-namespace'), UP);
  t.deepEqual(fake.referrersRequests().map((r) => r.path), [`/v2/library/app/referrers/${img.manifest.digest}`]);

  fake.resetCounters();
  const local = makeArtifact(img.manifest, SIG_TYPE, { layer: 'local for routing' });
  t.is((await pushArtifact(s.url, 'library/app', local)).status, 201);
  const evil = await referrers(s, 'library/app', img.manifest.digest, '?ns=evil.example.com');
  t.deepEqual(listed(t, evil), [desc(local)], 'an unconfigured ns: the local list only');
  t.is(evil.header('oci-namespace'), undefined);
  const evil2 = await referrers(s, 'library/app', img.manifest.digest, '?ns=127.0.0.1%3A1');
  t.deepEqual(listed(t, evil2), [desc(local)]);

  t.is((await pushArtifact(s.url, 'airgap/library/app', local)).status, 201);
  for (const q of ['', `?ns=${UP}`]) t.deepEqual(listed(t, await referrers(s, 'airgap/library/app', img.manifest.digest, q)), [desc(local)], q);
  t.is(fake.totalRequests, 0, 'nothing dialled');
});

test('a malformed upstream body gives the local list, never a 500', async (t) => {
  const { fake, s } = await setup(t);
  const { img } = signedImage(fake, 'library/app', 'malformed');
  const local = makeArtifact(img.manifest, SIG_TYPE, { layer: 'local beside junk' });
  t.is((await pushArtifact(s.url, 'library/app', local)).status, 201);
  const bodies = [
    'not json at all',
    '<html>502 Bad Gateway</html>',
    '[]',
    'null',
    '{"schemaVersion":2,"manifests":"nope"}',
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, manifests: [] }),
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ digest: 42 }, 'x', { mediaType: OCI_MANIFEST, digest: 'sha256:x', size: 'big' }] }),
  ];
  for (const [i, body] of bodies.entries()) {
    fake.referrers.body = body;
    const r = await referrers(s, 'library/app', img.manifest.digest);
    t.deepEqual(listed(t, r, body), [desc(local)], body);
    t.is(r.header('warning'), undefined, body);
    t.is(fake.referrersRequests().length, i + 1, `${body}: not cached, asked again`);
  }
});

test('HEAD on referrers answers like GET without a body', async (t) => {
  const { fake, s } = await setup(t);
  const { img } = signedImage(fake, 'library/app', 'head');
  const h = await http('HEAD', `${s.url}/v2/library/app/referrers/${img.manifest.digest}`);
  t.is(h.status, 200);
  t.is(h.header('content-type'), OCI_INDEX);
  t.is(h.body.length, 0);
  t.is(fake.referrersRequests().length, 1);
});
