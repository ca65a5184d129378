/**
 * A side-by-side run for the PostgreSQL metadata test: one scenario through the port
 * (pushes, pull-through caching, adoption, access times, eviction, GC) whose every answer
 * is compared with what db.ts (the local driver's SQL) answers for the same calls.
 */
import type { Digest, RepoName } from '../../src/registry/names.js';
import type { MetadataStore as SqliteDb } from '../../src/storage/db.js';
import type { MetadataOps } from '../../src/storage/ports.js';
import { dg as digest, manifest } from './metadata-conformance.js';

const repo = (s: string) => s as RepoName;

/** db.ts's synchronous class behind the async port shape, for a side-by-side run. */
export function sqliteOps(db: SqliteDb): MetadataOps & { repoName(key: unknown): string } {
  const repoName = (key: unknown) => (db.db.prepare('SELECT name FROM repositories WHERE id = ?').get(key) as { name: string }).name;
  const target = db as unknown as Record<string, (...a: unknown[]) => unknown>;
  return new Proxy({} as MetadataOps & { repoName(key: unknown): string }, {
    get: (_o, k: string) => {
      if (k === 'repoName') return repoName;
      if (k === 'repoExists') return async (r: RepoName) => db.repoId(r) !== undefined;
      if (k === 'allBlobs') return async function* () { yield* db.allBlobs(); };
      return async (...a: unknown[]) => {
        const out = target[k]!.apply(db, a);
        // db.ts names the repository key repoId; the port calls it repo.
        const fix = (v: unknown) => (v && typeof v === 'object' && 'repoId' in v ? (({ repoId, ...rest }) => ({ repo: repoId, ...rest }))(v as { repoId: unknown }) : v);
        return Array.isArray(out) ? out.map(fix) : out;
      };
    },
  });
}

/**
 * One scenario through the port: pushes, pull-through caching, adoption under a second
 * path, access times, eviction and GC. Returns every answer, repository keys replaced by
 * names (each driver numbers repositories its own way). The clock is the caller's.
 */
export async function scenario(m: MetadataOps, repoName: (key: unknown) => Promise<string> | string, tick: (ms: number) => void): Promise<unknown[]> {
  const out: unknown[] = [];
  const rec = async (what: string, v: unknown) => out.push([what, v]);
  const named = async <T extends { repo: unknown }>(xs: T[]) =>
    (await Promise.all(xs.map(async (x) => ({ ...x, repo: await repoName(x.repo) })))).sort((a, b) => `${a.repo}${(a as { digest?: string }).digest}`.localeCompare(`${b.repo}${(b as { digest?: string }).digest}`));
  const [b1, b2, b3, b4] = ['l1', 'l2', 'l3', 'loose'].map(digest) as [Digest, Digest, Digest, Digest];
  const lib = repo('library/app');
  const team = repo('team/app');
  const alias = repo('mirror/library/app');
  await m.recordBlob(lib, b1, 100, 'cached');
  await m.recordBlob(lib, b2, 200, 'cached');
  await m.recordBlob(team, b3, 300, 'pushed');
  await m.recordBlob(lib, b4, 50, 'cached');
  await m.linkBlob(team, b1, 'cached');
  await m.linkBlob(team, b1, 'pushed'); // pushed wins
  await m.linkBlob(lib, b2, 'pushed');
  await m.linkBlob(lib, b2, 'cached'); // never back to cached
  const img = manifest('img', [{ digest: b1, kind: 'blob' }, { digest: b2, kind: 'blob' }]);
  const idx = manifest('idx', [{ digest: img.digest, kind: 'manifest' }]);
  await m.putCachedManifest(lib, img, { name: '1.0', acceptKey: 'docker.io|library/app|manifest' });
  await m.putCachedManifest(lib, idx, { name: '1.0', acceptKey: 'docker.io|library/app|index' });
  const pushed = manifest('pushed', [{ digest: b3, kind: 'blob' }, { digest: b1, kind: 'blob' }]);
  const sig = manifest('sig', [{ digest: b3, kind: 'blob' }], { subject: pushed.digest, artifactType: 'application/x-sig' });
  await m.putManifest(team, pushed, ['v1', 'v2', 'a'], 'pushed');
  await m.putManifest(team, sig, [], 'pushed');
  const variants = await m.upstreamTagVariants('1.0', 'docker.io|library/app|');
  await rec('variants', await named(variants));
  await m.adoptCachedManifest(variants.find((v) => v.digest === idx.digest)!.repo, alias, idx.digest);
  await m.adoptCachedManifest(variants[0]!.repo, lib, idx.digest); // its own repository: no-op
  tick(10);
  await m.touchAccess(new Map([[b1, Date.now()], [b4, Date.now() - 5]]), [{ repo: lib, digest: img.digest, at: Date.now() }, { repo: lib, digest: img.digest, at: Date.now() - 3 }]);
  await m.touchUpstreamTag(lib, '1.0', 'docker.io|library/app|index');
  for (const r of [lib, team, alias, repo('nobody/here')]) {
    await rec(`repoExists ${r}`, await m.repoExists(r));
    await rec(`listTags ${r}`, await m.listTags(r, '', 100));
    await rec(`upstreamTagNames ${r}`, await m.upstreamTagNames(r));
    for (const d of [b1, b2, b3, b4, img.digest, idx.digest, pushed.digest]) {
      await rec(`repoBlobSize ${r} ${d}`, await m.repoBlobSize(r, d));
      await rec(`referencedInRepo ${r} ${d}`, await m.referencedInRepo(r, d));
      await rec(`hasManifest ${r} ${d}`, await m.hasManifest(r, d));
      const man = await m.manifest(r, d);
      await rec(`manifest ${r} ${d}`, man && { ...man, body: man.body.toString('base64') });
    }
  }
  await rec('listRepositories', await m.listRepositories('', 100));
  await rec('listRepositories page', await m.listRepositories('library/app', 1));
  await rec('listTags page', await m.listTags(team, 'a', 1));
  await rec('tag', await m.tag(team, 'v2'));
  await rec('tag none', await m.tag(team, 'nope'));
  await rec('referrers', await m.referrers(team, pushed.digest));
  await rec('upstreamTag', await m.upstreamTag(lib, '1.0', 'docker.io|library/app|index'));
  for (const d of [b1, b2, b3, b4, digest('none')]) {
    await rec(`blobSize ${d}`, await m.blobSize(d));
    await rec(`blobPushed ${d}`, await m.blobPushed(d));
  }
  await rec('cachedBytes', await m.cachedBytes());
  const images = await m.cachedImages();
  await rec('cachedImages', await named(images));
  await rec('looseBlobs', await named(await m.looseBlobs(Date.now() + 1)));
  tick(1000);
  // Eviction: the cached index under the alias first (the library/ copy still holds the
  // content), then the library/ one; a loose blob; then GC.
  for (const r of [alias, lib]) {
    let key: unknown;
    for (const c of await m.cachedImages()) if (c.digest === idx.digest && (await repoName(c.repo)) === r) key = c.repo;
    if (key === undefined) throw new Error(`no eviction candidate for ${r}`);
    const k = key as number;
    await rec(`evictImage stale ${r}`, await m.evictImage(k, idx.digest, Date.now() - 100_000, () => false));
    await rec(`evictImage ${r}`, await m.evictImage(k, idx.digest, Date.now(), (d) => d === b2));
  }
  const loose = await m.looseBlobs(Date.now() + 1);
  await rec('looseBlobs after', await named(loose));
  for (const l of loose) await rec(`evictLooseBlob ${await repoName(l.repo)}`, await m.evictLooseBlob(l.repo, l.digest, Date.now(), () => false));
  await rec('cachedBytes after', await m.cachedBytes());
  await rec('unlinkDanglingBlobs', await m.unlinkDanglingBlobs(0));
  await rec('unreferencedBlobs', (await m.unreferencedBlobs()).sort());
  await rec('deleteUnreferencedManifestContent', await m.deleteUnreferencedManifestContent());
  for (const d of await m.unreferencedBlobs()) await m.deleteBlobRow(d);
  const all: unknown[] = [];
  for await (const b of m.allBlobs()) all.push(b);
  await rec('allBlobs', all);
  await rec('unlinkBlob', [await m.unlinkBlob(team, b1), await m.unlinkBlob(team, b1)]);
  await rec('deleteTag', [await m.deleteTag(team, 'a'), await m.deleteTag(team, 'a')]);
  await rec('deleteManifest', [await m.deleteManifest(team, pushed.digest), await m.deleteManifest(team, pushed.digest), await m.deleteManifest(repo('nobody/here'), pushed.digest)]);
  await rec('tags after', await m.listTags(team, '', 100));
  await m.deleteUpstreamTag(lib, '1.0');
  await rec('upstream tags after', await m.upstreamTagNames(lib));
  await rec('listRepositories after', await m.listRepositories('', 100));
  return out;
}
