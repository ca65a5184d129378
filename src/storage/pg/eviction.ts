/**
 * Eviction and GC for the PostgreSQL driver: db.ts's queries and decisions, step for step
 * (see db.ts for why each rule exists). The evict* functions run inside one logical change
 * (the caller's SERIALIZABLE transaction): a concurrent link, push or access that would
 * change the decision makes one of the two transactions retry, never both commit.
 */
import type { Digest } from '../../registry/names.js';
import type { Evicted, EvictionCandidate, RepoKey } from '../ports.js';
import type { Exec } from './exec.js';
import { fillLeased, markDeleted } from './tombstones.js';

/** Content reachable from anything pushed (a pushed manifest link, a tag, through references). */
const KEEP_CTE = `keep(d) AS (
  SELECT digest FROM manifests WHERE provenance = 'pushed'
  UNION SELECT digest FROM tags
  UNION SELECT r.child FROM manifest_refs r JOIN keep ON r.digest = keep.d)`;

/** Last access of a cached image: its manifest or any child manifest in the same repository. */
const IMAGE_ACCESS = `GREATEST(m.last_access, COALESCE((SELECT MAX(c.last_access) FROM manifest_refs r
  JOIN manifests c ON c.repo_id = m.repo_id AND c.digest = r.child WHERE r.digest = m.digest AND r.kind = 'manifest'), 0))`;

export function repoKey(key: RepoKey): number {
  if (typeof key !== 'number' || !Number.isSafeInteger(key)) throw new TypeError(`postgres metadata: not a repository key of this driver: ${String(key)}`);
  return key;
}

export async function cachedBytes(x: Exec): Promise<number> {
  const rows = await x.rows<{ bytes: number }>(
    `WITH RECURSIVE ${KEEP_CTE}
     SELECT COALESCE(SUM(b.size), 0)::bigint AS bytes FROM blobs b
     WHERE EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest AND rb.provenance = 'cached')
       AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest AND rb.provenance = 'pushed')
       AND b.digest NOT IN (SELECT d FROM keep)`,
    [],
  );
  return rows[0]!.bytes;
}

type CandidateRow = { repo_id: number; digest: string; last_access: number };
const candidate = (r: CandidateRow): EvictionCandidate => ({ repo: r.repo_id, digest: r.digest as Digest, lastAccess: r.last_access });

export async function cachedImages(x: Exec): Promise<EvictionCandidate[]> {
  const rows = await x.rows<CandidateRow>(
    `WITH RECURSIVE ${KEEP_CTE}
     SELECT m.repo_id, m.digest, ${IMAGE_ACCESS} AS last_access FROM manifests m
     WHERE m.provenance = 'cached' AND m.digest NOT IN (SELECT d FROM keep)
       AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests p ON p.repo_id = m.repo_id AND p.digest = r.digest WHERE r.child = m.digest)`,
    [],
  );
  return rows.map(candidate);
}

export async function looseBlobs(x: Exec, before: number): Promise<EvictionCandidate[]> {
  const rows = await x.rows<CandidateRow>(
    `WITH RECURSIVE ${KEEP_CTE}
     SELECT rb.repo_id, rb.digest, b.last_access FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
     WHERE rb.provenance = 'cached' AND b.last_access < $1 AND rb.digest NOT IN (SELECT d FROM keep)
       AND NOT EXISTS (SELECT 1 FROM repo_blobs p WHERE p.digest = rb.digest AND p.provenance = 'pushed')
       AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests m ON m.repo_id = rb.repo_id AND m.digest = r.digest WHERE r.child = rb.digest)`,
    [before],
  );
  return rows.map(candidate);
}

const one = async (x: Exec, sql: string, params: unknown[]) => (await x.rows(sql, params)).length > 0;

/** Is `digest`, or anything that references it, pushed content? */
function isProtected(x: Exec, digest: string): Promise<boolean> {
  return one(
    x,
    `WITH RECURSIVE up(d) AS (SELECT $1::text COLLATE "C" UNION SELECT r.digest FROM manifest_refs r JOIN up ON r.child = up.d)
     SELECT 1 FROM up
     WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.digest = up.d AND m.provenance = 'pushed')
        OR EXISTS (SELECT 1 FROM tags t WHERE t.digest = up.d)
        OR EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = up.d AND rb.provenance = 'pushed')
     LIMIT 1`,
    [digest],
  );
}

const referencedInRepo = (x: Exec, repoId: number, digest: string) =>
  one(x, 'SELECT 1 FROM manifest_refs r JOIN manifests m ON m.digest = r.digest WHERE m.repo_id = $1 AND r.child = $2 LIMIT 1', [repoId, digest]);

async function linkProvenance(x: Exec, table: 'manifests' | 'repo_blobs', repoId: number, digest: string): Promise<string | undefined> {
  return (await x.rows<{ provenance: string }>(`SELECT provenance FROM ${table} WHERE repo_id = $1 AND digest = $2`, [repoId, digest]))[0]?.provenance;
}

/**
 * Drop a blob row if nothing links it, nothing pushed reaches it and no fill claims it (this
 * replica's, `busy`, or any replica's `fill:` lease). Its content is deleted after the grace
 * (tombstones.ts), so a replica that resolved the digest just before still reads it whole.
 */
async function dropBlobIfUnused(x: Exec, digest: string, busy: (d: Digest) => boolean, out: Evicted['blobs']): Promise<void> {
  if ((await one(x, 'SELECT 1 FROM repo_blobs WHERE digest = $1 LIMIT 1', [digest])) || (await isProtected(x, digest)) || busy(digest as Digest)) return;
  if (await fillLeased(x, digest)) return;
  const row = (await x.rows<{ size: number }>('DELETE FROM blobs WHERE digest = $1 RETURNING size', [digest]))[0];
  if (!row) return;
  await markDeleted(x, digest);
  out.push({ digest: digest as Digest, size: row.size });
}

export async function evictImage(x: Exec, repoId: number, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
  const root = (
    await x.rows<{ provenance: string; last_access: number }>(`SELECT m.provenance, ${IMAGE_ACCESS} AS last_access FROM manifests m WHERE m.repo_id = $1 AND m.digest = $2`, [
      repoId,
      digest,
    ])
  )[0];
  if (!root || root.provenance !== 'cached' || root.last_access > notAfter) return null;
  if ((await isProtected(x, digest)) || (await referencedInRepo(x, repoId, digest))) return null;
  const children = (
    await x.rows<{ d: string }>(
      `WITH RECURSIVE sub(d) AS (SELECT $1::text COLLATE "C" UNION SELECT r.child FROM manifest_refs r JOIN sub ON r.digest = sub.d WHERE r.kind = 'manifest')
       SELECT d FROM sub`,
      [digest],
    )
  )
    .map((r) => r.d)
    .filter((d) => d !== digest);
  const removed: string[] = [digest];
  const unlinkManifest = (d: string) => x.count('DELETE FROM manifests WHERE repo_id = $1 AND digest = $2', [repoId, d]);
  await unlinkManifest(digest);
  // Child manifests go once no remaining manifest of the repository references them;
  // repeat for nested indexes.
  for (let changed = true; changed; ) {
    changed = false;
    for (const c of children) {
      if (removed.includes(c) || (await linkProvenance(x, 'manifests', repoId, c)) !== 'cached') continue;
      if ((await referencedInRepo(x, repoId, c)) || (await isProtected(x, c))) continue;
      await unlinkManifest(c);
      removed.push(c);
      changed = true;
    }
  }
  await x.count('DELETE FROM upstream_tags WHERE repo_id = $1 AND digest = ANY($2::text[])', [repoId, removed]);
  // In db.ts's order (per removed manifest, by child), so results list blobs alike.
  const blobs = new Set<string>();
  for (const m of removed) {
    for (const r of await x.rows<{ child: string }>("SELECT child FROM manifest_refs WHERE digest = $1 AND kind = 'blob' ORDER BY child", [m])) blobs.add(r.child);
  }
  const out: Evicted = { manifests: removed.length, blobs: [] };
  for (const b of blobs) {
    if ((await linkProvenance(x, 'repo_blobs', repoId, b)) === 'cached' && !(await referencedInRepo(x, repoId, b))) {
      await x.count('DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2', [repoId, b]);
    }
    await dropBlobIfUnused(x, b, busy, out.blobs);
  }
  await x.count('DELETE FROM manifest_content mc WHERE mc.digest = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = mc.digest)', [removed]);
  return out;
}

export async function evictLooseBlob(x: Exec, repoId: number, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
  const row = (await x.rows<{ last_access: number }>('SELECT last_access FROM blobs WHERE digest = $1', [digest]))[0];
  if (!row || row.last_access > notAfter || (await linkProvenance(x, 'repo_blobs', repoId, digest)) !== 'cached') return null;
  if (await referencedInRepo(x, repoId, digest)) return null;
  await x.count('DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2', [repoId, digest]);
  const out: Evicted = { manifests: 0, blobs: [] };
  await dropBlobIfUnused(x, digest, busy, out.blobs);
  return out;
}

/** GC mark phase: links no manifest of their repository references (cached always, pushed after the grace). */
export function unlinkDanglingBlobs(x: Exec, pushedGraceMs: number): Promise<number> {
  return x.count(
    `DELETE FROM repo_blobs rb
     WHERE (rb.provenance = 'cached' OR rb.created_at < $1)
       AND NOT EXISTS (SELECT 1 FROM manifests m JOIN manifest_refs r ON r.digest = m.digest WHERE m.repo_id = rb.repo_id AND r.child = rb.digest)`,
    [Date.now() - pushedGraceMs],
  );
}

export async function unreferencedBlobs(x: Exec): Promise<Digest[]> {
  const rows = await x.rows<{ digest: string }>('SELECT b.digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)', []);
  return rows.map((r) => r.digest as Digest);
}

const PAGE = 1000;

/** Every blob row by digest, a page at a time (keyset), so a large table is never held whole. */
export async function* allBlobs(x: Exec): AsyncIterable<{ digest: Digest; size: number }> {
  let after = '';
  for (;;) {
    const rows = await x.rows<{ digest: string; size: number }>('SELECT digest, size FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2', [after, PAGE]);
    for (const r of rows) yield { digest: r.digest as Digest, size: r.size };
    if (rows.length < PAGE) return;
    after = rows.at(-1)!.digest;
  }
}
