/**
 * Eviction and GC with several replicas on one real PostgreSQL and one real Ceph RADOS
 * Gateway bucket (issue #13): one replica at a time evicts (the `gc-leader` lease), the
 * budget is the shared total, and nothing another replica is serving or committing is
 * deleted: blob content goes `cache.deleteGrace` after its row (a reader that resolved the
 * digest before reads it whole), a live `fill:` lease keeps its blob, and a commit meeting
 * a delete in progress waits for it and writes the content again. Never skipped under CI=true.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import test, { type ExecutionContext } from 'ava';
import { configFromObject } from '../../src/config/load.js';
import type { EvictionResult } from '../../src/cache/eviction.js';
import { collectGarbage } from '../../src/ops/gc.js';
import { http, sha256 } from '../helpers/http.js';
import { blobRows, pullImageVerified, replicas, sharedMissing as missing, sharedQuery, sharedRadosgw, stopSharedServers } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { type Image, makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, OCI_MANIFEST, parseMultipart, sampleImage } from './_support.js';

/** Generous ceiling for background commits on a loaded machine (polled, not slept). */
const WAIT_MS = 60_000;

const blobsOf = (img: Image) => [img.config, ...img.layers];
const imageBytes = (img: Image) => blobsOf(img).reduce((n, b) => n + b.bytes.length, 0);

/** Bytes of the blob rows (every blob here came from the upstream: all count against the budget). */
const storedBytes = async (db: string) => Number((await sharedQuery<{ n: string }>(db, 'SELECT COALESCE(SUM(size), 0) AS n FROM blobs'))[0]!.n);
const deleteMarkers = async (db: string) => (await sharedQuery<{ name: string; owner: string }>(db, "SELECT name, owner FROM leases WHERE name LIKE 'delete:%'"));

/** Whether the bucket holds `digest`'s content (the store's layout: <prefix>/blobs/<alg>/<hex>). */
async function objectExists(t: ExecutionContext, bucket: string, digest: string): Promise<boolean> {
  const c = await s3(t);
  try {
    await c.send(new HeadObjectCommand({ Bucket: bucket, Key: objectKey(digest) }));
    return true;
  } catch (e) {
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw e;
  }
}

/** The digest of what the bucket holds for `digest` (read straight from the store). */
async function objectDigest(t: ExecutionContext, bucket: string, digest: string): Promise<string> {
  const res = await (await s3(t)).send(new GetObjectCommand({ Bucket: bucket, Key: objectKey(digest) }));
  return sha256(Buffer.from(await res.Body!.transformToByteArray()));
}

const objectKey = (digest: string) => `mirror/blobs/${digest.replace(':', '/')}`;

async function s3(t: ExecutionContext): Promise<S3Client> {
  const g = await sharedRadosgw();
  const c = new S3Client({ endpoint: g.endpoint, region: g.region, forcePathStyle: true, credentials: { accessKeyId: g.accessKeyId, secretAccessKey: g.secretAccessKey } });
  t.teardown(() => c.destroy());
  return c;
}

/** The passes that held the lease, from the replicas' 'cache eviction' log lines. */
function leaderPasses(rs: TestServer[]): Array<{ replica: number; token: number; start: number; end: number }> {
  const out: Array<{ replica: number; token: number; start: number; end: number }> = [];
  rs.forEach((r, replica) => {
    for (const line of r.logs) {
      const l = JSON.parse(line) as { msg?: string; fencingToken?: number; startedAt?: number; ms?: number };
      if (l.msg === 'cache eviction' && l.fencingToken !== undefined) out.push({ replica, token: l.fencingToken, start: l.startedAt!, end: l.startedAt! + l.ms! });
    }
  });
  return out;
}

type Replicas = TestServer[] & { db: string; storage: Record<string, unknown> & { s3: { bucket: string } } };

function upstreamConfig(fake: FakeUpstream, cache: Record<string, unknown>): Record<string, unknown> {
  // evictInterval: long, so passes run when a test calls app.evict() (what the timer calls).
  return { upstreams: { 'hub.test': upstreamEntry(fake) }, defaultUpstream: 'hub.test', cache: { evictInterval: '1h', ...cache } };
}

if (missing && !CI) {
  test.skip(`shared eviction: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('three replicas: one evicts at a time (gc-leader), the shared budget is met, content goes only after the grace, evicted images pull again', async (t) => {
    const fake = await startFake(t);
    const imgs = [0, 1, 2, 3, 4, 5].map((i) => sampleImage(`shared-evict-${i}`));
    imgs.forEach((img, i) => fake.addImage(`team/img${i}`, img, 'latest'));
    const total = imgs.reduce((n, img) => n + imageBytes(img), 0);
    const maxBytes = Math.floor(total / 2);
    const rs = (await replicas(t, 3, upstreamConfig(fake, { maxBytes, deleteGrace: '15s' }))) as unknown as Replicas;
    const bucket = rs.storage.s3.bucket;
    // Each replica pulls two images: the budget is over only counted across replicas.
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, rs[i % 3]!.url, `team/img${i}`, img);
    const digests = imgs.flatMap((img) => blobsOf(img).map((b) => b.digest));
    await waitFor(async () => (await blobRows(rs.db, digests)) === digests.length, WAIT_MS, 'every fill committed');
    t.is(await storedBytes(rs.db), total);

    // All three at once: one holds the lease, the others skip; passes never overlap.
    const results: EvictionResult[] = await Promise.all(rs.map((r) => r.app.evict()));
    const ran = results.filter((r) => r.skipped === undefined);
    t.true(results.some((r) => r.skipped === 'not-leader'), `some replica found the lease taken: ${JSON.stringify(results)}`);
    const again: EvictionResult[] = await Promise.all(rs.map((r) => r.app.evict()));
    const passes = leaderPasses(rs);
    t.true(passes.length >= 1 && passes.length === ran.length + again.filter((r) => r.skipped === undefined).length, JSON.stringify(passes));
    for (const a of passes) for (const b of passes) if (a !== b) t.false(a.start < b.end && b.start < a.end, `passes overlap: ${JSON.stringify([a, b])}`);
    t.is(new Set(passes.map((p) => p.token)).size, passes.length, `a fencing token per pass: ${JSON.stringify(passes)}`);
    // The same in each replica's metrics.
    let ranTotal = 0;
    let skippedTotal = 0;
    for (const r of rs) {
      const text = (await http('GET', `${r.url}/metrics`)).body.toString();
      ranTotal += Number(/regmirror_cache_eviction_passes_total\{result="ran"\} (\d+)/.exec(text)?.[1] ?? 0);
      skippedTotal += Number(/regmirror_cache_eviction_passes_total\{result="skipped"\} (\d+)/.exec(text)?.[1] ?? 0);
    }
    t.is(ranTotal, passes.length);
    t.is(ranTotal + skippedTotal, 6, 'two rounds of three');

    const evicted = [...ran, ...again].reduce((n, r) => n + r.blobs, 0);
    t.true(evicted > 0);
    t.true((await storedBytes(rs.db)) <= maxBytes, 'the shared budget is met');
    const gone = [];
    for (const d of digests) if ((await blobRows(rs.db, [d])) === 0) gone.push(d);
    t.is(gone.length, evicted);
    // Rows gone, content kept for the grace: a replica that resolved a digest just before reads it whole.
    t.deepEqual((await deleteMarkers(rs.db)).map((m) => m.owner).sort(), gone.map(() => 'pending'));
    for (const d of gone) t.true(await objectExists(t, bucket, d), `content of ${d} kept during the grace`);
    t.is((await rs[0]!.app.evict()).contentDeleted ?? 0, 0, 'nothing due yet');

    // After the grace, the next pass (whichever replica leads) deletes the content.
    let deleted = 0;
    await waitFor(
      async () => {
        for (const r of await Promise.all(rs.map((x) => x.app.evict()))) deleted += r.contentDeleted ?? 0;
        return deleted === gone.length;
      },
      WAIT_MS,
      'deferred deletes done after the grace',
    );
    for (const d of gone) t.false(await objectExists(t, bucket, d), `content of ${d} deleted after the grace`);
    t.deepEqual(await deleteMarkers(rs.db), []);
    // Every image still pulls with exact bytes (evicted ones again from the upstream).
    const before = fake.count();
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, rs[(i + 1) % 3]!.url, `team/img${i}`, img);
    t.true(fake.count() > before, 'evicted content fetched again');
  });

  test('pulls in flight while eviction runs: a slow multi-range reader and a slow upstream fill get exact bytes; a live fill: lease keeps its blob', async (t) => {
    const fake = await startFake(t);
    const big = makeImage({ layers: [makeLayer([{ name: 'big.bin', content: randomBytes(16 * 1024 * 1024, 'shared-evict-big') }], { gzip: false })] });
    const leased = sampleImage('shared-evict-leased');
    const slow = makeImage({ layers: [makeLayer([{ name: 'slow.bin', content: randomBytes(400_000, 'shared-evict-slow') }], { gzip: false })] });
    fake.addImage('team/big', big, 'latest');
    fake.addImage('team/leased', leased, 'latest');
    fake.addImage('team/slow', slow, 'latest');
    const rs = (await replicas(t, 3, upstreamConfig(fake, { maxBytes: 1, deleteGrace: '10m' }))) as unknown as Replicas;
    const [a, b, c] = rs as unknown as [TestServer, TestServer, TestServer];
    const bucket = rs.storage.s3.bucket;
    await pullImageVerified(t, a.url, 'team/big', big);
    await pullImageVerified(t, b.url, 'team/leased', leased);
    const committed = [...blobsOf(big), ...blobsOf(leased)].map((x) => x.digest);
    await waitFor(async () => (await blobRows(rs.db, committed)) === committed.length, WAIT_MS, 'fills committed');

    // C serves the big layer's two ranges from the bucket to a client that stops reading mid-way.
    const layer = big.layers[0]!;
    const size = layer.bytes.length;
    const ranges: Array<[number, number]> = [
      [0, size - 4097],
      [size - 4096, size - 1],
    ];
    let paused!: () => void;
    const atPause = new Promise<void>((r) => (paused = r));
    let resume!: () => void;
    const gate = new Promise<void>((r) => (resume = r));
    t.teardown(() => resume()); // a failed assertion must not leave the client (and the servers' close) waiting
    const reader = fetchStream(`${c.url}/v2/team/big/blobs/${layer.digest}`, {
      headers: { range: `bytes=${ranges.map(([s, e]) => `${s}-${e}`).join(',')}` },
      afterChunk: async (n) => {
        if (n >= 256 * 1024) {
          paused();
          await gate;
        }
      },
    });
    await atPause;
    // B fills a layer from a slow upstream meanwhile.
    fake.faults.push({ path: new RegExp(slow.layers[0]!.digest), throttle: { chunkBytes: 16 * 1024, intervalMs: 120 } });
    const m = await http('GET', `${b.url}/v2/team/slow/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
    t.is(m.status, 200);
    const filling = fetchStream(`${b.url}/v2/team/slow/blobs/${slow.layers[0]!.digest}`);
    await waitFor(() => fake.count({ path: new RegExp(slow.layers[0]!.digest) }) > 0, WAIT_MS, 'the slow fill started');
    // Another replica fills one of leased's blobs (its fill lease, as cache/fill.ts holds it).
    const kept = leased.layers[0]!.digest;
    await sharedQuery(rs.db, "INSERT INTO leases(name, owner, token, acquired_at, expires_at) VALUES ($1, 'replica-elsewhere', nextval('lease_tokens'), now(), now() + interval '10 minutes')", [
      `fill:${kept}`,
    ]);

    const ev = await a.app.evict();
    t.is(ev.skipped, undefined);
    t.true(ev.blobs >= 2, JSON.stringify(ev));
    t.is(await blobRows(rs.db, [layer.digest]), 0, 'the big layer row is evicted');
    t.is(await blobRows(rs.db, [kept]), 1, 'a blob under a live fill: lease stays');
    t.true(await objectExists(t, bucket, layer.digest), 'its content stays for the grace');
    t.is((await a.app.evict()).contentDeleted, 0, 'nothing due within the grace');

    resume();
    const got = await reader;
    t.is(got.error, null, String(got.error));
    t.is(got.status, 206);
    const boundary = /boundary=(\S+)/.exec(String(got.headers['content-type']))![1]!;
    const parts = parseMultipart(got.body, boundary);
    t.is(parts.length, 2);
    parts.forEach((p, i) => t.true(p.data.equals(layer.bytes.subarray(ranges[i]![0], ranges[i]![1] + 1)), `range ${i}: exact bytes`));
    const filled = await filling;
    t.is(filled.error, null);
    t.is(sha256(filled.body), slow.layers[0]!.digest, 'the slow fill got exact bytes');
    // Committed after the pass (a row), or during it and evicted (a pending delete): whole in the store either way.
    const sd = slow.layers[0]!.digest;
    await waitFor(async () => (await blobRows(rs.db, [sd])) === 1 || (await deleteMarkers(rs.db)).some((x) => x.name === `delete:${sd}`), WAIT_MS, 'the slow fill committed');
    t.is(await objectDigest(t, bucket, sd), sd, 'what the fill committed during eviction is whole in the store');

    // The fill lease ends: its image is gone, so the row is garbage; gc (online, beside the replicas) removes it.
    await sharedQuery(rs.db, 'DELETE FROM leases WHERE name = $1', [`fill:${kept}`]);
    const gc = await collectGarbage(configFromObject({ storage: rs.storage, cache: { deleteGrace: '10m' } }), { dryRun: false });
    t.true(gc.blobsRemoved >= 1, JSON.stringify(gc));
    t.is(await blobRows(rs.db, [kept]), 0);
    t.true(await objectExists(t, bucket, kept), 'its content waits for the grace too');
    // A later pull of the evicted layer is a fresh fill with exact bytes.
    const re = await http('GET', `${c.url}/v2/team/big/blobs/${layer.digest}`);
    t.is(sha256(re.body), layer.digest);
  });

  test('a commit meeting a delete in progress on another replica waits for it, then writes the content again', async (t) => {
    const fake = await startFake(t);
    const img = sampleImage('shared-evict-race');
    fake.addImage('team/race', img, 'latest');
    const rs = (await replicas(t, 2, upstreamConfig(fake, { maxBytes: 1, deleteGrace: '10m' }))) as unknown as Replicas;
    const [a, b] = rs as unknown as [TestServer, TestServer];
    await pullImageVerified(t, a.url, 'team/race', img);
    const layer = img.layers[1]!;
    await waitFor(async () => (await blobRows(rs.db, [layer.digest])) === 1, WAIT_MS, 'fill committed');
    t.true((await a.app.evict()).blobs > 0);
    t.is(await blobRows(rs.db, [layer.digest]), 0);
    // A replica claimed the delete (what claimDue does) and its DELETE reached the store.
    await sharedQuery(rs.db, "UPDATE leases SET owner = 'deleting', expires_at = now() + interval '1 minute' WHERE name = $1", [`delete:${layer.digest}`]);
    const c = await s3(t);
    const del = () => c.send(new DeleteObjectCommand({ Bucket: rs.storage.s3.bucket, Key: objectKey(layer.digest) }));
    await del();
    // B pulls it again meanwhile: the client gets its bytes from the fill, the fill writes the object...
    const r = await http('GET', `${b.url}/v2/team/race/blobs/${layer.digest}`);
    t.is(sha256(r.body), layer.digest);
    await waitFor(() => objectExists(t, rs.storage.s3.bucket, layer.digest), WAIT_MS, "B's fill wrote the object");
    // ...but records no row while the claim lives (a short look: it must not happen).
    await new Promise((res) => setTimeout(res, 300));
    t.is(await blobRows(rs.db, [layer.digest]), 0, 'no row while a delete of the content is claimed');
    // A second DELETE of the claimer (a retry, or one delayed in the network) lands after B's write; then it is done.
    await del();
    await sharedQuery(rs.db, 'DELETE FROM leases WHERE name = $1', [`delete:${layer.digest}`]);
    await waitFor(async () => (await blobRows(rs.db, [layer.digest])) === 1, WAIT_MS, 'the commit went through after the delete');
    t.true(await objectExists(t, rs.storage.s3.bucket, layer.digest), 'content written again after the delete');
    const fromA = await http('GET', `${a.url}/v2/team/race/blobs/${layer.digest}`);
    t.is(fromA.status, 200);
    t.is(sha256(fromA.body), layer.digest);
  });

  test('leader takeover: while a dead replica holds gc-leader nobody evicts (nor gc), after it expired one replica takes over; gc runs online under the lease', async (t) => {
    const fake = await startFake(t);
    const img = sampleImage('shared-evict-takeover');
    fake.addImage('team/take', img, 'latest');
    const rs = (await replicas(t, 2, upstreamConfig(fake, { maxBytes: 1, deleteGrace: '0s' }))) as unknown as Replicas;
    await pullImageVerified(t, rs[0]!.url, 'team/take', img);
    const digests = blobsOf(img).map((b) => b.digest);
    await waitFor(async () => (await blobRows(rs.db, digests)) === digests.length, WAIT_MS, 'fills committed');
    // A leader that died mid-pass: its lease stays until it expires (nobody renews it).
    const [dead] = await sharedQuery<{ token: string }>(
      rs.db,
      "INSERT INTO leases(name, owner, token, acquired_at, expires_at) VALUES ('gc-leader', 'dead-replica', nextval('lease_tokens'), now(), now() + interval '10 seconds') RETURNING token",
    );
    for (const r of await Promise.all(rs.map((x) => x.app.evict()))) t.is(r.skipped, 'not-leader');
    const cfg = configFromObject({ storage: rs.storage, cache: { deleteGrace: '0s' } });
    await t.throwsAsync(collectGarbage(cfg, { dryRun: false, leaderWaitMs: 200 }), { message: /gc-leader/ });
    t.is(await blobRows(rs.db, digests), digests.length, 'nothing evicted under a foreign lease');
    await waitFor(async () => (await sharedQuery(rs.db, "SELECT 1 FROM leases WHERE name = 'gc-leader' AND expires_at > clock_timestamp()")).length === 0, WAIT_MS, 'the dead lease expired');
    const results = await Promise.all(rs.map((x) => x.app.evict()));
    t.true(results.filter((r) => r.skipped === undefined).length >= 1);
    t.is(await blobRows(rs.db, digests), 0, 'a live replica took over and evicted');
    const passes = leaderPasses(rs);
    t.true(passes.every((p) => p.token > Number(dead!.token)), 'the new leader has a newer fencing token');
    // gc beside running replicas, under the same lease: the content (grace 0s) is gone, the rows too.
    const gc = await collectGarbage(cfg, { dryRun: false });
    t.is(gc.contentPending, 0);
    t.deepEqual(await deleteMarkers(rs.db), []);
    for (const d of digests) t.false(await objectExists(t, rs.storage.s3.bucket, d));
    // And the replicas keep serving: a pull fetches the image again, exact bytes.
    await pullImageVerified(t, rs[1]!.url, 'team/take', img);
  });
}
