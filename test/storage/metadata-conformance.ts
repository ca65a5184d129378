/**
 * Driver conformance suite for the metadata port (MetadataStore in src/storage/ports.ts):
 * every driver runs these same tests (test/storage/metadata-<driver>.test.ts), through
 * the interface only, so what they hold a driver to is the port's contract.
 */
import type { ExecutionContext, TestFn } from 'ava';
import { createHash } from 'node:crypto';
import type { Digest, RepoName } from '../../src/registry/names.js';
import type { MetadataOps, MetadataStore, NewManifest } from '../../src/storage/ports.js';

/** A new, empty store; the factory closes it (and removes what it made) at teardown. */
export type MetadataFactory = (t: ExecutionContext) => Promise<MetadataStore>;

export const dg = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}` as Digest;
const A = 'conf/a' as RepoName;
const B = 'conf/b' as RepoName;
const never = () => false;
const IMAGE = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';

export function manifest(name: string, refs: NewManifest['refs'], more: Partial<NewManifest> = {}): NewManifest {
  const body = Buffer.from(`{"name":${JSON.stringify(name)}}`);
  return { digest: dg(name), mediaType: IMAGE, size: body.length, artifactType: null, subject: null, annotations: null, body, refs, ...more };
}

const blobRefs = (...names: string[]) => names.map((n) => ({ digest: dg(n), kind: 'blob' as const }));

/** A cached image as a pull-through stores it: the manifest (tag resolved upstream), then its blobs. */
async function cacheImage(meta: MetadataOps, repo: RepoName, name: string, blobs: string[], tag: string | null, size = 100): Promise<NewManifest> {
  const m = manifest(name, blobRefs(...blobs));
  await meta.putCachedManifest(repo, m, tag ? { name: tag, acceptKey: 'up|lib/x|k' } : null);
  for (const b of blobs) await meta.recordBlob(repo, dg(b), size, 'cached');
  return m;
}

/** A pushed image: blobs uploaded, then the manifest with its tag. */
async function pushImage(meta: MetadataOps, repo: RepoName, name: string, blobs: string[], tag: string, size = 100): Promise<NewManifest> {
  for (const b of blobs) await meta.recordBlob(repo, dg(b), size, 'pushed');
  const m = manifest(name, blobRefs(...blobs));
  await meta.putManifest(repo, m, [tag], 'pushed');
  return m;
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

export function metadataConformance(test: TestFn, name: string, factory: MetadataFactory): void {
  const title = (s: string) => `${name}: ${s}`;

  test(title('repositories: known once anything is stored there; the catalog lists those with a manifest or tag, sorted and paged'), async (t) => {
    const meta = await factory(t);
    t.false(await meta.repoExists(A));
    t.deepEqual(await meta.listRepositories('', 100), []);
    await meta.recordBlob(A, dg('only-a-blob'), 1, 'pushed');
    t.true(await meta.repoExists(A), 'a blob upload makes the repository known');
    t.deepEqual(await meta.listRepositories('', 100), [], 'but not listed: no manifest, no tag');
    for (const r of ['conf/c', 'conf/a', 'conf/b', 'conf/d']) await pushImage(meta, r as RepoName, `img-${r}`, [], 'v1');
    t.deepEqual(await meta.listRepositories('', 100), ['conf/a', 'conf/b', 'conf/c', 'conf/d']);
    t.deepEqual(await meta.listRepositories('', 2), ['conf/a', 'conf/b']);
    t.deepEqual(await meta.listRepositories('conf/b', 2), ['conf/c', 'conf/d']);
    t.deepEqual(await meta.listRepositories('conf/d', 2), []);
    t.false(await meta.repoExists('conf/never' as RepoName));
  });

  test(title('blobs are visible only where linked; a pushed link wins over a cached one; linking a blob not stored writes nothing'), async (t) => {
    const meta = await factory(t);
    const x = dg('x');
    t.is(await meta.blobSize(x), undefined);
    await meta.recordBlob(A, x, 42, 'cached');
    t.is(await meta.blobSize(x), 42);
    t.is(await meta.repoBlobSize(A, x), 42);
    t.is(await meta.repoBlobSize(B, x), undefined, 'stored, but not linked to B');
    t.false(await meta.blobPushed(x));
    t.true(await meta.linkBlob(B, x, 'cached'));
    t.is(await meta.repoBlobSize(B, x), 42);
    t.true(await meta.linkBlob(B, x, 'pushed'), 'a push of a blob linked as cached makes it pushed');
    t.true(await meta.blobPushed(x));
    t.true(await meta.linkBlob(B, x, 'cached'), 'a later cached link does not demote it');
    t.true(await meta.blobPushed(x));
    t.true(await meta.unlinkBlob(B, x));
    t.false(await meta.unlinkBlob(B, x), 'already gone');
    t.is(await meta.repoBlobSize(B, x), undefined);
    t.false(await meta.blobPushed(x), 'the pushed link went with it');
    t.false(await meta.linkBlob(B, dg('not-stored'), 'pushed'), 'no row: not linked');
    t.is(await meta.repoBlobSize(B, dg('not-stored')), undefined);
    t.false(await meta.unlinkBlob('conf/never' as RepoName, x));
    await meta.putCachedManifest(A, manifest('m', blobRefs('x', 'y')), null);
    t.true(await meta.referencedInRepo(A, x));
    t.true(await meta.referencedInRepo(A, dg('y')), 'a reference, stored or not');
    t.false(await meta.referencedInRepo(B, x));
  });

  test(title('manifests, tags and referrers: exact bytes back, tags paged, delete by tag or digest, referrers by subject'), async (t) => {
    const meta = await factory(t);
    await meta.recordBlob(A, dg('l1'), 10, 'pushed');
    const m = manifest('app', blobRefs('l1'), { annotations: '{"k":"v"}' });
    await meta.putManifest(A, m, ['v1', 'latest'], 'pushed');
    const got = await meta.manifest(A, m.digest);
    t.truthy(got);
    t.true(got!.body.equals(m.body), 'the exact bytes');
    t.like(got, { digest: m.digest, mediaType: IMAGE, size: m.size, artifactType: null, subject: null, annotations: '{"k":"v"}' });
    t.true(await meta.hasManifest(A, m.digest));
    t.false(await meta.hasManifest(B, m.digest), 'held by A only');
    t.is(await meta.manifest(B, m.digest), undefined);
    t.like(await meta.tag(A, 'v1'), { digest: m.digest, provenance: 'pushed' });
    t.is(typeof (await meta.tag(A, 'v1'))!.checkedAt, 'number');
    t.is(await meta.tag(A, 'nope'), undefined);
    for (const tag of ['b', 'a', 'c']) await meta.putManifest(A, m, [tag], 'pushed');
    t.deepEqual(await meta.listTags(A, '', 100), ['a', 'b', 'c', 'latest', 'v1']);
    t.deepEqual(await meta.listTags(A, 'b', 2), ['c', 'latest']);
    t.deepEqual(await meta.listTags('conf/never' as RepoName, '', 10), []);
    t.true(await meta.deleteTag(A, 'a'));
    t.false(await meta.deleteTag(A, 'a'));
    t.true(await meta.hasManifest(A, m.digest), 'deleting a tag keeps the manifest');

    // Referrers: manifests of the repository whose subject is the digest, sorted by digest.
    const sig = manifest('sig', [], { subject: m.digest, artifactType: 'application/x-sig' });
    const sbom = manifest('sbom', [], { subject: m.digest, artifactType: 'application/x-sbom', annotations: '{"a":"b"}' });
    await meta.putManifest(A, sig, [], 'pushed');
    await meta.putManifest(A, sbom, [], 'pushed');
    await meta.putManifest(B, manifest('other', [], { subject: m.digest }), [], 'pushed');
    const refs = await meta.referrers(A, m.digest);
    t.deepEqual(
      refs,
      [sig, sbom]
        .map((r) => ({ digest: r.digest, mediaType: r.mediaType, size: r.size, artifactType: r.artifactType, annotations: r.annotations }))
        .sort((x, y) => (x.digest < y.digest ? -1 : 1)),
    );
    t.deepEqual(await meta.referrers(A, dg('no-subject')), []);

    t.true(await meta.deleteManifest(A, m.digest));
    t.false(await meta.hasManifest(A, m.digest));
    t.deepEqual(await meta.listTags(A, '', 100), [], 'every tag pointing at it went with it');
    t.false(await meta.deleteManifest(A, m.digest), 'already gone');
  });

  test(title('upstream tag cache: per Accept key, touched, listed, variants across local paths, adoption, forgotten'), async (t) => {
    const meta = await factory(t);
    const child = manifest('child', blobRefs('c1'));
    const index = manifest('index', [{ digest: child.digest, kind: 'manifest' }], { mediaType: INDEX });
    await meta.putCachedManifest(A, child, null);
    await meta.putCachedManifest(A, index, { name: '1.0', acceptKey: 'hub|lib/app|index' });
    await meta.putCachedManifest(A, child, { name: '1.0', acceptKey: 'hub|lib/app|single' });
    await meta.putCachedManifest(B, manifest('elsewhere', []), { name: '1.0', acceptKey: 'other|lib/app|index' });
    const first = await meta.upstreamTag(A, '1.0', 'hub|lib/app|index');
    t.is(first?.digest, index.digest);
    t.is((await meta.upstreamTag(A, '1.0', 'hub|lib/app|single'))?.digest, child.digest);
    t.is(await meta.upstreamTag(A, '1.0', 'hub|lib/app|nope'), undefined);
    t.is(await meta.upstreamTag(B, '1.0', 'hub|lib/app|index'), undefined, 'per repository');
    t.is(await meta.tag(A, '1.0'), undefined, 'an upstream tag is no pushed tag');
    t.deepEqual(await meta.listTags(A, '', 10), []);
    t.deepEqual(await meta.upstreamTagNames(A), ['1.0']);
    t.true(await meta.hasManifest(A, index.digest));

    await new Promise((r) => setTimeout(r, 5));
    await meta.touchUpstreamTag(A, '1.0', 'hub|lib/app|index');
    t.true((await meta.upstreamTag(A, '1.0', 'hub|lib/app|index'))!.checkedAt > first!.checkedAt, 'checked again: now');

    const variants = await meta.upstreamTagVariants('1.0', 'hub|lib/app|');
    t.deepEqual(variants.map((v) => v.digest).sort(), [index.digest, child.digest].sort(), 'only this upstream repository');
    t.is(variants[0]!.digest, index.digest, 'newest check first');
    t.is(variants.find((v) => v.digest === index.digest)!.mediaType, INDEX);

    // Another local path of the same upstream repository adopts the cached index with its child.
    const C = 'conf/c' as RepoName;
    const v = variants.find((x) => x.digest === index.digest)!;
    await meta.adoptCachedManifest(v.repo, C, index.digest);
    t.true(await meta.hasManifest(C, index.digest));
    t.true(await meta.hasManifest(C, child.digest), 'with the child manifest it holds');
    t.true(await meta.referencedInRepo(C, dg('c1')), 'so the blobs are reachable there');
    await meta.adoptCachedManifest(v.repo, A, index.digest); // its own repository: nothing to do
    t.true(await meta.hasManifest(A, index.digest));

    await meta.deleteUpstreamTag(A, '1.0');
    t.is(await meta.upstreamTag(A, '1.0', 'hub|lib/app|index'), undefined);
    t.is(await meta.upstreamTag(A, '1.0', 'hub|lib/app|single'), undefined, 'every Accept variant');
    t.deepEqual(await meta.upstreamTagNames(A), []);
    t.true(await meta.hasManifest(A, index.digest), 'the manifest itself stays');
  });

  test(title('upstream lists: one per key for every reader; a later fetch replaces it, an earlier one finishing late never does'), async (t) => {
    const meta = await factory(t);
    const key = 'tags|hub|library/x';
    t.is(await meta.upstreamList(key), undefined);
    await meta.putUpstreamList(key, '["a","b"]', 1_000);
    t.deepEqual(await meta.upstreamList(key), { body: '["a","b"]', fetchedAt: 1_000 });
    await meta.putUpstreamList(key, '["a"]', 500);
    t.deepEqual(await meta.upstreamList(key), { body: '["a","b"]', fetchedAt: 1_000 }, 'an older fetch stored late is ignored');
    const big = JSON.stringify(Array.from({ length: 20_000 }, (_, i) => `tag-${i}-é`));
    await meta.putUpstreamList(key, big, 2_000);
    t.deepEqual(await meta.upstreamList(key), { body: big, fetchedAt: 2_000 }, 'a newer one replaces it, exact text');
    t.is(await meta.upstreamList('tags|hub|library/y'), undefined, 'per key');
    await meta.transaction(async (tx) => tx.putUpstreamList('referrers|hub|library/x|sha256:00', '[]', 3_000), { dryRun: true });
    t.is(await meta.upstreamList('referrers|hub|library/x|sha256:00'), undefined, 'part of a transaction like every write');
    await meta.putUpstreamList('referrers|hub|library/old|sha256:00', '[]', 1_999);
    t.is(await meta.deleteUpstreamListsBefore(2_000), 1, 'gc: only the list fetched before the cutoff');
    t.is(await meta.upstreamList('referrers|hub|library/old|sha256:00'), undefined);
    t.deepEqual(await meta.upstreamList(key), { body: big, fetchedAt: 2_000 }, 'one fetched at the cutoff stays');
    t.is(await meta.deleteUpstreamListsBefore(2_000), 0);
  });

  test(title('access times move forward only and order the eviction candidates'), async (t) => {
    const meta = await factory(t);
    const old = await cacheImage(meta, A, 'old', ['o1'], null);
    const recent = await cacheImage(meta, A, 'recent', ['r1'], null);
    const base = Date.now();
    await meta.touchAccess(new Map([[dg('o1'), base - 50_000], [dg('r1'), base + 50_000]]), [
      { repo: A, digest: old.digest, at: base + 10_000 },
      { repo: A, digest: recent.digest, at: base + 20_000 },
      { repo: 'conf/never' as RepoName, digest: old.digest, at: base }, // unknown repository: ignored
    ]);
    await meta.touchAccess(new Map(), [{ repo: A, digest: recent.digest, at: base - 100_000 }]); // older: ignored
    const images = await meta.cachedImages();
    t.deepEqual(
      images.map((i) => [i.digest, i.lastAccess]).sort(),
      [
        [old.digest, base + 10_000],
        [recent.digest, base + 20_000],
      ].sort(),
    );
    // Loose blobs: cached links no manifest of the repository references, idle since before `before`.
    await meta.recordBlob(B, dg('loose'), 7, 'cached');
    const later = Date.now() + 1_000_000;
    await meta.touchAccess(new Map([[dg('loose'), later]]), []);
    t.deepEqual(await meta.looseBlobs(later), [], 'accessed at `before`: not idle before it');
    const loose = await meta.looseBlobs(later + 1);
    t.deepEqual(loose.map((l) => [l.digest, l.lastAccess]), [[dg('loose'), later]]);
  });

  test(title('eviction: a loose cached link to content pushed content reaches (directly, through an index) is no candidate'), async (t) => {
    const meta = await factory(t);
    // Linked as cached only, in B, where no manifest references them (loose links).
    for (const b of ['reach', 'deep', 'free']) await meta.recordBlob(B, dg(b), 5, 'cached');
    await meta.putManifest(A, manifest('pushed-ref', blobRefs('reach')), ['v1'], 'pushed');
    const platform = manifest('platform', blobRefs('deep'));
    await meta.putManifest(A, platform, [], 'cached');
    await meta.putManifest(A, manifest('pushed-index', [{ digest: platform.digest, kind: 'manifest' }]), ['v2'], 'pushed');
    const loose = await meta.looseBlobs(Date.now() + 60_000);
    t.deepEqual(loose.map((l) => l.digest), [dg('free')], 'only the link nothing pushed reaches');
    t.is(await meta.cachedBytes(), 5, 'and only it counts as cached bytes');
  });

  test(title('eviction: cached bytes exclude what pushed content reaches; an image goes whole, re-checked (notAfter, busy)'), async (t) => {
    const meta = await factory(t);
    const img = await cacheImage(meta, A, 'img', ['shared', 'own', 'busy'], 'v1');
    await pushImage(meta, B, 'pushed', ['shared'], 'v1');
    t.is(await meta.cachedBytes(), 200, 'own + busy; shared is reached by a pushed manifest');
    const [candidate] = await meta.cachedImages();
    t.is(candidate!.digest, img.digest, 'only the cached image is a candidate');
    t.is(await meta.evictImage(candidate!.repo, img.digest, candidate!.lastAccess - 1, never), null, 'accessed after it was chosen');
    t.true(await meta.hasManifest(A, img.digest), 'untouched');

    const ev = await meta.evictImage(candidate!.repo, img.digest, candidate!.lastAccess, (x) => x === dg('busy'));
    t.truthy(ev);
    t.is(ev!.manifests, 1);
    t.deepEqual(ev!.blobs, [{ digest: dg('own'), size: 100 }], 'shared (pushed elsewhere) and busy (a fill claims it) keep their rows');
    t.false(await meta.hasManifest(A, img.digest));
    t.is(await meta.upstreamTag(A, 'v1', 'up|lib/x|k'), undefined, 'its upstream tag rows went too');
    t.is(await meta.blobSize(dg('own')), undefined);
    t.is(await meta.blobSize(dg('busy')), 100);
    t.is(await meta.blobSize(dg('shared')), 100);
    t.is(await meta.repoBlobSize(A, dg('shared')), undefined, 'the cached link went');
    t.is(await meta.repoBlobSize(B, dg('shared')), 100, 'the pushed one stays');
    t.deepEqual(await meta.cachedImages(), []);
    t.is(await meta.evictImage(candidate!.repo, img.digest, Date.now(), never), null, 'gone already');

    // Loose blob: its link goes, and its row once nothing else needs it.
    await meta.recordBlob(A, dg('lone'), 9, 'cached');
    const [lone] = await meta.looseBlobs(Date.now() + 60_000);
    t.is(lone!.digest, dg('lone'));
    t.is(await meta.evictLooseBlob(lone!.repo, dg('lone'), lone!.lastAccess - 1, never), null, 'accessed after notAfter');
    t.true(await meta.linkBlob(A, dg('lone'), 'pushed'));
    t.is(await meta.evictLooseBlob(lone!.repo, dg('lone'), lone!.lastAccess, never), null, 'pushed since it was chosen');
    await meta.recordBlob(B, dg('lone2'), 8, 'cached');
    const [lone2] = await meta.looseBlobs(Date.now() + 60_000);
    t.is(lone2!.digest, dg('lone2'), 'a pushed link is no candidate');
    t.deepEqual(await meta.evictLooseBlob(lone2!.repo, dg('lone2'), lone2!.lastAccess, never), { manifests: 0, blobs: [{ digest: dg('lone2'), size: 8 }] });
    t.is(await meta.blobSize(dg('lone2')), undefined);
    t.deepEqual(await meta.looseBlobs(Date.now() + 60_000), []);
  });

  test(title('GC queries: dangling links, unreferenced blobs, every blob row, unreferenced manifest content'), async (t) => {
    const meta = await factory(t);
    await pushImage(meta, A, 'kept', ['k1'], 'v1');
    await meta.recordBlob(A, dg('abandoned-push'), 5, 'pushed'); // an upload no manifest took
    await meta.recordBlob(B, dg('cached-alone'), 6, 'cached');
    t.is(await meta.unlinkDanglingBlobs(60_000), 1, 'cached links always; a young pushed one stays');
    t.is(await meta.repoBlobSize(A, dg('abandoned-push')), 5);
    t.deepEqual(await meta.unreferencedBlobs(), [dg('cached-alone')]);
    t.is(await meta.unlinkDanglingBlobs(-60_000), 1, 'past the grace period the pushed one goes too');
    t.deepEqual((await meta.unreferencedBlobs()).sort(), [dg('abandoned-push'), dg('cached-alone')].sort());
    t.is(await meta.repoBlobSize(A, dg('k1')), 100, 'referenced by a manifest: kept');

    const rows = await all(meta.allBlobs());
    t.deepEqual(rows, [dg('k1'), dg('abandoned-push'), dg('cached-alone')].sort().map((d) => ({ digest: d, size: d === dg('k1') ? 100 : d === dg('abandoned-push') ? 5 : 6 })), 'sorted by digest');
    await meta.deleteBlobRow(dg('cached-alone'));
    t.is(await meta.blobSize(dg('cached-alone')), undefined);
    await meta.recordBlob(B, dg('linked'), 1, 'pushed');
    await meta.deleteBlobRow(dg('linked'));
    t.is(await meta.repoBlobSize(B, dg('linked')), undefined, 'its links go with the row');

    t.is(await meta.deleteUnreferencedManifestContent(), 0);
    await meta.deleteManifest(A, dg('kept'));
    t.is(await meta.deleteUnreferencedManifestContent(), 1, 'content no repository holds');
    t.is(await meta.deleteUnreferencedManifestContent(), 0);
  });

  test(title('eviction: a cached manifest that pushed content references (even as a blob) is never evicted'), async (t) => {
    const meta = await factory(t);
    const img = await cacheImage(meta, A, 'as-blob', ['ab-layer'], 'v1');
    // A pushed artifact whose layer descriptor is the cached manifest's digest.
    await meta.putManifest(B, manifest('artifact', [{ digest: img.digest, kind: 'blob' }]), ['v1'], 'pushed');
    // Listing it as a candidate is allowed (every unit re-checks); evicting it is not.
    const listed = (await meta.cachedImages()).find((c) => c.digest === img.digest);
    if (listed) t.is(await meta.evictImage(listed.repo, img.digest, Date.now(), never), null, 'refused: pushed content reaches it');
    t.true(await meta.hasManifest(A, img.digest), 'still held');
  });

  test(title('allBlobs: every row once, by digest, across more rows than one page'), async (t) => {
    const meta = await factory(t);
    const want: string[] = [];
    for (let i = 0; i < 2345; i++) {
      const d = dg(`many-${i}`);
      want.push(d);
      await meta.recordBlob(A, d, i, 'cached');
    }
    const rows = await all(meta.allBlobs());
    t.deepEqual(rows.map((r) => r.digest), want.sort(), 'each row once, sorted by digest');
    t.is(rows.find((r) => r.digest === dg('many-2344'))?.size, 2344);
  });

  test(title('transaction: commits all of fn together; a throw rolls all back and rethrows; a dry run returns the result and keeps nothing'), async (t) => {
    const meta = await factory(t);
    const m = manifest('tx', blobRefs('tx-l'));
    const result = await meta.transaction(async (tx) => {
      await tx.recordBlob(A, dg('tx-l'), 3, 'pushed');
      await tx.putManifest(A, m, ['v1'], 'pushed');
      return tx.hasManifest(A, m.digest);
    });
    t.true(result, 'fn sees its own writes');
    t.true(await meta.hasManifest(A, m.digest), 'committed');
    t.is(await meta.repoBlobSize(A, dg('tx-l')), 3);

    const boom = new Error('boom');
    const err = await t.throwsAsync(
      meta.transaction(async (tx) => {
        await tx.recordBlob(B, dg('rolled-back'), 1, 'pushed');
        await tx.deleteTag(A, 'v1');
        await new Promise((r) => setTimeout(r, 5)); // fn may await other work
        throw boom;
      }),
    );
    t.is(err, boom);
    t.is(await meta.blobSize(dg('rolled-back')), undefined, 'rolled back');
    t.is((await meta.tag(A, 'v1'))?.digest, m.digest);

    const dry = await meta.transaction(
      async (tx) => {
        const ev = await tx.deleteManifest(A, m.digest);
        await tx.recordBlob(B, dg('dry'), 1, 'pushed');
        return { ev, inside: await tx.hasManifest(A, m.digest) };
      },
      { dryRun: true },
    );
    t.deepEqual(dry, { ev: true, inside: false });
    t.true(await meta.hasManifest(A, m.digest), 'a dry run changes nothing');
    t.is(await meta.blobSize(dg('dry')), undefined);
  });

  test(title('transaction: calls made while one is open never see its uncommitted state, and their own writes are kept'), async (t) => {
    const meta = await factory(t);
    const m = await pushImage(meta, A, 'seen', [], 'v1');
    let inside!: () => void;
    const deleted = new Promise<void>((r) => (inside = r));
    let finish!: () => void;
    const held = new Promise<void>((r) => (finish = r));
    const dry = meta.transaction(
      async (tx) => {
        await tx.deleteManifest(A, m.digest);
        await tx.recordBlob(A, dg('only-in-dry-run'), 1, 'pushed');
        inside();
        await held;
      },
      { dryRun: true },
    );
    await deleted;
    // Outside the transaction: a read and a write while it is open.
    const read = meta.hasManifest(A, m.digest);
    const peek = meta.blobSize(dg('only-in-dry-run'));
    const write = meta.recordBlob(B, dg('outside'), 4, 'pushed');
    await new Promise((r) => setTimeout(r, 20));
    finish();
    await dry;
    t.true(await read, 'never the rolled-back delete');
    t.is(await peek, undefined, 'never the rolled-back row');
    await write;
    t.is(await meta.repoBlobSize(B, dg('outside')), 4, 'a write outside the dry run is kept');
  });

  test(title('concurrency: two transactions and concurrent single changes each land whole; none is lost'), async (t) => {
    const meta = await factory(t);
    const seen: Array<[boolean, boolean]> = [];
    let observing = true;
    const observer = (async () => {
      for (let i = 0; observing && i < 2000; i++) {
        const tags = await meta.listTags(A, '', 100); // one read: one snapshot
        seen.push([tags.includes('a1'), tags.includes('a2')]);
        await new Promise((r) => setImmediate(r));
      }
    })();
    const change = (suffix: string) =>
      meta.transaction(async (tx) => {
        const m = manifest(`m-${suffix}`, []);
        await tx.putManifest(A, m, [`${suffix}1`], 'pushed');
        await new Promise((r) => setTimeout(r, 10));
        await tx.putManifest(A, m, [`${suffix}2`], 'pushed');
        return (await tx.listTags(A, '', 100)).length;
      });
    const singles = Array.from({ length: 20 }, (_, i) => meta.putManifest(B, manifest(`s-${i}`, []), [`t${String(i).padStart(2, '0')}`], 'pushed'));
    const [na, nb] = await Promise.all([change('a'), change('b'), ...singles]);
    observing = false;
    await observer;
    t.deepEqual((await meta.listTags(A, '', 100)).sort(), ['a1', 'a2', 'b1', 'b2']);
    t.deepEqual(await meta.listTags(B, '', 100), Array.from({ length: 20 }, (_, i) => `t${String(i).padStart(2, '0')}`), 'no single change lost');
    t.deepEqual([na, nb].sort(), [2, 4], 'serializable: one transaction saw the other whole, or nothing of it');
    t.true(seen.length > 0);
    t.true(
      seen.every(([a1, a2]) => a1 === a2),
      'a transaction is seen whole or not at all',
    );
  });
}
