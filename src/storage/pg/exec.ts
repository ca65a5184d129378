/**
 * How the PostgreSQL metadata operations reach the database: `rows` runs one statement,
 * `change` one logical change. On the store, a statement goes to any pooled connection and
 * a change is its own SERIALIZABLE transaction (pool.ts); on a transaction handle both run
 * on that transaction's connection (a change is then part of the larger one).
 */
import type pg from 'pg';
import { type Fence, FencedOut } from '../coordination.js';
import { type PgPoolHandle, isRetryableConflict, mapPgError } from './pool.js';

export interface Exec {
  rows<R extends pg.QueryResultRow>(q: Stmt, params: unknown[]): Promise<R[]>;
  /** Rows affected (DELETE/UPDATE/INSERT). */
  count(q: Stmt, params: unknown[]): Promise<number>;
  change<T>(fn: (x: Exec) => Promise<T>): Promise<T>;
}

/** A statement: SQL text, and a name for the hot ones (prepared once per connection). */
export type Stmt = string | { name: string; text: string };

function config(q: Stmt, values: unknown[]): pg.QueryConfig {
  return typeof q === 'string' ? { text: q, values } : { name: q.name, text: q.text, values };
}

export function poolExec(db: PgPoolHandle): Exec {
  return {
    rows: async <R extends pg.QueryResultRow>(q: Stmt, params: unknown[]) => (await db.query<R>(config(q, params))).rows,
    count: async (q, params) => (await db.query(config(q, params))).rowCount ?? 0,
    change: (fn) => db.transaction((c) => fn(clientExec(c, { live: true }))),
  };
}

export interface TxState {
  live: boolean;
}

export function clientExec(c: pg.PoolClient, state: TxState): Exec {
  const run = async (q: Stmt, params: unknown[]) => {
    if (!state.live) throw new Error('metadata: transaction handle used after its transaction ended');
    try {
      return await c.query(config(q, params));
    } catch (e) {
      // Serialization failures stay raw: the transaction loop retries them.
      throw isRetryableConflict(e) ? e : mapPgError(e);
    }
  };
  const self: Exec = {
    rows: async <R extends pg.QueryResultRow>(q: Stmt, params: unknown[]) => (await run(q, params)).rows as R[],
    count: async (q, params) => (await run(q, params)).rowCount ?? 0,
    change: (fn) => fn(self),
  };
  return self;
}

/**
 * Fencing: refuse the change unless `fence` still holds (same owner and token, not
 * expired), checked inside the change's transaction. FOR SHARE locks the lease row until
 * the change commits: a takeover (the acquire's UPDATE of that row) waits for it, and a
 * takeover committed first makes this read see the new token (or, under SERIALIZABLE, fail
 * with a serialization error that retries the change and then sees it). So a change either
 * completes before another holder gets the lease or is refused.
 */
export async function checkFence(x: Exec, fence: Fence): Promise<void> {
  const held = await x.rows(
    'SELECT 1 FROM leases WHERE name = $1 AND owner = $2 AND token = $3 AND expires_at > clock_timestamp() FOR SHARE',
    [fence.name, fence.owner, fence.token],
  );
  if (held.length === 0) throw new FencedOut(fence);
}

/** `base` with every change preceded by checkFence in the same transaction. */
export function fencedExec(base: Exec, fence: Fence): Exec {
  return {
    rows: base.rows,
    count: base.count,
    change: (fn) =>
      base.change(async (x) => {
        await checkFence(x, fence);
        return fn(x);
      }),
  };
}
