/**
 * Pushing into a path that also pulls through (bulk-mirroring tools such as skopeo, crane
 * or bmctl): the tool HEADs each blob, skips those answering 200 (answered from the
 * upstream), and PUTs the manifest. regmirror must then fetch the skipped blobs from the
 * upstream (PullThrough.completeFromUpstream) so the PUT succeeds and the image is fully
 * local: served afterwards with the upstream down.
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http, pushBlob } from '../helpers/http.js';
import { type Blob, type Image, makeImage, makeIndex, makeLayer } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { OCI_INDEX, putManifest, sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry } from './_pullthrough.js';

const UP = 'hub.test';

async function setup(t: ExecutionContext): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) },
    defaultUpstream: UP,
    namespaces: [
      { prefix: 'mirror', upstream: UP, push: true },
      { prefix: 'readonly', upstream: UP, push: false },
    ],
  });
  return { fake, s };
}

/** What a push tool does per blob: HEAD, and upload only when the registry says 404. */
async function pushLikeATool(s: TestServer, repo: string, blobs: readonly Blob[]): Promise<{ skipped: string[]; uploaded: string[] }> {
  const skipped: string[] = [];
  const uploaded: string[] = [];
  for (const b of blobs) {
    const h = await http('HEAD', `${s.url}/v2/${repo}/blobs/${b.digest}`);
    if (h.status === 200) {
      if (h.header('content-length') !== String(b.size)) throw new Error(`HEAD ${b.digest}: wrong size ${h.header('content-length')}`);
      skipped.push(b.digest);
      continue;
    }
    if (h.status !== 404) throw new Error(`HEAD ${b.digest}: ${h.status}`);
    await pushBlob(s.url, repo, b.bytes);
    uploaded.push(b.digest);
  }
  return { skipped, uploaded };
}

function blobsOf(img: Image): Blob[] {
  return [...img.layers, img.config];
}

test('push of an image the upstream already holds: blobs skipped by HEAD, manifest PUT 201, served with the upstream down', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('push-existing');
  fake.addImage('library/app', img, '1.0');

  const { skipped, uploaded } = await pushLikeATool(s, 'mirror/library/app', blobsOf(img));
  t.deepEqual(skipped, blobsOf(img).map((b) => b.digest), 'every blob answered 200 from the upstream');
  t.deepEqual(uploaded, []);
  t.is(fake.count({ method: 'HEAD', path: /\/blobs\// }), 3);
  t.is(fake.count({ method: 'GET' }), 0, 'the HEADs downloaded nothing');
  t.is(fake.bytesSent, 0);

  const put = await putManifest(s.url, 'mirror/library/app', '1.0', img.manifest);
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), img.manifest.digest);
  for (const b of blobsOf(img)) t.is(fake.count({ method: 'GET', path: `/v2/library/app/blobs/${b.digest}` }), 1, 'fetched from the upstream for the PUT');
  t.is(fake.manifestRequests('GET').length, 0, 'the manifest itself came from the client');
  t.is(fake.blobBytes(), blobsOf(img).reduce((n, b) => n + b.size, 0));

  await fake.stop();
  fake.resetCounters();
  for (const ref of ['1.0', img.manifest.digest]) {
    const m = await http('GET', `${s.url}/v2/mirror/library/app/manifests/${ref}`, { headers: { accept: ACCEPT_ALL } });
    t.is(m.status, 200, ref);
    t.deepEqual(m.body, img.manifest.bytes);
    t.is(m.header('warning'), undefined, 'pushed, not stale');
  }
  for (const b of blobsOf(img)) {
    const r = await http('GET', `${s.url}/v2/mirror/library/app/blobs/${b.digest}`);
    t.is(r.status, 200);
    t.true(r.body.equals(b.bytes));
  }
  const tags = await http('GET', `${s.url}/v2/mirror/library/app/tags/list`);
  t.deepEqual(tags.json<{ tags: string[] }>().tags, ['1.0']);
  t.is(fake.totalRequests, 0);
});

test('mixed push: new layers uploaded, shared base layer completed from the upstream', async (t) => {
  const { fake, s } = await setup(t);
  const base = sampleImage('push-base');
  fake.addImage('library/app', base, 'base');
  const ownLayer = makeLayer([{ name: 'app/own.txt', content: 'built on top\n' }]);
  const derived = makeImage({ layers: [{ ...base.layers[0]!, diffId: 'sha256:' + '0'.repeat(64) }, ownLayer] });

  const { skipped, uploaded } = await pushLikeATool(s, 'mirror/library/app', blobsOf(derived));
  t.deepEqual(skipped, [base.layers[0]!.digest]);
  t.deepEqual(uploaded.sort(), [ownLayer.digest, derived.config.digest].sort());
  const put = await putManifest(s.url, 'mirror/library/app', '2.0', derived.manifest);
  t.is(put.status, 201, put.body.toString());
  t.is(fake.count({ method: 'GET', path: /\/blobs\// }), 1, 'only the skipped base layer was fetched');
  t.is(fake.blobBytes(), base.layers[0]!.size);

  await fake.stop();
  for (const b of blobsOf(derived)) {
    const r = await http('GET', `${s.url}/v2/mirror/library/app/blobs/${b.digest}`);
    t.true(r.body.equals(b.bytes));
  }
});

test('a blob neither pushed nor upstream still fails the PUT with MANIFEST_BLOB_UNKNOWN', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('push-missing');
  fake.addImage('library/app', img, '1.0');
  fake.repos.get('library/app')!.blobs.delete(img.layers[1]!.digest); // the upstream lost one layer
  await pushLikeATool(s, 'mirror/library/app', [img.layers[0]!, img.config]);
  const put = await putManifest(s.url, 'mirror/library/app', '1.0', img.manifest);
  t.is(put.status, 400);
  t.is(errorCode(put), 'MANIFEST_BLOB_UNKNOWN');
  t.is(fake.count({ method: 'GET', path: `/v2/library/app/blobs/${img.layers[1]!.digest}` }), 1, 'asked the upstream once');
  t.is(fake.blobBytes(img.layers[1]!.digest), 0);
});

test('index push (crane-style: children only HEADed): the PUT completes children and their blobs; served with the upstream down', async (t) => {
  const { fake, s } = await setup(t);
  const amd = sampleImage('push-idx-amd64', { arch: 'amd64' });
  const arm = sampleImage('push-idx-arm64', { arch: 'arm64' });
  const idx = makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  fake.addIndex('library/multi', idx, 'latest');
  for (const { image } of idx.images) {
    await pushLikeATool(s, 'mirror/library/multi', blobsOf(image));
    const h = await http('HEAD', `${s.url}/v2/mirror/library/multi/manifests/${image.manifest.digest}`, { headers: { accept: ACCEPT_ALL } });
    t.is(h.status, 200, 'child manifest known (through the upstream)');
  }
  const put = await putManifest(s.url, 'mirror/library/multi', 'latest', idx.index);
  t.is(put.status, 201, put.body.toString());
  t.is(fake.manifestRequests('GET').length, 2, 'each child manifest fetched once');
  // Regression: the children were cached copies (the tool never PUT them), so their blobs
  // must be fetched at the index PUT, or the "pushed" image breaks when the upstream goes.
  const allBlobs = idx.images.flatMap(({ image }) => blobsOf(image));
  for (const b of allBlobs) t.is(fake.blobGets(b.digest), 1, `child blob ${b.digest} fetched once`);
  t.is(fake.blobBytes(), allBlobs.reduce((n, b) => n + b.size, 0));
  await fake.stop();
  const r = await http('GET', `${s.url}/v2/mirror/library/multi/manifests/latest`, { headers: { accept: OCI_INDEX } });
  t.deepEqual(r.body, idx.index.bytes);
  for (const { image } of idx.images) {
    for (const b of blobsOf(image)) t.is((await http('GET', `${s.url}/v2/mirror/library/multi/blobs/${b.digest}`)).status, 200);
  }
});

test('pushing into a namespace without push: true is denied before anything is dialled', async (t) => {
  const { fake, s } = await setup(t);
  const img = sampleImage('push-denied');
  fake.addImage('library/app', img, '1.0');
  const r = await putManifest(s.url, 'readonly/library/app', '1.0', img.manifest);
  t.is(r.status, 403);
  t.is(errorCode(r), 'DENIED');
  t.is(fake.totalRequests, 0);
});
