/**
 * The PostgreSQL `MetadataStore` driver: the same operations, tables and invariants as the
 * local driver (db.ts), for several replicas sharing one database. Reads are one statement
 * each (joined on the repository name, so one round trip; hot ones prepared per
 * connection). Every write is one logical change in one SERIALIZABLE transaction (pool.ts),
 * which gives concurrent replicas the outcome SQLite's single writer gives one process: an
 * eviction never drops a blob row a concurrent commit just linked, it retries instead.
 * Eviction and GC queries are in eviction.ts. Database down: calls fail with 503
 * (mapPgError) and succeed again once it is back, without re-creating the store.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Digest, RepoName } from '../../registry/names.js';
import type {
  Evicted,
  EvictionCandidate,
  FencedMetadata,
  ManifestMeta,
  ManifestRecord,
  MetadataOps,
  MetadataStore,
  NewManifest,
  Provenance,
  RepoKey,
  TagRecord,
  UpstreamTagVariant,
} from '../ports.js';
import type { Fence } from '../coordination.js';
import * as ev from './eviction.js';
import { type Exec, type TxState, checkFence, clientExec, fencedExec, poolExec } from './exec.js';
import { migrate } from './migrations.js';
import { beforeRecord, markDeleted } from './tombstones.js';
import { type ManifestRow, manifestFromRow } from '../rows.js';
import type { PgPoolHandle } from './pool.js';

const REPO = 'JOIN repositories r ON r.id = x.repo_id WHERE r.name = $1';

const Q = {
  repoExists: { name: 'rm_repo_exists', text: 'SELECT 1 FROM repositories WHERE name = $1' },
  blobSize: { name: 'rm_blob_size', text: 'SELECT size FROM blobs WHERE digest = $1' },
  repoBlobSize: {
    name: 'rm_repo_blob_size',
    text: `SELECT b.size FROM repo_blobs x JOIN blobs b ON b.digest = x.digest ${REPO} AND x.digest = $2`,
  },
  manifest: {
    name: 'rm_manifest',
    text: `SELECT mc.digest, mc.media_type, mc.size, mc.body, mc.artifact_type, mc.subject, mc.annotations
           FROM manifests x JOIN manifest_content mc ON mc.digest = x.digest ${REPO} AND x.digest = $2`,
  },
  hasManifest: { name: 'rm_has_manifest', text: `SELECT 1 FROM manifests x ${REPO} AND x.digest = $2` },
  tag: { name: 'rm_tag', text: `SELECT x.digest, x.provenance, x.checked_at FROM tags x ${REPO} AND x.name = $2` },
  upstreamTag: {
    name: 'rm_upstream_tag',
    text: `SELECT x.digest, x.checked_at FROM upstream_tags x ${REPO} AND x.name = $2 AND x.accept_key = $3`,
  },
  upstreamList: { name: 'rm_upstream_list', text: 'SELECT body, fetched_at FROM upstream_lists WHERE key = $1' },
  referencedInRepo: {
    name: 'rm_referenced_in_repo',
    text: `SELECT 1 FROM manifest_refs mr JOIN manifests x ON x.digest = mr.digest ${REPO} AND mr.child = $2 LIMIT 1`,
  },
} as const;

/** The repository's id, inserting the row when new (one statement; rows are never deleted). */
export async function ensureRepo(x: Exec, name: RepoName): Promise<number> {
  const rows = await x.rows<{ id: number }>(
    `WITH ins AS (INSERT INTO repositories(name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id)
     SELECT id FROM ins UNION ALL SELECT id FROM repositories WHERE name = $1 LIMIT 1`,
    [name, Date.now()],
  );
  return rows[0]!.id;
}

async function repoId(x: Exec, name: RepoName): Promise<number | undefined> {
  return (await x.rows<{ id: number }>('SELECT id FROM repositories WHERE name = $1', [name]))[0]?.id;
}

const LINK_BLOB = `INSERT INTO repo_blobs(repo_id, digest, provenance, created_at) VALUES ($1, $2, $3, $4)
  ON CONFLICT (repo_id, digest) DO UPDATE SET provenance = 'pushed' WHERE excluded.provenance = 'pushed'`;
const LINK_MANIFEST = `INSERT INTO manifests(repo_id, digest, provenance, created_at, last_access) VALUES ($1, $2, $3, $4, $4)
  ON CONFLICT (repo_id, digest) DO UPDATE SET provenance = CASE WHEN excluded.provenance = 'pushed' THEN 'pushed' ELSE manifests.provenance END`;

/** Content, references and the repository link of a manifest; returns the repository id. */
async function storeManifest(x: Exec, repo: RepoName, m: NewManifest, provenance: Provenance, now: number): Promise<number> {
  const id = await ensureRepo(x, repo);
  await x.rows(
    `INSERT INTO manifest_content(digest, media_type, size, artifact_type, subject, annotations, body)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (digest) DO NOTHING`,
    [m.digest, m.mediaType, m.size, m.artifactType, m.subject, m.annotations, m.body],
  );
  if (m.refs.length > 0) {
    await x.rows(
      `INSERT INTO manifest_refs(digest, child, kind) SELECT $1, c, k FROM unnest($2::text[], $3::text[]) AS u(c, k)
       ON CONFLICT (digest, child) DO NOTHING`,
      [m.digest, m.refs.map((r) => r.digest), m.refs.map((r) => r.kind)],
    );
  }
  await x.rows(LINK_MANIFEST, [id, m.digest, provenance, now]);
  return id;
}

class PgOps implements MetadataOps {
  constructor(protected readonly x: Exec) {}

  /** Overridden by the store: refuses calls made from inside one of its own transactions. */
  protected get ex(): Exec {
    return this.x;
  }

  async repoExists(repo: RepoName): Promise<boolean> {
    return (await this.ex.rows(Q.repoExists, [repo])).length > 0;
  }

  async listRepositories(after: string, limit: number): Promise<string[]> {
    const rows = await this.ex.rows<{ name: string }>(
      `SELECT r.name FROM repositories r WHERE r.name > $1
         AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) OR EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = r.id))
       ORDER BY r.name LIMIT $2`,
      [after, limit],
    );
    return rows.map((r) => r.name);
  }

  async blobSize(digest: Digest): Promise<number | undefined> {
    return (await this.ex.rows<{ size: number }>(Q.blobSize, [digest]))[0]?.size;
  }

  async repoBlobSize(repo: RepoName, digest: Digest): Promise<number | undefined> {
    return (await this.ex.rows<{ size: number }>(Q.repoBlobSize, [repo, digest]))[0]?.size;
  }

  async recordBlob(repo: RepoName, digest: Digest, size: number, provenance: Provenance): Promise<void> {
    await this.ex.change(async (x) => {
      const now = Date.now();
      const id = await ensureRepo(x, repo);
      // The content was just written: cancel its deferred delete, or wait for one in progress.
      await beforeRecord(x, digest);
      await x.rows('INSERT INTO blobs(digest, size, created_at, last_access) VALUES ($1, $2, $3, $3) ON CONFLICT (digest) DO NOTHING', [digest, size, now]);
      await x.rows(LINK_BLOB, [id, digest, provenance, now]);
    });
  }

  async linkBlob(repo: RepoName, digest: Digest, provenance: Provenance): Promise<boolean> {
    return this.ex.change(async (x) => {
      // Not stored (e.g. evicted since the caller's lookup): nothing written, not even the repository.
      if ((await x.rows('SELECT 1 FROM blobs WHERE digest = $1', [digest])).length === 0) return false;
      await x.rows(LINK_BLOB, [await ensureRepo(x, repo), digest, provenance, Date.now()]);
      return true;
    });
  }

  async unlinkBlob(repo: RepoName, digest: Digest): Promise<boolean> {
    return (await this.ex.count('DELETE FROM repo_blobs x USING repositories r WHERE r.id = x.repo_id AND r.name = $1 AND x.digest = $2', [repo, digest])) > 0;
  }

  async referencedInRepo(repo: RepoName, digest: Digest): Promise<boolean> {
    return (await this.ex.rows(Q.referencedInRepo, [repo, digest])).length > 0;
  }

  async manifest(repo: RepoName, digest: Digest): Promise<ManifestRecord | undefined> {
    const row = (await this.ex.rows<ManifestRow>(Q.manifest, [repo, digest]))[0];
    return row ? manifestFromRow(row) : undefined;
  }

  async hasManifest(repo: RepoName, digest: Digest): Promise<boolean> {
    return (await this.ex.rows(Q.hasManifest, [repo, digest])).length > 0;
  }

  async putManifest(repo: RepoName, m: NewManifest, tags: readonly string[], provenance: Provenance): Promise<void> {
    await this.ex.change(async (x) => {
      const now = Date.now();
      const id = await storeManifest(x, repo, m, provenance, now);
      if (tags.length === 0) return;
      await x.rows(
        `INSERT INTO tags(repo_id, name, digest, provenance, updated_at, checked_at)
         SELECT $1, t, $3, $4, $5, $5 FROM unnest($2::text[]) AS u(t)
         ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, provenance = excluded.provenance,
           updated_at = excluded.updated_at, checked_at = excluded.checked_at`,
        [id, [...new Set(tags)], m.digest, provenance, now],
      );
    });
  }

  async deleteManifest(repo: RepoName, digest: Digest): Promise<boolean> {
    return this.ex.change(async (x) => {
      const id = await repoId(x, repo);
      if (id === undefined) return false;
      await x.rows('DELETE FROM tags WHERE repo_id = $1 AND digest = $2', [id, digest]);
      return (await x.count('DELETE FROM manifests WHERE repo_id = $1 AND digest = $2', [id, digest])) > 0;
    });
  }

  async tag(repo: RepoName, tag: string): Promise<TagRecord | undefined> {
    const row = (await this.ex.rows<{ digest: string; provenance: string; checked_at: number }>(Q.tag, [repo, tag]))[0];
    return row && { digest: row.digest as Digest, provenance: row.provenance as Provenance, checkedAt: row.checked_at };
  }

  async deleteTag(repo: RepoName, tag: string): Promise<boolean> {
    return (await this.ex.count('DELETE FROM tags x USING repositories r WHERE r.id = x.repo_id AND r.name = $1 AND x.name = $2', [repo, tag])) > 0;
  }

  async listTags(repo: RepoName, after: string, limit: number): Promise<string[]> {
    const rows = await this.ex.rows<{ name: string }>(`SELECT x.name FROM tags x ${REPO} AND x.name > $2 ORDER BY x.name LIMIT $3`, [repo, after, limit]);
    return rows.map((r) => r.name);
  }

  async referrers(repo: RepoName, subject: Digest): Promise<ManifestMeta[]> {
    const rows = await this.ex.rows<{ digest: string; media_type: string; size: number; artifact_type: string | null; annotations: string | null }>(
      `SELECT mc.digest, mc.media_type, mc.size, mc.artifact_type, mc.annotations
       FROM manifest_content mc JOIN manifests x ON x.digest = mc.digest ${REPO} AND mc.subject = $2 ORDER BY mc.digest`,
      [repo, subject],
    );
    return rows.map((r) => ({ digest: r.digest as Digest, mediaType: r.media_type, size: r.size, artifactType: r.artifact_type, annotations: r.annotations }));
  }

  async upstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<{ digest: Digest; checkedAt: number } | undefined> {
    const row = (await this.ex.rows<{ digest: string; checked_at: number }>(Q.upstreamTag, [repo, tag, acceptKey]))[0];
    return row && { digest: row.digest as Digest, checkedAt: row.checked_at };
  }

  async putCachedManifest(repo: RepoName, m: NewManifest, tag: { name: string; acceptKey: string } | null): Promise<void> {
    await this.ex.change(async (x) => {
      const now = Date.now();
      const id = await storeManifest(x, repo, m, 'cached', now);
      if (!tag) return;
      await x.rows(
        `INSERT INTO upstream_tags(repo_id, name, accept_key, digest, checked_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (repo_id, name, accept_key) DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at`,
        [id, tag.name, tag.acceptKey, m.digest, now],
      );
    });
  }

  async upstreamTagVariants(tag: string, keyPrefix: string): Promise<UpstreamTagVariant[]> {
    const rows = await this.ex.rows<{ repo_id: number; digest: string; checked_at: number; media_type: string }>(
      `SELECT ut.repo_id, ut.digest, ut.checked_at, mc.media_type FROM upstream_tags ut
       JOIN manifests m ON m.repo_id = ut.repo_id AND m.digest = ut.digest
       JOIN manifest_content mc ON mc.digest = ut.digest
       WHERE ut.name = $1 AND substr(ut.accept_key, 1, length($2)) = $2
       ORDER BY ut.checked_at DESC LIMIT 100`,
      [tag, keyPrefix],
    );
    return rows.map((r) => ({ repo: r.repo_id, digest: r.digest as Digest, checkedAt: r.checked_at, mediaType: r.media_type }));
  }

  async adoptCachedManifest(from: RepoKey, repo: RepoName, digest: Digest): Promise<void> {
    const fromId = ev.repoKey(from);
    await this.ex.change(async (x) => {
      const id = await ensureRepo(x, repo);
      if (id === fromId) return;
      await x.rows(
        `WITH RECURSIVE sub(d) AS (SELECT $2::text COLLATE "C" UNION SELECT r.child FROM manifest_refs r JOIN sub ON r.digest = sub.d WHERE r.kind = 'manifest')
         INSERT INTO manifests(repo_id, digest, provenance, created_at, last_access)
         SELECT $3, m.digest, 'cached', $4, $4 FROM sub JOIN manifests m ON m.repo_id = $1 AND m.digest = sub.d
         ON CONFLICT (repo_id, digest) DO NOTHING`,
        [fromId, digest, id, Date.now()],
      );
    });
  }

  async touchUpstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<void> {
    await this.ex.change((x) =>
      x.count('UPDATE upstream_tags x SET checked_at = $4 FROM repositories r WHERE r.id = x.repo_id AND r.name = $1 AND x.name = $2 AND x.accept_key = $3', [
        repo,
        tag,
        acceptKey,
        Date.now(),
      ]),
    );
  }

  async deleteUpstreamTag(repo: RepoName, tag: string): Promise<void> {
    await this.ex.count('DELETE FROM upstream_tags x USING repositories r WHERE r.id = x.repo_id AND r.name = $1 AND x.name = $2', [repo, tag]);
  }

  async upstreamTagNames(repo: RepoName): Promise<string[]> {
    return (await this.ex.rows<{ name: string }>(`SELECT DISTINCT x.name FROM upstream_tags x ${REPO} ORDER BY x.name`, [repo])).map((r) => r.name);
  }

  async upstreamList(key: string): Promise<{ body: string; fetchedAt: number } | undefined> {
    const row = (await this.ex.rows<{ body: string; fetched_at: number }>(Q.upstreamList, [key]))[0];
    return row && { body: row.body, fetchedAt: row.fetched_at };
  }

  async putUpstreamList(key: string, body: string, fetchedAt: number): Promise<void> {
    // One statement: a replica that fetched earlier never overwrites a later list.
    await this.ex.count(
      `INSERT INTO upstream_lists AS l (key, body, fetched_at) VALUES ($1, $2, $3)
       ON CONFLICT (key) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at WHERE excluded.fetched_at >= l.fetched_at`,
      [key, body, fetchedAt],
    );
  }

  deleteUpstreamListsBefore(before: number): Promise<number> {
    return this.ex.count('DELETE FROM upstream_lists WHERE fetched_at < $1', [before]);
  }

  async touchAccess(blobs: ReadonlyMap<Digest, number>, manifests: ReadonlyArray<{ repo: RepoName; digest: Digest; at: number }>): Promise<void> {
    if (blobs.size === 0 && manifests.length === 0) return;
    await this.ex.change(async (x) => {
      if (blobs.size > 0) {
        await x.rows(
          `UPDATE blobs b SET last_access = v.at FROM unnest($1::text[], $2::bigint[]) AS v(digest, at)
           WHERE b.digest = v.digest AND b.last_access < v.at`,
          [[...blobs.keys()], [...blobs.values()]],
        );
      }
      if (manifests.length > 0) {
        // Grouped first: UPDATE .. FROM applies one arbitrary match per row, and times only move forward.
        await x.rows(
          `UPDATE manifests m SET last_access = v.at
           FROM (SELECT repo, digest, max(at) AS at FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(repo, digest, at) GROUP BY repo, digest) v
           JOIN repositories r ON r.name = v.repo
           WHERE m.repo_id = r.id AND m.digest = v.digest AND m.last_access < v.at`,
          [manifests.map((m) => m.repo), manifests.map((m) => m.digest), manifests.map((m) => m.at)],
        );
      }
    });
  }

  cachedBytes(): Promise<number> {
    return ev.cachedBytes(this.ex);
  }
  cachedImages(): Promise<EvictionCandidate[]> {
    return ev.cachedImages(this.ex);
  }
  looseBlobs(before: number): Promise<EvictionCandidate[]> {
    return ev.looseBlobs(this.ex, before);
  }
  evictImage(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
    return this.ex.change((x) => ev.evictImage(x, ev.repoKey(repo), digest, notAfter, busy));
  }
  evictLooseBlob(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
    return this.ex.change((x) => ev.evictLooseBlob(x, ev.repoKey(repo), digest, notAfter, busy));
  }
  unlinkDanglingBlobs(pushedGraceMs: number): Promise<number> {
    return this.ex.change((x) => ev.unlinkDanglingBlobs(x, pushedGraceMs));
  }
  unreferencedBlobs(): Promise<Digest[]> {
    return ev.unreferencedBlobs(this.ex);
  }
  allBlobs(): AsyncIterable<{ digest: Digest; size: number }> {
    return ev.allBlobs(this.ex);
  }
  async blobPushed(digest: Digest): Promise<boolean> {
    return (await this.ex.rows("SELECT 1 FROM repo_blobs WHERE digest = $1 AND provenance = 'pushed' LIMIT 1", [digest])).length > 0;
  }
  async deleteBlobRow(digest: Digest): Promise<void> {
    await this.ex.change(async (x) => {
      if ((await x.count('DELETE FROM blobs WHERE digest = $1', [digest])) > 0) await markDeleted(x, digest);
    });
  }
  deleteUnreferencedManifestContent(): Promise<number> {
    return this.ex.change((x) =>
      x.count('DELETE FROM manifest_content mc WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = mc.digest)', []),
    );
  }
}

export class PgMetadataStore extends PgOps implements MetadataStore {
  /** Set while one of this store's transactions runs `fn` (the async context of that call). */
  private readonly inTx = new AsyncLocalStorage<true>();

  constructor(private readonly db: PgPoolHandle) {
    super(poolExec(db));
  }

  /** Connect, bring the schema up to date (safe with several replicas starting at once), and return the store. */
  static async open(db: PgPoolHandle): Promise<PgMetadataStore> {
    await migrate(db);
    return new PgMetadataStore(db);
  }

  protected override get ex(): Exec {
    // The call would run outside the transaction (another connection): refused, as by the local driver.
    if (this.inTx.getStore()) throw new Error('metadata: inside transaction(fn) use its tx handle, not the store');
    return this.x;
  }

  async transaction<T>(fn: (tx: MetadataOps) => Promise<T>, opts: { dryRun?: boolean } = {}, fence?: Fence): Promise<T> {
    if (this.inTx.getStore()) throw new Error('metadata: inside transaction(fn) use its tx handle, not the store');
    return this.db.transaction(
      async (c) => {
        const state: TxState = { live: true };
        try {
          const x = clientExec(c, state);
          if (fence) await checkFence(x, fence);
          return await this.inTx.run(true, () => fn(new PgOps(x)));
        } finally {
          state.live = false;
        }
      },
      { rollback: opts.dryRun === true },
    );
  }

  /** Eviction and GC under the gc-leader lease: every change refused once it is taken over (exec.ts checkFence). */
  fenced(fence: Fence): FencedMetadata {
    const ops = new PgOps(fencedExec(poolExec(this.db), fence));
    return Object.assign(ops, { transaction: <T>(fn: (tx: MetadataOps) => Promise<T>, opts?: { dryRun?: boolean }) => this.transaction(fn, opts, fence) });
  }

  async ping(): Promise<void> {
    await this.ex.rows('SELECT 1', []);
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
