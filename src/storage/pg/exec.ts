/**
 * How the PostgreSQL metadata operations reach the database: `rows` runs one statement,
 * `change` one logical change. On the store, a statement goes to any pooled connection and
 * a change is its own SERIALIZABLE transaction (pool.ts); on a transaction handle both run
 * on that transaction's connection (a change is then part of the larger one).
 */
import type pg from 'pg';
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
