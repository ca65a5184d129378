/**
 * Crash safety with the real CLI as a child process (`node dist/cli.js serve`).
 *
 * Each test streams a large blob, stops writing after exactly KILL_AFTER bytes were handed
 * to the socket (observed via the request's write callbacks), waits until the server has
 * put at least MIN_ON_DISK of them on disk (so the crash really hits a half-written
 * upload), SIGKILLs the server, restarts it on the same storage and checks the crash
 * invariant of src/storage/paths.ts:
 *   - the digest is not served (HEAD 404, GET 404 BLOB_UNKNOWN);
 *   - every file under storage/blobs is complete, verified content (hashes to its name);
 *   - storage/tmp is empty;
 *   - a fresh upload of the same blob succeeds and GET returns exactly its bytes.
 * Plus: a manifest acknowledged with 201 survives a SIGKILL right after the response.
 *
 * The child-process plumbing and the storage checks are in test/helpers/cli.ts.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { request as undiciRequest } from 'undici';
import { tempDir } from '../helpers/server.js';
import { agent, errorCode, http, pushBlob, pushManifest } from '../helpers/http.js';
import { assertBlobStoreIntact, assertTmpEmpty, digestOfStream, startCli, waitFor, withTimeout, writeConfig } from '../helpers/cli.js';
import { MediaTypes, allBlobsOf, makeImage, makeIndex, makeLayer, randomBytes, randomStream } from '../fixtures/images.js';

const MiB = 1024 * 1024;
const BLOB_SIZE = 64 * MiB;
/** The client stops writing (without ending the request) after exactly this many bytes. */
const KILL_AFTER = 16 * MiB;
/** ...and the server is killed once at least this much of them is on disk. */
const MIN_ON_DISK = 8 * MiB;

const STEP_TIMEOUT_MS = 30_000;
const TRANSFER_TIMEOUT_MS = 90_000;

// ---------------------------------------------------------------------------
// small utilities

/** Bytes [from, to) of `src`. */
async function* byteRange(src: AsyncIterable<Buffer>, from: number, to = Number.POSITIVE_INFINITY): AsyncGenerator<Buffer> {
  let pos = 0;
  for await (const c of src) {
    const start = Math.max(from - pos, 0);
    const end = Math.min(c.length, to - pos);
    if (end > start) yield c.subarray(start, end);
    pos += c.length;
    if (pos >= to) return;
  }
}

// ---------------------------------------------------------------------------
// a request body that stops after exactly N bytes

interface StreamingRequest {
  /** Resolves with the byte count once exactly `stopAfter` bytes were accepted by the socket. */
  stopped: Promise<number>;
  /** Settles when the exchange ends: a response status, or the error that ended it. */
  settled: Promise<{ status?: number; body?: string; error?: Error }>;
  /** Drop the connection (a client going away mid-body). */
  abort(): void;
}

function streamingRequest(
  url: string,
  method: 'POST' | 'PATCH' | 'PUT',
  headers: Record<string, string | number>,
  chunks: AsyncIterable<Buffer>,
  stopAfter: number,
): StreamingRequest {
  const req = httpRequest(url, { method, headers, agent: false });
  const settled = new Promise<{ status?: number; body?: string; error?: Error }>((resolve) => {
    req.on('error', (error) => resolve({ error }));
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString('utf8') }));
      res.on('error', (error) => resolve({ status: res.statusCode, error }));
    });
  });
  const endedEarly = settled.then((s) => {
    throw new Error(`request ended before ${stopAfter} bytes were sent: ${s.status ?? ''} ${s.body ?? ''} ${s.error?.message ?? ''}`);
  });
  endedEarly.catch(() => undefined);
  const stopped = (async () => {
    let sent = 0;
    for await (const chunk of chunks) {
      const part = chunk.subarray(0, Math.min(chunk.length, stopAfter - sent));
      const written = new Promise<void>((resolve, reject) => req.write(part, (err) => (err ? reject(err) : resolve())));
      await Promise.race([written, endedEarly]);
      sent += part.length;
      if (sent >= stopAfter) return sent;
    }
    throw new Error(`body source ended after ${sent} bytes, before ${stopAfter}`);
  })();
  return { stopped: withTimeout(stopped, TRANSFER_TIMEOUT_MS, `sending ${stopAfter} bytes to ${url}`), settled, abort: () => req.destroy() };
}

async function sizeOf(file: string): Promise<number | undefined> {
  try {
    return (await fs.stat(file)).size;
  } catch {
    return undefined;
  }
}

/**
 * Size of the largest regular file under the storage root other than the SQLite files:
 * the half-written upload, wherever the implementation keeps it (uploads/ for sessions,
 * tmp/ for monolithic uploads per paths.ts). Committed test blobs are far smaller.
 */
async function largestDataFile(storage: string): Promise<number> {
  let max = 0;
  const entries = await fs.readdir(storage, { recursive: true, withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isFile() || e.name.startsWith('regmirror.db')) continue;
    max = Math.max(max, (await sizeOf(path.join(e.parentPath, e.name))) ?? 0);
  }
  return max;
}

// ---------------------------------------------------------------------------
// checks

async function assertBlobUnknown(t: ExecutionContext, base: string, repo: string, digest: string): Promise<void> {
  const head = await http('HEAD', `${base}/v2/${repo}/blobs/${digest}`);
  t.is(head.status, 404, 'HEAD of the interrupted blob');
  const get = await http('GET', `${base}/v2/${repo}/blobs/${digest}`);
  t.is(get.status, 404, 'GET of the interrupted blob');
  t.is(errorCode(get), 'BLOB_UNKNOWN');
}

/** GET the blob, hashing while streaming. */
async function assertServesExactly(t: ExecutionContext, base: string, repo: string, digest: string, size: number): Promise<void> {
  const res = await withTimeout(undiciRequest(`${base}/v2/${repo}/blobs/${digest}`, { dispatcher: agent }), STEP_TIMEOUT_MS, 'GET blob headers');
  t.is(res.statusCode, 200);
  t.is(res.headers['content-length'], String(size));
  const got = await withTimeout(digestOfStream(res.body as AsyncIterable<Buffer>), TRANSFER_TIMEOUT_MS, 'GET blob body');
  t.is(got.size, size, 'served length');
  t.is(got.digest, digest, 'served content does not hash to its digest');
}

async function startSession(base: string, repo: string): Promise<string> {
  const res = await http('POST', `${base}/v2/${repo}/blobs/uploads/`);
  if (res.status !== 202) throw new Error(`POST upload: ${res.status} ${res.body.toString()}`);
  const loc = res.header('location');
  if (!loc) throw new Error('POST upload: no Location');
  return new URL(loc, base).toString();
}

function withQuery(url: string, key: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}

/** A complete fresh upload of the blob: POST, one streamed PATCH, PUT ?digest=. */
async function freshChunkedUpload(t: ExecutionContext, base: string, repo: string, seed: string, digest: string): Promise<void> {
  const loc = await startSession(base, repo);
  const patch = await withTimeout(
    http('PATCH', loc, { headers: { 'content-type': 'application/octet-stream' }, body: randomStream(BLOB_SIZE, seed) }),
    TRANSFER_TIMEOUT_MS,
    'fresh PATCH',
  );
  t.is(patch.status, 202, patch.body.toString());
  t.is(patch.header('range'), `0-${BLOB_SIZE - 1}`);
  const put = await http('PUT', withQuery(new URL(patch.header('location')!, base).toString(), 'digest', digest));
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), digest);
}

async function freshMonolithicUpload(t: ExecutionContext, base: string, repo: string, seed: string, digest: string): Promise<void> {
  const res = await withTimeout(
    http('POST', `${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(BLOB_SIZE) },
      body: randomStream(BLOB_SIZE, seed),
    }),
    TRANSFER_TIMEOUT_MS,
    'fresh monolithic POST',
  );
  t.is(res.status, 201, res.body.toString());
  t.is(res.header('docker-content-digest'), digest);
}

/** Small blobs committed before the crash, so the blob-store walk has real content to check. */
async function pushSmallBlobs(base: string, repo: string): Promise<string[]> {
  return [await pushBlob(base, repo, randomBytes(300 * 1024, `${repo}-small-1`)), await pushBlob(base, repo, '{"small":2}')];
}

async function afterCrashChecks(t: ExecutionContext, base: string, storage: string, repo: string, digest: string, small: string[]) {
  await assertBlobUnknown(t, base, repo, digest);
  const found = await assertBlobStoreIntact(t, storage);
  for (const d of small) {
    t.true(found.has(d), `committed blob ${d} lost by the crash`);
    t.is((await http('HEAD', `${base}/v2/${repo}/blobs/${d}`)).status, 200, `committed blob ${d} not served after restart`);
  }
  await assertTmpEmpty(t, storage);
}

// ---------------------------------------------------------------------------

type Mode = 'streamed PATCH' | 'chunked PATCH' | 'monolithic POST';

async function crashDuringUpload(t: ExecutionContext, mode: Mode): Promise<void> {
  const dir = await tempDir(t, 'regmirror-crash-');
  const { config, storage } = await writeConfig(dir);
  const repo = 'crash/big';
  const seed = `crash-${mode}`;
  const { digest } = await digestOfStream(randomStream(BLOB_SIZE, seed));

  const s1 = await startCli(t, config);
  const small = await pushSmallBlobs(s1.url, repo);
  const onDisk = () => largestDataFile(storage);
  let base = 0;
  let req: StreamingRequest;
  if (mode === 'monolithic POST') {
    req = streamingRequest(
      `${s1.url}/v2/${repo}/blobs/uploads/?digest=${digest}`,
      'POST',
      { 'content-type': 'application/octet-stream', 'content-length': BLOB_SIZE },
      randomStream(BLOB_SIZE, seed),
      KILL_AFTER,
    );
  } else {
    const loc = await startSession(s1.url, repo);
    if (mode === 'streamed PATCH') {
      req = streamingRequest(loc, 'PATCH', { 'content-type': 'application/octet-stream' }, randomStream(BLOB_SIZE, seed), KILL_AFTER);
    } else {
      // A first chunk that completes, then a second (declared up to the end) that is cut.
      base = 4 * MiB;
      const first = await http('PATCH', loc, {
        headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${base - 1}`, 'content-length': String(base) },
        body: randomBytes(base, seed),
      });
      t.is(first.status, 202, first.body.toString());
      t.is(first.header('range'), `0-${base - 1}`);
      req = streamingRequest(
        loc,
        'PATCH',
        { 'content-type': 'application/octet-stream', 'content-range': `${base}-${BLOB_SIZE - 1}`, 'content-length': BLOB_SIZE - base },
        byteRange(randomStream(BLOB_SIZE, seed), base),
        KILL_AFTER,
      );
    }
  }
  t.is(await req.stopped, KILL_AFTER);
  const persisted = await waitFor(
    async () => {
      const n = await onDisk();
      return n >= base + MIN_ON_DISK ? n : undefined;
    },
    STEP_TIMEOUT_MS,
    `the server to write ${MIN_ON_DISK} bytes of the ${mode} to disk`,
  );
  t.true(persisted <= base + KILL_AFTER, `server holds ${persisted} bytes, more than were sent`);
  await s1.kill();
  const outcome = await withTimeout(req.settled, STEP_TIMEOUT_MS, 'client to see the connection die');
  t.is(outcome.status, undefined, `the interrupted request got a response: ${outcome.status} ${outcome.body}`);

  const s2 = await startCli(t, config);
  await afterCrashChecks(t, s2.url, storage, repo, digest, small);
  // Also not visible through any other repository.
  t.is((await http('HEAD', `${s2.url}/v2/other/repo/blobs/${digest}`)).status, 404);

  if (mode === 'monolithic POST') await freshMonolithicUpload(t, s2.url, repo, seed, digest);
  else await freshChunkedUpload(t, s2.url, repo, seed, digest);
  await assertServesExactly(t, s2.url, repo, digest, BLOB_SIZE);
  const found = await assertBlobStoreIntact(t, storage);
  t.true(found.has(digest), 'the committed blob is not in the blob store');
  await assertTmpEmpty(t, storage);
}

test('SIGKILL during a streamed PATCH: nothing partial is committed; a fresh upload works', (t) => crashDuringUpload(t, 'streamed PATCH'));
test('SIGKILL during a chunked PATCH (Content-Range): nothing partial is committed; a fresh upload works', (t) =>
  crashDuringUpload(t, 'chunked PATCH'));
test('SIGKILL during a monolithic POST ?digest=: nothing partial is committed; a fresh upload works', (t) =>
  crashDuringUpload(t, 'monolithic POST'));

test('an upload session interrupted by SIGKILL resumes from the offset the restarted server reports', async (t) => {
  const dir = await tempDir(t, 'regmirror-crash-');
  const { config, storage } = await writeConfig(dir);
  const repo = 'crash/resume';
  const seed = 'crash-resume';
  const { digest } = await digestOfStream(randomStream(BLOB_SIZE, seed));

  const s1 = await startCli(t, config);
  const loc = await startSession(s1.url, repo);
  const req = streamingRequest(loc, 'PATCH', { 'content-type': 'application/octet-stream' }, randomStream(BLOB_SIZE, seed), KILL_AFTER);
  t.is(await req.stopped, KILL_AFTER);
  const persisted = await waitFor(
    async () => {
      const n = await largestDataFile(storage);
      return n >= MIN_ON_DISK ? n : undefined;
    },
    STEP_TIMEOUT_MS,
    `the server to write ${MIN_ON_DISK} bytes of the upload to disk`,
  );
  await s1.kill();
  await withTimeout(req.settled, STEP_TIMEOUT_MS, 'client to see the connection die');

  const s2 = await startCli(t, config);
  const loc2 = new URL(new URL(loc).pathname, s2.url).toString();
  const status = await http('GET', loc2);
  t.is(status.status, 204, `upload session lost by the restart: ${status.status} ${status.body.toString()}`);
  const m = /^0-(\d+)$/.exec(status.header('range') ?? '');
  t.truthy(m, `bad Range header ${status.header('range')}`);
  const offset = Number(m![1]) + 1;
  t.true(offset >= persisted && offset <= KILL_AFTER, `offset ${offset} outside [${persisted}, ${KILL_AFTER}]`);
  await assertBlobUnknown(t, s2.url, repo, digest);
  await assertTmpEmpty(t, storage);

  // Send the rest from the reported offset; the digest only matches if the kept prefix is exact.
  const rest = await withTimeout(
    http('PATCH', loc2, {
      headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${BLOB_SIZE - 1}`, 'content-length': String(BLOB_SIZE - offset) },
      body: byteRange(randomStream(BLOB_SIZE, seed), offset) as unknown as NodeJS.ReadableStream,
    }),
    TRANSFER_TIMEOUT_MS,
    'resume PATCH',
  );
  t.is(rest.status, 202, rest.body.toString());
  t.is(rest.header('range'), `0-${BLOB_SIZE - 1}`);
  const put = await http('PUT', withQuery(new URL(rest.header('location')!, s2.url).toString(), 'digest', digest));
  t.is(put.status, 201, put.body.toString());
  await assertServesExactly(t, s2.url, repo, digest, BLOB_SIZE);
  t.true((await assertBlobStoreIntact(t, storage)).has(digest));
});

test('a manifest acknowledged with 201 survives a SIGKILL right after the response', async (t) => {
  const dir = await tempDir(t, 'regmirror-crash-');
  const { config, storage } = await writeConfig(dir);
  const repo = 'crash/manifests';
  const shared = makeLayer([{ name: 'etc/hostname', content: 'crash\n' }]);
  const amd = makeImage({ arch: 'amd64', layers: [shared, makeLayer([{ name: 'a', content: randomBytes(4096, 'a') }])] });
  const arm = makeImage({ arch: 'arm64', layers: [shared, makeLayer([{ name: 'b', content: randomBytes(4096, 'b') }])] });
  const idx = makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  const all = allBlobsOf(idx);
  const manifests = new Set([amd.manifest.digest, arm.manifest.digest, idx.index.digest]);

  const s1 = await startCli(t, config);
  for (const b of all) if (!manifests.has(b.digest)) await pushBlob(s1.url, repo, b.bytes);
  for (const img of [amd, arm]) {
    const r = await pushManifest(s1.url, repo, img.manifest.digest, img.manifest.bytes, img.manifest.mediaType);
    t.is(r.status, 201, r.body.toString());
  }
  const last = await pushManifest(s1.url, repo, '1.0', idx.index.bytes, idx.index.mediaType);
  t.is(last.status, 201, last.body.toString());
  await s1.kill(); // immediately: no graceful close, no checkpoint

  const s2 = await startCli(t, config);
  const byTag = await http('GET', `${s2.url}/v2/${repo}/manifests/1.0`, { headers: { accept: MediaTypes.ociIndex } });
  t.is(byTag.status, 200, 'tag pushed right before the crash is gone');
  t.is(byTag.header('docker-content-digest'), idx.index.digest);
  t.true(byTag.body.equals(idx.index.bytes));
  for (const img of [amd, arm]) {
    const r = await http('GET', `${s2.url}/v2/${repo}/manifests/${img.manifest.digest}`, { headers: { accept: MediaTypes.ociManifest } });
    t.is(r.status, 200);
    t.true(r.body.equals(img.manifest.bytes));
  }
  const tags = await http('GET', `${s2.url}/v2/${repo}/tags/list`);
  t.deepEqual(tags.json(), { name: repo, tags: ['1.0'] });
  for (const b of all) {
    if (manifests.has(b.digest)) continue;
    const r = await http('GET', `${s2.url}/v2/${repo}/blobs/${b.digest}`);
    t.is(r.status, 200);
    t.true(r.body.equals(b.bytes));
  }
  const found = await assertBlobStoreIntact(t, storage);
  t.is(found.size, all.length - manifests.size);
  await assertTmpEmpty(t, storage);
});

test('a client that disconnects mid-body (no server crash) leaves no partial blob and no temp file', async (t) => {
  const dir = await tempDir(t, 'regmirror-crash-');
  const { config, storage } = await writeConfig(dir);
  const repo = 'crash/abort';
  const seed = 'client-abort';
  const { digest } = await digestOfStream(randomStream(BLOB_SIZE, seed));
  const s = await startCli(t, config);
  const small = await pushSmallBlobs(s.url, repo);

  // Monolithic POST: the temp file must go away once the server sees the disconnect.
  const mono = streamingRequest(
    `${s.url}/v2/${repo}/blobs/uploads/?digest=${digest}`,
    'POST',
    { 'content-type': 'application/octet-stream', 'content-length': BLOB_SIZE },
    randomStream(BLOB_SIZE, seed),
    KILL_AFTER,
  );
  t.is(await mono.stopped, KILL_AFTER);
  await waitFor(async () => ((await largestDataFile(storage)) >= MIN_ON_DISK ? true : undefined), STEP_TIMEOUT_MS, 'temp data on disk');
  mono.abort();
  await withTimeout(mono.settled, STEP_TIMEOUT_MS, 'aborted POST to settle');
  await waitFor(
    async () => ((await fs.readdir(path.join(storage, 'tmp'))).length === 0 ? true : undefined),
    STEP_TIMEOUT_MS,
    'storage/tmp to be cleaned after the client went away',
  );

  // Streamed PATCH after a first good chunk: the session must roll back to that chunk.
  const loc = await startSession(s.url, repo);
  const base = 4 * MiB;
  const first = await http('PATCH', loc, {
    headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${base - 1}`, 'content-length': String(base) },
    body: randomBytes(base, seed),
  });
  t.is(first.status, 202, first.body.toString());
  const patch = streamingRequest(loc, 'PATCH', { 'content-type': 'application/octet-stream' }, byteRange(randomStream(BLOB_SIZE, seed), base), KILL_AFTER);
  t.is(await patch.stopped, KILL_AFTER);
  await waitFor(async () => ((await largestDataFile(storage)) >= base + MIN_ON_DISK ? true : undefined), STEP_TIMEOUT_MS, 'session data on disk');
  patch.abort();
  await withTimeout(patch.settled, STEP_TIMEOUT_MS, 'aborted PATCH to settle');
  const range = await waitFor(
    async () => {
      const r = await http('GET', loc);
      return r.status === 204 && r.header('range') === `0-${base - 1}` ? r.header('range') : undefined;
    },
    STEP_TIMEOUT_MS,
    `the session to roll back to ${base} bytes`,
  );
  t.is(range, `0-${base - 1}`);

  await afterCrashChecks(t, s.url, storage, repo, digest, small);
  // The rolled-back session is still usable: send the rest and complete it.
  const rest = await withTimeout(
    http('PATCH', loc, {
      headers: { 'content-type': 'application/octet-stream', 'content-range': `${base}-${BLOB_SIZE - 1}`, 'content-length': String(BLOB_SIZE - base) },
      body: byteRange(randomStream(BLOB_SIZE, seed), base) as unknown as NodeJS.ReadableStream,
    }),
    TRANSFER_TIMEOUT_MS,
    'PATCH of the rest',
  );
  t.is(rest.status, 202, rest.body.toString());
  const put = await http('PUT', withQuery(new URL(rest.header('location')!, s.url).toString(), 'digest', digest));
  t.is(put.status, 201, put.body.toString());
  await assertServesExactly(t, s.url, repo, digest, BLOB_SIZE);
  t.true((await assertBlobStoreIntact(t, storage)).has(digest));
  await assertTmpEmpty(t, storage);
});
