/**
 * GET|POST /api/v1/export (real sockets, in-process servers): the OCI-layout tar of pushed
 * and pulled-through images, every digest byte-exact; the platform filter (one platform:
 * the child manifest itself, several: a new index); errors as a status before any body;
 * pull rights per repository; gzip; a round trip through POST /api/v1/import into a second
 * server with identical digests.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { request } from 'undici';
import { agent, http, sha256 } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { runCli } from '../helpers/cli.js';
import { basic, writeHtpasswd } from '../helpers/authn.js';
import { type Blob, type ImageIndex, MediaTypes, allBlobsOf, makeImage, makeIndex, makeLayer, randomBytes } from '../fixtures/images.js';
import { assertError, pushImage, pushIndex } from './_support.js';
import { startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { CONTAINERD_NAME, REF_NAME, type ImportResult, importRaw, sampleIndex, unpackTar } from './_import.js';

interface Layout {
  files: Map<string, Buffer>;
  index: { manifests: Array<{ digest: string; mediaType: string; size: number; platform?: Record<string, string>; annotations?: Record<string, string> }> };
}

function exportUrl(base: string, query: string): string {
  return `${base}/api/v1/export?${query}`;
}

async function exportTar(t: ExecutionContext, base: string, query: string, headers: Record<string, string> = {}): Promise<Layout> {
  const res = await http('GET', exportUrl(base, query), { headers });
  t.is(res.status, 200, res.body.toString().slice(0, 300));
  t.is(res.header('content-type'), 'application/x-tar');
  t.is(Number(res.header('content-length')), res.body.length, 'exact Content-Length');
  const layout = await readLayout(t, res.body);
  // Independently: a header and padded content per entry, then the two zero end blocks.
  const pad = (n: number) => Math.ceil(n / 512) * 512;
  t.is(res.body.length, [...layout.files.values()].reduce((n, b) => n + 512 + pad(b.length), 1024), 'the whole tar, end blocks included');
  t.true(res.body.subarray(-1024).equals(Buffer.alloc(1024)));
  return layout;
}

async function readLayout(t: ExecutionContext, archive: Buffer): Promise<Layout> {
  const files = await unpackTar(archive);
  t.deepEqual(JSON.parse(files.get('oci-layout')!.toString()), { imageLayoutVersion: '1.0.0' });
  return { files, index: JSON.parse(files.get('index.json')!.toString()) as Layout['index'] };
}

const blobName = (digest: string) => `blobs/sha256/${digest.slice('sha256:'.length)}`;

/** Exactly `expected` under blobs/, each named by the hash of its bytes and equal to the source. */
function assertBlobs(t: ExecutionContext, layout: Layout, expected: readonly Blob[]): void {
  const names = [...layout.files.keys()].filter((n) => n.startsWith('blobs/sha256/') && n !== 'blobs/sha256/');
  t.deepEqual(names.sort(), [...new Set(expected.map((b) => blobName(b.digest)))].sort(), 'exactly the expected blobs');
  for (const b of expected) {
    const got = layout.files.get(blobName(b.digest))!;
    t.true(got.equals(b.bytes), `${b.digest} byte-exact`);
    t.is(sha256(got), b.digest);
  }
}

/** Blobs of one platform's image of the sample index (its manifest, config, layers). */
function platformBlobs(idx: ImageIndex, arch: string): Blob[] {
  const e = idx.images.find((i) => i.platform.architecture === arch)!;
  return allBlobsOf(e.image);
}

test('a pushed multi-arch index: the whole tree, every digest byte-exact, named for containerd and skopeo', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('export');
  t.is((await pushIndex(s.url, 'apps/demo', idx, '1.0')).status, 201);
  const layout = await exportTar(t, s.url, 'image=apps/demo:1.0');
  t.is(layout.index.manifests.length, 1);
  const [entry] = layout.index.manifests;
  t.is(entry!.digest, idx.index.digest, 'the index digest is unchanged');
  t.is(entry!.mediaType, MediaTypes.ociIndex);
  t.is(entry!.size, idx.index.bytes.length);
  t.deepEqual(entry!.annotations, { [CONTAINERD_NAME]: 'apps/demo:1.0', [REF_NAME]: '1.0' });
  assertBlobs(t, layout, allBlobsOf(idx));
  t.false(layout.files.has('manifest.json'), 'no docker manifest.json for an index');
  // The shared layer of both platforms is written once (unpackTar refuses duplicates).

  // By digest, and two images in one archive (the blobs they share once).
  const other = sampleIndex('export-2');
  t.is((await pushIndex(s.url, 'apps/other', other, 'v2')).status, 201);
  const two = await exportTar(t, s.url, `image=apps/demo@${idx.index.digest}&image=apps/other:v2&ns=example.com`);
  t.deepEqual(
    two.index.manifests.map((m) => [m.digest, m.annotations]),
    [
      [idx.index.digest, { [CONTAINERD_NAME]: `example.com/apps/demo@${idx.index.digest}` }],
      [other.index.digest, { [CONTAINERD_NAME]: 'example.com/apps/other:v2', [REF_NAME]: 'v2' }],
    ],
  );
  assertBlobs(t, two, [...allBlobsOf(idx), ...allBlobsOf(other)]);
});

test('platform filter: one platform is its own manifest (digest unchanged, docker manifest.json); several make a new index', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('platforms');
  await pushIndex(s.url, 'apps/multi', idx, '2');
  const arm = idx.images.find((i) => i.platform.architecture === 'arm64')!.image;

  const one = await exportTar(t, s.url, 'image=apps/multi:2&platform=linux/arm64');
  t.is(one.index.manifests.length, 1);
  t.is(one.index.manifests[0]!.digest, arm.manifest.digest);
  t.deepEqual(one.index.manifests[0]!.platform, { architecture: 'arm64', os: 'linux', variant: 'v8' });
  t.deepEqual(one.index.manifests[0]!.annotations, { [CONTAINERD_NAME]: 'apps/multi:2', [REF_NAME]: '2' });
  assertBlobs(t, one, platformBlobs(idx, 'arm64'));
  t.deepEqual(JSON.parse(one.files.get('manifest.json')!.toString()), [
    { Config: blobName(arm.config.digest), RepoTags: ['apps/multi:2'], Layers: arm.layers.map((l) => blobName(l.digest)) },
  ]);

  // Every platform named: the original index, unchanged.
  const all = await exportTar(t, s.url, 'image=apps/multi:2&platform=linux/arm64/v8&platform=linux/amd64');
  t.is(all.index.manifests[0]!.digest, idx.index.digest);
  assertBlobs(t, all, allBlobsOf(idx));

  // Two of three: a new index (same media type) with just those children.
  const s390 = makeImage({ arch: 's390x', layers: [makeLayer([{ name: 'z.txt', content: 'z' }], { gzip: true })] });
  const three = makeIndex([...idx.images, { image: s390, platform: { architecture: 's390x', os: 'linux' } }]);
  await pushIndex(s.url, 'apps/three', three, '3');
  const two = await exportTar(t, s.url, 'image=apps/three:3&platform=linux/s390x&platform=linux/arm64');
  const root = two.index.manifests[0]!;
  t.not(root.digest, three.index.digest, 'a filtered index is new content');
  t.is(root.mediaType, MediaTypes.ociIndex);
  t.false('platform' in root);
  const newIndex = two.files.get(blobName(root.digest))!;
  t.is(sha256(newIndex), root.digest);
  t.is(root.size, newIndex.length);
  const doc = JSON.parse(newIndex.toString()) as { mediaType: string; manifests: Array<{ digest: string }> };
  t.is(doc.mediaType, MediaTypes.ociIndex);
  t.deepEqual(doc.manifests.map((m) => m.digest), [arm.manifest.digest, s390.manifest.digest]);
  const newBlob = { digest: root.digest, bytes: newIndex, mediaType: MediaTypes.ociIndex, size: newIndex.length };
  assertBlobs(t, two, [...platformBlobs(idx, 'arm64'), ...allBlobsOf(s390), newBlob]);

  // A variant that is not there, a platform no image has, a single-platform image of another arch.
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/multi:2&platform=linux/arm64/v7')), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/multi:2&platform=linux/s390x')), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('GET', exportUrl(s.url, `image=apps/multi@${arm.manifest.digest}&platform=linux/amd64`)), 404, 'MANIFEST_UNKNOWN');
  const single = await exportTar(t, s.url, `image=apps/multi@${arm.manifest.digest}&platform=linux/arm64`);
  t.is(single.index.manifests[0]!.digest, arm.manifest.digest);
});

test('an image not held here is pulled through the mirror first, then served from it with the upstream gone', async (t) => {
  const fake = await startFake(t);
  const idx = sampleIndex('remote');
  fake.addIndex('library/remote', idx, '3.1');
  const s = await startServer(t, { upstreams: { 'up.example': upstreamEntry(fake) }, defaultUpstream: 'up.example' });
  const layout = await exportTar(t, s.url, 'image=library/remote:3.1');
  t.is(layout.index.manifests[0]!.digest, idx.index.digest);
  assertBlobs(t, layout, allBlobsOf(idx));
  for (const b of allBlobsOf(idx).filter((x) => x.mediaType !== MediaTypes.ociIndex && x.mediaType !== MediaTypes.ociManifest)) {
    t.is(fake.blobGets(b.digest), 1, `${b.digest} fetched once`);
  }
  await fake.stop();
  const again = await exportTar(t, s.url, 'image=library/remote:3.1');
  assertBlobs(t, again, allBlobsOf(idx));
});

test('a pull-through longer than the idle timeout: the connection waits for the archive', async (t) => {
  const fake = await startFake(t);
  const idx = sampleIndex('slow');
  fake.addIndex('library/slow', idx, '1');
  // Every blob answers after 1.5 s: planning takes longer than the 1 s idle timeout.
  fake.faults.push({ method: 'GET', path: /\/blobs\//, headerDelayMs: 1500 });
  const s = await startServer(t, { upstreams: { 'up.example': upstreamEntry(fake) }, defaultUpstream: 'up.example', http: { idleTimeout: '1s' } });
  const layout = await exportTar(t, s.url, 'image=library/slow:1');
  assertBlobs(t, layout, allBlobsOf(idx));
});

test('unknown images and bad requests: a clear error status before any body', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { 'up.example': upstreamEntry(fake) }, namespaces: [{ prefix: 'hub', upstream: 'up.example' }] });
  const idx = sampleIndex('known');
  await pushIndex(s.url, 'apps/known', idx, '1');
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/known:nope')), 404, 'MANIFEST_UNKNOWN');
  // The unknown image is not the first: still nothing written.
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/known:1&image=hub/library/missing:1')), 404, 'MANIFEST_UNKNOWN');
  assertError(t, await http('GET', exportUrl(s.url, 'image=nowhere/repo:1')), 404, 'NAME_UNKNOWN');
  assertError(t, await http('GET', exportUrl(s.url, '')), 400, 'UNSUPPORTED');
  assertError(t, await http('GET', exportUrl(s.url, 'image=Apps/UPPER:1')), 400, 'NAME_INVALID');
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/known@sha256:abc')), 400, 'DIGEST_INVALID');
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/known:1&platform=linux')), 400, 'UNSUPPORTED');
  assertError(t, await http('GET', exportUrl(s.url, 'image=apps/known:1&compress=zip')), 400, 'UNSUPPORTED');
  assertError(t, await http('POST', exportUrl(s.url, ''), { body: '{"images": "apps/known:1"}' }), 400, 'UNSUPPORTED');
  assertError(t, await http('POST', exportUrl(s.url, ''), { body: 'not json' }), 400, 'UNSUPPORTED');
  t.is((await http('GET', `${s.url}/healthz`)).status, 200);
});

/** Open descriptors of this process (the in-process server's) on files under `dir`. */
async function openFilesUnder(dir: string): Promise<number> {
  let n = 0;
  for (const fd of await fs.readdir('/proc/self/fd')) {
    const target = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.startsWith(dir)) n++;
  }
  return n;
}

test('a client that leaves mid-body: the export stops and every blob file is closed', async (t) => {
  const s = await startServer(t);
  const big = makeImage({ layers: [makeLayer([{ name: 'big.bin', content: randomBytes(8 * 1024 * 1024, 'leave') }])] });
  await pushImage(s.url, 'apps/big', big, '1');
  const blobs = path.join(s.dataDir, 'storage', 'blobs');
  t.is(await openFilesUnder(blobs), 0);
  const res = await request(exportUrl(s.url, 'image=apps/big:1'), { dispatcher: agent });
  t.is(res.statusCode, 200);
  for await (const _ of res.body) break; // one chunk, then the connection goes
  res.body.destroy();
  await waitFor(async () => (await openFilesUnder(blobs)) === 0, 30_000, 'blob files closed');
  // And the server exports on.
  t.is((await http('GET', exportUrl(s.url, 'image=apps/big:1'))).status, 200);
});

test('a blob damaged in storage (shorter than its manifest says) is an error status, never a truncated tar', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('damaged');
  await pushIndex(s.url, 'apps/damaged', idx, '1');
  const layer = idx.images[0]!.image.layers[1]!;
  const hex = layer.digest.slice('sha256:'.length);
  await fs.truncate(path.join(s.dataDir, 'storage', 'blobs', 'sha256', hex.slice(0, 2), hex), layer.size - 1);
  const res = await http('GET', exportUrl(s.url, 'image=apps/damaged:1'));
  assertError(t, res, 500, 'UNKNOWN');
  t.regex(res.body.toString(), /fsck/);
});

test('pull rights per repository: 401 anonymous, 403 signed in without the right, before any upstream pull', async (t) => {
  const fake = await startFake(t);
  fake.addIndex('library/pub', sampleIndex('public'), '1');
  fake.addIndex('private/app', sampleIndex('private'), '1');
  const dir = await tempDir(t, 'regmirror-export-auth-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-Pw-1', bob: 'bob-Pw-2' });
  const s = await startServer(t, {
    auth: { htpasswd, rules: [{ repositories: 'private/**', pull: ['alice'], push: ['alice'], delete: [] }, { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: [] }] },
    upstreams: { 'up.example': upstreamEntry(fake) },
    defaultUpstream: 'up.example',
  });
  const alice = { authorization: basic('alice', 'alice-Pw-1') };
  const anon = await http('GET', exportUrl(s.url, 'image=private/app:1'));
  assertError(t, anon, 401, 'UNAUTHORIZED');
  t.truthy(anon.header('www-authenticate'));
  assertError(t, await http('GET', exportUrl(s.url, 'image=library/pub:1&image=private/app:1'), { headers: { authorization: basic('bob', 'bob-Pw-2') } }), 403, 'DENIED');
  t.is(fake.count({ server: 'registry', path: /\/manifests\// }), 0, 'nothing pulled for a refused export');
  const ok = await exportTar(t, s.url, 'image=private/app:1', alice);
  t.is(ok.index.manifests.length, 1);
});

test('round trip: export, import into a second server (no upstream), identical digests; gzip and POST give the same archive', async (t) => {
  const a = await startServer(t);
  const idx = sampleIndex('trip');
  await pushIndex(a.url, 'apps/trip', idx, '7');
  const plain = await http('GET', exportUrl(a.url, 'image=apps/trip:7'));
  t.is(plain.status, 200);
  const gz = await http('GET', exportUrl(a.url, 'image=apps/trip:7&compress=gzip'));
  t.is(gz.status, 200);
  t.is(gz.header('content-type'), 'application/gzip');
  t.is(gz.body[0], 0x1f);
  t.true(gunzipSync(gz.body).equals(plain.body), 'gzip wraps the same tar');
  const posted = await http('POST', exportUrl(a.url, ''), { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ images: ['apps/trip:7'] }) });
  t.true(posted.body.equals(plain.body), 'POST with a JSON list gives the same archive (deterministic bytes)');

  const b = await startServer(t);
  const res = await importRaw(b.url, 'namespace=site', gz.body, 'application/gzip');
  t.is(res.status, 200, res.body.toString());
  const [img] = res.json<{ images: ImportResult[] }>().images;
  t.like(img, { name: 'site/apps/trip', tag: '7', digest: idx.index.digest });
  const top = await http('GET', `${b.url}/v2/site/apps/trip/manifests/7`, { headers: { accept: MediaTypes.ociIndex } });
  t.is(top.header('docker-content-digest'), idx.index.digest);
  for (const blob of allBlobsOf(idx)) {
    const kind = blob.mediaType === MediaTypes.ociIndex || blob.mediaType === MediaTypes.ociManifest ? 'manifests' : 'blobs';
    const r = await http('GET', `${b.url}/v2/site/apps/trip/${kind}/${blob.digest}`, { headers: { accept: blob.mediaType } });
    t.is(r.status, 200);
    t.true(r.body.equals(blob.bytes), `${blob.digest} identical on the second server`);
  }
});

/** The JSON lines a CLI run printed. */
function jsonLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

test('regmirror export (CLI): --file and --gzip into FILE via a temp file, JSON lines off a terminal; failures exit 1 and leave FILE as it was', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('cli');
  await pushIndex(s.url, 'apps/cli', idx, '1');
  const other = sampleIndex('cli-2');
  await pushIndex(s.url, 'apps/cli2', other, '2');
  const dir = await tempDir(t, 'regmirror-export-cli-');
  const list = path.join(dir, 'images.txt');
  await fs.writeFile(list, '# the set\napps/cli2:2   # second\n\n');
  const out = path.join(dir, 'site.tar.gz');
  const r = await runCli(['export', '--mirror', s.url, '-o', out, '--gzip', '--file', list, 'apps/cli:1'], dir);
  t.is(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  t.true(lines.some((l) => l.event === 'progress'), 'progress as JSON lines');
  const done = lines.at(-1)!;
  t.is(done.event, 'done', r.stdout);
  t.deepEqual(
    (done.images as Array<{ name: string; digest: string }>).map((i) => [i.name, i.digest]),
    [
      ['apps/cli:1', idx.index.digest],
      ['apps/cli2:2', other.index.digest],
    ],
  );
  const expected = await http('GET', exportUrl(s.url, 'image=apps/cli:1&image=apps/cli2:2'));
  t.true(gunzipSync(await fs.readFile(out)).equals(expected.body), 'the file is the gzipped export');
  t.deepEqual(await fs.readdir(dir), ['images.txt', 'site.tar.gz'].sort(), 'no temp file left');

  // An unknown image: exit 1 with the mirror's error; the existing FILE is untouched.
  const before = await fs.readFile(out);
  const bad = await runCli(['export', '--mirror', s.url, '-o', out, 'apps/cli:1', 'apps/cli:missing'], dir);
  t.is(bad.code, 1);
  t.regex(String(jsonLines(bad.stdout).at(-1)!.error), /404 MANIFEST_UNKNOWN/);
  t.true((await fs.readFile(out)).equals(before));
  t.deepEqual(await fs.readdir(dir), ['images.txt', 'site.tar.gz'].sort());
  t.is((await runCli(['export', '--mirror', s.url, 'apps/cli:1'], dir)).code, 2, 'usage: -o is required');
});

test('regmirror export (CLI): a response cut short mid-body exits 1 and writes no file', async (t) => {
  // A mirror stand-in that promises a tar and dies after a few bytes.
  const server = createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/x-tar', 'content-length': '1048576' });
    res.write(Buffer.alloc(4096));
    setImmediate(() => res.socket?.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { port } = server.address() as AddressInfo;
  const dir = await tempDir(t, 'regmirror-export-cut-');
  const out = path.join(dir, 'cut.tar');
  const r = await runCli(['export', '--mirror', `http://127.0.0.1:${port}`, '-o', out, 'apps/x:1'], dir);
  t.is(r.code, 1, r.stdout);
  t.is(jsonLines(r.stdout).at(-1)!.event, 'error');
  t.deepEqual(await fs.readdir(dir), [], 'neither FILE nor a temp file');
});
