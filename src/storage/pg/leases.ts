/**
 * Leases in PostgreSQL (the `leases` table): one row per name with owner, fencing token
 * and expiry. Every operation is one statement, so exclusivity rests on PostgreSQL's row
 * lock: two replicas racing for an expired lease both reach the ON CONFLICT update, the
 * second re-checks the WHERE against the first one's committed row and gets nothing.
 * Expiry is the database's clock (clock_timestamp), never a replica's.
 */
import type { Coordination, LeaseGrant, LeaseHolder } from '../coordination.js';
import type { PgPoolHandle } from './pool.js';

const ms = (sql: string) => `(extract(epoch from ${sql}) * 1000)::bigint`;

/** Take or extend a lease (parameters: name, owner, ttl ms); changes no row when someone else holds it. */
const ACQUIRE = `INSERT INTO leases AS l (name, owner, token, acquired_at, expires_at)
       VALUES ($1, $2, nextval('lease_tokens'), clock_timestamp(), clock_timestamp() + $3 * interval '1 millisecond')
       ON CONFLICT (name) DO UPDATE SET
         owner = excluded.owner,
         token = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp() THEN l.token ELSE excluded.token END,
         acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp() THEN l.acquired_at ELSE excluded.acquired_at END,
         expires_at = excluded.expires_at
       WHERE l.owner = excluded.owner OR l.expires_at <= clock_timestamp()`;

export class PgCoordination implements Coordination {
  constructor(private readonly db: PgPoolHandle) {}

  async acquireLease(name: string, owner: string, ttlMs: number): Promise<LeaseGrant | null> {
    const { rows } = await this.db.query<{ token: number; expires_at: number }>(`${ACQUIRE} RETURNING token, ${ms('expires_at')} AS expires_at`, [name, owner, ttlMs]);
    const r = rows[0];
    return r ? { token: r.token, expiresAt: r.expires_at } : null;
  }

  /**
   * One statement: the acquire, and when it changed nothing, the row as of the statement's
   * snapshot. That row can be older than the one that refused us (a holder that took the
   * lease meanwhile is not in the snapshot): then the holder is null or stale, and the
   * caller asks again (a stale owner answers 404 to a peer request).
   */
  async claimLease(name: string, owner: string, ttlMs: number): Promise<{ grant: LeaseGrant; holder: null } | { grant: null; holder: LeaseHolder | null }> {
    const { rows } = await this.db.query<{ granted: boolean; owner: string; token: number; expires_at: number }>(
      `WITH g AS (${ACQUIRE} RETURNING token, expires_at)
       SELECT true AS granted, NULL::text AS owner, token, ${ms('expires_at')} AS expires_at FROM g
       UNION ALL
       SELECT false, owner, token, ${ms('expires_at')} FROM leases
       WHERE name = $1 AND expires_at > clock_timestamp() AND NOT EXISTS (SELECT 1 FROM g)`,
      [name, owner, ttlMs],
    );
    const r = rows[0];
    if (r?.granted) return { grant: { token: r.token, expiresAt: r.expires_at }, holder: null };
    return { grant: null, holder: r ? { owner: r.owner, token: r.token, expiresAt: r.expires_at } : null };
  }

  async renewLease(name: string, owner: string, ttlMs: number): Promise<boolean> {
    const r = await this.db.query(
      `UPDATE leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
       WHERE name = $1 AND owner = $2 AND expires_at > clock_timestamp()`,
      [name, owner, ttlMs],
    );
    return r.rowCount === 1;
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    await this.db.query('DELETE FROM leases WHERE name = $1 AND owner = $2', [name, owner]);
  }

  async leaseHolder(name: string): Promise<LeaseHolder | null> {
    const { rows } = await this.db.query<{ owner: string; token: number; expires_at: number }>(
      `SELECT owner, token, ${ms('expires_at')} AS expires_at FROM leases WHERE name = $1 AND expires_at > clock_timestamp()`,
      [name],
    );
    const r = rows[0];
    return r ? { owner: r.owner, token: r.token, expiresAt: r.expires_at } : null;
  }
}
