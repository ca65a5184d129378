/**
 * POST /api/v1/import with OCI-layout archives built in memory (real sockets, in-process
 * server): raw and multipart bodies, plain and gzip, entry order, naming (namespace= re-homes
 * the archive's image name, repository= takes only its tag), dedupe on re-import; malformed
 * archives refused with a clear 400/413 leaving no tag, no blob and no temp file; push rules
 * per target repository; the multipart parser scoped to this route only.
 */
import test from 'ava';
import path from 'node:path';
import { http, sha256 } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { basic, writeHtpasswd } from '../helpers/authn.js';
import { waitFor } from '../helpers/tools.js';
import { allBlobsOf, makeLayer, makeImage, randomBytes } from '../fixtures/images.js';
import { assertError, OCI_INDEX } from './_support.js';
import {
  ACCEPT, CONTAINERD_NAME, REF_NAME, type Entry, type ImportResult, assertNothingStored, assertServed, bigLayerArchive, filesUnder, rssGrowth, gzip, importMultipart, importRaw, indexArchive, layoutEntries, packTar, sampleIndex,
} from './_import.js';

test('raw tar: a multi-arch index lands under namespace= with every digest unchanged; a re-import only links', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('raw');
  const archive = await indexArchive(idx, 'docker.io/library/demo:1.0');
  const res = await importRaw(s.url, 'namespace=mirror', archive);
  t.is(res.status, 200, res.body.toString());
  const { images } = res.json<{ images: ImportResult[] }>();
  t.is(images.length, 1);
  const r = images[0]!;
  t.like(r, { name: 'mirror/library/demo', tag: '1.0', digest: idx.index.digest, mediaType: OCI_INDEX });
  // Two configs, three distinct layers (one shared by both platforms).
  t.deepEqual(r.blobs, { new: 5, existing: 0 });
  t.true(r.newBytes > 0 && r.bytes > r.newBytes);
  await assertServed(t, s.url, 'mirror/library/demo', '1.0', idx);
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file left after success');

  const again = await importRaw(s.url, 'namespace=mirror', archive, 'application/octet-stream');
  t.is(again.status, 200);
  const r2 = again.json<{ images: ImportResult[] }>().images[0]!;
  t.deepEqual(r2.blobs, { new: 0, existing: 5 });
  t.is(r2.newBytes, 0);
  t.is(r2.digest, idx.index.digest);
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), []);
});

test('gzip with index.json before the blobs; repository= takes only the tag; several index.json entries', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('gzip');
  const single = makeImage({ layers: [makeLayer([{ name: 'solo', content: 'solo image' }], { gzip: true })] });
  const entries = layoutEntries(
    [
      { root: idx.index, annotations: { [REF_NAME]: '2.0' } },
      { root: single.manifest, annotations: { [REF_NAME]: 'quay.io/acme/tool:solo' } },
    ],
    [...allBlobsOf(idx), single.config, ...single.layers],
    { indexFirst: true },
  );
  const res = await importRaw(s.url, 'repository=apps/demo', gzip(await packTar(entries)), 'application/gzip');
  t.is(res.status, 200, res.body.toString());
  const images = res.json<{ images: ImportResult[] }>().images;
  t.deepEqual(images.map((i) => [i.name, i.tag, i.digest]), [
    ['apps/demo', '2.0', idx.index.digest],
    ['apps/demo', 'solo', single.manifest.digest],
  ]);
  await assertServed(t, s.url, 'apps/demo', '2.0', idx);
  const solo = await http('GET', `${s.url}/v2/apps/demo/manifests/solo`, { headers: { accept: ACCEPT } });
  t.is(solo.header('docker-content-digest'), single.manifest.digest);

  // The same tag-only archive under namespace= has no image name to re-home: a clear 400.
  const noName = await importRaw(s.url, 'namespace=mirror', await packTar(layoutEntries([{ root: idx.index, annotations: { [REF_NAME]: '2.0' } }], allBlobsOf(idx))));
  assertError(t, noName, 400, 'MANIFEST_INVALID');
  t.regex(noName.body.toString(), /repository=/);
});

test('multipart: several file parts, each an archive (plain and gzip), a form field ignored', async (t) => {
  const s = await startServer(t);
  const a = sampleIndex('mp-a');
  const b = sampleIndex('mp-b');
  const res = await importMultipart(s.url, 'namespace=site', [await indexArchive(a, 'gcr.io/proj/a:v1'), gzip(await indexArchive(b, 'gcr.io/proj/b:v2'))]);
  t.is(res.status, 200, res.body.toString());
  t.deepEqual(res.json<{ images: ImportResult[] }>().images.map((i) => `${i.name}:${i.tag}@${i.digest}`), [
    `site/proj/a:v1@${a.index.digest}`,
    `site/proj/b:v2@${b.index.digest}`,
  ]);
  await assertServed(t, s.url, 'site/proj/a', 'v1', a);
  await assertServed(t, s.url, 'site/proj/b', 'v2', b);
  // Keep-alive connection still in sync afterwards.
  t.is((await http('GET', `${s.url}/v2/`)).status, 200);
});

test('malformed archives: a clear 400 (413 over a limit), no tag, no blob, no temp file, server healthy', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('bad');
  const name = 'docker.io/library/bad:1';
  const good = await indexArchive(idx, name);
  const blobs = allBlobsOf(idx);
  const layer = idx.images[0]!.image.layers[1]!;
  const hex = (d: string) => d.slice('sha256:'.length);
  const roots = [{ root: idx.index, annotations: { [CONTAINERD_NAME]: name } }];
  const withEntries = (extra: Entry[], keep = blobs) => packTar([...extra, ...layoutEntries(roots, keep)]);
  const flipped = layoutEntries(roots, blobs).map((e) => {
    if (e.name !== `blobs/sha256/${hex(layer.digest)}`) return e;
    const c = Buffer.from(e.content as Buffer);
    c[c.length >> 1]! ^= 0x01;
    return { ...e, content: c };
  });
  const dupIndex = layoutEntries(roots, blobs);
  const cases: Array<{ what: string; body: Buffer | Promise<Buffer>; status: number; code: string; message?: RegExp; multipart?: boolean }> = [
    { what: 'truncated tar', body: good.subarray(0, good.length >> 1), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /truncated|corrupt/ },
    { what: 'truncated tar (multipart)', body: good.subarray(0, good.length >> 1), status: 400, code: 'BLOB_UPLOAD_INVALID', multipart: true },
    { what: 'truncated gzip', body: gzip(good).subarray(0, 600), status: 400, code: 'BLOB_UPLOAD_INVALID' },
    { what: 'flipped byte in a layer', body: packTar(flipped), status: 400, code: 'DIGEST_INVALID' },
    { what: 'index naming a missing blob', body: packTar(layoutEntries(roots, blobs.filter((b) => b.digest !== layer.digest))), status: 400, code: 'MANIFEST_BLOB_UNKNOWN', message: new RegExp(hex(layer.digest)) },
    { what: 'path traversal', body: withEntries([{ name: '../../etc/evil', content: 'x' }]), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /escapes/ },
    { what: 'traversal inside blobs/', body: withEntries([{ name: 'blobs/sha256/../../../x', content: 'x' }]), status: 400, code: 'BLOB_UPLOAD_INVALID' },
    { what: 'absolute path', body: withEntries([{ name: '/etc/passwd', content: 'x' }]), status: 400, code: 'BLOB_UPLOAD_INVALID' },
    { what: 'symlink entry', body: withEntries([{ name: `blobs/sha256/${hex(layer.digest)}`, type: 'symlink', linkname: '/etc/passwd' }], blobs.filter((b) => b.digest !== layer.digest)), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /symlink/ },
    { what: 'hard link entry', body: withEntries([{ name: 'oci-layout.bak', type: 'link', linkname: 'oci-layout' }]), status: 400, code: 'BLOB_UPLOAD_INVALID' },
    { what: 'duplicate index.json', body: packTar([...dupIndex, { name: 'index.json', content: '{"schemaVersion":2,"manifests":[]}' }]), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /duplicate/ },
    { what: 'duplicate blob entry', body: packTar([...dupIndex, dupIndex.find((e) => /^blobs\/sha256\/[a-f0-9]{64}$/.test(e.name))!]), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /duplicate/ },
    { what: 'huge index.json', body: packTar([...layoutEntries(roots, blobs).filter((e) => e.name !== 'index.json'), { name: 'index.json', content: Buffer.alloc(5 * 1024 * 1024, 0x20) }]), status: 413, code: 'MANIFEST_INVALID' },
    { what: 'bzip2', body: Buffer.concat([Buffer.from('BZh91AY&SY'), Buffer.alloc(600)]), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /bzip2/ },
    { what: 'xz', body: Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(600)]), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /xz/ },
    { what: 'not an archive', body: Buffer.from('{"just":"json"}'.repeat(100)), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /not a tar/ },
    { what: 'empty body', body: Buffer.alloc(0), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /empty/ },
    { what: 'neither an OCI layout nor a docker-save archive', body: packTar([{ name: 'README', content: 'hello' }]), status: 400, code: 'MANIFEST_INVALID', message: /not an OCI image layout or a docker-save archive/ },
    { what: 'wrong layout version', body: packTar([...layoutEntries(roots, blobs).filter((e) => e.name !== 'oci-layout'), { name: 'oci-layout', content: '{"imageLayoutVersion":"2.0.0"}' }]), status: 400, code: 'MANIFEST_INVALID' },
    { what: 'index.json not JSON', body: packTar([...layoutEntries(roots, blobs).filter((e) => e.name !== 'index.json'), { name: 'index.json', content: '{nope' }]), status: 400, code: 'MANIFEST_INVALID' },
  ];
  for (const c of cases) {
    const body = await c.body;
    const res = c.multipart ? await importMultipart(s.url, 'namespace=mirror', [body]) : await importRaw(s.url, 'namespace=mirror', body);
    assertError(t, res, c.status, c.code);
    t.log(`${c.what}: ${res.status} ${res.body.toString().slice(0, 160)}`);
    if (c.message) t.regex(res.json<{ errors: Array<{ message: string }> }>().errors[0]!.message, c.message, c.what);
    await assertNothingStored(t, s, 'mirror/library/bad', c.what);
  }
  // And the same server still imports a good archive.
  t.is((await importRaw(s.url, 'namespace=mirror', good)).status, 200);
  await assertServed(t, s.url, 'mirror/library/bad', '1', idx);
});

test('limits.maxBlobBytes: a layer over the limit is 413, streamed without buffering, nothing stored', async (t) => {
  const s = await startServer(t, { limits: { maxBlobBytes: '1MiB' } });
  const big = makeImage({ layers: [makeLayer([{ name: 'big', content: randomBytes(2 * 1024 * 1024, 'over-limit') }])] });
  const archive = await packTar(layoutEntries([{ root: big.manifest, annotations: { [REF_NAME]: 'x/big:1' } }], [big.config, ...big.layers]));
  const res = await importRaw(s.url, 'namespace=mirror', archive);
  assertError(t, res, 413, 'SIZE_INVALID');
  await assertNothingStored(t, s, 'mirror/x/big', 'over maxBlobBytes');
});

test('push rules: each target repository needs push (401 anonymous, 403 signed in), namespaces[].push; nothing stored', async (t) => {
  const dir = await tempDir(t, 'regmirror-import-auth-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-Pw-1', bob: 'bob-Pw-2' });
  const s = await startServer(t, {
    auth: { htpasswd, rules: [{ repositories: 'mirror/**', pull: ['anonymous'], push: ['alice'], delete: [] }, { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: [] }] },
    upstreams: { 'up.example': { endpoints: ['http://127.0.0.1:9'] } },
    namespaces: [{ prefix: 'hub', upstream: 'up.example' }],
  });
  const idx = sampleIndex('auth');
  const archive = await indexArchive(idx, 'docker.io/library/app:1');
  const anon = await importRaw(s.url, 'namespace=mirror', archive);
  assertError(t, anon, 401, 'UNAUTHORIZED');
  t.truthy(anon.header('www-authenticate'));
  await assertNothingStored(t, s, 'mirror/library/app', 'anonymous');
  // The anonymous 401 comes before the body is read: here the body never ends.
  const { request } = await import('node:http');
  const url = new URL(`${s.url}/api/v1/import?namespace=mirror`);
  const pending = request({ host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, method: 'POST', headers: { 'content-type': 'application/x-tar', 'content-length': String(archive.length * 2) } });
  pending.on('error', () => undefined);
  t.teardown(() => pending.destroy());
  const early = new Promise<number>((resolve) => pending.on('response', (r) => resolve(r.statusCode ?? 0)));
  pending.write(archive);
  t.is(await Promise.race([early, new Promise<number>((r) => setTimeout(() => r(-1), 20_000))]), 401, 'anonymous refused before the whole body arrived');
  pending.destroy();
  const bob = await importMultipart(s.url, 'namespace=mirror', [archive], { authorization: basic('bob', 'bob-Pw-2') });
  assertError(t, bob, 403, 'DENIED');
  await assertNothingStored(t, s, 'mirror/library/app', 'bob');
  const byName = await importRaw(s.url, 'repository=mirror/app', archive, 'application/x-tar', { authorization: basic('bob', 'bob-Pw-2') });
  assertError(t, byName, 403, 'DENIED');
  const readOnlyNs = await importRaw(s.url, 'namespace=hub', archive, 'application/x-tar', { authorization: basic('alice', 'alice-Pw-1') });
  assertError(t, readOnlyNs, 403, 'DENIED');
  t.regex(readOnlyNs.body.toString(), /namespaces\[\]\.push/);
  await assertNothingStored(t, s, 'hub/library/app', 'read-only namespace');
  const ok = await importRaw(s.url, 'namespace=mirror', archive, 'application/x-tar', { authorization: basic('alice', 'alice-Pw-1') });
  t.is(ok.status, 200, ok.body.toString());
  await assertServed(t, s.url, 'mirror/library/app', '1', idx);
});

test('request checks; multipart parsing is scoped to the import route (/v2 bodies stay raw)', async (t) => {
  const s = await startServer(t);
  const archive = await indexArchive(sampleIndex('req'), 'x/y:1');
  assertError(t, await importRaw(s.url, '', archive), 400, 'NAME_INVALID');
  assertError(t, await importRaw(s.url, 'namespace=a&repository=b', archive), 400, 'NAME_INVALID');
  assertError(t, await importRaw(s.url, 'namespace=UPPER', archive), 400, 'NAME_INVALID');
  assertError(t, await importRaw(s.url, 'namespace=a', archive, 'text/plain'), 415, 'UNSUPPORTED');
  assertError(t, await importMultipart(s.url, 'namespace=a', []), 400, 'BLOB_UPLOAD_INVALID');
  // A monolithic blob upload labelled multipart/form-data is still stored byte for byte.
  const body = Buffer.from('--b\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\nhello\r\n--b--\r\n');
  const up = await http('POST', `${s.url}/v2/raw/blob/blobs/uploads/?digest=${sha256(body)}`, { headers: { 'content-type': 'multipart/form-data; boundary=b' }, body });
  t.is(up.status, 201, up.body.toString());
  const got = await http('GET', `${s.url}/v2/raw/blob/blobs/${sha256(body)}`);
  t.true(got.body.equals(body));
});

test('a 256 MiB layer streams through a chunked body with the heap bounded', async (t) => {
  const s = await startServer(t, { log: { level: 'warn' } });
  const size = 256 * 1024 * 1024;
  const big = await bigLayerArchive(size, 'big-import', 'big/layer:1');
  const { result: res, grewMiB: grew } = await rssGrowth(() => importRaw(s.url, 'namespace=m', big.tar));
  await big.fed;
  const { layerDigest, config } = big;
  t.is(res.status, 200, res.body.toString());
  t.is(res.json<{ images: ImportResult[] }>().images[0]!.newBytes, size + config.length);
  t.log(`RSS growth during a ${size >> 20} MiB import (client and server in one process): ${grew.toFixed(1)} MiB`);
  t.true(grew < 96, `RSS grew ${grew.toFixed(1)} MiB`);
  const head = await http('HEAD', `${s.url}/v2/m/big/layer/blobs/${layerDigest}`);
  t.is(head.header('content-length'), String(size));
});

test('multipart: a bad first archive fails the request before the next is read; a client that disconnects mid-archive leaves nothing', async (t) => {
  const s = await startServer(t);
  const good = await indexArchive(sampleIndex('after-bad'), 'x/after:1');
  const res = await importMultipart(s.url, 'namespace=mirror', [good.subarray(0, 3000), good]);
  assertError(t, res, 400, 'BLOB_UPLOAD_INVALID');
  await assertNothingStored(t, s, 'mirror/x/after', 'bad first part');
  t.is((await http('GET', `${s.url}/v2/`)).status, 200, 'connection usable after the error');

  // Half an archive, then the socket is cut: the staged temp files go with the request.
  const big = makeImage({ layers: [makeLayer([{ name: 'f', content: randomBytes(4 * 1024 * 1024, 'abort') }], { gzip: false })] });
  const archive = await packTar(layoutEntries([{ root: big.manifest, annotations: { [REF_NAME]: 'x/abort:1' } }], [big.config, ...big.layers]));
  const { request } = await import('node:http');
  const url = new URL(`${s.url}/api/v1/import?namespace=mirror`);
  const req = request({ host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, method: 'POST', headers: { 'content-type': 'application/x-tar', 'content-length': String(archive.length) } });
  req.on('error', () => undefined);
  req.write(archive.subarray(0, archive.length >> 1));
  // Wait until the server has staged something (a temp file exists), then cut the socket.
  const tmp = path.join(s.dataDir, 'storage', 'tmp');
  await waitFor(async () => ((await filesUnder(tmp)).length > 0 ? true : undefined), 30_000, 'a temp file while the body streams');
  req.destroy();
  await waitFor(async () => ((await filesUnder(tmp)).length === 0 ? true : undefined), 30_000, 'temp files removed after the abort');
  await assertNothingStored(t, s, 'mirror/x/abort', 'aborted request');
  t.true(s.logs.every((l) => !l.includes('"level":50')), 'no error-level log for a client abort');
});
