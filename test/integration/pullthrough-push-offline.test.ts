/**
 * Pushes never depend on the upstream (issue 9 item 1): under a namespace with `push: true`
 * (the bulk-load target of an air-gapped site) a blob or manifest lookup the upstream
 * cannot answer (down, hung, 5xx, 401, offline window) is a plain 404, fast, so push tools
 * upload instead of aborting. Pull behaviour elsewhere is unchanged (503).
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http, pushBlob } from '../helpers/http.js';
import type { Blob, Image } from '../fixtures/images.js';
import type { FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import { putManifest, sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry } from './_pullthrough.js';

const UP = 'hub.test';

async function setup(t: ExecutionContext, fakeOpts: FakeUpstreamOptions = {}): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, fakeOpts);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, tags: { revalidateTimeout: '1s' }, timeouts: { offline: '5m' } }) },
    defaultUpstream: UP,
    namespaces: [
      { prefix: 'test-namespace', upstream: 'ns', push: true },
      { prefix: 'readonly', upstream: UP, push: false },
    ],
  });
  return { fake, s };
}

const blobsOf = (img: Image): Blob[] => [img.config, ...img.layers];

/** A push tool: HEAD the manifest and each blob, upload what answers 404, PUT the manifest. */
async function pushLikeATool(t: ExecutionContext, s: TestServer, repo: string, img: Image, tag: string): Promise<void> {
  const q = `?ns=${UP}`;
  const mh = await http('HEAD', `${s.url}/v2/${repo}/manifests/${tag}${q}`, { headers: { accept: ACCEPT_ALL } });
  t.is(mh.status, 404, `manifest HEAD: ${mh.status}`);
  for (const b of blobsOf(img)) {
    const h = await http('HEAD', `${s.url}/v2/${repo}/blobs/${b.digest}${q}`);
    t.is(h.status, 404, `blob HEAD ${b.digest.slice(7, 19)}`);
    const g = await http('GET', `${s.url}/v2/${repo}/blobs/${b.digest}${q}`);
    t.is(g.status, 404);
    t.is(errorCode(g), 'BLOB_UNKNOWN');
    t.is(await pushBlob(s.url, repo, b.bytes), b.digest);
  }
  const put = await putManifest(s.url, repo, tag, img.manifest);
  t.is(put.status, 201, put.body.toString());
}

const FAULTS: Array<{ name: string; fake?: FakeUpstreamOptions; arrange: (f: FakeUpstream) => Promise<void> | void }> = [
  { name: 'stopped (connection refused)', arrange: (f) => f.stop() },
  { name: 'hung (accepts, never answers)', arrange: (f) => void f.faults.push({ path: /^\/v2\//, headerDelayMs: 120_000 }) },
  // Its ping answers, so probes succeed, but every repository request hangs: one trial
  // request per probe cycle waits (bounded), the rest fail fast.
  { name: 'hung except for its ping', arrange: (f) => void f.faults.push({ path: /^\/v2\/.+/, headerDelayMs: 120_000 }) },
  { name: 'answering 503', arrange: (f) => void f.faults.push({ status: 503 }) },
  { name: 'answering 401 (no credentials configured)', fake: { auth: 'basic' }, arrange: () => undefined },
  { name: 'answering 403', arrange: (f) => void f.faults.push({ status: 403 }) },
];

for (const fault of FAULTS) {
  test(`push into a push: true namespace with the upstream ${fault.name}: 404s, push completes fast, then served`, async (t) => {
    const { fake, s } = await setup(t, fault.fake);
    // The repository exists upstream (faults apply to known repositories only).
    fake.addImage('library/app', sampleImage('upstream-other'), 'other');
    await fault.arrange(fake);
    const img = sampleImage(`offline-push-${fault.name}`);
    const repo = 'test-namespace/library/app';
    const started = Date.now();
    await pushLikeATool(t, s, repo, img, '1.0');
    const tookMs = Date.now() - started;
    t.log(`push with the upstream ${fault.name}: ${tookMs} ms`);
    // A hung upstream costs one bounded lookup (tags.revalidateTimeout = 1 s), not one per blob.
    t.true(tookMs < 60_000, `push took ${tookMs} ms`);
    // Pulled back at the runtime's path with the upstream still failing.
    const m = await http('GET', `${s.url}/v2/${repo}/manifests/1.0?ns=${UP}`, { headers: { accept: ACCEPT_ALL } });
    t.is(m.status, 200);
    t.deepEqual(m.body, img.manifest.bytes);
    for (const b of blobsOf(img)) t.deepEqual((await http('GET', `${s.url}/v2/${repo}/blobs/${b.digest}?ns=${UP}`)).body, b.bytes);
  });
}

test('a manifest PUT naming a blob neither pushed nor reachable upstream: 400 MANIFEST_BLOB_UNKNOWN naming it', async (t) => {
  const { fake, s } = await setup(t);
  await fake.stop();
  const img = sampleImage('offline-missing');
  const repo = 'test-namespace/library/app';
  for (const b of [img.config, img.layers[0]!]) await pushBlob(s.url, repo, b.bytes);
  const put = await putManifest(s.url, repo, '1.0', img.manifest);
  t.is(put.status, 400);
  t.is(errorCode(put), 'MANIFEST_BLOB_UNKNOWN');
  t.true(put.body.toString().includes(img.layers[1]!.digest), 'the missing digest is named');
});

test('pull behaviour is unchanged outside push targets: an uncached blob is 503 with the upstream down', async (t) => {
  const { fake, s } = await setup(t);
  await fake.stop();
  const img = sampleImage('offline-readonly');
  const h = await http('GET', `${s.url}/v2/readonly/library/app/blobs/${img.config.digest}`);
  t.is(h.status, 503);
  t.is(errorCode(h), 'UNAVAILABLE');
});
