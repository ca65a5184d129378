/**
 * `storage.driver: shared` over real sockets (issue #13, thin slice): two regmirror
 * servers on one real PostgreSQL (test/helpers/postgres.ts) and one real Ceph RADOS
 * Gateway bucket (test/helpers/radosgw.ts). What one replica stores, the other serves:
 * a push, a pull-through fill, and a chunked upload started on one and finished on the
 * other. Each test gets its own database and bucket. Never skipped under CI=true.
 */
import httpNode from 'node:http';
import test, { type ExecutionContext } from 'ava';
import pg from 'pg';
import { configFromObject } from '../../src/config/load.js';
import { fsck } from '../../src/ops/fsck.js';
import { collectGarbage } from '../../src/ops/gc.js';
import { http, sha256 } from '../helpers/http.js';
import { blobRows, replicas, sharedMissing as missing, sharedQuery, stopSharedServers } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { randomBytes } from '../fixtures/images.js';
import { startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, OCI_MANIFEST, pushImage, sampleImage, serve } from './_support.js';

const OCTET = { 'content-type': 'application/octet-stream' };

/** Generous ceiling for background commits on a loaded machine (polled, not slept). */
const WAIT_MS = 30_000;

async function getBytes(t: ExecutionContext, url: string, accept?: string): Promise<Buffer> {
  const r = await http('GET', url, accept ? { headers: { accept } } : {});
  t.is(r.status, 200, `GET ${url}: ${r.body.toString().slice(0, 200)}`);
  return r.body;
}

if (missing && !CI) {
  test.skip(`shared storage: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('a push to replica A is served by replica B by tag and by digest, same bytes; B sees A\'s tag list', async (t) => {
    const [a, b] = (await replicas(t, 2)) as unknown as [TestServer, TestServer];
    const img = sampleImage('shared-push');
    const put = await pushImage(a.url, 'team/app', img, 'v1');
    t.is(put.status, 201, put.body.toString());
    for (const ref of ['v1', img.manifest.digest]) {
      t.true((await getBytes(t, `${b.url}/v2/team/app/manifests/${ref}`, OCI_MANIFEST)).equals(img.manifest.bytes), `manifest by ${ref}`);
    }
    for (const blob of [img.config, ...img.layers]) {
      t.true((await getBytes(t, `${b.url}/v2/team/app/blobs/${blob.digest}`)).equals(blob.bytes), `blob ${blob.digest}`);
      const range = await http('GET', `${b.url}/v2/team/app/blobs/${blob.digest}`, { headers: { range: 'bytes=1-4' } });
      t.is(range.status, 206);
      t.true(range.body.equals(blob.bytes.subarray(1, 5)), 'a range from the object store');
    }
    const tags = await http('GET', `${b.url}/v2/team/app/tags/list`);
    t.deepEqual(JSON.parse(tags.body.toString()), { name: 'team/app', tags: ['v1'] });
    // A delete on B is seen by A (shared rows; A's manifest read cache holds entries 1 s at most).
    t.is((await http('DELETE', `${b.url}/v2/team/app/manifests/${img.manifest.digest}`)).status, 202);
    const deadline = Date.now() + 10_000;
    let status = 0;
    while (Date.now() < deadline && (status = (await http('GET', `${a.url}/v2/team/app/manifests/${img.manifest.digest}`, { headers: { accept: OCI_MANIFEST } })).status) !== 404) {
      await new Promise((r) => setTimeout(r, 50));
    }
    t.is(status, 404, 'A no longer serves the manifest B deleted');
  });

  test('a pull-through fill through replica A is served by replica B from the shared store, without asking the upstream', async (t) => {
    const fake = await startFake(t);
    const img = sampleImage('shared-pull');
    fake.addImage('library/tool', img, 'latest');
    const upstreams = { upstreams: { 'hub.test': upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: 'hub.test' };
    const rs = await replicas(t, 2, upstreams);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    t.true((await getBytes(t, `${a.url}/v2/library/tool/manifests/latest`, OCI_MANIFEST)).equals(img.manifest.bytes));
    const blobs = [img.config, ...img.layers];
    for (const blob of blobs) t.true((await getBytes(t, `${a.url}/v2/library/tool/blobs/${blob.digest}`)).equals(blob.bytes));
    await waitFor(async () => (await blobRows(rs.db, blobs.map((x) => x.digest))) === blobs.length, WAIT_MS, "A's fills committed");
    const upstreamRequests = fake.count();
    t.true(upstreamRequests > 0);
    await fake.stop(); // B can only answer from the shared store now
    t.true((await getBytes(t, `${b.url}/v2/library/tool/manifests/${img.manifest.digest}`, OCI_MANIFEST)).equals(img.manifest.bytes));
    for (const blob of blobs) {
      t.true((await getBytes(t, `${b.url}/v2/library/tool/blobs/${blob.digest}`)).equals(blob.bytes), `blob ${blob.digest} from B`);
    }
    t.is(fake.count(), upstreamRequests, 'B asked the upstream nothing');
  });

  test('a chunked upload started on replica A is continued and finished on replica B', async (t) => {
    const [a, b] = (await replicas(t, 2)) as unknown as [TestServer, TestServer];
    const blob = randomBytes(300_000, 'shared-chunked');
    const d = sha256(blob);
    const post = await http('POST', `${a.url}/v2/team/up/blobs/uploads/`, { headers: { 'content-length': '0' } });
    t.is(post.status, 202);
    const loc = post.header('location')!;
    const p1 = await http('PATCH', `${a.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-99999' }, body: blob.subarray(0, 100_000) });
    t.is(p1.status, 202, p1.body.toString());
    // B sees the session where A left it, refuses a chunk at the wrong offset, takes the next one.
    const st = await http('GET', `${b.url}${loc}`);
    t.is(st.status, 204);
    t.is(st.header('range'), '0-99999');
    const wrong = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-99999' }, body: blob.subarray(0, 100_000) });
    t.is(wrong.status, 416);
    t.is(wrong.header('range'), '0-99999');
    const p2 = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '100000-199999' }, body: blob.subarray(100_000, 200_000) });
    t.is(p2.status, 202, p2.body.toString());
    t.is(p2.header('range'), '0-199999');
    const put = await http('PUT', `${b.url}${loc}${loc.includes('?') ? '&' : '?'}digest=${encodeURIComponent(d)}`, {
      headers: { ...OCTET, 'content-length': String(100_000) },
      body: blob.subarray(200_000),
    });
    t.is(put.status, 201, put.body.toString());
    for (const s of [a, b]) t.true((await getBytes(t, `${s.url}/v2/team/up/blobs/${d}`)).equals(blob), `served by ${s.url}`);
    t.is((await http('GET', `${a.url}${loc}`)).status, 404, 'the finished session is gone on A too');
  });

  test('storage.s3.redirect: a blob GET (whole or ranged) answers 307 to a presigned URL that serves the exact bytes; HEAD stays 200', async (t) => {
    const [a] = (await replicas(t, 1, {}, { redirect: true, redirectExpires: '2m' })) as unknown as [TestServer];
    const img = sampleImage('shared-redirect');
    t.is((await pushImage(a.url, 'team/redir', img, 'v1')).status, 201);
    for (const blob of [img.config, ...img.layers]) {
      const url = `${a.url}/v2/team/redir/blobs/${blob.digest}`;
      const r = await http('GET', url);
      t.is(r.status, 307, r.body.toString().slice(0, 200));
      t.is(r.header('docker-content-digest'), blob.digest);
      const loc = r.header('location')!;
      t.regex(loc, /X-Amz-Signature=/, 'a presigned URL of the store');
      t.false(loc.startsWith(a.url), 'elsewhere than the mirror');
      // A plain client following the Location gets the content from the store itself.
      const direct = await http('GET', loc);
      t.is(direct.status, 200);
      t.is(sha256(direct.body), blob.digest);
      const head = await http('HEAD', url);
      t.is(head.status, 200, 'HEAD is answered here');
      t.is(head.header('content-length'), String(blob.bytes.length));
      t.is(head.header('docker-content-digest'), blob.digest);
      const ranged = await http('GET', url, { headers: { range: 'bytes=1-4' } });
      t.is(ranged.status, 307);
      const part = await http('GET', ranged.header('location')!, { headers: { range: 'bytes=1-4' } });
      t.is(part.status, 206, 'the store honours the Range the client sends again');
      t.true(part.body.equals(blob.bytes.subarray(1, 5)));
      // Several ranges: the store answers one range per request, so the mirror serves these.
      const multi = await http('GET', url, { headers: { range: 'bytes=0-1,3-4' } });
      t.is(multi.status, 206, 'a multi-range GET is served here, not redirected');
      t.regex(multi.header('content-type') ?? '', /^multipart\/byteranges/);
    }
  });

  test('gc and fsck run on shared storage (replicas stopped): fsck checks the objects, gc removes unreferenced rows and (grace 0s) objects', async (t) => {
    const rs = await replicas(t, 2);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    const img = sampleImage('shared-gc');
    t.is((await pushImage(a.url, 'team/gc', img, 'v1')).status, 201);
    t.is((await http('DELETE', `${b.url}/v2/team/gc/manifests/${img.manifest.digest}`)).status, 202);
    await Promise.all([a.app.close(), b.app.close()]);
    const cfg = configFromObject({ storage: rs.storage, limits: { uploadTtl: '0s' }, cache: { deleteGrace: '0s' } });
    const blobs = [img.config, ...img.layers];
    // Upstream lists replicas stored (cluster.ts): one not refreshed for 8 days, one for 6.
    const day = 24 * 3600_000;
    await sharedQuery(rs.db, 'INSERT INTO upstream_lists (key, body, fetched_at) VALUES ($1, $2, $3), ($4, $5, $6)', [
      'tags|up|library/old', '["1"]', Date.now() - 8 * day, 'tags|up|library/fresh', '["2"]', Date.now() - 6 * day,
    ]);
    const before = await fsck(cfg, { repair: false });
    t.is(before.checked, blobs.length);
    t.deepEqual(before.problems, []);
    const gc = await collectGarbage(cfg, { dryRun: false });
    t.is(gc.blobsRemoved, blobs.length);
    t.is(gc.orphanFilesRemoved, 0);
    t.is(gc.contentDeleted, blobs.length, 'contents deleted (deferred deletes, due at once with a 0s grace)');
    t.is(gc.contentPending, 0);
    t.is(gc.upstreamListsRemoved, 1);
    t.deepEqual((await sharedQuery<{ key: string }>(rs.db, 'SELECT key FROM upstream_lists')).map((r) => r.key), ['tags|up|library/fresh']);
    t.is((await fsck(cfg, { repair: false })).checked, 0);
    const c = await serve(t, { storage: rs.storage });
    for (const blob of blobs) t.is((await http('GET', `${c.url}/v2/team/gc/blobs/${blob.digest}`)).status, 404, 'gone from a replica started afterwards');
  });

  test('one writer per upload session across replicas: a PATCH on B while A is receiving a chunk is 416 and changes nothing', async (t) => {
    const rs = await replicas(t, 2);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    const blob = randomBytes(200_000, 'shared-lease');
    const post = await http('POST', `${a.url}/v2/team/lease/blobs/uploads/`, { headers: { 'content-length': '0' } });
    const loc = post.header('location')!;
    const id = loc.split('/').pop()!.split('?')[0]!;
    // A's PATCH: headers and half the chunk sent, the rest held back until B was answered.
    let answerA!: (r: { status: number; range: string | undefined }) => void;
    const resA = new Promise<{ status: number; range: string | undefined }>((r) => (answerA = r));
    const req = httpNode.request(`${a.url}${loc}`, { method: 'PATCH', headers: { ...OCTET, 'content-range': '0-99999', 'content-length': '100000' } }, (res) => {
      res.resume();
      res.on('end', () => answerA({ status: res.statusCode ?? 0, range: res.headers.range }));
    });
    req.on('error', (e) => t.fail(String(e)));
    req.write(blob.subarray(0, 50_000));
    const c = new pg.Client({ connectionString: rs.db });
    await c.connect();
    t.teardown(() => c.end());
    await waitFor(async () => (await c.query('SELECT 1 FROM leases WHERE name = $1 AND expires_at > clock_timestamp()', [`upload:${id}`])).rowCount === 1, WAIT_MS, "A's lease on the session");
    const onB = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-99999' }, body: blob.subarray(0, 100_000) });
    t.is(onB.status, 416, onB.body.toString());
    t.is(onB.header('range'), '0-0', 'nothing stored yet');
    req.end(blob.subarray(50_000, 100_000));
    const late = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer to A's PATCH")), WAIT_MS).unref());
    t.deepEqual(await Promise.race([resA, late]), { status: 202, range: '0-99999' });
    // The lease is released with the request: B takes the next chunk and finishes.
    const p2 = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '100000-199999' }, body: blob.subarray(100_000) });
    t.is(p2.status, 202, p2.body.toString());
    const put = await http('PUT', `${b.url}${loc}${loc.includes('?') ? '&' : '?'}digest=${encodeURIComponent(sha256(blob))}`, { headers: { 'content-length': '0' } });
    t.is(put.status, 201, put.body.toString());
    t.true((await getBytes(t, `${a.url}/v2/team/lease/blobs/${sha256(blob)}`)).equals(blob));
  });
}
