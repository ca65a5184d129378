/**
 * Full disk (issue #8, item 4): the storage directory lives on a small tmpfs that each test
 * mounts itself, and a filler file next to it takes the free space at the right moment
 * (ENOSPC for blob and upload files, SQLITE_FULL for the database on the same file system).
 * Each test checks that the request fails with a clear 507 UNAVAILABLE, that nothing
 * partial is left (no temp file, no blob file without its row or row without its file, the
 * upload session at its last good offset), that reads keep working while the disk is full,
 * and that the same request succeeds once the filler is deleted, without a restart.
 *
 * Needs root (mount); skipped with a message otherwise, unless CI=true.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { type App, buildApp } from '../../src/app.js';
import { configFromObject } from '../../src/config/load.js';
import { createLogger } from '../../src/ops/logger.js';
import { hashFile } from '../../src/storage/blobs.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { openDb, tempDir } from '../helpers/server.js';
import type { MetadataDb } from '../../src/storage/db.js';
import { http, pushBlob, sha256, type Res } from '../helpers/http.js';
import { randomBytes } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { pushBlobs, putManifest, sampleImage, streamRequest } from './_support.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;
/** Upper bound for background progress (fills, flushes); generous for a loaded CI machine. */
const WAIT_MS = 30_000;
const OCTET = { 'content-type': 'application/octet-stream' };

const isRoot = process.getuid?.() === 0;
const ci = process.env.CI === 'true';
if (!isRoot && !ci) console.warn('full-disk tests skipped: they mount a tmpfs and need root (run as root, or with CI=true to fail instead)');
const fullDiskTest = isRoot || ci ? test.serial : test.serial.skip;

/** A file next to the storage directory that takes the free space of the tmpfs. */
class Filler {
  constructor(readonly file: string) {}

  /** Append until ENOSPC: the file system is full afterwards. */
  async fill(): Promise<void> {
    const fh = await fs.open(this.file, 'a');
    try {
      for (const size of [MiB, PAGE]) {
        const buf = Buffer.alloc(size, 0x5a);
        // Bounded: the tmpfs is a few MiB, so a few thousand writes at most.
        for (let i = 0; i < 100_000; i++) {
          try {
            await fh.write(buf);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
            throw e;
          }
        }
      }
    } finally {
      await fh.close();
    }
  }

  /** Fill, then give back exactly `bytes` (a multiple of the page size). */
  async leaveFree(bytes: number): Promise<void> {
    await this.fill();
    const { size } = await fs.stat(this.file);
    await fs.truncate(this.file, size - bytes);
  }

  async remove(): Promise<void> {
    await fs.rm(this.file, { force: true });
  }
}

interface Mirror {
  app: App;
  url: string;
  storage: string;
  filler: Filler;
  logs: string[];
  /** A second connection to the database, for assertions on committed rows. */
  db: MetadataDb;
}

/** A tmpfs of `sizeMiB` (unmounted in teardown) holding the whole storage directory. */
async function mountTmpfs(t: ExecutionContext, sizeMiB: number): Promise<string> {
  const dir = await tempDir(t, 'regmirror-full-');
  await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', dir]);
  t.teardown(async () => {
    await run('umount', [dir]).catch(() => run('umount', ['-l', dir]));
  });
  return dir;
}

async function startMirror(t: ExecutionContext, opts: { sizeMiB?: number; config?: Record<string, unknown>; accessFlushMs?: number } = {}): Promise<Mirror> {
  const root = await mountTmpfs(t, opts.sizeMiB ?? 16);
  const storage = path.join(root, 'storage');
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      logs.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const cfg = configFromObject({ listen: '127.0.0.1:0', storage, log: { level: 'debug' }, ...opts.config });
  // Long by default, so no background write takes the space a test just freed.
  const app = await buildApp(cfg, { logger: createLogger(cfg, sink), accessFlushMs: opts.accessFlushMs ?? 3_600_000 });
  const addr = await app.listen(0, '127.0.0.1');
  t.teardown(() => app.close());
  return { app, url: addr.url, storage, filler: new Filler(path.join(root, 'filler')), logs, db: openDb(t, storage) };
}

function logged(m: Mirror, msg: string, level?: number): Array<Record<string, unknown>> {
  return m.logs
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg && (level === undefined || l.level === level));
}

function assertInsufficientStorage(t: ExecutionContext, status: number | string, body: Buffer, what: string): void {
  t.is(status, 507, `${what}: status (body ${body.toString('utf8').slice(0, 200)})`);
  const doc = JSON.parse(body.toString('utf8')) as { errors: Array<{ code: string; message: string }> };
  t.is(doc.errors[0]?.code, 'UNAVAILABLE', what);
  t.is(doc.errors[0]?.message, 'insufficient storage on the mirror', what);
}

function expect507(t: ExecutionContext, res: Res, what: string): void {
  assertInsufficientStorage(t, res.status, res.body, what);
  t.is(res.header('content-type'), 'application/json', what);
}

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(path.join(e.parentPath, e.name));
  return out;
}

/**
 * The crash invariant, checked with the server running: every blob row has a complete
 * file that hashes to its digest, every file under blobs/ has a row, tmp/ is empty, and
 * upload rows and data files match one to one.
 */
async function assertConsistent(t: ExecutionContext, m: Mirror): Promise<void> {
  const meta = m.db;
  const rows = meta.allBlobs();
  for (const { digest, size } of rows) {
    const got = await hashFile(path.join(m.storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7)), 'sha256').catch(() => null);
    t.deepEqual(got, { digest, size }, `blob row ${digest} has its complete file`);
  }
  const known = new Set(rows.map((r) => r.digest.slice(7)));
  const orphans = (await files(path.join(m.storage, 'blobs'))).filter((f) => !known.has(path.basename(f)));
  t.deepEqual(orphans, [], 'no blob file without a row');
  t.deepEqual(await fs.readdir(path.join(m.storage, 'tmp')), [], 'tmp/ is empty');
  const uploadRows = meta.uploads().map((u) => u.id).sort();
  t.deepEqual((await fs.readdir(path.join(m.storage, 'uploads'))).sort(), uploadRows, 'upload rows and data files match');
}

function noErrorLogs(t: ExecutionContext, m: Mirror): void {
  const errors = m.logs.filter((l) => (JSON.parse(l) as { level: number }).level >= 50);
  t.deepEqual(errors, [], 'nothing logged at error level (no 500s)');
}

async function startSession(t: ExecutionContext, m: Mirror, repo: string): Promise<string> {
  const res = await http('POST', `${m.url}/v2/${repo}/blobs/uploads/`);
  t.is(res.status, 202);
  return res.header('location')!;
}

function patch(m: Mirror, loc: string, bytes: Buffer, range?: string): Promise<Res> {
  return http('PATCH', `${m.url}${loc}`, { headers: { ...OCTET, ...(range ? { 'content-range': range } : {}) }, body: bytes });
}

const withDigest = (loc: string, d: string) => `${loc}${loc.includes('?') ? '&' : '?'}digest=${d}`;

/**
 * Announce a body of `length` bytes, send only its first KiB, and wait (up to `ms`) for an
 * answer: a write refused up front is answered before the client has sent its body.
 */
function answerBeforeBody(url: string, method: string, headers: Record<string, string>, length: number, ms: number): Promise<{ status: number; body: Buffer } | 'no answer'> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers: { ...headers, 'content-length': String(length) }, agent: false });
    const timer = setTimeout(() => {
      resolve('no answer');
      req.destroy();
    }, ms);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
        req.destroy();
      });
    });
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    req.write(Buffer.alloc(KiB));
  });
}

// ---------------------------------------------------------------------------

fullDiskTest('push: a chunk that hits ENOSPC is rolled back and not counted; the session resumes at the same offset after space is freed', async (t) => {
  const m = await startMirror(t);
  const repo = 'team/chunked';
  const blob = randomBytes(1536 * KiB, 'chunked');
  const [c1, c2] = [blob.subarray(0, MiB), blob.subarray(MiB)];
  const loc = await startSession(t, m, repo);
  t.is((await patch(m, loc, c1, `0-${MiB - 1}`)).status, 202);
  const data = path.join(m.storage, 'uploads', path.basename(loc.split('?')[0]!));

  await m.filler.leaveFree(64 * KiB);
  // Streamed (no length): nothing to check up front, so the write itself hits ENOSPC. The
  // body is small enough to be fully sent before the server writes it, so the client reads
  // the answer on a healthy connection.
  const streamed = await streamRequest(`${m.url}${loc}`, 'PATCH', [c2], OCTET);
  assertInsufficientStorage(t, streamed.status, streamed.body, 'streamed PATCH');
  t.is(streamed.headers['range'], `0-${MiB - 1}`, 'the 507 names the offset to resume from');
  t.is((await fs.stat(data)).size, MiB, 'the partial chunk was truncated away');
  // With a Content-Length the chunk is refused before a byte of it is read.
  const sized = await patch(m, loc, c2, `${MiB}-${blob.length - 1}`);
  expect507(t, sized, 'PATCH with Content-Length');
  t.is(sized.header('range'), `0-${MiB - 1}`);
  const early = await answerBeforeBody(`${m.url}${loc}`, 'PATCH', { ...OCTET, 'content-range': `${MiB}-${MiB + 8 * MiB - 1}` }, 8 * MiB, 10_000);
  t.not(early, 'no answer', 'answered before the body was sent');
  if (early !== 'no answer') assertInsufficientStorage(t, early.status, early.body, 'PATCH answered up front');
  const status = await http('GET', `${m.url}${loc}`);
  t.is(status.status, 204);
  t.is(status.header('range'), `0-${MiB - 1}`, 'upload status: the failed chunk is not counted');
  // Reads still work meanwhile.
  t.is((await http('GET', `${m.url}/healthz`)).status, 200);

  await m.filler.remove();
  t.is((await patch(m, loc, c2, `${MiB}-${blob.length - 1}`)).status, 202, 'the same chunk is accepted once there is space');
  t.is((await http('PUT', `${m.url}${withDigest(loc, sha256(blob))}`)).status, 201);
  const got = await http('GET', `${m.url}/v2/${repo}/blobs/${sha256(blob)}`);
  t.is(got.status, 200);
  t.true(got.body.equals(blob), 'blob bytes intact');
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('push: a monolithic upload that does not fit fails with 507 and leaves no temp file; the same push succeeds after space is freed', async (t) => {
  const m = await startMirror(t);
  const repo = 'team/mono';
  const blob = randomBytes(256 * KiB, 'mono');
  const d = sha256(blob);
  await m.filler.leaveFree(64 * KiB);
  const streamed = await streamRequest(`${m.url}/v2/${repo}/blobs/uploads/?digest=${d}`, 'POST', [blob], OCTET);
  assertInsufficientStorage(t, streamed.status, streamed.body, 'streamed monolithic POST');
  expect507(t, await http('POST', `${m.url}/v2/${repo}/blobs/uploads/?digest=${d}`, { headers: OCTET, body: blob }), 'POST with Content-Length');
  const early = await answerBeforeBody(`${m.url}/v2/${repo}/blobs/uploads/?digest=${d}`, 'POST', OCTET, 8 * MiB, 10_000);
  t.not(early, 'no answer', 'answered before the body was sent');
  if (early !== 'no answer') assertInsufficientStorage(t, early.status, early.body, 'POST answered up front');
  t.is((await http('HEAD', `${m.url}/v2/${repo}/blobs/${d}`)).status, 404);
  await assertConsistent(t, m);

  await m.filler.remove();
  t.is(await pushBlob(m.url, repo, blob), d);
  t.true((await http('GET', `${m.url}/v2/${repo}/blobs/${d}`)).body.equals(blob));
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('push: the database is full when a blob is committed: the file goes back, nothing is stored, and the same request succeeds after space is freed', async (t) => {
  const m = await startMirror(t);
  const repo = 'team/dbfull';
  const meta = m.db;

  // Monolithic: the blob takes exactly the last free pages, so its file is written and
  // renamed into place, and recording its row fails (SQLITE_FULL).
  const mono = randomBytes(256 * KiB, 'db-full-mono');
  await m.filler.leaveFree(mono.length);
  expect507(t, await http('POST', `${m.url}/v2/${repo}/blobs/uploads/?digest=${sha256(mono)}`, { headers: OCTET, body: mono }), 'monolithic POST, database full');
  t.is(meta.blobSize(sha256(mono) as Digest), undefined, 'no row');
  await assertConsistent(t, m); // and no file in blobs/ or tmp/
  await m.filler.remove();

  // Session: the data is on disk already; closing it needs only the database.
  const blob = randomBytes(256 * KiB, 'db-full-session');
  const loc = await startSession(t, m, repo);
  t.is((await patch(m, loc, blob, `0-${blob.length - 1}`)).status, 202);
  await m.filler.fill();
  const put = await http('PUT', `${m.url}${withDigest(loc, sha256(blob))}`);
  expect507(t, put, 'PUT closing the session, database full');
  t.is(put.header('range'), `0-${blob.length - 1}`, 'the session keeps its data');
  t.is((await http('GET', `${m.url}${loc}`)).header('range'), `0-${blob.length - 1}`);
  t.is((await http('HEAD', `${m.url}/v2/${repo}/blobs/${sha256(blob)}`)).status, 404);
  await assertConsistent(t, m);

  await m.filler.remove();
  t.is((await http('PUT', `${m.url}${withDigest(loc, sha256(blob))}`)).status, 201, 'the same PUT succeeds once there is space');
  t.is(await pushBlob(m.url, repo, mono), sha256(mono));
  t.true((await http('GET', `${m.url}/v2/${repo}/blobs/${sha256(blob)}`)).body.equals(blob));
  t.true((await http('GET', `${m.url}/v2/${repo}/blobs/${sha256(mono)}`)).body.equals(mono));
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('manifest PUT with the database full: 507, no manifest or tag stored, reads keep working; the same PUT succeeds after space is freed', async (t) => {
  const m = await startMirror(t);
  const repo = 'team/app';
  const v1 = sampleImage('full-v1');
  const v2 = sampleImage('full-v2');
  await pushBlobs(m.url, repo, [...v1.layers, v1.config, ...v2.layers, v2.config]);
  t.is((await putManifest(m.url, repo, 'v1', v1.manifest)).status, 201);

  await m.filler.fill();
  const put = await http('PUT', `${m.url}/v2/${repo}/manifests/v2?tag=also`, { headers: { 'content-type': v2.manifest.mediaType }, body: v2.manifest.bytes });
  expect507(t, put, 'manifest PUT, database full');
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/v2`, { headers: { accept: v2.manifest.mediaType } })).status, 404);
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/${v2.manifest.digest}`)).status, 404, 'nothing of the manifest was stored');

  // Reads while full: manifests by tag and digest (GET and HEAD), blobs, tag list, catalog, health.
  for (const method of ['GET', 'HEAD'] as const) {
    const byTag = await http(method, `${m.url}/v2/${repo}/manifests/v1`, { headers: { accept: v1.manifest.mediaType } });
    t.is(byTag.status, 200, `${method} manifest by tag`);
    t.is(byTag.header('docker-content-digest'), v1.manifest.digest);
    t.is((await http(method, `${m.url}/v2/${repo}/manifests/${v1.manifest.digest}`)).status, 200, `${method} manifest by digest`);
    for (const b of [...v1.layers, v1.config]) {
      const r = await http(method, `${m.url}/v2/${repo}/blobs/${b.digest}`);
      t.is(r.status, 200, `${method} blob`);
      if (method === 'GET') t.true(r.body.equals(b.bytes));
    }
  }
  t.deepEqual((await http('GET', `${m.url}/v2/${repo}/tags/list`)).json(), { name: repo, tags: ['v1'] });
  t.is((await http('GET', `${m.url}/v2/_catalog`)).status, 200);
  t.is((await http('GET', `${m.url}/healthz`)).status, 200);

  await m.filler.remove();
  t.is((await http('PUT', `${m.url}/v2/${repo}/manifests/v2?tag=also`, { headers: { 'content-type': v2.manifest.mediaType }, body: v2.manifest.bytes })).status, 201);
  t.deepEqual((await http('GET', `${m.url}/v2/${repo}/tags/list`)).json(), { name: repo, tags: ['also', 'v1', 'v2'] });
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('pull-through: a fill that hits ENOSPC aborts its clients and leaves nothing; later clients get 507 at once while reads keep working; the pull succeeds after space is freed', async (t) => {
  const fake: FakeUpstream = await startFake(t);
  const UP = 'hub.test';
  const m = await startMirror(t, { config: { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: false }) }, defaultUpstream: UP } });
  const repo = 'team/remote';
  const meta = m.db;
  const warm = sampleImage('remote-warm');
  const cold = sampleImage('remote-cold');
  fake.addImage(repo, warm, 'warm');
  fake.addImage(repo, cold, 'cold');
  const big = { bytes: randomBytes(4 * MiB, 'remote-big'), digest: '' };
  big.digest = sha256(big.bytes);
  fake.addBlob(repo, big);
  const blobUrl = `${m.url}/v2/${repo}/blobs/${big.digest}`;

  // Cache one image while there is space.
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/warm`, { headers: { accept: warm.manifest.mediaType } })).status, 200);
  for (const b of [...warm.layers, warm.config]) t.is((await http('GET', `${m.url}/v2/${repo}/blobs/${b.digest}`)).status, 200);

  // A slow fill; the disk runs full while it is being written.
  fake.faults.push({ method: 'GET', path: new RegExp(`/blobs/${big.digest}$`), throttle: { chunkBytes: 64 * KiB, intervalMs: 20 } });
  const first = fetchStream(blobUrl);
  await waitFor(() => fake.blobBytes(big.digest) >= 512 * KiB, WAIT_MS, 'the fill to be under way');
  await m.filler.fill();
  const r1 = await first;
  t.is(r1.status, 200, 'headers were already sent');
  t.truthy(r1.error, 'the client mid-body sees an aborted transfer');
  t.true(r1.body.length < big.bytes.length, 'never the whole blob');
  await waitFor(() => logged(m, 'blob fill failed').some((l) => l.digest === big.digest), WAIT_MS, 'the fill to fail');
  // Given up at the write error (the fill does not await every append), not after reading
  // the rest of the upstream body for nothing.
  t.regex(String(logged(m, 'blob fill failed').find((l) => l.digest === big.digest)?.err), /ENOSPC/, 'failed with the write error');
  await waitFor(async () => (await fs.readdir(path.join(m.storage, 'tmp'))).length === 0, WAIT_MS, 'the temp file to be removed');
  t.is(meta.blobSize(big.digest as Digest), undefined, 'nothing stored');
  t.is(fake.blobGets(big.digest), 1, 'a local write error is not retried upstream with Range');

  // The failed fill gave its space back: take it again, so the database is full too.
  await m.filler.fill();
  const gets = fake.blobGets(big.digest);
  const r2 = await http('GET', blobUrl);
  expect507(t, r2, 'a client arriving later');
  t.is(fake.blobGets(big.digest), gets + 1);
  const head = await http('HEAD', blobUrl);
  t.is(head.status, 200, 'a cold HEAD is answered from the upstream');
  t.is(head.header('content-length'), String(big.bytes.length));
  // Cached content is served; a manifest never seen is served from the upstream uncached.
  for (const b of [...warm.layers, warm.config]) t.true((await http('GET', `${m.url}/v2/${repo}/blobs/${b.digest}`)).body.equals(b.bytes));
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/warm`, { headers: { accept: warm.manifest.mediaType } })).status, 200);
  const coldRes = await http('GET', `${m.url}/v2/${repo}/manifests/cold`, { headers: { accept: cold.manifest.mediaType } });
  t.is(coldRes.status, 200, 'a manifest that cannot be cached is still served');
  t.true(coldRes.body.equals(cold.manifest.bytes));
  t.is(coldRes.header('docker-content-digest'), cold.manifest.digest);
  t.false(meta.hasManifest(repo as RepoName, cold.manifest.digest as Digest), 'and not cached');
  t.true(logged(m, 'storage full: served without caching').length > 0);
  t.is((await http('GET', `${m.url}/v2/${repo}/tags/list`)).status, 200);
  await assertConsistent(t, m);

  await m.filler.remove();
  fake.faults.length = 0;
  const r3 = await fetchStream(blobUrl);
  t.is(r3.status, 200);
  t.is(r3.error, null);
  t.is(sha256(r3.body), big.digest, 'the same pull succeeds once there is space');
  // The last byte goes out once verified; the commit follows.
  await waitFor(() => meta.blobSize(big.digest as Digest) === big.bytes.length, WAIT_MS, 'the blob to be committed');
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/cold`, { headers: { accept: cold.manifest.mediaType } })).status, 200);
  t.true(meta.hasManifest(repo as RepoName, cold.manifest.digest as Digest), 'the manifest is cached now');
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('last-access times: a flush failing on a full disk neither fails reads nor repeats its warning; the times are written once space is freed', async (t) => {
  const m = await startMirror(t, { accessFlushMs: 100 });
  const repo = 'team/access';
  const img = sampleImage('access');
  await pushBlobs(m.url, repo, [...img.layers, img.config]);
  t.is((await putManifest(m.url, repo, 'v1', img.manifest)).status, 201);
  const lastAccess = () =>
    m.db.db
      .prepare<[string], { last_access: number }>("SELECT m.last_access FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.name = 'team/access' AND m.digest = ?")
      .get(img.manifest.digest)!.last_access;
  const before = lastAccess();

  await m.filler.fill();
  const readAt = Date.now();
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/v1`, { headers: { accept: img.manifest.mediaType } })).status, 200);
  t.is((await http('GET', `${m.url}/v2/${repo}/blobs/${img.layers[0]!.digest}`)).status, 200);
  await waitFor(() => logged(m, 'writing last-access times still failing').length >= 3, WAIT_MS, 'several failed flushes');
  t.is(logged(m, 'writing last-access times failed; retrying every flush, next report when it works', 40).length, 1, 'one warning, not one per flush');
  t.is(lastAccess(), before, 'not written while the disk is full');
  t.is((await http('GET', `${m.url}/v2/${repo}/manifests/v1`, { headers: { accept: img.manifest.mediaType } })).status, 200, 'reads keep working');

  await m.filler.remove();
  await waitFor(() => logged(m, 'writing last-access times works again').length === 1, WAIT_MS, 'a flush to succeed');
  t.true(lastAccess() >= readAt, 'the access noted while the disk was full was kept and written');
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});

fullDiskTest('push into a pull-through namespace while the disk is full: 507 (not MANIFEST_BLOB_UNKNOWN) when the blobs skipped by HEAD cannot be fetched; the same PUT succeeds after space is freed', async (t) => {
  const fake: FakeUpstream = await startFake(t);
  const UP = 'hub.test';
  const m = await startMirror(t, {
    config: { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: false }) }, namespaces: [{ prefix: 'mirror', upstream: UP, push: true }] },
  });
  const img = sampleImage('ns-push');
  fake.addImage('team/app', img, '1.0');
  // A push tool HEADs each blob and skips it: the upstream has it.
  for (const b of [...img.layers, img.config]) t.is((await http('HEAD', `${m.url}/v2/mirror/team/app/blobs/${b.digest}`)).status, 200);

  await m.filler.fill();
  expect507(t, await putManifest(m.url, 'mirror/team/app', '1.0', img.manifest), 'manifest PUT whose blobs cannot be stored');
  t.false(m.db.hasManifest('mirror/team/app' as RepoName, img.manifest.digest as Digest));
  await assertConsistent(t, m);

  await m.filler.remove();
  t.is((await putManifest(m.url, 'mirror/team/app', '1.0', img.manifest)).status, 201);
  for (const b of [...img.layers, img.config]) t.true((await http('GET', `${m.url}/v2/mirror/team/app/blobs/${b.digest}`)).body.equals(b.bytes));
  await assertConsistent(t, m);
  noErrorLogs(t, m);
});
