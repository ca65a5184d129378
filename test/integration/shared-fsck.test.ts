/**
 * `regmirror fsck` online on shared storage (issue #13): three replicas on one real
 * PostgreSQL and one real Ceph RADOS Gateway bucket keep serving pulls, a slow pull-through
 * fill and a chunked push while fsck runs under the gc-leader lease. It reports exactly the
 * injected damage (a corrupted object, a missing object, an orphan object), repairs it
 * through the deferred-delete path, and every in-flight client gets correct bytes. Never
 * skipped under CI=true.
 */
import { DeleteObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import test, { type ExecutionContext } from 'ava';
import { configFromObject } from '../../src/config/load.js';
import { fsck } from '../../src/ops/fsck.js';
import { http, sha256 } from '../helpers/http.js';
import { blobRows, pullImageVerified, replicas, sharedMissing as missing, sharedQuery, sharedRadosgw, stopSharedServers } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { type Image, makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, OCI_MANIFEST, pushImage, sampleImage } from './_support.js';

const WAIT_MS = 60_000;
const OCTET = { 'content-type': 'application/octet-stream' };
/** The orphan grace fsck is given: the injected orphan is older, in-flight objects younger. */
const GRACE_MS = 15_000;

const blobsOf = (img: Image) => [img.config, ...img.layers];
const objectKey = (digest: string) => `mirror/blobs/${digest.replace(':', '/')}`;

async function s3(t: ExecutionContext): Promise<S3Client> {
  const g = await sharedRadosgw();
  const c = new S3Client({ endpoint: g.endpoint, region: g.region, forcePathStyle: true, credentials: { accessKeyId: g.accessKeyId, secretAccessKey: g.secretAccessKey } });
  t.teardown(() => c.destroy());
  return c;
}

async function objectExists(c: S3Client, bucket: string, digest: string): Promise<boolean> {
  try {
    await c.send(new HeadObjectCommand({ Bucket: bucket, Key: objectKey(digest) }));
    return true;
  } catch (e) {
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw e;
  }
}

if (missing && !CI) {
  test.skip(`shared fsck: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('fsck online with three replicas serving: reports exactly the corrupted, missing and orphan objects while fills and pushes are in flight, repairs them, every client gets correct bytes', async (t) => {
    const fake = await startFake(t);
    const good = sampleImage('shared-fsck-good');
    const damaged = makeImage({ layers: [0, 1].map((i) => makeLayer([{ name: `d${i}.bin`, content: randomBytes(200_000, `fsck-dmg-${i}`) }], { gzip: false })) });
    const slow = makeImage({ layers: [makeLayer([{ name: 'slow.bin', content: randomBytes(3 * 1024 * 1024, 'fsck-slow') }], { gzip: false })] });
    fake.addImage('team/good', good, 'latest');
    fake.addImage('team/damaged', damaged, 'latest');
    fake.addImage('team/slow', slow, 'latest');
    const slowLayer = slow.layers[0]!;
    // ~6 s for the slow layer: its fill holds the fill: lease while fsck runs.
    fake.faults.push({ method: 'GET', path: new RegExp(slowLayer.digest.replace(':', ':')), throttle: { chunkBytes: 64 * 1024, intervalMs: 120 } });
    const rs = (await replicas(t, 3, { upstreams: { 'hub.test': upstreamEntry(fake) }, defaultUpstream: 'hub.test', cache: { evictInterval: '1h' } })) as unknown as TestServer[] & {
      db: string;
      storage: { s3: { bucket: string } };
    };
    const [a, b, c] = rs as unknown as [TestServer, TestServer, TestServer];
    const bucket = rs.storage.s3.bucket;
    const store = await s3(t);

    await pullImageVerified(t, a.url, 'team/good', good);
    await pullImageVerified(t, b.url, 'team/damaged', damaged);
    const pushed = sampleImage('shared-fsck-pushed');
    t.is((await pushImage(c.url, 'team/pushed', pushed, 'v1')).status, 201);
    const stored = [...blobsOf(good), ...blobsOf(damaged), ...blobsOf(pushed)].map((x) => x.digest);
    await waitFor(async () => (await blobRows(rs.db, stored)) === stored.length, WAIT_MS, 'every fill committed');

    // The damage: one object's bytes flipped (same size), one object gone, one object without a row.
    const [corrupt, gone] = damaged.layers.map((l) => l) as [(typeof damaged.layers)[0], (typeof damaged.layers)[0]];
    const flipped = Buffer.from(corrupt.bytes);
    flipped[1000] ^= 0xff;
    await store.send(new PutObjectCommand({ Bucket: bucket, Key: objectKey(corrupt.digest), Body: flipped }));
    await store.send(new DeleteObjectCommand({ Bucket: bucket, Key: objectKey(gone.digest) }));
    const orphanBytes = randomBytes(50_000, 'fsck-orphan');
    const orphan = sha256(orphanBytes);
    await store.send(new PutObjectCommand({ Bucket: bucket, Key: objectKey(orphan), Body: orphanBytes }));
    const orphanWritten = Date.now();
    await waitFor(async () => Date.now() - orphanWritten > GRACE_MS, WAIT_MS, 'the orphan older than the grace');

    // In flight while fsck runs: a slow pull-through fill (C), a chunked push (A, then B), pulls of good content (A, B).
    const slowPull = (async () => {
      const m = await http('GET', `${c.url}/v2/team/slow/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
      t.is(m.status, 200);
      return fetchStream(`${c.url}/v2/team/slow/blobs/${slowLayer.digest}`);
    })();
    await waitFor(async () => fake.find({ method: 'GET', path: new RegExp(slowLayer.digest) }).some((r) => r.bytes > 128 * 1024), WAIT_MS, 'the slow fill under way');
    const upload = randomBytes(300_000, 'fsck-upload');
    const post = await http('POST', `${a.url}/v2/team/pushed/blobs/uploads/`, { headers: { 'content-length': '0' } });
    t.is(post.status, 202);
    const loc = post.header('location')!;
    t.is((await http('PATCH', `${a.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-99999' }, body: upload.subarray(0, 100_000) })).status, 202);
    let pulling = true;
    const readers = [a, b].map(async (s) => {
      for (let i = 0; i < 200 && pulling; i++) {
        const r = await http('GET', `${s.url}/v2/team/good/blobs/${good.layers[0]!.digest}`);
        t.is(r.status, 200);
        t.is(sha256(r.body), good.layers[0]!.digest);
      }
    });

    // An object written just now without a row yet: what a commit looks like between its write and its row.
    const young = randomBytes(10_000, 'fsck-young');
    await store.send(new PutObjectCommand({ Bucket: bucket, Key: objectKey(sha256(young)), Body: young }));
    const cfg = configFromObject({ storage: rs.storage, cache: { deleteGrace: '5m' } });
    const report = await fsck(cfg, { repair: false, graceMs: GRACE_MS });
    t.true(fake.find({ method: 'GET', path: new RegExp(slowLayer.digest) }).some((r) => r.bytes < slowLayer.size), 'fsck ran while the slow fill was under way');
    t.deepEqual(
      report.problems.map((p) => [p.digest, p.problem, p.repaired]).sort(),
      [
        [corrupt.digest, 'digest', false],
        [gone.digest, 'missing', false],
        [orphan, 'orphan', false],
      ].sort(),
      JSON.stringify(report),
    );
    t.is(report.checked, stored.length);
    // Gone before it is older than the grace (a loaded machine: the next runs may take a while).
    await store.send(new DeleteObjectCommand({ Bucket: bucket, Key: objectKey(sha256(young)) }));

    const repaired = await fsck(cfg, { repair: true, graceMs: GRACE_MS });
    t.deepEqual(repaired.problems.map((p) => [p.digest, p.problem, p.repaired]).sort(), [
      [corrupt.digest, 'digest', true],
      [gone.digest, 'missing', true],
      [orphan, 'orphan', true],
    ].sort());
    // Rows go with a pending delete marker (content after the grace), the orphan at once.
    t.is(await blobRows(rs.db, [corrupt.digest, gone.digest]), 0);
    const markers = (await sharedQuery<{ name: string; owner: string }>(rs.db, "SELECT name, owner FROM leases WHERE name LIKE 'delete:%' ORDER BY name")).map((m) => [m.name, m.owner]);
    t.deepEqual(markers, [[`delete:${corrupt.digest}`, 'pending'], [`delete:${gone.digest}`, 'pending']].sort());
    t.false(await objectExists(store, bucket, orphan));
    t.is(await sharedQuery(rs.db, "SELECT 1 FROM leases WHERE name = 'gc-leader'").then((r) => r.length), 0, 'fsck released gc-leader');

    // Content whose row went is awaiting its deferred delete, not an orphan.
    const pendingOnly = await fsck(cfg, { repair: false, graceMs: GRACE_MS });
    t.deepEqual(pendingOnly.problems, [], JSON.stringify(pendingOnly));

    // The in-flight work completes with correct bytes.
    pulling = false;
    await readers;
    const slowResult = await slowPull;
    t.is(slowResult.status, 200);
    t.is(sha256(slowResult.body), slowLayer.digest);
    const p2 = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '100000-299999' }, body: upload.subarray(100_000) });
    t.is(p2.status, 202);
    const put = await http('PUT', `${b.url}${p2.header('location')!}${p2.header('location')!.includes('?') ? '&' : '?'}digest=${sha256(upload)}`, { headers: { 'content-length': '0' } });
    t.is(put.status, 201);
    const back = await http('GET', `${c.url}/v2/team/pushed/blobs/${sha256(upload)}`);
    t.is(sha256(back.body), sha256(upload));
    // The repaired image is fetched again from the upstream: exact bytes.
    await pullImageVerified(t, c.url, 'team/damaged', damaged);
    await waitFor(async () => (await blobRows(rs.db, [corrupt.digest, gone.digest, slowLayer.digest])) === 3, WAIT_MS, 'the refetched blobs committed');
    const after = await fsck(cfg, { repair: false, graceMs: GRACE_MS });
    t.deepEqual(after.problems, [], JSON.stringify(after));
  });
}
