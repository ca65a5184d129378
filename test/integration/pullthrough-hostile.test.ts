/**
 * Hostile upstreams (issue #8 item 3): an upstream, or a captive portal or proxy in front
 * of it, that answers 200 with an HTML page or JSON that is no manifest, a manifest whose
 * bytes differ from the digest it announces or of a type the client does not accept, a blob
 * of the wrong length, a redirect loop, a body dripping one byte a second, a token service
 * that is down, failing or hands out expired tokens.
 *
 * For each: nothing corrupt is stored (every stored manifest and blob hashes to its digest,
 * no temp file is left, and once the fault is gone the next request fetches again and gets
 * the right bytes), the client gets a clear OCI error or the stale copy with `Warning: 299`,
 * `/healthz` answers, and a second upstream in the same server keeps serving meanwhile.
 * Cases already covered elsewhere are not repeated here: a flipped blob byte and a reset
 * mid-blob (pullthrough-blobs), a by-digest manifest mismatch (a portal page by digest is
 * one) and generic-JSON manifests (pullthrough-cache), a stopped realm with a cached token
 * (pullthrough-auth).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http, sha256, type Res } from '../helpers/http.js';
import type { Fault, FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import { type Blob, type Image, makeBlob, makeImage, makeIndex, makeLayer, randomBytes } from '../fixtures/images.js';
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, listTree, sampleImage } from './_support.js';
import { ACCEPT_ALL, fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const BAD = 'hub.test';
const GOOD = 'good.test';
/** Upper bound for background progress (fills, commits); generous because CI load varies. */
const WAIT_MS = 30_000;
/** containerd's Accept: every manifest type, no text/html. */
const CONTAINERD_ACCEPT = `${DOCKER_MANIFEST}, application/vnd.docker.distribution.manifest.list.v2+json, ${OCI_MANIFEST}, ${OCI_INDEX}`;
const PORTAL = '<!DOCTYPE html><html><head><title>Login</title></head><body>captive portal: please sign in</body></html>';

interface Env {
  bad: FakeUpstream;
  good: FakeUpstream;
  goodImg: Image;
  s: TestServer;
}

async function setup(
  t: ExecutionContext,
  opts: { fake?: FakeUpstreamOptions; upstream?: Record<string, unknown>; server?: Record<string, unknown> } = {},
): Promise<Env> {
  const bad = await startFake(t, opts.fake);
  const good = await startFake(t);
  const goodImg = sampleImage(`good-${seed(t.title)}`);
  good.addImage('team/app', goodImg, 'v1');
  const s = await startServer(t, {
    upstreams: {
      // ttl 0: every tag request goes upstream, so every request meets the fault.
      [BAD]: upstreamEntry(bad, { libraryPrefix: true, tags: { ttl: '0s' }, ...opts.upstream }),
      [GOOD]: upstreamEntry(good, { tags: { ttl: '0s' } }),
    },
    defaultUpstream: BAD,
    ...opts.server,
  });
  return { bad, good, goodImg, s };
}

/** A short seed for fixtures named after a test (tar names are limited). */
const seed = (title: string) => sha256(title).slice(7, 19);

const get = (s: TestServer, p: string, accept = ACCEPT_ALL) => http('GET', `${s.url}${p}`, { headers: { accept } });
const head = (s: TestServer, p: string, accept = ACCEPT_ALL) => http('HEAD', `${s.url}${p}`, { headers: { accept } });

function errorMessage(r: Res): string {
  try {
    return r.json<{ errors: Array<{ message?: string }> }>().errors[0]?.message ?? '';
  } catch {
    return '';
  }
}

/** An OCI error with this status and code, and a message matching `message`. */
function assertOciError(t: ExecutionContext, r: Res, status: number, code: string, message?: RegExp): void {
  t.is(r.status, status, `status (body: ${r.body.toString('utf8').slice(0, 300)})`);
  t.is(r.header('content-type'), 'application/json');
  t.is(errorCode(r), code);
  if (message) t.regex(errorMessage(r), message);
}

/**
 * The mirror is healthy and the other upstream serves normally (revalidated for real, no
 * Warning, right bytes), while the fault is still in place.
 */
async function assertUnaffected(t: ExecutionContext, env: Env): Promise<void> {
  const health = await http('GET', `${env.s.url}/healthz`);
  t.is(health.status, 200, 'healthz');
  t.deepEqual(health.json(), { status: 'ok' });
  const before = env.good.manifestRequests('GET').length + env.good.manifestRequests('HEAD').length;
  const m = await get(env.s, `/v2/${GOOD}/team/app/manifests/v1`);
  t.is(m.status, 200, 'the other upstream serves');
  t.deepEqual(m.body, env.goodImg.manifest.bytes);
  t.is(m.header('warning'), undefined, 'not stale: the other upstream was asked');
  t.is(env.good.manifestRequests('GET').length + env.good.manifestRequests('HEAD').length, before + 1);
  const layer = env.goodImg.layers[0]!;
  const b = await get(env.s, `/v2/${GOOD}/team/app/blobs/${layer.digest}`);
  t.is(b.status, 200);
  t.true(b.body.equals(layer.bytes));
}

/** Every stored manifest and blob hashes to its digest; no temp file is left behind. */
async function assertStoreClean(t: ExecutionContext, s: TestServer): Promise<void> {
  const rows = s.db().db.prepare('SELECT digest, media_type AS mediaType, body FROM manifest_content').all() as Array<{ digest: string; mediaType: string; body: Buffer }>;
  for (const r of rows) {
    t.is(sha256(r.body), r.digest, `stored manifest ${r.digest} hashes to its digest`);
    t.regex(r.mediaType, /^application\/vnd\.(oci\.image\.(manifest|index)\.v1|docker\.distribution\.manifest\.(v2|list\.v2))\+json$/, 'a manifest type');
  }
  const root = path.join(s.dataDir, 'storage', 'blobs');
  const files = (await listTree(root).catch(() => [] as string[])).filter((p) => /^sha256\/[0-9a-f]{2}\/[0-9a-f]{64}$/.test(p));
  for (const f of files) {
    const hex = createHash('sha256').update(await fs.readFile(path.join(root, f))).digest('hex');
    t.is(`sha256/${hex.slice(0, 2)}/${hex}`, f, `blob file ${f} holds the right bytes`);
  }
  const tmp = path.join(s.dataDir, 'storage', 'tmp');
  await waitFor(async () => (await fs.readdir(tmp).catch(() => [])).length === 0, WAIT_MS, 'no temp file left');
}

function storedManifest(s: TestServer, digest: string): boolean {
  return s.db().db.prepare('SELECT 1 FROM manifest_content WHERE digest = ?').get(digest) !== undefined;
}

function blobStored(s: TestServer, b: Blob): boolean {
  return s.db().blobSize(b.digest as never) !== undefined;
}

function integrityLogged(s: TestServer): boolean {
  return s.logs.some((l) => l.includes('upstream integrity error'));
}

// ---- manifests ---------------------------------------------------------------------

interface ManifestCase {
  title: string;
  /** The fault for manifest requests (GET and HEAD), given the image the tag names. */
  fault: (img: Image) => Fault;
  /** Accept of the client that meets the fault. */
  accept?: string;
  /** The bytes the upstream answers, when they can be named: never stored. */
  badBytes?: (img: Image) => Buffer;
  message: RegExp;
}

const MANIFEST_CASES: ManifestCase[] = [
  {
    title: 'a captive portal: 200 text/html, no Docker-Content-Digest',
    fault: () => ({ path: /\/manifests\//, replaceWith: { contentType: 'text/html; charset=utf-8', body: PORTAL } }),
    accept: CONTAINERD_ACCEPT,
    badBytes: () => Buffer.from(PORTAL),
    message: /Content-Type text\/html, not a manifest/,
  },
  {
    title: 'a proxy page sent as application/json (JSON, but no manifest)',
    fault: () => ({ path: /\/manifests\//, replaceWith: { contentType: 'application/json', body: '{"status":"login required","redirect":"/portal"}' } }),
    badBytes: () => Buffer.from('{"status":"login required","redirect":"/portal"}'),
    message: /not a manifest/,
  },
  {
    title: 'HTML under a generic Content-Type (application/octet-stream)',
    fault: () => ({ path: /\/manifests\//, replaceWith: { contentType: 'application/octet-stream', body: PORTAL } }),
    badBytes: () => Buffer.from(PORTAL),
    message: /not a manifest.*not valid JSON/,
  },
  {
    title: 'a manifest whose bytes differ from the Docker-Content-Digest it announces (still valid JSON)',
    // Inside a digest string: still a parsable manifest, so only the digest check catches it.
    fault: (img) => ({ method: 'GET', path: /\/manifests\//, flipByteAt: img.manifest.bytes.indexOf('sha256:') + 20 }),
    message: /does not match its digest/,
  },
  {
    title: 'an OCI index (announced with its digest) for a client that accepts OCI image manifests only',
    fault: (img) => {
      const idx = makeIndex([{ image: img, platform: { os: 'linux', architecture: 'amd64' } }]);
      return { path: /\/manifests\//, replaceWith: { contentType: OCI_INDEX, body: idx.index.bytes, digest: idx.index.digest } };
    },
    accept: OCI_MANIFEST,
    badBytes: (img) => makeIndex([{ image: img, platform: { os: 'linux', architecture: 'amd64' } }]).index.bytes,
    message: /application\/vnd\.oci\.image\.index\.v1\+json, which the client does not accept/,
  },
];

for (const c of MANIFEST_CASES) {
  test(`manifest: ${c.title} -> 502 UNAVAILABLE, never stored; a cached tag is served stale; fetched again once the fault is gone`, async (t) => {
    const env = await setup(t);
    const { bad, s } = env;
    const img = sampleImage(`hm-${seed(c.title)}`);
    const cachedImg = sampleImage(`hmc-${seed(c.title)}`);
    bad.addImage('library/app', img, 'new');
    bad.addImage('library/app', cachedImg, 'cached');
    const accept = c.accept ?? ACCEPT_ALL;
    const primed = await get(s, '/v2/library/app/manifests/cached', accept);
    t.is(primed.status, 200);
    // The cached tag moves upstream, so its revalidation has to fetch and meets the fault too.
    bad.setTag('library/app', 'cached', img.manifest.digest);
    bad.resetCounters();
    bad.faults.push(c.fault(img));

    // Uncached tag: a clear 502, for GET and HEAD, asked upstream each time (nothing stored).
    for (let i = 0; i < 2; i++) {
      assertOciError(t, await get(s, '/v2/library/app/manifests/new', accept), 502, 'UNAVAILABLE', c.message);
      const h = await head(s, '/v2/library/app/manifests/new', accept);
      t.is(h.status, 502);
      t.is(h.body.length, 0);
    }
    t.is(bad.manifestRequests('GET').filter((r) => r.path.endsWith('/new')).length, 4, 'asked every time: nothing cached');
    t.true(integrityLogged(s), 'logged as an upstream integrity error');
    if (c.badBytes) t.false(storedManifest(s, sha256(c.badBytes(img))), 'the bad answer is not stored');

    // Cached tag: the stale copy, with a Warning (the revalidation met the fault).
    const stale = await get(s, '/v2/library/app/manifests/cached', accept);
    t.is(stale.status, 200);
    t.deepEqual(stale.body, cachedImg.manifest.bytes);
    t.regex(stale.header('warning') ?? '', /^299 /);

    await assertUnaffected(t, env);
    await assertStoreClean(t, s);

    // The fault is gone: fetched again, the right bytes, no Warning.
    bad.faults.length = 0;
    for (const tag of ['new', 'cached']) {
      const r = await get(s, `/v2/library/app/manifests/${tag}`, accept);
      t.is(r.status, 200, tag);
      t.deepEqual(r.body, img.manifest.bytes, tag);
      t.is(r.header('docker-content-digest'), img.manifest.digest);
      t.is(r.header('warning'), undefined, tag);
    }
    await assertStoreClean(t, s);
  });
}

test('manifest: a Docker image manifest answers a client that lists only OCI types (Docker types predate negotiation)', async (t) => {
  const env = await setup(t);
  const img = sampleImage('hostile-docker-for-oci', { flavor: 'docker' });
  env.bad.addImage('library/app', img, 'v1');
  const r = await get(env.s, '/v2/library/app/manifests/v1', OCI_MANIFEST);
  t.is(r.status, 200);
  t.deepEqual(r.body, img.manifest.bytes);
  t.is(r.header('content-type'), DOCKER_MANIFEST);
});

test('manifest body dripping one byte a second: the body timeout gives up (503), nothing stored; a cached tag is served stale', async (t) => {
  const env = await setup(t, { upstream: { timeouts: { body: '500ms', offline: '0s' } } });
  const { bad, s } = env;
  const img = sampleImage('hostile-drip-manifest');
  const cachedImg = sampleImage('hostile-drip-manifest-cached');
  bad.addImage('library/app', img, 'new');
  bad.addImage('library/app', cachedImg, 'cached');
  t.is((await get(s, '/v2/library/app/manifests/cached')).status, 200);
  // Revalidation HEADs answer at once (no body); then the tag is fetched again only if it moved.
  bad.setTag('library/app', 'cached', img.manifest.digest);
  bad.resetCounters();
  bad.faults.push({ method: 'GET', path: /\/manifests\//, throttle: { chunkBytes: 1, intervalMs: 1000 } });

  const [uncached, stale] = await Promise.all([get(s, '/v2/library/app/manifests/new'), get(s, '/v2/library/app/manifests/cached')]);
  // Either guard may fire first on a busy machine: undici's body timeout (no byte for 500 ms)
  // or the minimum-rate check (under 1 KiB/s); both give up with a 503.
  assertOciError(t, uncached, 503, 'UNAVAILABLE', /stalled|too slowly/);
  t.is(stale.status, 200);
  t.deepEqual(stale.body, cachedImg.manifest.bytes);
  t.regex(stale.header('warning') ?? '', /^299 /);
  const drips = bad.manifestRequests('GET');
  t.is(drips.length, 2, 'the tag and the moved digest');
  await waitFor(() => drips.every((r) => r.aborted), WAIT_MS, 'the mirror dropped the dripping responses');
  t.true(drips.every((r) => r.bytes < img.manifest.size), 'given up long before the end');
  t.false(storedManifest(s, img.manifest.digest));
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  bad.faults.length = 0;
  const ok = await get(s, '/v2/library/app/manifests/new');
  t.is(ok.status, 200);
  t.deepEqual(ok.body, img.manifest.bytes);
});

// ---- blobs -------------------------------------------------------------------------

const KiB = 1024;

function bigBlob(size: number, seed: string): Blob {
  return makeBlob(randomBytes(size, seed), 'application/vnd.oci.image.layer.v1.tar');
}

interface BlobCase {
  title: string;
  fault: Omit<Fault, 'method' | 'path' | 'times'>;
  /** What the client sees: a 200 whose body is cut short, or (length unknown) an error status. */
  expect: 'cut' | 'error';
}

const BLOB_CASES: BlobCase[] = [
  { title: 'one byte short, Content-Length matching what is sent', fault: { lengthDelta: -1 }, expect: 'cut' },
  { title: '100 garbage bytes appended, Content-Length matching what is sent', fault: { lengthDelta: 100 }, expect: 'cut' },
  { title: 'half the blob, chunked (no Content-Length)', fault: { lengthDelta: -64 * KiB, omitLength: true }, expect: 'error' },
  { title: 'garbage appended, chunked (no Content-Length)', fault: { lengthDelta: 7, omitLength: true }, expect: 'error' },
  { title: 'right length, one byte flipped, chunked (no Content-Length)', fault: { flipByteAt: 5, omitLength: true }, expect: 'error' },
];

for (const c of BLOB_CASES) {
  test(`blob of the wrong length or bytes: ${c.title} -> never served whole, nothing stored; the next request refetches`, async (t) => {
    const env = await setup(t);
    const { bad, s } = env;
    const blob = bigBlob(128 * KiB, `hb-${seed(c.title)}`);
    bad.addBlob('library/app', blob);
    bad.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, ...c.fault });
    const url = `${s.url}/v2/library/app/blobs/${blob.digest}`;

    const r = await fetchStream(url);
    if (c.expect === 'cut') {
      t.is(r.status, 200, 'headers went out before the mismatch was known');
      t.truthy(r.error, 'the transfer is aborted');
      const announced = Number(r.headers['content-length']);
      t.is(announced, blob.size + c.fault.lengthDelta!, 'the upstream length was passed on');
      t.true(r.body.length < announced, `got ${r.body.length} of ${announced} bytes: never the whole (wrong) body`);
      t.true(r.body.subarray(0, Math.min(r.body.length, blob.size)).equals(blob.bytes.subarray(0, Math.min(r.body.length, blob.size))), 'the bytes sent were the upstream bytes');
    } else {
      // No length: the blob is served from disk once verified, so the client gets a status.
      t.is(r.status, 502, r.body.toString('utf8').slice(0, 200));
      t.is(JSON.parse(r.body.toString('utf8')).errors[0].code, 'DIGEST_INVALID');
    }
    await waitFor(() => s.logs.some((l) => l.includes('blob fill failed') || l.includes('digest mismatch')), WAIT_MS, 'fill failure logged');
    t.false(blobStored(s, blob), 'no blob row');
    await assertUnaffected(t, env);
    await assertStoreClean(t, s);

    const ok = await fetchStream(url);
    t.is(ok.status, 200);
    t.is(ok.error, null);
    t.true(ok.body.equals(blob.bytes));
    t.is(bad.blobGets(blob.digest), 2, 'refetched');
    await waitFor(() => blobStored(s, blob), WAIT_MS, 'good copy committed');
    await assertStoreClean(t, s);
  });
}

test('blob body dripping one byte a second: the fill gives up at the body timeout (bounded resumes), nothing stored; a later request retries', async (t) => {
  const env = await setup(t, { upstream: { timeouts: { body: '500ms' } } });
  const { bad, s } = env;
  const blob = bigBlob(64 * KiB, 'hostile-drip-blob');
  bad.addBlob('library/app', blob);
  bad.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 1, intervalMs: 1000 } });
  const url = `${s.url}/v2/library/app/blobs/${blob.digest}`;

  const r = await fetchStream(url);
  t.is(r.status, 200);
  t.truthy(r.error, 'the transfer is aborted');
  t.true(r.body.length < 100, `only the dripped bytes arrived (${r.body.length})`);
  t.true(r.body.equals(blob.bytes.subarray(0, r.body.length)), 'what arrived was right');
  await waitFor(() => s.logs.some((l) => l.includes('blob fill failed')), WAIT_MS, 'the fill gave up');
  const gets = bad.find({ method: 'GET', path: /\/blobs\// });
  t.true(gets.length >= 1 && gets.length <= 4, `bounded: ${gets.length} upstream GETs (first + resumes)`);
  await waitFor(() => gets.every((g) => g.aborted), WAIT_MS, 'every dripping response dropped by the mirror');
  t.false(blobStored(s, blob));
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  bad.faults.length = 0;
  const ok = await fetchStream(url);
  t.is(ok.status, 200);
  t.is(ok.error, null);
  t.true(ok.body.equals(blob.bytes));
  await waitFor(() => blobStored(s, blob), WAIT_MS, 'committed');
});

test('blob body trickling under 1 KiB/s with no gap long enough for the body timeout: the fill gives up after timeouts.body of waiting, not resumed, nothing stored', async (t) => {
  const env = await setup(t, { upstream: { timeouts: { body: '2s' } } });
  const { bad, s } = env;
  const blob = bigBlob(64 * KiB, 'hostile-trickle-blob');
  bad.addBlob('library/app', blob);
  // 100 bytes a second in 10-byte chunks: the idle timer (2 s) never fires, even on a loaded machine.
  bad.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 10, intervalMs: 100 } });
  const url = `${s.url}/v2/library/app/blobs/${blob.digest}`;

  const r = await fetchStream(url);
  t.is(r.status, 200);
  t.truthy(r.error, 'the transfer is aborted');
  t.true(r.body.length < 2048, `only the trickle arrived (${r.body.length} bytes, under the 2 KiB owed in 2 s)`);
  t.true(r.body.equals(blob.bytes.subarray(0, r.body.length)), 'what arrived was right');
  await waitFor(() => s.logs.some((l) => l.includes('too slowly')), WAIT_MS, 'the fill gave up on the rate');
  const gets = bad.find({ method: 'GET', path: /\/blobs\// });
  t.is(gets.length, 1, 'not resumed: a trickling upstream is not asked again by this fill');
  await waitFor(() => gets[0]!.aborted, WAIT_MS, 'the trickling response dropped by the mirror');
  t.false(blobStored(s, blob));
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  bad.faults.length = 0;
  const ok = await fetchStream(url);
  t.is(ok.error, null);
  t.true(ok.body.equals(blob.bytes));
  await waitFor(() => blobStored(s, blob), WAIT_MS, 'committed');
});

test('manifest body trickling under 1 KiB/s: given up after timeouts.body of waiting (503), nothing stored', async (t) => {
  const env = await setup(t, { upstream: { timeouts: { body: '2s' } } });
  const { bad, s } = env;
  const img = sampleImage('hostile-trickle-manifest');
  bad.addImage('library/app', img, 'v1');
  bad.faults.push({ method: 'GET', path: /\/manifests\//, times: 1, throttle: { chunkBytes: 10, intervalMs: 100 } });
  assertOciError(t, await get(s, '/v2/library/app/manifests/v1'), 503, 'UNAVAILABLE', /too slowly/);
  t.false(storedManifest(s, img.manifest.digest));
  const ok = await get(s, '/v2/library/app/manifests/v1');
  t.is(ok.status, 200);
  t.deepEqual(ok.body, img.manifest.bytes);
});

test('bulk push into a pull-through path: an upstream blob whose length differs from the manifest descriptor is not taken; the PUT fails cleanly, then succeeds', async (t) => {
  // One connection: a refused body that were not released would hold it, and the retry below would hang.
  const env = await setup(t, { upstream: { maxConnections: 1 }, server: { namespaces: [{ prefix: 'mirror', upstream: BAD, push: true }] } });
  const { bad, s } = env;
  // A layer larger than the socket buffers, so an unreleased body would hold the connection.
  const big = makeLayer([{ name: 'big.bin', content: randomBytes(4 * 1024 * KiB, 'hostile-descriptor-size') }], { gzip: false });
  const img = makeImage({ layers: [big] });
  bad.addImage('library/app', img, '1.0');
  const layer = img.layers[0]!;
  // HEADs (what push tools ask) are right; the GET the PUT triggers sends 10 bytes too many.
  bad.faults.push({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}$`), lengthDelta: 10 });
  for (const b of [...img.layers, img.config]) t.is((await head(s, `/v2/mirror/library/app/blobs/${b.digest}`)).status, 200, 'skipped by the push tool');

  const put = await http('PUT', `${s.url}/v2/mirror/library/app/manifests/1.0`, { headers: { 'content-type': img.manifest.mediaType }, body: img.manifest.bytes });
  assertOciError(t, put, 400, 'MANIFEST_BLOB_UNKNOWN');
  await waitFor(() => s.logs.some((l) => l.includes('differs from the manifest descriptor')), WAIT_MS, 'size mismatch logged');
  t.false(blobStored(s, layer), 'the wrong-length blob is not stored');
  const refused = bad.find({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}$`) });
  t.is(refused.length, 1, 'refused on the announced length: not retried');
  await waitFor(() => refused[0]!.finished || refused[0]!.aborted, WAIT_MS, 'the refused response released');
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  bad.faults.length = 0;
  const again = await http('PUT', `${s.url}/v2/mirror/library/app/manifests/1.0`, { headers: { 'content-type': img.manifest.mediaType }, body: img.manifest.bytes });
  t.is(again.status, 201, again.body.toString());
  const b = await get(s, `/v2/mirror/library/app/blobs/${layer.digest}`);
  t.true(b.body.equals(layer.bytes));
});

// ---- redirects ---------------------------------------------------------------------

test('a redirect loop (manifests and blobs): 502 with a clear message after a bounded number of hops; the upstream is not marked offline', async (t) => {
  // The default offline window: a loop must not close it for the upstream's other repositories.
  const env = await setup(t);
  const { bad, s } = env;
  const img = sampleImage('hostile-loop');
  const other = sampleImage('hostile-loop-other');
  bad.addImage('library/app', img, 'v1');
  bad.addImage('library/other', other, 'v1');
  bad.faults.push({ path: /^\/v2\/library\/app\//, redirectLoop: true });

  assertOciError(t, await get(s, '/v2/library/app/manifests/v1'), 502, 'UNAVAILABLE', /redirect loop/);
  const hops = bad.find({ path: /^\/v2\/library\/app\// }).length;
  t.true(hops >= 2 && hops <= 12, `bounded: ${hops} requests`);
  assertOciError(t, await get(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`), 502, 'UNAVAILABLE', /redirect loop/);
  const h = await head(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`);
  t.is(h.status, 502);
  t.false(s.logs.some((l) => l.includes('upstream marked offline')), 'not marked offline');

  // The same upstream's other repositories are unaffected.
  const ok = await get(s, '/v2/library/other/manifests/v1');
  t.is(ok.status, 200);
  t.deepEqual(ok.body, other.manifest.bytes);
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  bad.faults.length = 0;
  const fixed = await get(s, '/v2/library/app/manifests/v1');
  t.is(fixed.status, 200);
  t.deepEqual(fixed.body, img.manifest.bytes);
});

// ---- token service -----------------------------------------------------------------

/** Tokens issued an hour ago: the mirror needs a new one for every request (a realm fault always shows). */
const SHORT_LIVED = { expiresIn: 60, issuedAtOffsetSec: -3600 };

for (const variant of ['500', 'captive portal', 'connection refused'] as const) {
  test(`token service ${variant}: uncached -> 502/503 UNAVAILABLE (not 404), cached tag stale; served again when the realm recovers`, async (t) => {
    // offline 0s: a refused realm connection marks the upstream offline (fail fast); recovery is seen at once here.
    const env = await setup(t, { fake: { auth: 'bearer', token: SHORT_LIVED }, upstream: { timeouts: { offline: '0s' } } });
    const { bad, s } = env;
    const img = sampleImage(`hr-${seed(variant)}`);
    const cachedImg = sampleImage(`hrc-${seed(variant)}`);
    bad.addImage('library/app', img, 'new');
    bad.addImage('library/app', cachedImg, 'cached');
    t.is((await get(s, '/v2/library/app/manifests/cached')).status, 200);
    bad.resetCounters();
    if (variant === '500') bad.faults.push({ server: 'token', status: 500 });
    else if (variant === 'captive portal') bad.faults.push({ server: 'token', replaceWith: { contentType: 'text/html', body: PORTAL } });
    else await bad.stop(['token']);

    const uncached = await get(s, '/v2/library/app/manifests/new');
    if (variant === 'connection refused') assertOciError(t, uncached, 503, 'UNAVAILABLE');
    else assertOciError(t, uncached, 502, 'UNAVAILABLE', /token service/);
    const blob = await get(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`);
    t.true(blob.status === 502 || blob.status === 503, `blob: ${blob.status}`);
    t.is(errorCode(blob), 'UNAVAILABLE');
    const stale = await get(s, '/v2/library/app/manifests/cached');
    t.is(stale.status, 200);
    t.deepEqual(stale.body, cachedImg.manifest.bytes);
    t.regex(stale.header('warning') ?? '', /^299 /);
    t.is(bad.manifestRequests('GET').filter((r) => r.status === 200).length, 0, 'the registry served nothing without a token');
    for (const r of [uncached, blob, stale]) t.is(r.header('www-authenticate'), undefined);
    await assertUnaffected(t, env);
    await assertStoreClean(t, s);

    bad.faults.length = 0;
    await bad.start(['token']);
    const ok = await get(s, '/v2/library/app/manifests/new');
    t.is(ok.status, 200);
    t.deepEqual(ok.body, img.manifest.bytes);
  });
}

test('a token service handing out already-expired tokens: the registry rejects them (invalid_token) -> 502, cached tag stale, never 404', async (t) => {
  const env = await setup(t, { fake: { auth: 'bearer', token: { expiresIn: 300, enforceExpiry: true } } });
  const { bad, s } = env;
  const img = sampleImage('hostile-expired');
  const cachedImg = sampleImage('hostile-expired-cached');
  bad.addImage('library/app', img, 'new');
  bad.addImage('library/app', cachedImg, 'cached');
  t.is((await get(s, '/v2/library/app/manifests/cached')).status, 200);
  // From now on the realm's clock is an hour behind: every token it issues is already
  // expired, and so is the one the mirror holds.
  bad.token = { expiresIn: 60, issuedAtOffsetSec: -3600, enforceExpiry: true };
  bad.expireIssuedTokens();
  bad.resetCounters();

  assertOciError(t, await get(s, '/v2/library/app/manifests/new'), 502, 'UNAVAILABLE', /rejected the token/);
  t.is(bad.tokenRequests, 1, 'one new token fetched after the cached one was refused');
  const refused = bad.find().filter((r) => r.status === 401 && r.headers.authorization?.startsWith('Bearer '));
  t.is(refused.length, 2, 'the cached token, then the new one; then the mirror gave up');
  t.not(refused[0]!.headers.authorization, refused[1]!.headers.authorization, 'the second try carried the new token');

  const stale = await get(s, '/v2/library/app/manifests/cached');
  t.is(stale.status, 200);
  t.deepEqual(stale.body, cachedImg.manifest.bytes);
  t.regex(stale.header('warning') ?? '', /^299 /);
  const blob = await get(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`);
  assertOciError(t, blob, 502, 'UNAVAILABLE', /rejected the token/);
  t.false(s.logs.some((l) => l.includes('upstream marked offline')), 'not marked offline');
  await assertUnaffected(t, env);
  await assertStoreClean(t, s);

  // The realm is fixed: tokens work again.
  bad.token = { expiresIn: 300, enforceExpiry: true };
  const ok = await get(s, '/v2/library/app/manifests/new');
  t.is(ok.status, 200);
  t.deepEqual(ok.body, img.manifest.bytes);
  t.is(ok.header('warning'), undefined);
});

test('a cached token the registry expires early (before the expiry it announced): refreshed on the invalid_token answer, the client never notices', async (t) => {
  const env = await setup(t, { fake: { auth: 'bearer', token: { expiresIn: 300, enforceExpiry: true } } });
  const { bad, s } = env;
  const img = sampleImage('hostile-short-token');
  bad.addImage('library/app', img, 'v1');
  t.is((await get(s, '/v2/library/app/manifests/v1')).status, 200);
  t.is(bad.tokenRequests, 1);
  // The mirror still holds the token for 300 s; the registry now says it has expired.
  bad.expireIssuedTokens();
  const r = await get(s, `/v2/library/app/blobs/${img.layers[0]!.digest}`);
  t.is(r.status, 200);
  t.true(r.body.equals(img.layers[0]!.bytes));
  t.is(bad.tokenRequests, 2, 'refreshed once');
  const refused = bad.find().filter((x) => x.status === 401 && x.headers.authorization?.startsWith('Bearer '));
  t.is(refused.length, 1, 'the expired token was refused once, then the new one served');
});
