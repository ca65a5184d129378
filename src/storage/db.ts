/**
 * The only module that contains SQL. Opens regmirror.db (WAL), runs migrations keyed on
 * `user_version`, prepares every statement once, and exposes named operations. Each
 * logical change (a manifest push with its tag and references, a blob commit with its
 * repository link) is one synchronous transaction. Internal to storage/: the registry
 * reaches it through the async MetadataStore port (local/metadata.ts).
 *
 * Over ~400 lines on purpose: the schema, every statement and the operations that run
 * them stay side by side, so each query can be checked against the schema in one file.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import Database from 'better-sqlite3';
import type { Digest, RepoName } from '../registry/names.js';
import type { EvictionCandidate, Evicted, ManifestMeta, ManifestRecord, NewManifest, Provenance, TagRecord } from './ports.js';
import { type ManifestRow, manifestFromRow } from './rows.js';

// The record shapes belong to the storage port; re-exported for storage-internal callers.
export type { Evicted, ManifestMeta, ManifestRecord, NewManifest, Provenance, TagRecord } from './ports.js';

/** An eviction candidate as this layer sees it: the repository is its row id. */
export interface CachedImage extends EvictionCandidate {
  repo: number;
}
export type LooseBlob = CachedImage;

/*
 * KEEP: content reachable from anything pushed (a pushed manifest link, a tag, through
 * manifest references of any kind, in any repository: conservative, since blob files are
 * shared). Never evicted. As a CTE:
 *   keep(d) AS (SELECT digest FROM manifests WHERE provenance = 'pushed'
 *     UNION SELECT digest FROM tags
 *     UNION SELECT r.child FROM manifest_refs r JOIN keep ON r.digest = keep.d)
 * It is never materialized whole any more: that walks every blob pushed manifests
 * reference (550,000 rows at 1,000,000 blobs in bench/scale.mjs, most of a minute there).
 * The queries below ask membership through KEEP_MANIFESTS_CTE, KEEP_PARENTS_CTE or inKeep.
 */

/**
 * The manifests of KEEP only (references of kind 'manifest'): what the image
 * candidates need. Expanding into every blob a pushed manifest references made the walk as
 * large as the blob index (550,000 rows, about 20 s, in bench/scale.mjs at 1,000,000 blobs).
 * A manifest that pushed content references as a blob is still refused by evictImage's
 * isProtected re-check, which walks references of any kind.
 */
const KEEP_MANIFESTS_CTE = `keep(d) AS (
  SELECT digest FROM manifests WHERE provenance = 'pushed'
  UNION SELECT digest FROM tags
  UNION SELECT r.child FROM manifest_refs r JOIN keep ON r.digest = keep.d WHERE r.kind = 'manifest')`;

/**
 * The manifests of KEEP that reference anything (the roots, and every child that has
 * references of its own), without expanding into the leaves (the blobs: most of KEEP).
 * A digest is in KEEP exactly when it is in keep_parents or a child of one of them: a path
 * from a root passes only through manifests that have references.
 */
const KEEP_PARENTS_CTE = `keep_parents(d) AS MATERIALIZED (
  SELECT digest FROM manifests WHERE provenance = 'pushed'
  UNION SELECT digest FROM tags
  UNION SELECT r.child FROM manifest_refs r JOIN keep_parents ON r.digest = keep_parents.d
        WHERE EXISTS (SELECT 1 FROM manifest_refs x WHERE x.digest = r.child))`;

/**
 * The blobs cache.maxBytes bounds: linked as cached somewhere, linked as pushed nowhere, and
 * outside KEEP (membership as keep_parents or a child of one). Each such row has
 * `blobs.counted = 1`, kept by `refreshCounted` in every transaction that can change a
 * blob's links or KEEP; triggers (v7) keep `counters` in step with the rows.
 */
const COUNTED_BLOBS = `WITH RECURSIVE ${KEEP_PARENTS_CTE}
  SELECT b.digest FROM blobs b
  WHERE EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest AND rb.provenance = 'cached')
    AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest AND rb.provenance = 'pushed')
    AND b.digest NOT IN (SELECT d FROM keep_parents)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN keep_parents k ON k.d = r.digest WHERE r.child = b.digest)
    AND scan_alive()`;

/** Last access of a cached image: its manifest or any child manifest in the same repository. */
const IMAGE_ACCESS = `MAX(m.last_access, COALESCE((SELECT MAX(c.last_access) FROM manifest_refs r
  JOIN manifests c ON c.repo_id = m.repo_id AND c.digest = r.child WHERE r.digest = m.digest AND r.kind = 'manifest'), 0))`;

const MIGRATIONS: string[] = [
  // v1: initial schema.
  `
  CREATE TABLE repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
  );
  CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_access INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE repo_blobs (
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    provenance TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
  ) WITHOUT ROWID;
  CREATE INDEX repo_blobs_digest ON repo_blobs(digest);
  CREATE TABLE manifest_content (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    body BLOB NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX manifest_content_subject ON manifest_content(subject) WHERE subject IS NOT NULL;
  CREATE TABLE manifest_refs (
    digest TEXT NOT NULL REFERENCES manifest_content(digest) ON DELETE CASCADE,
    child TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (digest, child)
  ) WITHOUT ROWID;
  CREATE INDEX manifest_refs_child ON manifest_refs(child);
  CREATE TABLE manifests (
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES manifest_content(digest),
    provenance TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_access INTEGER NOT NULL,
    PRIMARY KEY (repo_id, digest)
  ) WITHOUT ROWID;
  CREATE INDEX manifests_digest ON manifests(digest);
  CREATE TABLE tags (
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    provenance TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    checked_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name)
  ) WITHOUT ROWID;
  CREATE INDEX tags_digest ON tags(repo_id, digest);
  CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // v2: tags resolved from an upstream, per Accept class (an index for one client, a
  // single manifest for another). Pushed tags stay in `tags` and always win.
  `
  CREATE TABLE upstream_tags (
    repo_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    accept_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name, accept_key)
  ) WITHOUT ROWID;
  `,
  // v3: eviction asks "does anything pushed reach this digest?" by digest alone.
  `
  CREATE INDEX tags_by_digest ON tags(digest);
  CREATE INDEX upstream_tags_digest ON upstream_tags(repo_id, digest);
  `,
  // v4: stale answers look a tag up across every local path of one upstream repository.
  `
  CREATE INDEX upstream_tags_name ON upstream_tags(name);
  `,
  // v5: store growth (bench/scale.mjs). Eviction's and fsck's per-blob "linked as pushed /
  // as cached?" checks answer from the index alone, and the pushed-content walk (KEEP,
  // isProtected) reads only pushed manifests instead of scanning every manifest row.
  `
  CREATE INDEX repo_blobs_digest_prov ON repo_blobs(digest, provenance);
  DROP INDEX repo_blobs_digest;
  CREATE INDEX manifests_pushed ON manifests(digest) WHERE provenance = 'pushed';
  `,
  // v6: upstream tag lists and referrers lists shared by replicas (issue #13); the same
  // table as PostgreSQL's v3 so the metadata port is one contract.
  `
  CREATE TABLE upstream_lists (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    fetched_at INTEGER NOT NULL
  );
  `,
  // v7: maintained counters (issue #14): counting cached bytes was a scan of every blob row
  // (35 s at a million blobs, bench/scale.mjs) for every /metrics scrape, /status poll and
  // eviction pass. `blobs.counted` marks a row in COUNTED_BLOBS; the triggers keep the sums
  // in the same transaction as the row change. Computed once here for an existing store.
  `
  ALTER TABLE blobs ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;
  CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TRIGGER blobs_count_insert AFTER INSERT ON blobs BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'blobs';
    UPDATE counters SET value = value + NEW.size WHERE name = 'blob_bytes';
    UPDATE counters SET value = value + NEW.size * NEW.counted WHERE name = 'cached_bytes';
  END;
  CREATE TRIGGER blobs_count_delete AFTER DELETE ON blobs BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'blobs';
    UPDATE counters SET value = value - OLD.size WHERE name = 'blob_bytes';
    UPDATE counters SET value = value - OLD.size * OLD.counted WHERE name = 'cached_bytes';
  END;
  CREATE TRIGGER blobs_count_update AFTER UPDATE OF size, counted ON blobs BEGIN
    UPDATE counters SET value = value - OLD.size + NEW.size WHERE name = 'blob_bytes';
    UPDATE counters SET value = value - OLD.size * OLD.counted + NEW.size * NEW.counted WHERE name = 'cached_bytes';
  END;
  INSERT INTO counters(name, value) SELECT 'blobs', COUNT(*) FROM blobs;
  INSERT INTO counters(name, value) SELECT 'blob_bytes', COALESCE(SUM(size), 0) FROM blobs;
  INSERT INTO counters(name, value) VALUES ('cached_bytes', 0);
  UPDATE blobs SET counted = 1 WHERE digest IN (${COUNTED_BLOBS});
  `,
];

/**
 * The SQL layer under the local metadata driver (src/storage/local/metadata.ts, the
 * `MetadataStore` port) and the local blob and upload stores, which share its one
 * connection. Synchronous, like better-sqlite3.
 */
export class MetadataDb {
  readonly db: Database.Database;
  /**
   * Set while the local driver runs an async transaction (`MetadataStore.transaction`):
   * its BEGIN..COMMIT spans awaits on this one connection, so every other user of the
   * connection waits for this promise (see `whenIdle`) instead of writing into it or
   * reading its uncommitted rows. `txToken` identifies it (AsyncLocalStorage).
   */
  txEnd: Promise<void> | null = null;
  txToken: object | null = null;
  /** The async context of the open transaction's `fn` (tells its own calls from others). */
  readonly txContext = new AsyncLocalStorage<object>();

  /**
   * Null when no async transaction is open (the fast path: check, then use the connection
   * in the same tick); otherwise resolves once none is. A call from inside the open
   * transaction's own `fn` would wait for itself: refused with an error instead.
   */
  whenIdle(): Promise<void> | null {
    if (this.txEnd === null) return null;
    if (this.txToken !== null && this.txContext.getStore() === this.txToken) {
      throw new Error('metadata: a call on the store inside its own transaction would wait for itself; use the transaction handle');
    }
    return this.waitIdle();
  }

  private async waitIdle(): Promise<void> {
    while (this.txEnd !== null) await this.txEnd;
  }
  private readonly s;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a power cut may lose the last transactions but never corrupts;
    // blobs are fsynced before their row is written, so a lost row only orphans a file.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    // Called per row by the whole-store scans (cachedBytes, cachedImages, looseBlobs): a
    // JavaScript call is where the scan worker's terminate() takes effect, so a shutdown
    // never waits for a minute-long scan in native code (scan.ts). ~60 ns a row.
    this.db.function('scan_alive', { deterministic: false }, () => 1);
    this.migrate();
    const db = this.db;
    this.s = {
      repoId: db.prepare<[string], { id: number }>('SELECT id FROM repositories WHERE name = ?'),
      insertRepo: db.prepare<[string, number]>('INSERT OR IGNORE INTO repositories(name, created_at) VALUES (?, ?)'),
      blob: db.prepare<[string], { size: number }>('SELECT size FROM blobs WHERE digest = ?'),
      repoBlob: db.prepare<[number, string], { size: number }>(
        'SELECT b.size FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest WHERE rb.repo_id = ? AND rb.digest = ?',
      ),
      insertBlob: db.prepare<[string, number, number, number]>(
        'INSERT OR IGNORE INTO blobs(digest, size, created_at, last_access) VALUES (?, ?, ?, ?)',
      ),
      // A push of a blob already linked as cached makes it pushed (never evicted), as for manifests.
      linkBlob: db.prepare<[number, string, string, number]>(
        `INSERT INTO repo_blobs(repo_id, digest, provenance, created_at) VALUES (?, ?, ?, ?)
         ON CONFLICT(repo_id, digest) DO UPDATE SET provenance = 'pushed' WHERE excluded.provenance = 'pushed'`,
      ),
      unlinkBlob: db.prepare<[number, string]>('DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?'),
      manifest: db.prepare<[number, string], ManifestRow>(
        `SELECT mc.digest, mc.media_type, mc.size, mc.body, mc.artifact_type, mc.subject, mc.annotations
         FROM manifests m JOIN manifest_content mc ON mc.digest = m.digest WHERE m.repo_id = ? AND m.digest = ?`,
      ),
      hasManifest: db.prepare<[number, string], { one: number }>('SELECT 1 AS one FROM manifests WHERE repo_id = ? AND digest = ?'),
      insertContent: db.prepare<[string, string, number, string | null, string | null, string | null, Buffer]>(
        `INSERT OR IGNORE INTO manifest_content(digest, media_type, size, artifact_type, subject, annotations, body)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      insertRef: db.prepare<[string, string, string]>('INSERT OR IGNORE INTO manifest_refs(digest, child, kind) VALUES (?, ?, ?)'),
      linkManifest: db.prepare<[number, string, string, number, number]>(
        `INSERT INTO manifests(repo_id, digest, provenance, created_at, last_access) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(repo_id, digest) DO UPDATE SET provenance = CASE WHEN excluded.provenance = 'pushed' THEN 'pushed' ELSE provenance END`,
      ),
      unlinkManifest: db.prepare<[number, string]>('DELETE FROM manifests WHERE repo_id = ? AND digest = ?'),
      tag: db.prepare<[number, string], { digest: string; provenance: string; checked_at: number }>(
        'SELECT digest, provenance, checked_at FROM tags WHERE repo_id = ? AND name = ?',
      ),
      upsertTag: db.prepare<[number, string, string, string, number, number]>(
        `INSERT INTO tags(repo_id, name, digest, provenance, updated_at, checked_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(repo_id, name) DO UPDATE SET digest = excluded.digest, provenance = excluded.provenance,
           updated_at = excluded.updated_at, checked_at = excluded.checked_at`,
      ),
      deleteTag: db.prepare<[number, string]>('DELETE FROM tags WHERE repo_id = ? AND name = ?'),
      deleteTagsOf: db.prepare<[number, string]>('DELETE FROM tags WHERE repo_id = ? AND digest = ?'),
      listTags: db.prepare<[number, string, number], { name: string }>(
        'SELECT name FROM tags WHERE repo_id = ? AND name > ? ORDER BY name LIMIT ?',
      ),
      listRepos: db.prepare<[string, number], { name: string }>(
        `SELECT r.name FROM repositories r WHERE r.name > ?
           AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) OR EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = r.id))
         ORDER BY r.name LIMIT ?`,
      ),
      referrers: db.prepare<[number, string], { digest: string; media_type: string; size: number; artifact_type: string | null; annotations: string | null }>(
        `SELECT mc.digest, mc.media_type, mc.size, mc.artifact_type, mc.annotations
         FROM manifest_content mc JOIN manifests m ON m.digest = mc.digest
         WHERE m.repo_id = ? AND mc.subject = ? ORDER BY mc.digest`,
      ),
      insertUpload: db.prepare<[string, number, number]>('INSERT INTO uploads(id, repo_id, created_at) VALUES (?, ?, ?)'),
      upload: db.prepare<[string], { repo: string; created_at: number }>(
        'SELECT r.name AS repo, u.created_at FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = ?',
      ),
      deleteUpload: db.prepare<[string]>('DELETE FROM uploads WHERE id = ?'),
      allUploads: db.prepare<[], { id: string; created_at: number }>('SELECT id, created_at FROM uploads'),
      unreferencedBlobs: db.prepare<[], { digest: string }>(
        `SELECT b.digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)`,
      ),
      deleteBlob: db.prepare<[string]>('DELETE FROM blobs WHERE digest = ?'),
      allBlobs: db.prepare<[], { digest: string; size: number }>('SELECT digest, size FROM blobs ORDER BY digest'),
      blobsAfter: db.prepare<[string, number], { digest: string; size: number }>(
        'SELECT digest, size FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?',
      ),
      blobPushed: db.prepare<[string], { one: number }>("SELECT 1 AS one FROM repo_blobs WHERE digest = ? AND provenance = 'pushed' LIMIT 1"),
      // Links no manifest of the repository references: cached ones always (they exist only
      // for a manifest), pushed ones once older than the grace period (abandoned pushes).
      danglingLinks: db.prepare<[number], { repo_id: number; digest: string }>(
        `SELECT rb.repo_id, rb.digest FROM repo_blobs rb
         WHERE (rb.provenance = 'cached' OR rb.created_at < ?)
           AND NOT EXISTS (SELECT 1 FROM manifests m JOIN manifest_refs r ON r.digest = m.digest
                           WHERE m.repo_id = rb.repo_id AND r.child = rb.digest)`,
      ),
      unlinkById: db.prepare<[number, string]>('DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?'),
      unreferencedContent: db.prepare<[], { digest: string }>(
        `SELECT mc.digest FROM manifest_content mc WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = mc.digest)`,
      ),
      deleteContent: db.prepare<[string]>('DELETE FROM manifest_content WHERE digest = ?'),
      upstreamTag: db.prepare<[number, string, string], { digest: string; checked_at: number }>(
        'SELECT digest, checked_at FROM upstream_tags WHERE repo_id = ? AND name = ? AND accept_key = ?',
      ),
      upsertUpstreamTag: db.prepare<[number, string, string, string, number]>(
        `INSERT INTO upstream_tags(repo_id, name, accept_key, digest, checked_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(repo_id, name, accept_key) DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at`,
      ),
      touchUpstreamTag: db.prepare<[number, number, string, string]>(
        'UPDATE upstream_tags SET checked_at = ? WHERE repo_id = ? AND name = ? AND accept_key = ?',
      ),
      deleteUpstreamTag: db.prepare<[number, string]>('DELETE FROM upstream_tags WHERE repo_id = ? AND name = ?'),
      // Every Accept variant of a tag from one upstream repository (key prefix), under any
      // local path that reaches it, newest first.
      upstreamTagVariants: db.prepare<[string, number, string], { repo_id: number; digest: string; checked_at: number; media_type: string }>(
        `SELECT ut.repo_id, ut.digest, ut.checked_at, mc.media_type FROM upstream_tags ut
         JOIN manifests m ON m.repo_id = ut.repo_id AND m.digest = ut.digest
         JOIN manifest_content mc ON mc.digest = ut.digest
         WHERE ut.name = ? AND substr(ut.accept_key, 1, ?) = ?
         ORDER BY ut.checked_at DESC LIMIT 100`,
      ),
      listUpstreamTags: db.prepare<[number], { name: string }>('SELECT DISTINCT name FROM upstream_tags WHERE repo_id = ?'),
      upstreamList: db.prepare<[string], { body: string; fetched_at: number }>('SELECT body, fetched_at FROM upstream_lists WHERE key = ?'),
      putUpstreamList: db.prepare<[string, string, number]>(
        `INSERT INTO upstream_lists(key, body, fetched_at) VALUES (?, ?, ?)
         ON CONFLICT(key) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at WHERE excluded.fetched_at >= upstream_lists.fetched_at`,
      ),
      deleteUpstreamListsBefore: db.prepare<[number]>('DELETE FROM upstream_lists WHERE fetched_at < ?'),
      referencedInRepo: db.prepare<[number, string], { one: number }>(
        `SELECT 1 AS one FROM manifest_refs r JOIN manifests m ON m.digest = r.digest WHERE m.repo_id = ? AND r.child = ? LIMIT 1`,
      ),
      touchBlob: db.prepare<[number, string, number]>('UPDATE blobs SET last_access = ? WHERE digest = ? AND last_access < ?'),
      touchManifest: db.prepare<[number, number, string, number]>(
        'UPDATE manifests SET last_access = ? WHERE repo_id = ? AND digest = ? AND last_access < ?',
      ),
      // KEEP membership as keep_parents or a child of one: materializing KEEP itself walked
      // every blob pushed manifests reference (bench/scale.mjs).
      cachedBytesScan: db.prepare<[], { bytes: number }>(
        `SELECT COALESCE(SUM(size), 0) AS bytes FROM blobs WHERE digest IN (${COUNTED_BLOBS})`,
      ),
      counter: db.prepare<[string], { value: number }>('SELECT value FROM counters WHERE name = ?'),
      // fsck: the counters and flags as the rows say they should be.
      countedWrong: db.prepare<[], { digest: string; counted: number }>(
        `SELECT digest, counted FROM blobs WHERE counted != (digest IN (${COUNTED_BLOBS}))`,
      ),
      blobTotals: db.prepare<[], { blobs: number; blob_bytes: number; cached_bytes: number }>(
        'SELECT COUNT(*) AS blobs, COALESCE(SUM(size), 0) AS blob_bytes, COALESCE(SUM(size * counted), 0) AS cached_bytes FROM blobs',
      ),
      setCounter: db.prepare<[number, string]>('UPDATE counters SET value = ? WHERE name = ?'),
      setCounted: db.prepare<[number, string, number]>('UPDATE blobs SET counted = ? WHERE digest = ? AND counted != ?'),
      blobLinkedCached: db.prepare<[string], { one: number }>("SELECT 1 AS one FROM repo_blobs WHERE digest = ? AND provenance = 'cached' LIMIT 1"),
      // Every blob a manifest reaches (any depth): KEEP may change for them when the manifest does.
      descendantBlobs: db.prepare<[string], { d: string }>(
        `WITH RECURSIVE sub(d) AS (SELECT ? UNION SELECT r.child FROM manifest_refs r JOIN sub ON r.digest = sub.d)
         SELECT sub.d FROM sub JOIN blobs b ON b.digest = sub.d`,
      ),
      cachedImages: db.prepare<[], { repo_id: number; digest: string; last_access: number }>(
        `WITH RECURSIVE ${KEEP_MANIFESTS_CTE}
         SELECT m.repo_id, m.digest, ${IMAGE_ACCESS} AS last_access FROM manifests m
         WHERE m.provenance = 'cached' AND m.digest NOT IN (SELECT d FROM keep)
           AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests p ON p.repo_id = m.repo_id AND p.digest = r.digest WHERE r.child = m.digest)
           AND scan_alive()`,
      ),
      // KEEP membership is asked per surviving row (inKeep): loose links are few, and
      // materializing KEEP walks every blob pushed manifests reference (bench/scale.mjs).
      looseBlobs: db.prepare<[number], { repo_id: number; digest: string; last_access: number }>(
        `SELECT rb.repo_id, rb.digest, b.last_access FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
         WHERE rb.provenance = 'cached' AND b.last_access < ?
           AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests m ON m.repo_id = rb.repo_id AND m.digest = r.digest WHERE r.child = rb.digest)
           AND NOT EXISTS (SELECT 1 FROM repo_blobs p WHERE p.digest = rb.digest AND p.provenance = 'pushed')
           AND scan_alive()`,
      ),
      // Whether a digest is in KEEP: it, or anything that references it, is a pushed manifest or tagged.
      inKeep: db.prepare<[string], { one: number }>(
        `WITH RECURSIVE up(d) AS (SELECT ? UNION SELECT r.digest FROM manifest_refs r JOIN up ON r.child = up.d)
         SELECT 1 AS one FROM up
         WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.digest = up.d AND m.provenance = 'pushed')
            OR EXISTS (SELECT 1 FROM tags t WHERE t.digest = up.d)
         LIMIT 1`,
      ),
      imageAccess: db.prepare<[number, string], { provenance: string; last_access: number }>(
        `SELECT m.provenance, ${IMAGE_ACCESS} AS last_access FROM manifests m WHERE m.repo_id = ? AND m.digest = ?`,
      ),
      // Walks up from a digest: is it, or anything that references it, pushed content?
      isProtected: db.prepare<[string], { one: number }>(
        `WITH RECURSIVE up(d) AS (SELECT ? UNION SELECT r.digest FROM manifest_refs r JOIN up ON r.child = up.d)
         SELECT 1 AS one FROM up
         WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.digest = up.d AND m.provenance = 'pushed')
            OR EXISTS (SELECT 1 FROM tags t WHERE t.digest = up.d)
            OR EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = up.d AND rb.provenance = 'pushed')
         LIMIT 1`,
      ),
      childManifests: db.prepare<[string], { d: string }>(
        `WITH RECURSIVE sub(d) AS (SELECT ? UNION SELECT r.child FROM manifest_refs r JOIN sub ON r.digest = sub.d WHERE r.kind = 'manifest')
         SELECT d FROM sub`,
      ),
      childBlobs: db.prepare<[string], { child: string }>("SELECT child FROM manifest_refs WHERE digest = ? AND kind = 'blob'"),
      manifestLink: db.prepare<[number, string], { provenance: string }>('SELECT provenance FROM manifests WHERE repo_id = ? AND digest = ?'),
      blobLink: db.prepare<[number, string], { provenance: string }>('SELECT provenance FROM repo_blobs WHERE repo_id = ? AND digest = ?'),
      blobLinked: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM repo_blobs WHERE digest = ? LIMIT 1'),
      blobRow: db.prepare<[string], { size: number; last_access: number }>('SELECT size, last_access FROM blobs WHERE digest = ?'),
      contentHeld: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM manifests WHERE digest = ? LIMIT 1'),
      deleteUpstreamTagsOf: db.prepare<[number, string]>('DELETE FROM upstream_tags WHERE repo_id = ? AND digest = ?'),
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = current; v < MIGRATIONS.length; v++) {
      const sql = MIGRATIONS[v]!;
      this.db.transaction(() => {
        this.db.exec(sql);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  close(): void {
    this.db.close();
  }

  /** Liveness probe (/healthz): throws if the database cannot answer a query. */
  ping(): void {
    this.db.prepare('SELECT 1').get();
  }

  /** Repository ids never change and rows are never deleted, so known ids are remembered (hot path of every request). */
  private readonly repoIds = new Map<string, number>();

  repoId(name: RepoName): number | undefined {
    const known = this.repoIds.get(name);
    if (known !== undefined) return known;
    const id = this.s.repoId.get(name)?.id;
    // Not inside a transaction: a row inserted there may still be rolled back.
    if (id !== undefined && !this.db.inTransaction && this.repoIds.size < 1_000_000) this.repoIds.set(name, id);
    return id;
  }

  ensureRepo(name: RepoName): number {
    const known = this.repoIds.get(name);
    if (known !== undefined) return known;
    this.s.insertRepo.run(name, Date.now());
    return this.repoId(name)!;
  }

  blobSize(digest: Digest): number | undefined {
    return this.s.blob.get(digest)?.size;
  }

  /** Size of a blob linked to `repo`, or undefined: a blob is only visible where linked. */
  repoBlobSize(repo: RepoName, digest: Digest): number | undefined {
    const id = this.repoId(repo);
    return id === undefined ? undefined : this.s.repoBlob.get(id, digest)?.size;
  }

  /** Record a committed blob (its file is already renamed into place) and link it. */
  recordBlob(repo: RepoName, digest: Digest, size: number, provenance: Provenance): void {
    this.db.transaction(() => {
      const now = Date.now();
      const id = this.ensureRepo(repo);
      this.s.insertBlob.run(digest, size, now, now);
      this.s.linkBlob.run(id, digest, provenance, now);
      this.refreshCounted(digest);
    })();
  }

  /** Link a stored blob; false (nothing written) when there is no row: evicted since it was looked up. */
  linkBlob(repo: RepoName, digest: Digest, provenance: Provenance): boolean {
    return this.db.transaction(() => {
      if (this.s.blob.get(digest) === undefined) return false;
      this.s.linkBlob.run(this.ensureRepo(repo), digest, provenance, Date.now());
      this.refreshCounted(digest);
      return true;
    })();
  }

  unlinkBlob(repo: RepoName, digest: Digest): boolean {
    const id = this.repoId(repo);
    if (id === undefined) return false;
    return this.db.transaction(() => {
      const gone = this.s.unlinkBlob.run(id, digest).changes > 0;
      this.refreshCounted(digest);
      return gone;
    })();
  }

  manifest(repo: RepoName, digest: Digest): ManifestRecord | undefined {
    const id = this.repoId(repo);
    if (id === undefined) return undefined;
    const row = this.s.manifest.get(id, digest);
    return row ? manifestFromRow(row) : undefined;
  }

  hasManifest(repo: RepoName, digest: Digest): boolean {
    const id = this.repoId(repo);
    return id !== undefined && this.s.hasManifest.get(id, digest) !== undefined;
  }

  /** Store a manifest, its references and (optionally) a tag: one transaction. */
  putManifest(repo: RepoName, m: NewManifest, tags: readonly string[], provenance: Provenance): void {
    this.db.transaction(() => {
      const now = Date.now();
      const id = this.ensureRepo(repo);
      this.s.insertContent.run(m.digest, m.mediaType, m.size, m.artifactType, m.subject, m.annotations, m.body);
      for (const r of m.refs) this.s.insertRef.run(m.digest, r.digest, r.kind);
      this.s.linkManifest.run(id, m.digest, provenance, now, now);
      // A tag moved away from a digest may take that image out of KEEP.
      const moved = new Set<string>();
      for (const t of tags) {
        const old = this.s.tag.get(id, t)?.digest;
        if (old !== undefined && old !== m.digest) moved.add(old);
        this.s.upsertTag.run(id, t, m.digest, provenance, now, now);
      }
      for (const d of [m.digest, ...moved]) this.refreshBelow(d);
    })();
  }

  tag(repo: RepoName, tag: string): TagRecord | undefined {
    const id = this.repoId(repo);
    if (id === undefined) return undefined;
    const row = this.s.tag.get(id, tag);
    return row && { digest: row.digest as Digest, provenance: row.provenance as Provenance, checkedAt: row.checked_at };
  }

  deleteTag(repo: RepoName, tag: string): boolean {
    const id = this.repoId(repo);
    if (id === undefined) return false;
    return this.db.transaction(() => {
      const old = this.s.tag.get(id, tag)?.digest;
      if (old === undefined || this.s.deleteTag.run(id, tag).changes === 0) return false;
      this.refreshBelow(old);
      return true;
    })();
  }

  /** Remove a manifest from a repository together with every tag pointing at it. */
  deleteManifest(repo: RepoName, digest: Digest): boolean {
    const id = this.repoId(repo);
    if (id === undefined) return false;
    return this.db.transaction(() => {
      this.s.deleteTagsOf.run(id, digest);
      const gone = this.s.unlinkManifest.run(id, digest).changes > 0;
      this.refreshBelow(digest);
      return gone;
    })();
  }

  listTags(repo: RepoName, after: string, limit: number): string[] {
    const id = this.repoId(repo);
    if (id === undefined) return [];
    return this.s.listTags.all(id, after, limit).map((r) => r.name);
  }

  listRepositories(after: string, limit: number): string[] {
    return this.s.listRepos.all(after, limit).map((r) => r.name);
  }

  referrers(repo: RepoName, subject: Digest): ManifestMeta[] {
    const id = this.repoId(repo);
    if (id === undefined) return [];
    return this.s.referrers.all(id, subject).map((r) => ({
      digest: r.digest as Digest,
      mediaType: r.media_type,
      size: r.size,
      artifactType: r.artifact_type,
      annotations: r.annotations,
    }));
  }

  createUpload(id: string, repo: RepoName): void {
    this.db.transaction(() => {
      this.s.insertUpload.run(id, this.ensureRepo(repo), Date.now());
    })();
  }

  upload(id: string): { repo: string; createdAt: number } | undefined {
    const row = this.s.upload.get(id);
    return row && { repo: row.repo, createdAt: row.created_at };
  }

  deleteUpload(id: string): void {
    this.s.deleteUpload.run(id);
  }

  uploads(): Array<{ id: string; createdAt: number }> {
    return this.s.allUploads.all().map((r) => ({ id: r.id, createdAt: r.created_at }));
  }

  upstreamTag(repo: RepoName, tag: string, acceptKey: string): { digest: Digest; checkedAt: number } | undefined {
    const id = this.repoId(repo);
    const row = id === undefined ? undefined : this.s.upstreamTag.get(id, tag, acceptKey);
    return row && { digest: row.digest as Digest, checkedAt: row.checked_at };
  }

  /** Record a manifest fetched from upstream and (for by-tag fetches) the tag it resolved to. */
  putCachedManifest(repo: RepoName, m: NewManifest, tag: { name: string; acceptKey: string } | null): void {
    this.db.transaction(() => {
      const now = Date.now();
      const id = this.ensureRepo(repo);
      this.s.insertContent.run(m.digest, m.mediaType, m.size, m.artifactType, m.subject, m.annotations, m.body);
      for (const r of m.refs) this.s.insertRef.run(m.digest, r.digest, r.kind);
      this.s.linkManifest.run(id, m.digest, 'cached', now, now);
      if (tag) this.s.upsertUpstreamTag.run(id, tag.name, tag.acceptKey, m.digest, now);
      // New references from content something pushed may already reach (rare; cheap).
      this.refreshBelow(m.digest);
    })();
  }

  /**
   * The cached manifests a tag resolved to for any Accept set, from the upstream
   * repository whose keys start with `keyPrefix` (`<upstream>|<remote name>|`), under any
   * local path (CRI-O's host-in-path and containerd's ?ns= reach one upstream repository
   * by different names), newest first.
   */
  upstreamTagVariants(tag: string, keyPrefix: string): Array<{ repo: number; digest: Digest; checkedAt: number; mediaType: string }> {
    return this.s.upstreamTagVariants
      .all(tag, keyPrefix.length, keyPrefix)
      .map((r) => ({ repo: r.repo_id, digest: r.digest as Digest, checkedAt: r.checked_at, mediaType: r.media_type }));
  }

  /**
   * Link a cached manifest that repository `fromRepoId` holds into `repo`, with the child
   * manifests it holds under it (their blobs are then reachable through the references).
   * Only for paths that resolve to the same upstream repository: same content, same source.
   * A no-op when `fromRepoId` is `repo` itself.
   */
  adoptCachedManifest(fromRepoId: number, repo: RepoName, digest: Digest): void {
    if (fromRepoId === this.repoId(repo)) return;
    this.db.transaction(() => {
      const id = this.ensureRepo(repo);
      const now = Date.now();
      for (const { d } of this.s.childManifests.all(digest)) {
        if (this.s.manifestLink.get(fromRepoId, d)) this.s.linkManifest.run(id, d, 'cached', now, now);
      }
    })();
  }

  touchUpstreamTag(repo: RepoName, tag: string, acceptKey: string): void {
    const id = this.repoId(repo);
    if (id !== undefined) this.s.touchUpstreamTag.run(Date.now(), id, tag, acceptKey);
  }

  /** The upstream deleted the tag: forget every Accept variant of it. */
  deleteUpstreamTag(repo: RepoName, tag: string): void {
    const id = this.repoId(repo);
    if (id !== undefined) this.s.deleteUpstreamTag.run(id, tag);
  }

  upstreamTagNames(repo: RepoName): string[] {
    const id = this.repoId(repo);
    return id === undefined ? [] : this.s.listUpstreamTags.all(id).map((r) => r.name);
  }

  upstreamList(key: string): { body: string; fetchedAt: number } | undefined {
    const row = this.s.upstreamList.get(key);
    return row && { body: row.body, fetchedAt: row.fetched_at };
  }

  putUpstreamList(key: string, body: string, fetchedAt: number): void {
    this.s.putUpstreamList.run(key, body, fetchedAt);
  }

  deleteUpstreamListsBefore(before: number): number {
    return this.s.deleteUpstreamListsBefore.run(before).changes;
  }

  /** Whether a manifest held by `repo` references `digest` (an upstream-verified link). */
  referencedInRepo(repo: RepoName, digest: Digest): boolean {
    const id = this.repoId(repo);
    return id !== undefined && this.s.referencedInRepo.get(id, digest) !== undefined;
  }

  /** Record batched accesses (see AccessRecorder): one transaction, timestamps only move forward. */
  touchAccess(blobs: ReadonlyMap<Digest, number>, manifests: ReadonlyArray<{ repo: RepoName; digest: Digest; at: number }>): void {
    this.db.transaction(() => {
      for (const [digest, at] of blobs) this.s.touchBlob.run(at, digest, at);
      for (const m of manifests) {
        const id = this.repoId(m.repo);
        if (id !== undefined) this.s.touchManifest.run(m.at, id, m.digest, m.at);
      }
    })();
  }

  /** Bytes of blobs that came from an upstream and nothing pushed needs (what cache.maxBytes bounds): the maintained counter. */
  cachedBytes(): number {
    return this.s.counter.get('cached_bytes')!.value;
  }

  /** The same, counted from the rows (a scan of every blob row: fsck and tests). */
  cachedBytesScan(): number {
    return this.s.cachedBytesScan.get()!.bytes;
  }

  /** Blob rows and their bytes (maintained counters). */
  blobTotals(): { blobs: number; bytes: number } {
    return { blobs: this.s.counter.get('blobs')!.value, bytes: this.s.counter.get('blob_bytes')!.value };
  }

  /**
   * fsck: compare the `counted` flags and the counters with what the rows say (whole-store
   * scans) and, with `repair`, fix them in one transaction. Returns what was wrong.
   */
  checkCounters(repair: boolean): { wrongFlags: number; counters: Array<{ name: string; stored: number; actual: number }> } {
    return this.db.transaction(() => {
      const wrong = this.s.countedWrong.all();
      if (repair) for (const w of wrong) this.s.setCounted.run(w.counted ? 0 : 1, w.digest, w.counted ? 0 : 1);
      const totals = this.s.blobTotals.get()!;
      const bad: Array<{ name: string; stored: number; actual: number }> = [];
      for (const name of ['blobs', 'blob_bytes', 'cached_bytes'] as const) {
        // After a repair of the flags the triggers moved cached_bytes by the same amounts:
        // compare against the rows as they now are.
        const stored = this.s.counter.get(name)?.value;
        let actual = totals[name];
        if (name === 'cached_bytes' && !repair) actual = this.s.cachedBytesScan.get()!.bytes;
        if (stored !== actual) {
          bad.push({ name, stored: stored ?? Number.NaN, actual });
          if (repair) this.s.setCounter.run(actual, name);
        }
      }
      return { wrongFlags: wrong.length, counters: bad };
    })();
  }

  /** Eviction candidates: cached images (roots in their repository) with their last access. */
  cachedImages(): CachedImage[] {
    return this.s.cachedImages.all().map((r) => ({ repo: r.repo_id, digest: r.digest as Digest, lastAccess: r.last_access }));
  }

  /** Eviction candidates: cached blob links no manifest of their repository references, idle since before `before`. */
  looseBlobs(before: number): LooseBlob[] {
    return this.s.looseBlobs
      .all(before)
      .filter((r) => this.s.inKeep.get(r.digest) === undefined)
      .map((r) => ({ repo: r.repo_id, digest: r.digest as Digest, lastAccess: r.last_access }));
  }

  /**
   * Set a blob row's `counted` flag (COUNTED_BLOBS membership) from its links and KEEP; the
   * triggers move the counters. Inside the caller's transaction, after its link changes.
   */
  private refreshCounted(digest: string): void {
    const want =
      this.s.blobLinkedCached.get(digest) !== undefined && this.s.blobPushed.get(digest) === undefined && this.s.inKeep.get(digest) === undefined ? 1 : 0;
    this.s.setCounted.run(want, digest, want);
  }

  /** refreshCounted for every blob a manifest reaches: KEEP changed at or above it. */
  private refreshBelow(manifest: string): void {
    for (const { d } of this.s.descendantBlobs.all(manifest)) this.refreshCounted(d);
  }

  private isProtected(digest: string): boolean {
    return this.s.isProtected.get(digest) !== undefined;
  }

  /**
   * Drop a blob row if nothing links it any more, nothing pushed reaches it and `busy` (an
   * in-flight fill) does not claim it. Inside the caller's transaction.
   */
  private dropBlobIfUnused(digest: string, busy: (d: Digest) => boolean, out: Evicted['blobs']): void {
    if (this.s.blobLinked.get(digest) || this.isProtected(digest) || busy(digest as Digest)) {
      this.refreshCounted(digest); // the row stays: its links changed
      return;
    }
    const row = this.s.blobRow.get(digest);
    if (!row) return;
    this.s.deleteBlob.run(digest); // the delete trigger takes it off the counters
    out.push({ digest: digest as Digest, size: row.size });
  }

  /**
   * Evict one cached image, in one transaction: its upstream tag rows, its manifest links
   * (with child manifests nothing else in the repository references), its blob links, blob
   * rows nobody links any more, and manifest content no repository holds. Returns null when
   * the image changed since it was chosen (accessed after `notAfter`, pushed, or now
   * referenced). Blob files are the caller's to remove, after this returns.
   */
  evictImage(repoId: number, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Evicted | null {
    return this.db.transaction((): Evicted | null => {
      const root = this.s.imageAccess.get(repoId, digest);
      if (!root || root.provenance !== 'cached' || root.last_access > notAfter) return null;
      if (this.isProtected(digest) || this.s.referencedInRepo.get(repoId, digest)) return null;
      const children = this.s.childManifests.all(digest).map((r) => r.d).filter((d) => d !== digest);
      const removed = [digest as string];
      this.s.unlinkManifest.run(repoId, digest);
      // Child manifests go once no remaining manifest of the repository references them
      // (another cached index may share a platform manifest); repeat for nested indexes.
      for (let changed = true; changed; ) {
        changed = false;
        for (const c of children) {
          if (removed.includes(c) || this.s.manifestLink.get(repoId, c)?.provenance !== 'cached') continue;
          if (this.s.referencedInRepo.get(repoId, c) || this.isProtected(c)) continue;
          this.s.unlinkManifest.run(repoId, c);
          removed.push(c);
          changed = true;
        }
      }
      const blobs = new Set<string>();
      for (const m of removed) {
        this.s.deleteUpstreamTagsOf.run(repoId, m);
        for (const r of this.s.childBlobs.all(m)) blobs.add(r.child);
      }
      const out: Evicted = { manifests: removed.length, blobs: [] };
      for (const b of blobs) {
        if (this.s.blobLink.get(repoId, b)?.provenance === 'cached' && !this.s.referencedInRepo.get(repoId, b)) this.s.unlinkBlob.run(repoId, b);
        this.dropBlobIfUnused(b, busy, out.blobs);
      }
      for (const m of removed) if (!this.s.contentHeld.get(m)) this.s.deleteContent.run(m);
      return out;
    })();
  }

  /** Evict a loose cached blob link (and the blob, if nothing else needs it): one transaction. */
  evictLooseBlob(repoId: number, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Evicted | null {
    return this.db.transaction((): Evicted | null => {
      const row = this.s.blobRow.get(digest);
      if (!row || row.last_access > notAfter || this.s.blobLink.get(repoId, digest)?.provenance !== 'cached') return null;
      if (this.s.referencedInRepo.get(repoId, digest)) return null;
      this.s.unlinkBlob.run(repoId, digest);
      const out: Evicted = { manifests: 0, blobs: [] };
      this.dropBlobIfUnused(digest, busy, out.blobs);
      return out;
    })();
  }

  /** GC mark phase: drop repository links no manifest needs (see danglingLinks). */
  unlinkDanglingBlobs(pushedGraceMs: number): number {
    return this.db.transaction(() => {
      let n = 0;
      for (const r of this.s.danglingLinks.all(Date.now() - pushedGraceMs)) {
        n += this.s.unlinkById.run(r.repo_id, r.digest).changes;
        this.refreshCounted(r.digest);
      }
      return n;
    })();
  }

  /** GC: blobs no repository links, and manifest content no repository holds. */
  unreferencedBlobs(): Digest[] {
    return this.s.unreferencedBlobs.all().map((r) => r.digest as Digest);
  }

  /** Every stored blob (tests' invariant checks on small stores; fsck pages with blobsAfter). */
  allBlobs(): Array<{ digest: Digest; size: number }> {
    return this.s.allBlobs.all().map((r) => ({ digest: r.digest as Digest, size: r.size }));
  }

  /** Up to `limit` blob rows after `after`, by digest: fsck walks them page by page (memory bounded). */
  blobsAfter(after: string, limit: number): Array<{ digest: Digest; size: number }> {
    return this.s.blobsAfter.all(after, limit).map((r) => ({ digest: r.digest as Digest, size: r.size }));
  }

  /** Whether some repository holds this blob as pushed content (nothing upstream can restore it). */
  blobPushed(digest: Digest): boolean {
    return this.s.blobPushed.get(digest) !== undefined;
  }

  /** Drop a blob row; the caller unlinks the file afterwards (row first keeps the invariant). */
  deleteBlobRow(digest: Digest): void {
    this.s.deleteBlob.run(digest);
  }

  deleteUnreferencedManifestContent(): number {
    return this.db.transaction(() => {
      let n = 0;
      for (const r of this.s.unreferencedContent.all()) {
        const below = this.s.descendantBlobs.all(r.digest); // its references go with it (cascade)
        n += this.s.deleteContent.run(r.digest).changes;
        for (const { d } of below) this.refreshCounted(d);
      }
      return n;
    })();
  }
}

/** The former name, for storage-internal callers not yet moved (storage/uploads.ts). */
export { MetadataDb as MetadataStore };
