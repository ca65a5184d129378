/**
 * MetadataStore eviction and last-access bookkeeping at the SQL level (no files, no HTTP):
 * what one evictImage transaction removes and what it must leave.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { AccessRecorder } from '../../src/storage/access.js';
import { MetadataStore, type NewManifest } from '../../src/storage/db.js';
import { LocalMetadataStore } from '../../src/storage/local/metadata.js';

const d = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}` as Digest;
const repo = 'library/app' as RepoName;
const never = () => false;

async function store(t: ExecutionContext): Promise<MetadataStore> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-evict-db-'));
  const meta = new MetadataStore(path.join(dir, 'regmirror.db'));
  t.teardown(async () => {
    meta.close();
    await fs.rm(dir, { recursive: true, force: true });
  });
  return meta;
}

function manifest(name: string, refs: NewManifest['refs']): NewManifest {
  const body = Buffer.from(name);
  return { digest: d(name), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: body.length, artifactType: null, subject: null, annotations: null, body, refs };
}

/** A cached image: manifest + blobs (linked as a fill would), tagged `tag` upstream. */
function cacheImage(meta: MetadataStore, name: string, blobs: string[], tag: string | null): NewManifest {
  const m = manifest(name, blobs.map((b) => ({ digest: d(b), kind: 'blob' as const })));
  meta.putCachedManifest(repo, m, tag ? { name: tag, acceptKey: 'k' } : null);
  for (const b of blobs) meta.recordBlob(repo, d(b), 100, 'cached');
  return m;
}

test('an index and its exclusive children go; a child another cached index shares stays', async (t) => {
  const meta = await store(t);
  const shared = cacheImage(meta, 'amd64', ['layer-shared', 'cfg-amd64'], null);
  const arm = cacheImage(meta, 'arm64', ['layer-arm', 'cfg-arm'], null);
  const idx1 = manifest('index-1', [shared.digest, arm.digest].map((digest) => ({ digest, kind: 'manifest' as const })));
  const idx2 = manifest('index-2', [{ digest: shared.digest, kind: 'manifest' as const }]);
  meta.putCachedManifest(repo, idx1, { name: 'v1', acceptKey: 'k' });
  meta.putCachedManifest(repo, idx2, { name: 'v2', acceptKey: 'k' });

  const roots = meta.cachedImages().map((i) => i.digest).sort();
  t.deepEqual(roots, [idx1.digest, idx2.digest].sort(), 'only the indexes are images');
  const ev = meta.evictImage(meta.repoId(repo)!, idx1.digest, Date.now(), never)!;
  t.is(ev.manifests, 2, 'index-1 and its arm64 child');
  t.deepEqual(ev.blobs.map((b) => b.digest).sort(), [d('layer-arm'), d('cfg-arm')].sort());
  t.false(meta.hasManifest(repo, arm.digest));
  t.true(meta.hasManifest(repo, shared.digest));
  t.is(meta.repoBlobSize(repo, d('layer-shared')), 100);
  t.is(meta.upstreamTag(repo, 'v1', 'k'), undefined);
  t.truthy(meta.upstreamTag(repo, 'v2', 'k'));
});

test('evictImage re-checks its candidate: touched since chosen, pushed since, or a fill in flight', async (t) => {
  const meta = await store(t);
  const img = cacheImage(meta, 'img', ['l1', 'l2'], 'latest');
  const id = meta.repoId(repo)!;
  const [candidate] = meta.cachedImages();
  t.is(meta.evictImage(id, img.digest, candidate!.lastAccess - 1, never), null, 'accessed after it was chosen');
  // A blob whose fill is in flight keeps its row (its link goes with the image).
  const ev = meta.evictImage(id, img.digest, candidate!.lastAccess, (x) => x === d('l2'))!;
  t.deepEqual(ev.blobs.map((b) => b.digest), [d('l1')]);
  t.is(meta.blobSize(d('l2')), 100);

  const pushed = cacheImage(meta, 'img2', ['l3'], null);
  meta.linkBlob(repo, d('l3'), 'pushed'); // a push of a blob that was linked as cached
  const ev2 = meta.evictImage(id, pushed.digest, Date.now(), never)!;
  t.deepEqual(ev2.blobs, [], 'a blob linked as pushed stays');
  t.is(meta.repoBlobSize(repo, d('l3')), 100);
});

test('cachedBytes counts blobs that came from upstream and nothing pushed needs', async (t) => {
  const meta = await store(t);
  cacheImage(meta, 'c1', ['a', 'b'], 't');
  t.is(meta.cachedBytes(), 200);
  meta.recordBlob('team/x' as RepoName, d('b'), 100, 'pushed');
  t.is(meta.cachedBytes(), 100);
  meta.putManifest('team/y' as RepoName, manifest('p', [{ digest: d('a'), kind: 'blob' }]), ['v1'], 'pushed');
  t.is(meta.cachedBytes(), 0, 'referenced by a pushed manifest in another repository');
});

test('AccessRecorder writes nothing until flush, then one forward-only update per entry', async (t) => {
  const meta = await store(t);
  const img = cacheImage(meta, 'acc', ['x'], null);
  const read = () =>
    meta.db.prepare<[], { m: number; b: number }>('SELECT (SELECT last_access FROM manifests) AS m, (SELECT last_access FROM blobs) AS b').get()!;
  const initial = read();
  let now = initial.m + 60_000;
  const rec = new AccessRecorder(new LocalMetadataStore(meta), () => now);
  rec.manifest(repo, img.digest);
  rec.blob(d('x'));
  rec.blob(d('x'));
  t.deepEqual(read(), initial, 'no write per request');
  t.is(rec.pending, 2);
  await rec.flush();
  t.deepEqual(read(), { m: initial.m + 60_000, b: initial.m + 60_000 });
  now = initial.m + 1; // an older time never moves last_access back
  rec.blob(d('x'));
  await rec.flush();
  t.is(read().b, initial.m + 60_000);
});
