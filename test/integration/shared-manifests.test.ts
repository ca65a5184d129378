/**
 * Manifests, tags, tag lists and referrers shared by replicas (issue #13): three servers on
 * one real PostgreSQL and one real RADOS Gateway bucket (test/helpers/replicas.ts), a fake
 * upstream counting requests per path. One upstream GET per manifest, one upstream check per
 * tag per TTL and one list fetch per TTL across all three; stale answers on every replica
 * while the upstream is down. The fake answers slowly where overlap matters, so concurrent
 * requests really meet on several replicas. Serial: each test runs three replicas, and its
 * TTL windows and timings hold better without four other tests' replicas beside it. Never
 * skipped under CI=true.
 */
import test, { type ExecutionContext } from 'ava';
import { http, type Res } from '../helpers/http.js';
import { replicas, sharedMissing as missing, sharedQuery, stopSharedServers } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { type Blob, type ImageIndex, makeArtifact, makeIndex } from '../fixtures/images.js';
import { ACCEPT_ALL, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, sampleImage } from './_support.js';

const UP = 'hub.test';
const STALE = /^299 - "regmirror: upstream unavailable/;
/** Ceiling for anything polled (a loaded 2-core machine), never a sleep. */
const WAIT_MS = 30_000;
/** Slow upstream answers: concurrent requests overlap on every replica. */
const SLOW_MS = 400;

type Three = [TestServer, TestServer, TestServer];

async function setup(t: ExecutionContext, tags: Record<string, unknown> = {}): Promise<{ fake: FakeUpstream; rs: Three; db: string }> {
  const fake = await startFake(t);
  const rs = await replicas(t, 3, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, tags }) }, defaultUpstream: UP });
  return { fake, rs: [rs[0]!, rs[1]!, rs[2]!], db: rs.db };
}

function threePlatforms(seed: string): ImageIndex {
  return makeIndex(['amd64', 'arm64', 's390x'].map((arch) => ({ image: sampleImage(`${seed}-${arch}`, { arch }), platform: { os: 'linux', architecture: arch } })));
}

const getManifest = (s: TestServer, repo: string, ref: string, method: 'GET' | 'HEAD' = 'GET') =>
  http(method, `${s.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT_ALL } });

function isManifest(t: ExecutionContext, res: Res, m: Blob, what: string, head = false): void {
  t.is(res.status, 200, `${what}: ${res.body.toString().slice(0, 200)}`);
  t.is(res.header('docker-content-digest'), m.digest, `${what}: Docker-Content-Digest`);
  if (!head) t.true(res.body.equals(m.bytes), `${what}: exact bytes`);
}

/** Wait (polling) until the newest `column` time in `table` is more than `ttlMs` ago. */
async function ttlPassed(db: string, table: 'upstream_tags' | 'upstream_lists', ttlMs: number): Promise<void> {
  const column = table === 'upstream_tags' ? 'checked_at' : 'fetched_at';
  const rows = await sharedQuery<{ at: string | null }>(db, `SELECT max(${column}) AS at FROM ${table}`);
  const last = Number(rows[0]?.at ?? 0);
  await waitFor(() => Date.now() > last + ttlMs, ttlMs + WAIT_MS, `the tags TTL after ${table}.${column}`);
}

if (missing && !CI) {
  test.skip(`shared manifests: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test.serial('24 concurrent cold manifest GETs by tag and by digest over three replicas: each manifest fetched upstream exactly once, exact bytes and digest everywhere', async (t) => {
    const { fake, rs } = await setup(t);
    const byTag = threePlatforms('cold-tag');
    const pinned = threePlatforms('cold-digest');
    fake.addIndex('library/multi', byTag, 'latest');
    fake.addIndex('library/pinned', pinned);
    fake.faults.push({ method: 'GET', path: /\/manifests\//, headerDelayMs: SLOW_MS });
    // Eight manifests (two indexes, six platform manifests) on each of the three replicas.
    const wanted = [
      { repo: 'library/multi', ref: 'latest', m: byTag.index },
      ...byTag.images.map((e) => ({ repo: 'library/multi', ref: e.image.manifest.digest, m: e.image.manifest })),
      { repo: 'library/pinned', ref: pinned.index.digest, m: pinned.index },
      ...pinned.images.map((e) => ({ repo: 'library/pinned', ref: e.image.manifest.digest, m: e.image.manifest })),
    ];
    const requests = rs.flatMap((s, i) => wanted.map((w) => ({ ...w, s, what: `replica ${i} ${w.repo}:${w.ref}` })));
    t.is(requests.length, 24);
    const answers = await Promise.all(requests.map((q) => getManifest(q.s, q.repo, q.ref)));
    answers.forEach((res, i) => isManifest(t, res, requests[i]!.m, requests[i]!.what));
    for (const w of wanted) t.is(fake.count({ method: 'GET', path: `/v2/${w.repo}/manifests/${w.ref}` }), 1, `${w.repo}:${w.ref} fetched upstream once`);
    t.is(fake.count(), wanted.length, 'nothing else asked upstream (no HEAD, no second GET)');
    // And once more everywhere, from the shared rows.
    const again = await Promise.all(requests.map((q) => getManifest(q.s, q.repo, q.ref, 'HEAD')));
    again.forEach((res, i) => isManifest(t, res, requests[i]!.m, `${requests[i]!.what} (HEAD, warm)`, true));
    t.is(fake.count(), wanted.length);
  });

  test.serial('tag TTL across replicas: within it B and C ask the upstream nothing; after it one check per tag across all three; a moved tag is then seen by every replica', async (t) => {
    const TTL_MS = 5_000;
    const { fake, rs, db } = await setup(t, { ttl: '5s' });
    const [a, b, c] = rs;
    const v1 = sampleImage('ttl-v1');
    const v2 = sampleImage('ttl-v2');
    const kept = sampleImage('ttl-kept');
    fake.addImage('library/app', v1, 'latest');
    fake.addImage('library/app', v2);
    fake.addImage('library/app', kept, 'stable');
    const started = Date.now();
    isManifest(t, await getManifest(a, 'library/app', 'latest'), v1.manifest, 'A: latest');
    isManifest(t, await getManifest(a, 'library/app', 'stable'), kept.manifest, 'A: stable');
    const afterA = fake.count();
    t.is(afterA, 2, 'A fetched each tag once');
    for (const [name, s] of [['B', b], ['C', c]] as const) {
      isManifest(t, await getManifest(s, 'library/app', 'latest'), v1.manifest, `${name}: latest`);
      isManifest(t, await getManifest(s, 'library/app', 'stable', 'HEAD'), kept.manifest, `${name}: stable`, true);
    }
    t.true(Date.now() - started < TTL_MS, 'all of that within the TTL (else the next check proves nothing)');
    t.is(fake.count(), afterA, 'B and C asked the upstream nothing within the TTL');

    fake.setTag('library/app', 'latest', v2.manifest.digest);
    await ttlPassed(db, 'upstream_tags', TTL_MS);
    fake.resetCounters();
    fake.faults.push({ method: 'HEAD', path: /\/manifests\//, headerDelayMs: SLOW_MS });
    // Twelve concurrent requests: both tags, twice on each replica.
    const requests = rs.flatMap((s, i) => ['latest', 'stable', 'latest', 'stable'].map((tag) => ({ s, tag, what: `replica ${i} ${tag} after the TTL` })));
    const answers = await Promise.all(requests.map((q) => getManifest(q.s, 'library/app', q.tag)));
    answers.forEach((res, i) => isManifest(t, res, requests[i]!.tag === 'latest' ? v2.manifest : kept.manifest, requests[i]!.what));
    t.is(fake.count({ method: 'HEAD', path: '/v2/library/app/manifests/latest' }), 1, 'one check of latest across the replicas');
    t.is(fake.count({ method: 'HEAD', path: '/v2/library/app/manifests/stable' }), 1, 'one check of stable across the replicas');
    t.is(fake.count({ method: 'GET', path: `/v2/library/app/manifests/${v2.manifest.digest}` }), 1, 'the moved tag\'s new manifest fetched once');
    t.is(fake.count(), 3, 'nothing else asked upstream');
    for (const [i, s] of rs.entries()) isManifest(t, await getManifest(s, 'library/app', 'latest'), v2.manifest, `replica ${i} sees the moved tag`);
    t.is(fake.count(), 3, 'and within the new TTL nothing more');
  });

  test.serial('upstream down: every replica serves the cached tag with the stale Warning', async (t) => {
    const TTL_MS = 1_000;
    const { fake, rs, db } = await setup(t, { ttl: '1s' });
    const img = sampleImage('down');
    fake.addImage('library/app', img, 'latest');
    isManifest(t, await getManifest(rs[0], 'library/app', 'latest'), img.manifest, 'A: latest');
    await fake.stop();
    await ttlPassed(db, 'upstream_tags', TTL_MS);
    for (const [i, s] of rs.entries()) {
      for (const method of ['GET', 'HEAD'] as const) {
        const res = await getManifest(s, 'library/app', 'latest', method);
        isManifest(t, res, img.manifest, `replica ${i} ${method} latest, upstream down`, method === 'HEAD');
        t.regex(res.header('warning') ?? '', STALE, `replica ${i} ${method}: stale Warning`);
      }
      const byDigest = await getManifest(s, 'library/app', img.manifest.digest);
      isManifest(t, byDigest, img.manifest, `replica ${i} by digest`);
      t.is(byDigest.header('warning'), undefined, 'content by digest is never stale');
    }
  });

  test.serial('upstream hung: one replica waits out its tag check, the others answer stale with it, not after checks of their own', async (t) => {
    const TTL_MS = 1_000;
    const REVALIDATE_MS = 3_000;
    const fake = await startFake(t);
    const entry = upstreamEntry(fake, { libraryPrefix: true, tags: { ttl: '1s', revalidateTimeout: '3s' } });
    const rs = await replicas(t, 3, { upstreams: { [UP]: entry }, defaultUpstream: UP });
    const img = sampleImage('hung');
    fake.addImage('library/app', img, 'latest');
    isManifest(t, await getManifest(rs[0]!, 'library/app', 'latest'), img.manifest, 'A: latest');
    // Every replica holds the tag (read once), then the upstream stops answering HEADs.
    for (const s of rs.slice(1)) isManifest(t, await getManifest(s, 'library/app', 'latest', 'HEAD'), img.manifest, 'warm', true);
    fake.faults.push({ method: 'HEAD', path: /\/manifests\//, headerDelayMs: 60_000 });
    await ttlPassed(rs.db, 'upstream_tags', TTL_MS);
    fake.resetCounters();
    const timed = rs.map(async (s) => {
      const started = Date.now();
      const res = await getManifest(s, 'library/app', 'latest');
      return { res, ms: Date.now() - started };
    });
    for (const [i, { res, ms }] of (await Promise.all(timed)).entries()) {
      isManifest(t, res, img.manifest, `replica ${i}: stale while the upstream hangs`);
      t.regex(res.header('warning') ?? '', STALE);
      t.log(`replica ${i}: ${ms} ms`);
      t.true(ms < REVALIDATE_MS * 1.8, `replica ${i} answered in ${ms} ms: one revalidation timeout, not two`);
    }
    t.is(fake.count({ method: 'HEAD' }), 1, 'one hung check across the three replicas');
  });

  test.serial('tag lists and referrers: fetched upstream once per TTL across the replicas; a replica that never fetched one serves the stored list stale when the upstream is down', async (t) => {
    const TTL_MS = 5_000;
    const { fake, rs, db } = await setup(t, { ttl: '5s' });
    const [a, b, c] = rs;
    const img = sampleImage('lists');
    fake.addImage('library/app', img, 'v1');
    fake.setTag('library/app', 'v2', img.manifest.digest);
    const sig = makeArtifact(img.manifest, 'application/vnd.dev.cosign.artifact.sig.v1+json', { layer: 'signature' });
    for (const blob of sig.blobs) fake.addBlob('library/app', blob);
    fake.addManifest('library/app', sig.manifest.bytes, sig.manifest.mediaType);
    const other = sampleImage('lists-other');
    fake.addImage('library/other', other, 'only');
    fake.faults.push({ method: 'GET', path: /\/(tags\/list|referrers\/)/, headerDelayMs: SLOW_MS });

    const tagsOf = (s: TestServer, repo: string) => http('GET', `${s.url}/v2/${repo}/tags/list`);
    const referrersOf = (s: TestServer, repo: string, subject: string) => http('GET', `${s.url}/v2/${repo}/referrers/${subject}`);
    const tagsPath = '/v2/library/app/tags/list';
    const refPath = `/v2/library/app/referrers/${img.manifest.digest}`;
    const isTags = (res: Res, tags: string[], what: string) => {
      t.is(res.status, 200, what);
      t.deepEqual(res.json<{ tags: string[] }>().tags, tags, what);
    };
    const isReferrers = (res: Res, digests: string[], what: string) => {
      t.is(res.status, 200, what);
      t.deepEqual(res.json<{ manifests: Array<{ digest: string }> }>().manifests.map((m) => m.digest), digests, what);
    };
    const round = async (servers: TestServer[], what: string) => {
      const res = await Promise.all(servers.flatMap((s) => [tagsOf(s, 'library/app'), referrersOf(s, 'library/app', img.manifest.digest), tagsOf(s, 'library/app')]));
      for (let i = 0; i < res.length; i += 3) {
        isTags(res[i]!, ['v1', 'v2'], `${what}: tag list`);
        isReferrers(res[i + 1]!, [sig.manifest.digest], `${what}: referrers`);
        isTags(res[i + 2]!, ['v1', 'v2'], `${what}: tag list again`);
      }
    };

    // Cold, concurrent on A and B; A alone also lists library/other (for the stale part).
    const started = Date.now();
    const [, otherTags, otherRefs] = await Promise.all([round([a, b], 'cold'), tagsOf(a, 'library/other'), referrersOf(a, 'library/other', other.manifest.digest)]);
    isTags(otherTags, ['only'], 'A: library/other tag list');
    isReferrers(otherRefs, [], 'A: library/other has no referrers');
    t.is(fake.count({ method: 'GET', path: tagsPath }), 1, 'tag list fetched once for A and B');
    t.is(fake.count({ method: 'GET', path: refPath }), 1, 'referrers fetched once for A and B');
    await round([c], 'C within the TTL');
    t.true(Date.now() - started < TTL_MS, 'within the TTL (else the next check proves nothing)');
    t.is(fake.count({ method: 'GET', path: tagsPath }), 1, 'C took the tag list from the store');
    t.is(fake.count({ method: 'GET', path: refPath }), 1, 'C took the referrers from the store');

    await ttlPassed(db, 'upstream_lists', TTL_MS);
    await round(rs, 'after the TTL');
    t.is(fake.count({ method: 'GET', path: tagsPath }), 2, 'one more tag list fetch across the three replicas');
    t.is(fake.count({ method: 'GET', path: refPath }), 2, 'one more referrers fetch across the three replicas');

    await fake.stop();
    await ttlPassed(db, 'upstream_lists', TTL_MS);
    const staleTags = await tagsOf(b, 'library/other');
    isTags(staleTags, ['only'], 'B: library/other from the store, upstream down');
    t.regex(staleTags.header('warning') ?? '', STALE);
    const staleRefs = await referrersOf(c, 'library/other', other.manifest.digest);
    isReferrers(staleRefs, [], 'C: library/other referrers from the store, upstream down');
    t.regex(staleRefs.header('warning') ?? '', STALE);
    for (const [i, s] of rs.entries()) {
      const res = await tagsOf(s, 'library/app');
      isTags(res, ['v1', 'v2'], `replica ${i}: library/app stale`);
      t.regex(res.header('warning') ?? '', STALE);
    }
  });
}
