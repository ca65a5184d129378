/**
 * Deferred blob deletes for the shared driver (coordination.ts DeferredDeletes; the
 * invariant is written down in storage/README.md). Markers live in the `leases` table
 * (no schema change): name `delete:<digest>`, owner `pending` (the row went at
 * `acquired_at`; content still in the store) or `deleting` (a replica is deleting the
 * content until `expires_at`). Invariants, each kept by SERIALIZABLE transactions that
 * read what the other writes:
 *
 * - a marker exists only while the digest has no blob row (it is written in the row's
 *   deleting transaction; a commit that records the row removes a pending marker);
 * - content is deleted only under a live `deleting` claim, taken while no row exists;
 * - a row is recorded only while no live `deleting` claim exists (else ContentBeingDeleted:
 *   the committer waits and writes the content again after the delete).
 */
import { ContentBeingDeleted, DELETE_CLAIM_TTL_MS as CLAIM_TTL_MS, type DeferredDeletes, type Fence } from '../coordination.js';
import type { Digest } from '../../registry/names.js';
import { type Exec, fencedExec, poolExec } from './exec.js';
import type { PgPoolHandle } from './pool.js';

const PREFIX = 'delete:';
const name = (d: Digest | string) => `${PREFIX}${d}`;

/** A fill of `digest` is running somewhere (the `fill:<digest>` lease of cache/fill.ts, any replica). */
export async function fillLeased(x: Exec, digest: string): Promise<boolean> {
  return (await x.rows("SELECT 1 FROM leases WHERE name = 'fill:' || $1 AND expires_at > clock_timestamp()", [digest])).length > 0;
}

/** In the transaction that deleted the blob row: its content goes after the grace. */
export async function markDeleted(x: Exec, digest: string): Promise<void> {
  await x.rows(
    `INSERT INTO leases(name, owner, token, acquired_at, expires_at)
     VALUES ($1, 'pending', nextval('lease_tokens'), clock_timestamp(), clock_timestamp())
     ON CONFLICT (name) DO UPDATE SET owner = 'pending', token = excluded.token, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at`,
    [name(digest)],
  );
}

/**
 * In the transaction that records a blob row: cancel a pending delete (the content is
 * still there: no claim was taken) or a claim whose holder died; a live claim means the
 * content may be going now: throw ContentBeingDeleted (the caller waits and writes again).
 */
export async function beforeRecord(x: Exec, digest: Digest): Promise<void> {
  await x.rows("DELETE FROM leases WHERE name = $1 AND (owner = 'pending' OR expires_at <= clock_timestamp())", [name(digest)]);
  if ((await x.rows('SELECT 1 FROM leases WHERE name = $1', [name(digest)])).length > 0) throw new ContentBeingDeleted(digest);
}

export class PgDeferredDeletes implements DeferredDeletes {
  private readonly ex: Exec;

  /** With `fence`, every claim checks it in its transaction first (exec.ts checkFence). */
  constructor(
    private readonly db: PgPoolHandle,
    fence?: Fence,
  ) {
    this.ex = fence ? fencedExec(poolExec(db), fence) : poolExec(db);
  }

  fenced(fence: Fence): PgDeferredDeletes {
    return new PgDeferredDeletes(this.db, fence);
  }

  claimDue(graceMs: number, limit: number): Promise<Array<{ digest: Digest; token: number }>> {
    return this.ex.change(async (x) => {
      const rows = await x.rows<{ digest: string; token: number }>(
        `UPDATE leases l SET owner = 'deleting', token = nextval('lease_tokens'), expires_at = clock_timestamp() + $3 * interval '1 millisecond'
         WHERE l.name IN (
           SELECT name FROM leases WHERE name >= $4 AND name < $5
             AND ((owner = 'pending' AND acquired_at <= clock_timestamp() - $1 * interval '1 millisecond') OR (owner = 'deleting' AND expires_at <= clock_timestamp()))
           ORDER BY acquired_at LIMIT $2)
           AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = substr(l.name, ${PREFIX.length + 1}))
         RETURNING substr(l.name, ${PREFIX.length + 1}) AS digest, l.token`,
        [graceMs, limit, CLAIM_TTL_MS, PREFIX, prefixEnd()],
      );
      return rows.map((r) => ({ digest: r.digest as Digest, token: r.token }));
    });
  }

  async done(digest: Digest, token: number): Promise<void> {
    await this.db.query("DELETE FROM leases WHERE name = $1 AND owner = 'deleting' AND token = $2", [name(digest), token]);
  }

  claimOrphan(digest: Digest): Promise<number | null> {
    return this.ex.change(async (x) => {
      const rows = await x.rows<{ token: number }>(
        `INSERT INTO leases(name, owner, token, acquired_at, expires_at)
         SELECT $1, 'deleting', nextval('lease_tokens'), clock_timestamp(), clock_timestamp() + $3 * interval '1 millisecond'
         WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE digest = $2)
         ON CONFLICT (name) DO NOTHING RETURNING token`,
        [name(digest), digest, CLAIM_TTL_MS],
      );
      return rows[0]?.token ?? null;
    });
  }

  async marked(digest: Digest): Promise<boolean> {
    return (await this.db.query('SELECT 1 FROM leases WHERE name = $1', [name(digest)])).rows.length > 0;
  }

  async pending(): Promise<number> {
    const { rows } = await this.db.query<{ n: number }>('SELECT count(*)::int AS n FROM leases WHERE name >= $1 AND name < $2', [PREFIX, prefixEnd()]);
    return rows[0]?.n ?? 0;
  }
}

/** The key just past every `delete:` name (C collation: byte order), for an index range scan. */
function prefixEnd(): string {
  return PREFIX.slice(0, -1) + String.fromCharCode(PREFIX.charCodeAt(PREFIX.length - 1) + 1);
}
