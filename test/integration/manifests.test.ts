/**
 * Manifests over a real socket: /v2/<name>/manifests/<reference> GET | HEAD | PUT
 * (protocol.md 1.4; conformance v1.1.1 01/02 and main "data sets"). Deletes are in
 * management.test.ts, malformed bodies in errors.test.ts.
 */
import test from 'ava';
import { errorCode, http, pushBlob, sha256 } from '../helpers/http.js';
import { EMPTY_BLOB, MediaTypes, descriptor, jsonBlob, makeBlob, makeIndex, randomBytes } from '../fixtures/images.js';
import { ALL_MANIFEST_TYPES, assertError, connectionsDrain, DOCKER_LIST, DOCKER_MANIFEST, noServerErrors, OCI_INDEX, OCI_MANIFEST, pushBlobs, pushImage, pushIndex, putManifest, rawGet, sampleImage, serve, sha512, streamRequest } from './_support.js';

test.afterEach(noServerErrors);

const BOTH_OCI = `${OCI_INDEX}, ${OCI_MANIFEST}`;


test('PUT by tag: 201 with digest and a fetchable Location; GET/HEAD by tag and digest are exact', async (t) => {
  const s = await serve(t);
  const img = sampleImage('put-get');
  const put = await pushImage(s.url, 'team/app', img, 'v1');
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), img.manifest.digest);
  t.is(put.header('location'), `/v2/team/app/manifests/${img.manifest.digest}`);
  t.is(put.body.length, 0);
  t.is(put.header('oci-subject'), undefined, 'no subject, no OCI-Subject');

  // The Location is fetched and compared byte for byte (new conformance).
  const loc = await http('GET', `${s.url}${put.header('location')}`, { headers: { accept: BOTH_OCI } });
  t.is(loc.status, 200);
  t.deepEqual(loc.body, img.manifest.bytes);

  for (const ref of ['v1', img.manifest.digest]) {
    const get = await http('GET', `${s.url}/v2/team/app/manifests/${ref}`, { headers: { accept: BOTH_OCI } });
    t.is(get.status, 200, ref);
    t.deepEqual(get.body, img.manifest.bytes, 'exact stored bytes');
    t.is(get.header('content-type'), OCI_MANIFEST, 'media type without parameters');
    t.is(get.header('content-length'), String(img.manifest.size));
    t.is(get.header('docker-content-digest'), img.manifest.digest);
    t.is(sha256(get.body), img.manifest.digest);
    t.is(get.header('docker-distribution-api-version'), 'registry/2.0');
    t.is(get.header('content-encoding'), undefined, 'never compressed');

    const head = await http('HEAD', `${s.url}/v2/team/app/manifests/${ref}`, { headers: { accept: ALL_MANIFEST_TYPES } });
    t.is(head.status, 200, ref);
    t.is(head.body.length, 0, 'HEAD has an empty body');
    t.is(head.header('content-type'), OCI_MANIFEST);
    t.is(head.header('content-length'), String(img.manifest.size), 'HEAD Content-Length equals the GET body length');
    t.is(head.header('docker-content-digest'), img.manifest.digest);
  }
});

test('ETag / If-None-Match revalidation answers 304 without a body', async (t) => {
  const s = await serve(t);
  const img = sampleImage('etag');
  t.is((await pushImage(s.url, 'etag/repo', img, 'latest')).status, 201);
  const get = await http('GET', `${s.url}/v2/etag/repo/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
  const etag = get.header('etag');
  t.is(etag, `"${img.manifest.digest}"`);
  const again = await http('GET', `${s.url}/v2/etag/repo/manifests/latest`, { headers: { accept: OCI_MANIFEST, 'if-none-match': etag! } });
  t.is(again.status, 304);
  t.is(again.body.length, 0);
  t.is(again.header('etag'), etag);
  t.is(again.header('docker-content-digest'), img.manifest.digest);
  for (const inm of [`"sha256:other", ${etag}`, `W/${etag}`, '*']) {
    const r = await http('HEAD', `${s.url}/v2/etag/repo/manifests/latest`, { headers: { accept: OCI_MANIFEST, 'if-none-match': inm } });
    t.is(r.status, 304, inm);
  }
  const other = await http('GET', `${s.url}/v2/etag/repo/manifests/latest`, { headers: { accept: OCI_MANIFEST, 'if-none-match': '"sha256:other"' } });
  t.is(other.status, 200);
  t.deepEqual(other.body, img.manifest.bytes);
});

test('Docker schema2 manifest and manifest list keep their exact media types', async (t) => {
  const s = await serve(t);
  const amd = sampleImage('docker-amd64', { flavor: 'docker', arch: 'amd64' });
  const arm = sampleImage('docker-arm64', { flavor: 'docker', arch: 'arm64' });
  const list = makeIndex(
    [
      { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
      { image: arm, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
    ],
    'docker',
  );
  const put = await pushIndex(s.url, 'library/busybox', list, 'stable');
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), list.index.digest);

  // containerd's resolve Accept list, HEAD then GET (protocol.md 1.4).
  const head = await http('HEAD', `${s.url}/v2/library/busybox/manifests/stable`, { headers: { accept: ALL_MANIFEST_TYPES } });
  t.is(head.status, 200);
  t.is(head.header('content-type'), DOCKER_LIST);
  t.is(head.header('content-length'), String(list.index.size));
  t.is(head.header('docker-content-digest'), list.index.digest);
  t.is(head.body.length, 0);

  const child = await http('GET', `${s.url}/v2/library/busybox/manifests/${amd.manifest.digest}`, {
    headers: { accept: `${DOCKER_MANIFEST}, */*` },
  });
  t.is(child.status, 200);
  t.is(child.header('content-type'), DOCKER_MANIFEST);
  t.deepEqual(child.body, amd.manifest.bytes);

  // Docker types predate negotiation: served by tag even to a client that lists only OCI types.
  const ociOnly = await http('GET', `${s.url}/v2/library/busybox/manifests/stable`, { headers: { accept: BOTH_OCI } });
  t.is(ociOnly.status, 200);
  t.deepEqual(ociOnly.body, list.index.bytes);
});

test('Accept split over two header lines behaves like one comma-joined line', async (t) => {
  const s = await serve(t);
  const img = sampleImage('accept-lines');
  const idx = makeIndex([{ image: img, platform: { architecture: 'amd64', os: 'linux' } }]);
  t.is((await pushIndex(s.url, 'multi/accept', idx, 'idx')).status, 201);
  t.is((await putManifest(s.url, 'multi/accept', 'img', img.manifest)).status, 201);

  for (const [tag, mt, blob] of [
    ['idx', OCI_INDEX, idx.index],
    ['img', OCI_MANIFEST, img.manifest],
  ] as const) {
    // Exactly what the new conformance sends: two separate Accept lines, in a raw request.
    const raw = await rawGet(s.hostPort, 'GET', `/v2/multi/accept/manifests/${tag}`, [`Accept: ${OCI_INDEX}`, `Accept: ${OCI_MANIFEST}`]);
    t.is(raw.status, 200, tag);
    t.is(raw.header('content-type'), mt);
    t.is(raw.header('content-length'), String(blob.size));
    t.is(raw.header('docker-content-digest'), blob.digest);
    t.deepEqual(raw.body, blob.bytes);

    const joined = await http('GET', `${s.url}/v2/multi/accept/manifests/${tag}`, { headers: { accept: `${OCI_INDEX},${OCI_MANIFEST}` } });
    t.is(joined.status, 200);
    t.deepEqual(joined.body, raw.body);

    const headRaw = await rawGet(s.hostPort, 'HEAD', `/v2/multi/accept/manifests/${tag}`, [`Accept: ${OCI_MANIFEST}`, `Accept: ${OCI_INDEX}`]);
    t.is(headRaw.status, 200);
    t.is(headRaw.body.length, 0);
    t.is(headRaw.header('content-length'), String(blob.size));
  }
  // undici sends an array as repeated lines too.
  const arr = await http('GET', `${s.url}/v2/multi/accept/manifests/img`, { headers: { accept: [DOCKER_MANIFEST, OCI_MANIFEST] } });
  t.is(arr.status, 200);
});

test('by tag an OCI manifest the client does not accept is 404 MANIFEST_UNKNOWN; by digest it is always served', async (t) => {
  const s = await serve(t);
  const img = sampleImage('negotiation');
  t.is((await pushImage(s.url, 'neg/repo', img, 'v1')).status, 201);
  const url = `${s.url}/v2/neg/repo/manifests`;

  const dockerOnly = await http('GET', `${url}/v1`, { headers: { accept: `${DOCKER_MANIFEST}, ${DOCKER_LIST}` } });
  assertError(t, dockerOnly, 404, 'MANIFEST_UNKNOWN');
  const headDockerOnly = await http('HEAD', `${url}/v1`, { headers: { accept: DOCKER_MANIFEST } });
  assertError(t, headDockerOnly, 404, 'MANIFEST_UNKNOWN', true);
  // q=0 means "not acceptable" (RFC 9110 12.4.2).
  const q0 = await http('GET', `${url}/v1`, { headers: { accept: `${OCI_MANIFEST};q=0, ${DOCKER_MANIFEST}` } });
  t.is(q0.status, 404);
  // Parameters and case do not matter.
  const withQ = await http('GET', `${url}/v1`, { headers: { accept: `${DOCKER_MANIFEST};q=0.9, ${OCI_MANIFEST.toUpperCase()};q=0.5` } });
  t.is(withQ.status, 200);
  t.is(withQ.header('content-type'), OCI_MANIFEST);
  t.is((await http('GET', `${url}/v1`, { headers: { accept: '*/*' } })).status, 200);
  t.is((await http('GET', `${url}/v1`)).status, 200, 'no Accept at all (curl) gets what is stored');

  const byDigest = await http('GET', `${url}/${img.manifest.digest}`, { headers: { accept: DOCKER_MANIFEST } });
  t.is(byDigest.status, 200);
  t.deepEqual(byDigest.body, img.manifest.bytes);
  t.is(byDigest.header('content-type'), OCI_MANIFEST);
});

test('missing manifests and repositories: 404 with the right code; HEAD has no body', async (t) => {
  const s = await serve(t);
  const img = sampleImage('missing');
  t.is((await pushImage(s.url, 'present/repo', img, 'v1')).status, 201);
  const absent = sha256('no such manifest');

  assertError(t, await http('GET', `${s.url}/v2/present/repo/manifests/nope`, { headers: { accept: BOTH_OCI } }), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('GET', `${s.url}/v2/present/repo/manifests/${absent}`), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('HEAD', `${s.url}/v2/present/repo/manifests/nope`), 404, 'MANIFEST_UNKNOWN', true);
  assertError(t, await http('HEAD', `${s.url}/v2/present/repo/manifests/${absent}`), 404, 'MANIFEST_UNKNOWN', true);

  const unknownRepo = await http('GET', `${s.url}/v2/absent/repo/manifests/v1`);
  t.is(unknownRepo.status, 404);
  t.true(['NAME_UNKNOWN', 'MANIFEST_UNKNOWN'].includes(errorCode(unknownRepo) ?? ''), errorCode(unknownRepo));
  // The manifest exists, but in another repository: not visible here.
  assertError(t, await http('GET', `${s.url}/v2/other/repo/manifests/${img.manifest.digest}`), 404, 'NAME_UNKNOWN');
  await pushBlob(s.url, 'other/repo', 'make the repo exist');
  assertError(t, await http('GET', `${s.url}/v2/other/repo/manifests/${img.manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
});

test('conformance v1.1.1 probes the reference ".INVALID_MANIFEST_NAME" and requires 404 on GET and HEAD', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'conf/repo', sampleImage('conf'), 'v1')).status, 201);
  for (const method of ['GET', 'HEAD'] as const) {
    const res = await http(method, `${s.url}/v2/conf/repo/manifests/.INVALID_MANIFEST_NAME`, { headers: { accept: OCI_MANIFEST } });
    t.is(res.status, 404, `${method}: ${res.body.toString()}`);
    if (method === 'GET') t.is(errorCode(res), 'MANIFEST_UNKNOWN');
  }
  // A tag that can never exist is still 404 on reads; a PUT to it is a client error.
  const long = 'a'.repeat(129);
  t.is((await http('GET', `${s.url}/v2/conf/repo/manifests/${long}`)).status, 404);
  const put = await putManifest(s.url, 'conf/repo', '.INVALID_MANIFEST_NAME', sampleImage('conf').manifest);
  t.is(put.status, 400);
  t.true(['TAG_INVALID', 'MANIFEST_INVALID', 'NAME_INVALID'].includes(errorCode(put) ?? ''), errorCode(put));
});

test('a manifest referencing a missing blob is 400 MANIFEST_BLOB_UNKNOWN and is not stored', async (t) => {
  const s = await serve(t);
  const img = sampleImage('blob-unknown');
  // Push the config and only the first layer.
  await pushBlobs(s.url, 'mbu/repo', [img.config, img.layers[0]!]);
  const put = await putManifest(s.url, 'mbu/repo', 'v1', img.manifest);
  assertError(t, put, 400, 'MANIFEST_BLOB_UNKNOWN');
  t.true(put.body.toString().includes(img.layers[1]!.digest), 'detail names the missing digest');
  t.is((await http('GET', `${s.url}/v2/mbu/repo/manifests/v1`)).status, 404);
  t.is((await http('GET', `${s.url}/v2/mbu/repo/manifests/${img.manifest.digest}`)).status, 404);

  // A missing config is caught as well.
  const img2 = sampleImage('blob-unknown-config');
  await pushBlobs(s.url, 'mbu/repo', img2.layers);
  assertError(t, await putManifest(s.url, 'mbu/repo', 'v2', img2.manifest), 400, 'MANIFEST_BLOB_UNKNOWN');

  // Blobs pushed to another repository do not count: blobs are per repository.
  const img3 = sampleImage('blob-elsewhere');
  await pushBlobs(s.url, 'elsewhere/repo', [...img3.layers, img3.config]);
  assertError(t, await putManifest(s.url, 'mbu/repo', 'v3', img3.manifest), 400, 'MANIFEST_BLOB_UNKNOWN');
  t.is((await pushImage(s.url, 'mbu/repo', img3, 'v3')).status, 201, 'after pushing the blobs here it is accepted');
});

test('non-distributable layers with urls are accepted without their blobs', async (t) => {
  const s = await serve(t);
  const config = jsonBlob({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }, MediaTypes.ociConfig);
  const normal = makeBlob(randomBytes(700, 'nd-normal'), MediaTypes.ociLayer);
  await pushBlobs(s.url, 'nd/repo', [config, normal]);
  const foreign = (seed: string) => sha256(`foreign ${seed}`);
  const manifest = jsonBlob(
    {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(config),
      layers: [
        { mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', digest: foreign('a'), size: 123456, urls: [`https://store.example.com/blobs/sha256/${foreign('a').slice(7)}`] },
        { mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar', digest: foreign('b'), size: 12345, urls: [`https://store.example.com/blobs/sha256/${foreign('b').slice(7)}`] },
        descriptor(normal),
      ],
    },
    OCI_MANIFEST,
  );
  const put = await putManifest(s.url, 'nd/repo', 'non-distributable-image', manifest);
  t.is(put.status, 201, put.body.toString());
  const get = await http('GET', `${s.url}/v2/nd/repo/manifests/non-distributable-image`, { headers: { accept: OCI_MANIFEST } });
  t.deepEqual(get.body, manifest.bytes);
  // The foreign blobs are not served by the registry.
  t.is((await http('HEAD', `${s.url}/v2/nd/repo/blobs/${foreign('a')}`)).status, 404);

  // Docker's foreign layer type, as used by Windows base images.
  const dockerConfig = jsonBlob({ architecture: 'amd64', os: 'windows' }, MediaTypes.dockerConfig);
  await pushBlobs(s.url, 'nd/repo', [dockerConfig]);
  const win = jsonBlob(
    {
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: descriptor(dockerConfig),
      layers: [{ mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', digest: foreign('win'), size: 999, urls: ['https://mcr.example/win'] }],
    },
    DOCKER_MANIFEST,
  );
  t.is((await putManifest(s.url, 'nd/repo', 'windows', win)).status, 201);
  // An ordinary layer without urls is still required.
  const bad = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: descriptor(config), layers: [{ mediaType: MediaTypes.ociLayer, digest: foreign('c'), size: 5 }] }, OCI_MANIFEST);
  assertError(t, await putManifest(s.url, 'nd/repo', 'bad', bad), 400, 'MANIFEST_BLOB_UNKNOWN');
});

test('indexes: children must exist; nested and empty indexes are accepted', async (t) => {
  const s = await serve(t);
  const a = sampleImage('idx-amd64');
  const b = sampleImage('idx-arm64', { arch: 'arm64' });
  const idx = makeIndex([
    { image: a, platform: { architecture: 'amd64', os: 'linux' } },
    { image: b, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  // Only child a pushed: the index is refused.
  t.is((await pushImage(s.url, 'idx/repo', a)).status, 201);
  const early = await putManifest(s.url, 'idx/repo', 'multi', idx.index);
  assertError(t, early, 400, 'MANIFEST_BLOB_UNKNOWN');
  t.true(early.body.toString().includes(b.manifest.digest));
  t.is((await http('GET', `${s.url}/v2/idx/repo/manifests/multi`, { headers: { accept: OCI_INDEX } })).status, 404);

  // A child that exists only in another repository does not count either.
  t.is((await pushImage(s.url, 'idx/other', b)).status, 201);
  assertError(t, await putManifest(s.url, 'idx/repo', 'multi', idx.index), 400, 'MANIFEST_BLOB_UNKNOWN');

  t.is((await pushImage(s.url, 'idx/repo', b)).status, 201);
  const put = await putManifest(s.url, 'idx/repo', 'multi', idx.index);
  t.is(put.status, 201, put.body.toString());
  const get = await http('GET', `${s.url}/v2/idx/repo/manifests/multi`, { headers: { accept: BOTH_OCI } });
  t.is(get.header('content-type'), OCI_INDEX);
  t.deepEqual(get.body, idx.index.bytes);

  // nested-index: an index of indexes.
  const nested = jsonBlob({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [descriptor(idx.index)] }, OCI_INDEX);
  t.is((await putManifest(s.url, 'idx/repo', 'index-of-index', nested)).status, 201);
  const ng = await http('GET', `${s.url}/v2/idx/repo/manifests/index-of-index`, { headers: { accept: BOTH_OCI } });
  t.deepEqual(ng.body, nested.bytes);

  // empty-index.
  const empty = jsonBlob({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }, OCI_INDEX);
  const ep = await putManifest(s.url, 'idx/empty', 'index', empty);
  t.is(ep.status, 201);
  t.is((await http('HEAD', `${s.url}/v2/idx/empty/manifests/index`, { headers: { accept: BOTH_OCI } })).header('content-length'), String(empty.size));
});

test('manifests with no layers, data fields, custom fields and odd formatting are stored byte for byte', async (t) => {
  const s = await serve(t);
  const config = jsonBlob({ architecture: 'amd64', os: 'linux', custom: { x: 1 } }, MediaTypes.ociConfig);
  await pushBlobs(s.url, 'verbatim/repo', [config, EMPTY_BLOB]);
  const layer = makeBlob(randomBytes(64, 'data-field'), MediaTypes.ociLayer);
  await pushBlobs(s.url, 'verbatim/repo', [layer]);

  const noLayers = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: descriptor(config), layers: [] }, OCI_MANIFEST);
  t.is((await putManifest(s.url, 'verbatim/repo', 'emptylayer', noLayers)).status, 201);

  // Pretty-printed with tabs, keys in an unusual order, `data` (base64) in descriptors and an
  // unknown top-level field: the digest covers exactly these bytes.
  const text = `{\n\t"layers": [\n\t\t{"size": ${layer.size}, "digest": "${layer.digest}", "mediaType": "${MediaTypes.ociLayer}", "data": "${layer.bytes.toString('base64')}", "x-custom": [1, 2]}\n\t],\n\t"config": {"mediaType": "${config.mediaType}", "digest": "${config.digest}", "size": ${config.size}, "data": "${config.bytes.toString('base64')}", "madeUp": true},\n\t"schemaVersion": 2,\n\t"mediaType": "${OCI_MANIFEST}",\n\t"annotations": {"org.example.ünïcode": "välue ✓"},\n\t"vnd.example.extra": {"nested": [null, false]}\n}\n`;
  const odd = makeBlob(text, OCI_MANIFEST);
  const put = await putManifest(s.url, 'verbatim/repo', odd.digest, odd);
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), odd.digest);
  const get = await http('GET', `${s.url}/v2/verbatim/repo/manifests/${odd.digest}`);
  t.deepEqual(get.body, odd.bytes);
  t.is(get.header('content-length'), String(Buffer.byteLength(text)));
  t.true(!get.body.includes(Buffer.from('"data": "" ')), 'nothing was added');

  // An OCI manifest without the optional mediaType field, typed by the Content-Type header.
  const untyped = jsonBlob({ schemaVersion: 2, config: descriptor(config), layers: [descriptor(layer)] }, OCI_MANIFEST);
  t.is((await putManifest(s.url, 'verbatim/repo', 'untyped', untyped)).status, 201);
  const ug = await http('GET', `${s.url}/v2/verbatim/repo/manifests/untyped`, { headers: { accept: OCI_MANIFEST } });
  t.is(ug.header('content-type'), OCI_MANIFEST);
  t.deepEqual(ug.body, untyped.bytes);
});

test('Content-Type parameters are ignored on PUT; a Content-Type that contradicts mediaType is MANIFEST_INVALID', async (t) => {
  const s = await serve(t);
  const img = sampleImage('content-type');
  await pushBlobs(s.url, 'ct/repo', [...img.layers, img.config]);
  const withCharset = await http('PUT', `${s.url}/v2/ct/repo/manifests/v1`, {
    headers: { 'content-type': `${OCI_MANIFEST}; charset=utf-8` },
    body: img.manifest.bytes,
  });
  t.is(withCharset.status, 201, withCharset.body.toString());
  const get = await http('GET', `${s.url}/v2/ct/repo/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
  t.is(get.header('content-type'), OCI_MANIFEST, 'served without the parameter');

  const mismatch = await http('PUT', `${s.url}/v2/ct/repo/manifests/v2`, { headers: { 'content-type': DOCKER_MANIFEST }, body: img.manifest.bytes });
  assertError(t, mismatch, 400, 'MANIFEST_INVALID');
  // Generic JSON content type: the body's mediaType decides.
  const generic = await http('PUT', `${s.url}/v2/ct/repo/manifests/v3`, { headers: { 'content-type': 'application/json' }, body: img.manifest.bytes });
  t.is(generic.status, 201, generic.body.toString());
  const g3 = await http('HEAD', `${s.url}/v2/ct/repo/manifests/v3`, { headers: { accept: OCI_MANIFEST } });
  t.is(g3.header('content-type'), OCI_MANIFEST);
});

test('PUT by digest: matching body gives 201 with that digest; a body that hashes differently is 400 DIGEST_INVALID', async (t) => {
  const s = await serve(t);
  const img = sampleImage('by-digest');
  await pushBlobs(s.url, 'bd/repo', [...img.layers, img.config]);
  const ok = await putManifest(s.url, 'bd/repo', img.manifest.digest, img.manifest);
  t.is(ok.status, 201);
  t.is(ok.header('docker-content-digest'), img.manifest.digest);
  t.is(ok.header('location'), `/v2/bd/repo/manifests/${img.manifest.digest}`);

  // bad-digest-image: the body gets two extra spaces, the URL keeps the original digest.
  const img2 = sampleImage('by-digest-bad');
  await pushBlobs(s.url, 'bd/repo', [...img2.layers, img2.config]);
  const padded = Buffer.concat([img2.manifest.bytes, Buffer.from('  ')]);
  const bad = await http('PUT', `${s.url}/v2/bd/repo/manifests/${img2.manifest.digest}`, { headers: { 'content-type': OCI_MANIFEST }, body: padded });
  assertError(t, bad, 400, 'DIGEST_INVALID');
  t.is((await http('GET', `${s.url}/v2/bd/repo/manifests/${img2.manifest.digest}`)).status, 404);
  t.is((await http('GET', `${s.url}/v2/bd/repo/manifests/${sha256(padded)}`)).status, 404, 'the padded body was not stored either');

  // Malformed digests in the URL.
  for (const ref of ['sha256:totallywrong', 'sha256:baddigeststring', `sha256:${'A'.repeat(64)}`, 'md5:d41d8cd98f00b204e9800998ecf8427e']) {
    const r = await http('PUT', `${s.url}/v2/bd/repo/manifests/${ref}`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
    assertError(t, r, 400, 'DIGEST_INVALID');
  }
  const blabla = await http('PUT', `${s.url}/v2/bd/repo/manifests/sha256:totallywrong`, { headers: { 'content-type': OCI_MANIFEST }, body: 'blablabla' });
  assertError(t, blabla, 400, 'DIGEST_INVALID');
});

test('sha512: blobs and manifests pushed and pulled by sha512 digest', async (t) => {
  const s = await serve(t);
  const layerBytes = randomBytes(4096, 'sha512-layer');
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layerD = sha512(layerBytes);
  const configD = sha512(configBytes);
  for (const [bytes, d] of [
    [layerBytes, layerD],
    [configBytes, configD],
  ] as const) {
    const r = await http('POST', `${s.url}/v2/s512/repo/blobs/uploads/?digest=${d}`, { headers: { 'content-type': 'application/octet-stream' }, body: bytes });
    t.is(r.status, 201, r.body.toString());
    t.is(r.header('docker-content-digest'), d);
    t.is(r.header('location'), `/v2/s512/repo/blobs/${d}`);
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: MediaTypes.ociConfig, digest: configD, size: configBytes.length },
      layers: [{ mediaType: MediaTypes.ociLayer, digest: layerD, size: layerBytes.length }],
    }),
  );
  const md = sha512(manifest);
  const put = await http('PUT', `${s.url}/v2/s512/repo/manifests/${md}`, { headers: { 'content-type': OCI_MANIFEST }, body: manifest });
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), md, 'echoes the sha512 digest');
  t.is(put.header('location'), `/v2/s512/repo/manifests/${md}`);

  for (const method of ['GET', 'HEAD'] as const) {
    const r = await http(method, `${s.url}/v2/s512/repo/manifests/${md}`, { headers: { accept: BOTH_OCI } });
    t.is(r.status, 200);
    t.is(r.header('docker-content-digest'), md);
    t.is(r.header('content-length'), String(manifest.length));
    t.is(r.header('content-type'), OCI_MANIFEST);
    t.deepEqual(r.body, method === 'GET' ? manifest : Buffer.alloc(0));
    const b = await http(method, `${s.url}/v2/s512/repo/blobs/${layerD}`);
    t.is(b.status, 200);
    t.is(b.header('docker-content-digest'), layerD);
    t.is(b.header('content-length'), String(layerBytes.length));
    if (method === 'GET') t.deepEqual(b.body, layerBytes);
  }
  // The same bytes PUT by a sha512 digest that does not match.
  const wrong = await http('PUT', `${s.url}/v2/s512/repo/manifests/${sha512('other')}`, { headers: { 'content-type': OCI_MANIFEST }, body: manifest });
  assertError(t, wrong, 400, 'DIGEST_INVALID');
  // A tag push of the same manifest is addressed by sha256.
  const tagged = await http('PUT', `${s.url}/v2/s512/repo/manifests/latest`, { headers: { 'content-type': OCI_MANIFEST }, body: manifest });
  t.is(tagged.status, 201);
  t.is(tagged.header('docker-content-digest'), sha256(manifest));
});

test('size limit: a 4,000,000-byte manifest is accepted, 5 MiB is 413 (also when streamed without Content-Length)', async (t) => {
  const s = await serve(t);
  const img = sampleImage('large');
  await pushBlobs(s.url, 'large/repo', [...img.layers, img.config]);
  const base = JSON.parse(img.manifest.bytes.toString()) as Record<string, unknown>;
  const build = (pad: number) => Buffer.from(JSON.stringify({ ...base, annotations: { 'org.example.pad': 'A'.repeat(pad) } }));
  const overhead = build(0).length;
  const big = build(4_000_000 - overhead);
  t.is(big.length, 4_000_000);
  const put = await http('PUT', `${s.url}/v2/large/repo/manifests/large-manifest`, { headers: { 'content-type': OCI_MANIFEST }, body: big });
  t.is(put.status, 201, put.body.toString().slice(0, 300));
  t.is(put.header('docker-content-digest'), sha256(big));
  const get = await http('GET', `${s.url}/v2/large/repo/manifests/large-manifest`, { headers: { accept: OCI_MANIFEST } });
  t.is(get.header('content-length'), '4000000');
  t.true(get.body.equals(big));

  const huge = build(5 * 1024 * 1024 - overhead);
  t.is(huge.length, 5 * 1024 * 1024);
  const tooBig = await http('PUT', `${s.url}/v2/large/repo/manifests/huge`, { headers: { 'content-type': OCI_MANIFEST }, body: huge });
  t.is(tooBig.status, 413);
  t.regex(errorCode(tooBig) ?? '', /^[A-Z_]+$/);
  t.is((await http('GET', `${s.url}/v2/large/repo/manifests/huge`)).status, 404);

  // Without Content-Length the cap is enforced while reading; the client still gets a 413.
  const chunks: Buffer[] = [];
  for (let off = 0; off < huge.length; off += 256 * 1024) chunks.push(huge.subarray(off, off + 256 * 1024));
  const streamed = await streamRequest(`${s.url}/v2/large/repo/manifests/huge-streamed`, 'PUT', chunks, { 'content-type': OCI_MANIFEST });
  t.is(streamed.status, 413);
  // The client has gone: the server must notice and drop the connection. A request left
  // paused mid-body would keep it forever (and make server.close() hang).
  t.true(await connectionsDrain(s.app.fastify.server), 'server-side connection closed');
  t.is((await http('GET', `${s.url}/v2/large/repo/manifests/huge-streamed`)).status, 404);
  // The server is still healthy afterwards.
  t.is((await http('GET', `${s.url}/v2/`)).status, 200);
});

test('a streamed (chunked transfer-encoding) manifest PUT below the cap is accepted', async (t) => {
  const s = await serve(t);
  const img = sampleImage('streamed-manifest');
  await pushBlobs(s.url, 'stream/repo', [...img.layers, img.config]);
  const b = img.manifest.bytes;
  const res = await streamRequest(`${s.url}/v2/stream/repo/manifests/v1`, 'PUT', [b.subarray(0, 10), b.subarray(10, 100), b.subarray(100)], { 'content-type': OCI_MANIFEST });
  t.is(res.status, 201, res.body.toString());
  t.is(res.headers['docker-content-digest'], img.manifest.digest);
});

test('re-pushing a tag moves it; pushing identical content is idempotent', async (t) => {
  const s = await serve(t);
  const one = sampleImage('move-1');
  const two = sampleImage('move-2');
  t.is((await pushImage(s.url, 'move/repo', one, 'latest')).status, 201);
  t.is((await pushImage(s.url, 'move/repo', one, 'latest')).status, 201, 'same content again');
  t.is((await pushImage(s.url, 'move/repo', two, 'latest')).status, 201);
  const head = await http('HEAD', `${s.url}/v2/move/repo/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
  t.is(head.header('docker-content-digest'), two.manifest.digest);
  // The old manifest is still there by digest.
  t.is((await http('HEAD', `${s.url}/v2/move/repo/manifests/${one.manifest.digest}`)).status, 200);
  // The same manifest under four tags (conformance "test0".."test3").
  for (let i = 0; i < 4; i++) {
    const r = await putManifest(s.url, 'move/repo', `test${i}`, one.manifest);
    t.is(r.status, 201);
    t.truthy(r.header('location'));
  }
  const tags = (await http('GET', `${s.url}/v2/move/repo/tags/list`)).json<{ tags: string[] }>().tags;
  t.deepEqual(tags, ['latest', 'test0', 'test1', 'test2', 'test3']);
});

test('[main] PUT by digest with ?tag= creates several tags and lists them in OCI-Tag', async (t) => {
  const s = await serve(t);
  const img = sampleImage('tag-param');
  await pushBlobs(s.url, 'tp/repo', [...img.layers, img.config]);
  const put = await http('PUT', `${s.url}/v2/tp/repo/manifests/${img.manifest.digest}?tag=a&tag=b`, {
    headers: { 'content-type': OCI_MANIFEST },
    body: img.manifest.bytes,
  });
  t.is(put.status, 201, put.body.toString());
  t.deepEqual(put.header('oci-tag')?.split(/,\s*/).sort(), ['a', 'b']);
  for (const tag of ['a', 'b']) {
    const h = await http('HEAD', `${s.url}/v2/tp/repo/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
    t.is(h.header('docker-content-digest'), img.manifest.digest);
  }
  const bad = await http('PUT', `${s.url}/v2/tp/repo/manifests/${img.manifest.digest}?tag=.bad`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
  t.is(bad.status, 400);
});

test('repository names with many components, dots, dashes and API words as components', async (t) => {
  const s = await serve(t);
  for (const repo of ['a/b/c/d', 'docker.io/library/alpine', 'x__y/a-b--c/z.z', 'team/manifests/blobs', 'v2/tags/referrers/uploads']) {
    const img = sampleImage(`names-${repo}`);
    const put = await pushImage(s.url, repo, img, 'v1');
    t.is(put.status, 201, `${repo}: ${put.body.toString()}`);
    t.is(put.header('location'), `/v2/${repo}/manifests/${img.manifest.digest}`);
    const get = await http('GET', `${s.url}/v2/${repo}/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
    t.deepEqual(get.body, img.manifest.bytes, repo);
    const blob = await http('GET', `${s.url}/v2/${repo}/blobs/${img.config.digest}`);
    t.deepEqual(blob.body, img.config.bytes, repo);
    const tags = await http('GET', `${s.url}/v2/${repo}/tags/list`);
    t.deepEqual(tags.json(), { name: repo, tags: ['v1'] });
  }
});

test('subject: OCI-Subject on image manifests and indexes, the subject need not exist', async (t) => {
  const s = await serve(t);
  const subj = sampleImage('subject');
  t.is((await pushImage(s.url, 'subj/repo', subj, 'v1')).status, 201);
  await pushBlobs(s.url, 'subj/repo', [EMPTY_BLOB]);
  const sig = jsonBlob(
    { schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.example.sig', config: descriptor(EMPTY_BLOB), layers: [descriptor(EMPTY_BLOB)], subject: descriptor(subj.manifest) },
    OCI_MANIFEST,
  );
  const put = await putManifest(s.url, 'subj/repo', sig.digest, sig);
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('oci-subject'), subj.manifest.digest);

  const idx = jsonBlob(
    { schemaVersion: 2, mediaType: OCI_INDEX, artifactType: 'application/vnd.example.idx', manifests: [descriptor(subj.manifest)], subject: descriptor(subj.manifest) },
    OCI_INDEX,
  );
  const pi = await putManifest(s.url, 'subj/repo', idx.digest, idx);
  t.is(pi.status, 201, pi.body.toString());
  t.is(pi.header('oci-subject'), subj.manifest.digest);

  const missing = { mediaType: OCI_MANIFEST, size: 123, digest: sha256('missing content') };
  const dangling = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: descriptor(EMPTY_BLOB), layers: [], subject: missing }, OCI_MANIFEST);
  const pd = await putManifest(s.url, 'subj/repo', 'tagged-artifact', dangling);
  t.is(pd.status, 201, 'a missing subject must not be MANIFEST_BLOB_UNKNOWN');
  t.is(pd.header('oci-subject'), missing.digest);
  t.regex(pd.header('oci-subject') ?? '', /^[a-z0-9]+:[a-f0-9]+$/);
});
