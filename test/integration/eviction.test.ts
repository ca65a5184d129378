/**
 * Disk budget and age-based eviction of pulled-through content (cache.maxBytes,
 * cache.maxAge), over a real socket against the in-process fake upstream. Every test
 * checks real effects: blob files on disk, database rows, upstream request counts.
 * Eviction is triggered with app.evict() (the interval is set to an hour).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { request } from 'undici';
import { agent, http } from '../helpers/http.js';
import { type TestServer, openDb } from '../helpers/server.js';
import { type Blob, type Image, makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { noServerErrors, pushImage, serve } from './_support.js';
import { ACCEPT_ALL, sleep, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'hub.test';
const KiB = 1024;
const MiB = 1024 * KiB;
const CLI = path.join(fileURLToPath(new URL('../../../', import.meta.url)), 'dist', 'cli.js');

test.afterEach(noServerErrors);

async function setup(t: ExecutionContext, cache: Record<string, unknown>, server: Record<string, unknown> = {}): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t);
  const s = await serve(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) },
    defaultUpstream: UP,
    cache: { evictInterval: '1h', ...cache },
    ...server,
  });
  return { fake, s };
}

/** An image whose layers are `sizes` bytes of seeded random data (uncompressed tar), plus `shared` layers. */
function image(seed: string, sizes: number[], shared: ReturnType<typeof makeLayer>[] = []): Image {
  const own = sizes.map((n, i) => makeLayer([{ name: `${seed}-${i}.bin`, content: randomBytes(n, `${seed}-${i}`) }], { gzip: false }));
  return makeImage({ layers: [...shared, ...own] });
}

const blobsOf = (img: Image): Blob[] => [img.config, ...img.layers];

function blobFile(s: TestServer, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(s.dataDir, 'storage', 'blobs', 'sha256', hex.slice(0, 2), hex);
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(
    () => true,
    () => false,
  );
}

/** Pull like a client: the manifest by tag, then every blob; asserts the bytes. */
async function pull(t: ExecutionContext, s: TestServer, repo: string, tag: string, img: Image): Promise<void> {
  const m = await http('GET', `${s.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ACCEPT_ALL } });
  t.is(m.status, 200, `manifest ${repo}:${tag}`);
  t.is(m.header('docker-content-digest'), img.manifest.digest);
  t.true(m.body.equals(img.manifest.bytes));
  for (const b of blobsOf(img)) {
    const r = await http('GET', `${s.url}/v2/${repo}/blobs/${b.digest}`);
    t.is(r.status, 200, `blob ${b.digest}`);
    t.true(r.body.equals(b.bytes), `bytes of ${b.digest}`);
  }
  // The last byte goes out before the fill's commit (fsync, rename, row): wait for the rows.
  await waitFor(() => blobsOf(img).every((b) => blobRow(s, b.digest) !== undefined), 30_000, `${repo} committed`);
}

function rows(s: TestServer, repo: string): { manifests: number; blobLinks: number; upstreamTags: number } {
  const db = s.db().db;
  const count = (table: string) =>
    db.prepare<[string], { n: number }>(`SELECT COUNT(*) AS n FROM ${table} x JOIN repositories r ON r.id = x.repo_id WHERE r.name = ?`).get(repo)!.n;
  return { manifests: count('manifests'), blobLinks: count('repo_blobs'), upstreamTags: count('upstream_tags') };
}

const blobRow = (s: TestServer, digest: string) => s.db().blobSize(digest as Digest);

async function assertGone(t: ExecutionContext, s: TestServer, repo: string, img: Image): Promise<void> {
  t.deepEqual(rows(s, repo), { manifests: 0, blobLinks: 0, upstreamTags: 0 }, `${repo} rows`);
  for (const b of blobsOf(img)) {
    t.is(blobRow(s, b.digest), undefined, `row of ${b.digest}`);
    t.false(await exists(blobFile(s, b.digest)), `file of ${b.digest}`);
  }
  t.false(await s.app.service.meta.hasManifest(repo as RepoName, img.manifest.digest as Digest));
}

async function assertKept(t: ExecutionContext, s: TestServer, img: Image): Promise<void> {
  for (const b of blobsOf(img)) {
    t.is(blobRow(s, b.digest), b.size, `row of ${b.digest}`);
    t.deepEqual(await fs.readFile(blobFile(s, b.digest)), b.bytes, `file of ${b.digest}`);
  }
}

/** Upstream GETs for a repository (manifests and blobs). */
const upstreamGets = (fake: FakeUpstream, repo: string) => fake.find({ method: 'GET', path: new RegExp(`^/v2/${repo}/`) }).length;

test('over maxBytes the least recently used image goes; re-pulling it fetches it again, byte for byte', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: '250KiB' });
  const imgs = { a: image('lru-a', [100 * KiB]), b: image('lru-b', [100 * KiB]), c: image('lru-c', [100 * KiB]) };
  for (const [k, img] of Object.entries(imgs)) fake.addImage(`library/${k}`, img, '1');

  for (const k of ['a', 'b', 'c'] as const) {
    await pull(t, s, `library/${k}`, '1', imgs[k]);
    await sleep(15); // distinct access times
  }
  // Re-pull a: served from the cache, and now the most recently used.
  const requestsBefore = fake.registryRequests;
  await pull(t, s, 'library/a', '1', imgs.a);
  t.is(fake.registryRequests, requestsBefore, 'the re-pull was served locally');

  const result = await s.app.evict();
  t.is(result.images, 1);
  t.is(result.blobs, 2);
  t.is(result.bytes, imgs.b.config.size + imgs.b.layers[0]!.size);
  t.true(result.cachedBytes <= 250 * KiB);
  await assertGone(t, s, 'library/b', imgs.b);
  await assertKept(t, s, imgs.a);
  await assertKept(t, s, imgs.c);
  t.is(rows(s, 'library/a').manifests, 1);
  t.true(s.logs.some((l) => l.includes('"msg":"cache eviction"') && l.includes(`"bytes":${result.bytes}`)), 'one info line per run');

  const metrics = (await http('GET', `${s.url}/metrics`)).body.toString();
  t.regex(metrics, /^regmirror_cache_evicted_blobs_total 2$/m);
  t.regex(metrics, new RegExp(`^regmirror_cache_evicted_bytes_total ${result.bytes}$`, 'm'));
  t.regex(metrics, /^regmirror_cache_evicted_images_total 1$/m);
  t.regex(metrics, new RegExp(`^regmirror_cache_bytes ${result.cachedBytes}$`, 'm'));

  // b comes back from the upstream: one manifest GET and one GET per blob, same digests.
  const gets = upstreamGets(fake, 'library/b');
  await pull(t, s, 'library/b', '1', imgs.b);
  t.is(upstreamGets(fake, 'library/b') - gets, 3);
  for (const b of blobsOf(imgs.b)) t.is(fake.blobGets(b.digest), 2, `${b.digest} fetched twice in all`);
  await assertKept(t, s, imgs.b);
});

test('under the budget and without maxAge nothing is evicted', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: '10MiB' });
  const img = image('under', [50 * KiB]);
  fake.addImage('library/u', img, '1');
  await pull(t, s, 'library/u', '1', img);
  const result = await s.app.evict();
  t.like(result, { images: 0, blobs: 0, bytes: 0, cachedBytes: img.config.size + img.layers[0]!.size });
  await assertKept(t, s, img);
});

test('pushed content is never evicted, even over budget; cached content goes', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: 1 });
  const pushed = image('pushed', [64 * KiB]);
  t.is((await pushImage(s.url, 'team/app', pushed, 'v1')).status, 201);
  const cached = image('cached', [64 * KiB]);
  fake.addImage('library/c', cached, '1');
  await pull(t, s, 'library/c', '1', cached);

  const result = await s.app.evict();
  t.is(result.images, 1);
  t.is(result.cachedBytes, 0, 'pushed bytes do not count against the budget');
  await assertGone(t, s, 'library/c', cached);
  await assertKept(t, s, pushed);
  t.like(rows(s, 'team/app'), { manifests: 1, blobLinks: 2 });
  const again = await s.app.evict();
  t.like(again, { images: 0, blobs: 0 });
  const m = await http('GET', `${s.url}/v2/team/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
  t.is(m.status, 200);
  t.is(fake.count({ path: /^\/v2\/team\// }), 0, 'pushed content never went upstream');
});

test('a push into a pull-through namespace that took blobs from the upstream is never evicted', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: 1 }, { namespaces: [{ prefix: 'mirror', upstream: UP, push: true }] });
  const img = image('bulk', [32 * KiB]);
  fake.addImage('library/app', img, '1.0');
  // What skopeo/crane do: HEAD each blob (answered from the upstream), skip it, PUT the manifest.
  for (const b of blobsOf(img)) t.is((await http('HEAD', `${s.url}/v2/mirror/library/app/blobs/${b.digest}`)).status, 200);
  const put = await http('PUT', `${s.url}/v2/mirror/library/app/manifests/1.0`, { headers: { 'content-type': img.manifest.mediaType }, body: img.manifest.bytes });
  t.is(put.status, 201);
  const result = await s.app.evict();
  t.like(result, { images: 0, blobs: 0, cachedBytes: 0 });
  await assertKept(t, s, img);
});

test('a blob shared by a pushed image and a cached image stays when the cached image is evicted', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: 1 });
  const base = makeLayer([{ name: 'base.bin', content: randomBytes(48 * KiB, 'shared-base') }], { gzip: false });
  const pushed = image('shared-pushed', [16 * KiB], [base]);
  const cached = image('shared-cached', [16 * KiB], [base]);
  t.is((await pushImage(s.url, 'team/base', pushed, 'v1')).status, 201);
  fake.addImage('library/x', cached, '1');
  await pull(t, s, 'library/x', '1', cached);

  const result = await s.app.evict();
  t.is(result.images, 1);
  t.is(result.blobs, 2, 'the cached image config and its own layer');
  t.deepEqual(rows(s, 'library/x'), { manifests: 0, blobLinks: 0, upstreamTags: 0 });
  t.deepEqual(await fs.readFile(blobFile(s, base.digest)), base.bytes, 'the shared layer stays');
  for (const b of [cached.config, cached.layers[1]!]) t.false(await exists(blobFile(s, b.digest)));
  await assertKept(t, s, pushed);
  // ...and the cached image still pulls (the shared layer is served locally after the upstream confirms it).
  await pull(t, s, 'library/x', '1', cached);
});

test('maxAge: images not pulled for that long go, recently pulled ones stay', async (t) => {
  // Ages are measured at a chosen time (app.evict(at)), so a loaded machine's slow pulls
  // cannot move an image across the maxAge line.
  const MAX_AGE_MS = 3_600_000;
  const { fake, s } = await setup(t, { maxAge: '1h' });
  const old = image('age-old', [8 * KiB]);
  const touched = image('age-touched', [8 * KiB]);
  const fresh = image('age-fresh', [8 * KiB]);
  fake.addImage('library/old', old, '1');
  fake.addImage('library/touched', touched, '1');
  fake.addImage('library/fresh', fresh, '1');
  await pull(t, s, 'library/old', '1', old);
  await pull(t, s, 'library/touched', '1', touched);
  const before = Date.now();
  await waitFor(() => Date.now() > before + 20, 1_000, 'the clock to move on');
  const line = Date.now();
  await pull(t, s, 'library/fresh', '1', fresh);
  // A tag lookup alone (what a node with the image already present does) counts as use.
  t.is((await http('HEAD', `${s.url}/v2/library/touched/manifests/1`, { headers: { accept: ACCEPT_ALL } })).status, 200);

  // Evict as if it were maxAge after `line`: everything used before it is too old.
  const result = await s.app.evict(line - 1 + MAX_AGE_MS);
  t.is(result.images, 1);
  await assertGone(t, s, 'library/old', old);
  await assertKept(t, s, touched);
  await assertKept(t, s, fresh);
});

test('a blob GET in progress when its blob is evicted completes with the right bytes', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: 1 });
  const img = image('inflight', [24 * MiB]);
  const layer = img.layers[0]!;
  fake.addImage('library/big', img, '1');
  await pull(t, s, 'library/big', '1', img);

  const res = await request(`${s.url}/v2/library/big/blobs/${layer.digest}`, { dispatcher: agent });
  t.is(res.statusCode, 200);
  const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  const first = await it.next();
  chunks.push(first.value as Buffer);
  // The client stops reading: the server is still sending from the open file.
  const result = await s.app.evict();
  t.is(result.images, 1);
  t.false(await exists(blobFile(s, layer.digest)), 'file unlinked while being served');
  t.is(blobRow(s, layer.digest), undefined);
  for (let n = await it.next(); !n.done; n = await it.next()) chunks.push(n.value);
  const body = Buffer.concat(chunks);
  t.is(body.length, layer.size);
  t.true(body.equals(layer.bytes), 'complete and correct');
});

test('a blob evicted between its lookup and the file open is fetched from the upstream again (no 500)', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: 1 });
  const img = image('race', [64 * KiB, 6 * MiB]);
  fake.addImage('library/race', img, '1');
  await pull(t, s, 'library/race', '1', img);

  // Evict right after the lookup answered "local file", before the handler opens it.
  const pullThrough = s.app.pull;
  const original = pullThrough.getBlob.bind(pullThrough);
  let evictions = 0;
  pullThrough.getBlob = async (...args: Parameters<typeof original>) => {
    const answer = await original(...args);
    if (answer.body && evictions++ === 0) await s.app.evict();
    return answer;
  };
  for (const b of img.layers) {
    evictions = 0;
    const gets = fake.blobGets(b.digest);
    const r = await http('GET', `${s.url}/v2/library/race/blobs/${b.digest}`);
    t.is(r.status, 200, `small and large (sendfile path) blobs: ${b.size}`);
    t.true(r.body.equals(b.bytes));
    t.is(fake.blobGets(b.digest) - gets, 1, 'fetched from the upstream again');
  }
});

test('config: bad cache values are rejected at start, naming the key', async (t) => {
  const dir = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'regmirror-evict-cfg-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const run = promisify(execFile);
  for (const [yaml, re] of [
    ['cache: { maxBytes: 12 parsecs }', /cache\.maxBytes: "12 parsecs" is not a size/],
    ['cache: { maxAge: 0 }', /cache\.maxAge: must be greater than zero/],
    ['cache: { evictInterval: 500ms }', /cache\.evictInterval: must be at least 1s/],
    ['cache: { maxbytes: 1GiB }', /cache\.maxbytes: unknown key/],
  ] as const) {
    const file = path.join(dir, 'bad.yml');
    await fs.writeFile(file, `${yaml}\n`);
    const e = await t.throwsAsync(run(process.execPath, [CLI, 'config', 'check', '--config', file]));
    t.regex((e as Error & { stderr: string }).stderr, re);
  }
});

test('offline: regmirror gc --evict applies the cache policy (dry run first)', async (t) => {
  const { fake, s } = await setup(t, { maxBytes: '150KiB' });
  const older = image('cli-older', [100 * KiB]);
  const newer = image('cli-newer', [100 * KiB]);
  fake.addImage('library/older', older, '1');
  fake.addImage('library/newer', newer, '1');
  await pull(t, s, 'library/older', '1', older);
  await sleep(15);
  await pull(t, s, 'library/newer', '1', newer);
  await s.app.close(); // flushes access times

  const storage = path.join(s.dataDir, 'storage');
  const config = path.join(s.dataDir, 'regmirror.yml');
  await fs.writeFile(config, `storage: ${storage}\ncache: { maxBytes: 150KiB }\n`);
  const run = (...args: string[]) => promisify(execFile)(process.execPath, [CLI, 'gc', '--config', config, ...args]);

  const dry = JSON.parse((await run('--evict', '--dry-run')).stdout) as { eviction: { images: number; blobs: number; bytes: number; dryRun: boolean } };
  t.like(dry.eviction, { images: 1, blobs: 2, dryRun: true });
  for (const b of blobsOf(older)) t.true(await exists(blobFile(s, b.digest)), 'the dry run removed nothing');

  const real = JSON.parse((await run('--evict')).stdout) as { eviction: { images: number; blobs: number; bytes: number; cachedBytes: number } };
  t.like(real.eviction, { images: 1, blobs: 2, bytes: older.config.size + older.layers[0]!.size });
  t.is(real.eviction.cachedBytes, newer.config.size + newer.layers[0]!.size);
  for (const b of blobsOf(older)) t.false(await exists(blobFile(s, b.digest)));
  for (const b of blobsOf(newer)) t.deepEqual(await fs.readFile(blobFile(s, b.digest)), b.bytes);
  const meta = openDb(t, storage);
  for (const b of blobsOf(older)) t.is(meta.blobSize(b.digest as Digest), undefined);
  for (const b of blobsOf(newer)) t.is(meta.blobSize(b.digest as Digest), b.size);
  t.false(meta.hasManifest('library/older' as RepoName, older.manifest.digest as Digest));
  t.true(meta.hasManifest('library/newer' as RepoName, newer.manifest.digest as Digest));

  // Without a policy, --evict says so and removes nothing.
  await fs.writeFile(config, `storage: ${storage}\n`);
  const none = await run('--evict');
  t.regex(none.stderr, /nothing is evicted/);
  t.like((JSON.parse(none.stdout) as { eviction: { images: number } }).eviction, { images: 0 });
  for (const b of blobsOf(newer)) t.true(await exists(blobFile(s, b.digest)));
});
