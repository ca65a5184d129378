/**
 * Failures of the shared engines under traffic (issue #13), over real sockets: replicas on
 * one real PostgreSQL and one real RADOS Gateway bucket (test/helpers/replicas.ts). While
 * the database or the object store is down, pushes and pulls get a clear 503 UNAVAILABLE
 * with Retry-After within the configured timeouts (never a 500, never a hang, never a
 * secret in a message), /healthz says which engine is missing; once it is back the same
 * replicas serve again without a restart, and nothing half-written is visible (fsck).
 * Never skipped under CI=true.
 */
import httpNode from 'node:http';
import { PassThrough } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { configFromObject } from '../../src/config/load.js';
import { fsck } from '../../src/ops/fsck.js';
import type { RepoName } from '../../src/registry/names.js';
import { openPostgresStorage } from '../../src/storage/pg/index.js';
import { S3BlobStore } from '../../src/storage/s3/store.js';
import { S3UploadStore } from '../../src/storage/s3/uploads.js';
import { http, type Res, sha256 } from '../helpers/http.js';
import { replicas, sharedMissing as missing, sharedPostgres, sharedRadosgw, sharedStorage, stopSharedServers } from '../helpers/replicas.js';
import { type TestServer, tempDir } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { randomBytes } from '../fixtures/images.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, OCI_MANIFEST, pushImage, sampleImage } from './_support.js';

const OCTET = { 'content-type': 'application/octet-stream' };
/** Handed to the driver as the database password (trust auth ignores it): must appear in no answer and no log line. */
const PG_SECRET = 'pg-secret-Zq81xK';
/** Tight database timeouts, so "never longer than the configured timeout" is checked in seconds. */
const PG = { connectTimeout: '1s', statementTimeout: '2s', password: PG_SECRET };
/** Ceiling of one answer while an engine is down: the timeouts above plus the S3 client's retries, on a loaded machine. */
const ANSWER_MS = 20_000;
/** Ceiling for an engine to stop/start and the replicas to notice (polled, not slept). */
const WAIT_MS = 60_000;

interface Outcome {
  what: string;
  res: Res;
  ms: number;
}

async function timed(what: string, p: Promise<Res>): Promise<Outcome> {
  const t0 = Date.now();
  const res = await p;
  return { what, res, ms: Date.now() - t0 };
}

/** A 503 UNAVAILABLE with Retry-After, in time, naming no secret. */
function assertUnavailable(t: ExecutionContext, o: Outcome, secrets: string[]): void {
  t.is(o.res.status, 503, `${o.what}: ${o.res.body.toString().slice(0, 300)}`);
  t.truthy(o.res.header('retry-after'), `${o.what}: Retry-After`);
  if (o.res.body.length > 0) t.is(JSON.parse(o.res.body.toString()).errors[0].code, 'UNAVAILABLE', o.what);
  t.true(o.ms < ANSWER_MS, `${o.what} answered in ${o.ms} ms`);
  for (const s of secrets) t.false(o.res.body.toString().includes(s), `${o.what}: no secret in the answer`);
}

/** Either the right bytes or a clean 503: what a pull may get while an engine is down (caches may still answer). */
function assertServedOrUnavailable(t: ExecutionContext, o: Outcome, expected: Buffer, secrets: string[]): void {
  if (o.res.status === 200) t.true(o.res.body.equals(expected), `${o.what}: the right bytes`);
  else assertUnavailable(t, o, secrets);
}

/** Bounded background pulls from every replica while the fault happens; resolves with every status seen. */
function pullLoop(servers: TestServer[], paths: Array<{ path: string; bytes: Buffer }>, stop: { done: boolean }): Promise<number[]> {
  const seen: number[] = [];
  const deadline = Date.now() + 3 * WAIT_MS;
  const one = async (s: TestServer) => {
    for (let i = 0; i < 2_000 && !stop.done && Date.now() < deadline; i++) {
      const p = paths[i % paths.length]!;
      const r = await http('GET', `${s.url}${p.path}`, { headers: { accept: OCI_MANIFEST } }).catch(() => null);
      seen.push(r === null ? -1 : r.status === 200 && !r.body.equals(p.bytes) ? -200 : r.status);
      if (r?.status !== 200) await new Promise((res) => setTimeout(res, 20)); // an error answer is instant: do not spin
    }
  };
  return Promise.all(servers.map(one)).then(() => seen);
}

/** fsck over the shared store: every stored blob hashes to its digest. */
/** What pullLoop saw across an outage: right bytes or a clean 503, never anything else, and the outage was seen. */
function assertPullsThroughOutage(t: ExecutionContext, seen: number[]): void {
  t.false(seen.includes(-200), 'no pull got wrong bytes');
  t.false(seen.includes(-1), 'no pull hung up or failed at the socket');
  t.deepEqual([...new Set(seen)].filter((s) => s !== 200 && s !== 503), [], 'pulls got 200 or 503, nothing else');
  t.true(seen.includes(503), 'the outage was seen by the pulls');
}

async function assertNoCorruptBlob(t: ExecutionContext, storage: Record<string, unknown>, atLeast: number): Promise<void> {
  const report = await fsck(configFromObject({ storage }), { repair: false });
  t.deepEqual(report.problems, [], 'fsck finds nothing wrong');
  t.true(report.checked >= atLeast, `fsck checked ${report.checked} blobs`);
}

async function healthz(s: TestServer): Promise<Res> {
  return http('GET', `${s.url}/healthz`);
}

/** A PATCH whose body is sent in two halves, the second once `release` resolves; resolves with the answer and its ms after the release (or 0 when it came before). */
function heldPatch(url: string, range: string, body: Buffer, release: Promise<void>): Promise<{ status: number; body: string; ms: number }> {
  return new Promise((resolve, reject) => {
    let t0: number | undefined;
    const req = httpNode.request(url, { method: 'PATCH', headers: { ...OCTET, 'content-range': range, 'content-length': String(body.length) } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, ms: t0 === undefined ? 0 : Date.now() - t0 }));
    });
    req.on('error', reject);
    const half = Math.floor(body.length / 2);
    req.write(body.subarray(0, half));
    void release.then(() => {
      t0 = Date.now();
      req.end(body.subarray(half));
    });
  });
}

if (missing && !CI) {
  test.skip(`shared storage faults: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test.serial('PostgreSQL stopped under traffic: 503 + Retry-After in time, /healthz 503, no secret; back without a restart, nothing half-written', async (t) => {
    const pgc = await sharedPostgres();
    const rs = await replicas(t, 2, {}, {}, PG);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    const img = sampleImage('faults-pg');
    t.is((await pushImage(a.url, 'team/pg', img, 'v1')).status, 201);
    const paths = [
      { path: `/v2/team/pg/manifests/${img.manifest.digest}`, bytes: img.manifest.bytes },
      ...[img.config, ...img.layers].map((x) => ({ path: `/v2/team/pg/blobs/${x.digest}`, bytes: x.bytes })),
    ];
    // An upload started before the outage, to be carried on by the other replica after it.
    const blob = randomBytes(200_000, 'faults-pg-chunked');
    const post = await http('POST', `${a.url}/v2/team/pg/blobs/uploads/`, { headers: { 'content-length': '0' } });
    t.is(post.status, 202);
    const loc = post.header('location')!;
    t.is((await http('PATCH', `${a.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-99999' }, body: blob.subarray(0, 100_000) })).status, 202);

    const stop = { done: false };
    const loop = pullLoop([a, b], paths, stop);
    await pgc.stop();
    t.teardown(async () => {
      if ((await healthz(a).catch(() => null))?.status !== 200) await pgc.start().catch(() => undefined);
    });
    await waitFor(async () => (await healthz(a)).status === 503 && (await healthz(b)).status === 503, WAIT_MS, 'both replicas report the database down');

    const hz = await timed('/healthz', healthz(b));
    assertUnavailable(t, hz, [PG_SECRET]);
    t.regex(hz.res.body.toString(), /metadata database/i, '/healthz names what is down');
    const other = sampleImage('faults-pg-during');
    const during = await Promise.all([
      timed('POST upload', http('POST', `${a.url}/v2/team/pg/blobs/uploads/`, { headers: { 'content-length': '0' } })),
      timed('monolithic push', http('POST', `${b.url}/v2/team/pg/blobs/uploads/?digest=${other.config.digest}`, { headers: OCTET, body: other.config.bytes })),
      timed('PATCH of the open session', http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '100000-199999' }, body: blob.subarray(100_000) })),
      timed('manifest PUT', http('PUT', `${a.url}/v2/team/pg/manifests/v2`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes })),
      timed('tag list', http('GET', `${b.url}/v2/team/pg/tags/list`)),
      timed('HEAD manifest by tag', http('HEAD', `${b.url}/v2/team/pg/manifests/v1`, { headers: { accept: OCI_MANIFEST } })),
    ]);
    for (const o of during) assertUnavailable(t, o, [PG_SECRET]);
    for (const p of paths) assertServedOrUnavailable(t, await timed(`GET ${p.path}`, http('GET', `${a.url}${p.path}`, { headers: { accept: OCI_MANIFEST } })), p.bytes, [PG_SECRET]);

    await pgc.start();
    await waitFor(async () => (await healthz(a)).status === 200 && (await healthz(b)).status === 200, WAIT_MS, 'both replicas see the database again');
    stop.done = true;
    assertPullsThroughOutage(t, await loop);

    // The same processes carry on: the session continues on B, a new push on A is pulled from B.
    const p2 = await http('PATCH', `${b.url}${loc}`, { headers: { ...OCTET, 'content-range': '100000-199999' }, body: blob.subarray(100_000) });
    t.is(p2.status, 202, p2.body.toString());
    const put = await http('PUT', `${b.url}${loc}${loc.includes('?') ? '&' : '?'}digest=${encodeURIComponent(sha256(blob))}`, { headers: { 'content-length': '0' } });
    t.is(put.status, 201, put.body.toString());
    t.is((await pushImage(a.url, 'team/pg', other, 'v3')).status, 201);
    const got = await http('GET', `${b.url}/v2/team/pg/manifests/v3`, { headers: { accept: OCI_MANIFEST } });
    t.true(got.body.equals(other.manifest.bytes));
    t.is((await http('GET', `${b.url}/v2/team/pg/manifests/v2`, { headers: { accept: OCI_MANIFEST } })).status, 404, 'the manifest PUT refused during the outage left no tag');
    t.deepEqual(JSON.parse((await http('GET', `${a.url}/v2/team/pg/tags/list`)).body.toString()).tags, ['v1', 'v3']);
    for (const s of [a, b]) t.false(s.logs.some((l) => l.includes(PG_SECRET)), 'no log line carries the password');
    await assertNoCorruptBlob(t, rs.storage, 1 + img.layers.length + 1);
  });

  test.serial('PostgreSQL killed (crash) while pull-through fills stream on two replicas: no client gets wrong bytes as complete; after restart the blob is whole everywhere and fsck is clean', async (t) => {
    const pgc = await sharedPostgres();
    const fake = await startFake(t);
    const big = randomBytes(2_000_000, 'faults-pg-fill');
    const digest = sha256(big);
    fake.addBlob('library/tool', { digest, bytes: big });
    // About 1.5 s per body: the crash lands mid-fill.
    fake.faults.push({ method: 'GET', path: new RegExp(`/blobs/${digest}$`), throttle: { chunkBytes: 64 * 1024, intervalMs: 50 } });
    const upstreams = { upstreams: { 'hub.test': upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: 'hub.test' };
    const rs = await replicas(t, 2, upstreams, {}, PG);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    let crashed!: () => void;
    const firstByte = new Promise<void>((r) => (crashed = r));
    const pulls = [a, b].map((s) => fetchStream(`${s.url}/v2/library/tool/blobs/${digest}`, { onFirstByte: () => crashed() }));
    await firstByte;
    await pgc.kill();
    t.teardown(async () => {
      if ((await healthz(a).catch(() => null))?.status !== 200) await pgc.start().catch(() => undefined);
    });
    const late = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('a pull hung after the crash')), 3 * ANSWER_MS).unref());
    const results = await Promise.race([Promise.all(pulls), late]);
    t.log(`pulls across the crash: ${results.map((r) => `${r.status}${r.error ? ` cut at ${r.body.length}` : ` ${r.body.length} bytes`}`).join(', ')}`);
    for (const [i, r] of results.entries()) {
      if (r.status === 200 && r.error === null) t.true(r.body.equals(big), `pull ${i}: complete means the right bytes`);
      else t.true(r.status === 503 || r.error !== null, `pull ${i}: a clean 503 or a cut transfer (status ${r.status})`);
    }
    await pgc.start();
    await waitFor(async () => (await healthz(a)).status === 200 && (await healthz(b)).status === 200, WAIT_MS, 'both replicas see the database again');
    for (const s of [b, a]) {
      const again = await http('GET', `${s.url}/v2/library/tool/blobs/${digest}`);
      t.is(again.status, 200, again.body.toString().slice(0, 300));
      t.true(again.body.equals(big), `${s.url} serves the whole blob after the restart`);
    }
    await assertNoCorruptBlob(t, rs.storage, 0);
  });

  test.serial('object store down under traffic: 503 + Retry-After, /healthz names it, no secret; back without a restart, no corrupt blob', async (t) => {
    const gw = await sharedRadosgw();
    // An upstream too: a pull-through miss while the store is away.
    const fake = await startFake(t);
    const remote = sampleImage('faults-s3-remote');
    fake.addImage('library/tool', remote, 'latest');
    const upstreams = { upstreams: { 'hub.test': upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: 'hub.test' };
    const rs = await replicas(t, 2, upstreams, {}, PG);
    const [a, b] = rs as unknown as [TestServer, TestServer];
    const img = sampleImage('faults-s3');
    t.is((await pushImage(a.url, 'team/s3', img, 'v1')).status, 201);
    const blobs = [img.config, ...img.layers];
    const paths = blobs.map((x) => ({ path: `/v2/team/s3/blobs/${x.digest}`, bytes: x.bytes }));
    // A chunk whose second half arrives only after the store went away.
    const big = randomBytes(300_000, 'faults-s3-chunked');
    const post = await http('POST', `${b.url}/v2/team/s3/blobs/uploads/`, { headers: { 'content-length': '0' } });
    const loc = post.header('location')!;
    let release!: () => void;
    const held = heldPatch(`${b.url}${loc}`, '0-299999', big, new Promise<void>((r) => (release = r)));

    const stop = { done: false };
    const loop = pullLoop([a, b], paths, stop);
    await gw.stopGateway();
    t.teardown(async () => {
      if ((await healthz(a).catch(() => null))?.status !== 200) await gw.startGateway().catch(() => undefined);
    });
    await waitFor(async () => (await healthz(a)).status === 503 && (await healthz(b)).status === 503, WAIT_MS, 'both replicas report the object store down');
    release();

    const secrets = [gw.secretAccessKey, gw.accessKeyId, PG_SECRET];
    const hz = await timed('/healthz', healthz(a));
    assertUnavailable(t, hz, secrets);
    t.regex(hz.res.body.toString(), /object store/i, '/healthz names what is down');
    const other = sampleImage('faults-s3-during');
    const during = await Promise.all([
      timed('monolithic push', http('POST', `${a.url}/v2/team/s3/blobs/uploads/?digest=${other.config.digest}`, { headers: OCTET, body: other.config.bytes })),
      ...paths.map((p) => timed(`GET ${p.path}`, http('GET', `${b.url}${p.path}`))),
    ]);
    for (const o of during) assertUnavailable(t, o, secrets);
    // A pull-through miss: the upstream's bytes (nothing can be stored) or a clean 503, never a 500.
    for (const x of [remote.config, ...remote.layers]) {
      assertServedOrUnavailable(t, await timed(`pull-through ${x.digest}`, http('GET', `${b.url}/v2/library/tool/blobs/${x.digest}`)), x.bytes, secrets);
    }
    const chunk = await held;
    t.is(chunk.status, 503, `the chunk cut off by the outage: ${chunk.body.slice(0, 300)}`);
    t.true(chunk.ms < ANSWER_MS, `answered ${chunk.ms} ms after its last byte`);

    await gw.startGateway();
    await waitFor(async () => (await healthz(a)).status === 200 && (await healthz(b)).status === 200, WAIT_MS, 'both replicas see the object store again');
    stop.done = true;
    assertPullsThroughOutage(t, await loop);

    // Same processes: the session is where it was before the cut chunk, and finishes; pushes and pulls work.
    const st = await http('GET', `${a.url}${loc}`);
    t.is(st.status, 204);
    t.is(st.header('range'), '0-0', 'the cut chunk left nothing behind');
    const redo = await http('PATCH', `${a.url}${loc}`, { headers: { ...OCTET, 'content-range': '0-299999' }, body: big });
    t.is(redo.status, 202, redo.body.toString());
    t.is((await http('PUT', `${a.url}${loc}${loc.includes('?') ? '&' : '?'}digest=${encodeURIComponent(sha256(big))}`, { headers: { 'content-length': '0' } })).status, 201);
    t.is((await pushImage(b.url, 'team/s3', other, 'v2')).status, 201);
    for (const x of [...blobs, other.config, ...other.layers]) t.is(sha256((await http('GET', `${a.url}/v2/team/s3/blobs/${x.digest}`)).body), x.digest);
    for (const x of [remote.config, ...remote.layers]) t.is(sha256((await http('GET', `${a.url}/v2/library/tool/blobs/${x.digest}`)).body), x.digest, 'the missed pull-through is filled now');
    for (const s of [a, b]) for (const secret of secrets) t.false(s.logs.some((l) => l.includes(secret)), 'no log line carries a credential');
    await assertNoCorruptBlob(t, rs.storage, blobs.length + 1 + other.layers.length + 1);
  });

  test.serial('object store hung (gateway SIGSTOPped): 503 within storage.s3 connectTimeout/requestTimeout, not a hang; serves again once it answers', async (t) => {
    const gw = await sharedRadosgw();
    const rs = await replicas(t, 1, {}, { connectTimeout: '1s', requestTimeout: '2s' }, PG);
    const [a] = rs as unknown as [TestServer];
    const img = sampleImage('faults-s3-hung');
    t.is((await pushImage(a.url, 'team/hung', img, 'v1')).status, 201);
    gw.pauseGateway();
    t.teardown(() => gw.resumeGateway());
    const secrets = [gw.secretAccessKey, gw.accessKeyId];
    // 3 attempts of at most 2 s of silence each, plus the SDK's backoff: well under ANSWER_MS.
    const [hz, got, push] = await Promise.all([
      timed('/healthz', healthz(a)),
      timed('blob GET', http('GET', `${a.url}/v2/team/hung/blobs/${img.layers[0]!.digest}`)),
      timed('monolithic push', http('POST', `${a.url}/v2/team/hung/blobs/uploads/?digest=${sha256('hung')}`, { headers: OCTET, body: 'hung' })),
    ]);
    for (const o of [hz, got, push]) assertUnavailable(t, o, secrets);
    t.log(`answers while the store hangs: ${[hz, got, push].map((o) => `${o.what} ${o.ms} ms`).join(', ')}`);
    gw.resumeGateway();
    await waitFor(async () => (await healthz(a)).status === 200, WAIT_MS, 'the store answers again');
    for (const x of [img.config, ...img.layers]) t.is(sha256((await http('GET', `${a.url}/v2/team/hung/blobs/${x.digest}`)).body), x.digest);
    await assertNoCorruptBlob(t, rs.storage, 1 + img.layers.length);
  });

  test.serial('a session lease lost mid-append (database gone longer than the TTL while the chunk streams) cuts that chunk at once: 503, nothing stored, the session carries on', async (t) => {
    const pgc = await sharedPostgres();
    const gw = await sharedRadosgw();
    const shared = await sharedStorage({}, PG);
    const cfg = configFromObject({ storage: shared.config(await tempDir(t)) });
    const pg = await openPostgresStorage(cfg.store.postgres!, { warn: () => undefined });
    t.teardown(() => pg.close());
    const blobs = new S3BlobStore({ endpoint: gw.endpoint, region: gw.region, bucket: shared.bucket, accessKeyId: gw.accessKeyId, secretAccessKey: gw.secretAccessKey }, pg.metadata);
    t.teardown(() => blobs.close());
    await blobs.recover();
    const ttl = 3_000;
    const uploads = new S3UploadStore(blobs, pg.uploadRows, pg.coordination, { leaseTtlMs: ttl });
    const { id } = await uploads.start('team/lease' as RepoName);
    const body = new PassThrough();
    body.write(randomBytes(100_000, 'lease-lost'));
    const appended = uploads.append(id, body, { maxBytes: 1 << 30 });
    appended.catch(() => undefined);
    await waitFor(async () => (await pg.coordination.leaseHolder(`upload:${id}`)) !== null, WAIT_MS, 'the append holds the lease');
    await pgc.stop();
    t.teardown(async () => {
      if ((await pg.metadata.ping().then(() => true, () => false)) === false) await pgc.start().catch(() => undefined);
    });
    const stoppedAt = Date.now();
    // The client keeps the chunk open (sends nothing more): only the lapse can end it.
    const late = new Promise<'no answer'>((r) => setTimeout(() => r('no answer'), ttl + ANSWER_MS).unref());
    const outcome = await Promise.race([appended.then(() => 'stored' as const, (e: unknown) => e), late]);
    const ms = Date.now() - stoppedAt;
    t.like(outcome as object, { code: 'UNAVAILABLE', status: 503 }, `the chunk ended ${ms} ms after the database went: ${String(outcome)}`);
    t.true(ms <= ttl + 2_000, `within the TTL (+ a renewal period) of the last renewal: ${ms} ms`);
    t.true(body.destroyed, 'the body was cut, not read on');
    await pgc.start();
    await waitFor(async () => pg.metadata.ping().then(() => true, () => false), WAIT_MS, 'the database is back');
    t.is((await uploads.status(id))?.offset, 0, 'nothing of the cut chunk was stored');
    const again = new PassThrough();
    again.end(randomBytes(1_000, 'lease-lost-again'));
    t.is(await uploads.append(id, again, { offset: 0, maxBytes: 1 << 30 }), 1_000, 'the session takes the chunk again');
  });
}
