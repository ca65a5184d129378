/**
 * The PostgreSQL connection pool and the two ways to use it: one statement (`query`) and
 * one transaction on one pooled connection (`transaction`). Errors that mean "the database
 * cannot answer now" (down, restarting, unreachable, too slow, out of connections) become
 * a 503 UNAVAILABLE the registry answers with; a full disk becomes 507, as for SQLite.
 * The password (config or URL) is handed to `pg` only: no error or log line carries it.
 */
import fs from 'node:fs';
import pg from 'pg';
import type { PostgresConfig } from '../../config/schema.js';
import { RegistryError, insufficientStorage } from '../../registry/errors.js';

/** Timestamps (ms) and sizes are int8; both stay far below 2^53, so numbers, not strings. */
const INT8_OID = 20;
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8_OID && format !== 'binary') return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

export type Queryable = Pick<pg.PoolClient, 'query'>;

export interface PgPoolHandle {
  readonly pool: pg.Pool;
  /** One statement on any pooled connection (autocommit). */
  query<R extends pg.QueryResultRow>(sql: string | pg.QueryConfig, params?: unknown[]): Promise<pg.QueryResult<R>>;
  /**
   * Run `fn` in one SERIALIZABLE transaction on one connection. SERIALIZABLE makes
   * concurrent replicas behave as SQLite's single writer does (the invariants in db.ts
   * were written for that); a serialization failure or deadlock rolls back and runs `fn`
   * again (bounded), so `fn` must only act through `c`.
   */
  transaction<T>(fn: (c: pg.PoolClient) => Promise<T>, opts?: { rollback?: boolean }): Promise<T>;
  /** Open the connections kept warm (`min` in poolConfig) now, at start, rather than on a request's path. */
  warm(): Promise<void>;
  close(): Promise<void>;
}

/** A cold miss's path uses about two connections at once (its lookups, then the fill lease; ttfb-nonowner-4.md). */
const WARM_CONNECTIONS = 2;

function warmConnections(cfg: PostgresConfig): number {
  return Math.min(WARM_CONNECTIONS, cfg.poolSize);
}

export function poolConfig(cfg: PostgresConfig): pg.PoolConfig {
  const ssl = cfg.ssl && {
    rejectUnauthorized: !cfg.ssl.insecureSkipVerify,
    ...(cfg.ssl.ca ? { ca: fs.readFileSync(cfg.ssl.ca, 'utf8') } : {}),
  };
  return {
    ...(cfg.url
      ? { connectionString: cfg.url }
      : { host: cfg.host ?? undefined, port: cfg.port, database: cfg.database ?? undefined, user: cfg.user ?? undefined }),
    // pg takes a connection string's password over this one; config refuses both at once.
    ...(cfg.password !== null ? { password: cfg.password } : {}),
    ...(ssl ? { ssl } : {}),
    max: cfg.poolSize,
    // Connections kept open while idle (the rest close after 30 s): a replica's first miss
    // after a quiet spell, and its first after start (warm()), would otherwise wait for
    // connection set-up (TCP, auth, session parameters) on its time to first byte.
    min: warmConnections(cfg),
    connectionTimeoutMillis: cfg.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    // Server side: the statement is cancelled. Client side (a server that stopped answering
    // altogether): the connection is given up a little later.
    statement_timeout: cfg.statementTimeoutMs,
    idle_in_transaction_session_timeout: Math.max(cfg.statementTimeoutMs * 2, 60_000),
    query_timeout: cfg.statementTimeoutMs + 5_000,
    keepAlive: true,
    application_name: 'regmirror',
    types,
  };
}

// SQLSTATE classes meaning "not now": 08 connection exception, 53 insufficient resources
// (53100 disk full is 507), 57 operator intervention (shutdown, cancel, timeout); 40001 and
// 40P01 left after the retries. Node errors: the socket could not be made or broke.
const UNAVAILABLE_CLASSES = ['08', '53', '57', '40'];
const NODE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);
const NODE_MESSAGES = /Connection terminated|timeout exceeded when trying to connect|Query read timeout|Client has encountered a connection error|Connection ended unexpectedly|the database system is (starting up|shutting down|in recovery mode)/i;

/** A RegistryError for an error that means the database cannot answer now, else the error unchanged. */
export function mapPgError(e: unknown): unknown {
  if (e instanceof RegistryError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  if (code === '53100') return insufficientStorage();
  const unavailable =
    (typeof code === 'string' && (NODE_CODES.has(code) || (code.length === 5 && UNAVAILABLE_CLASSES.includes(code.slice(0, 2))))) ||
    (e instanceof Error && NODE_MESSAGES.test(e.message));
  if (!unavailable) return e;
  const err = new RegistryError('UNAVAILABLE', 'metadata database unavailable; retry shortly', { status: 503, headers: { 'retry-after': '5' } });
  (err as Error & { cause?: unknown }).cause = e;
  return err;
}

export function isRetryableConflict(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === '40001' || code === '40P01';
}

const MAX_ATTEMPTS = 8;

export function createPool(cfg: PostgresConfig, onIdleError: (e: Error) => void = () => {}): PgPoolHandle {
  const pool = new pg.Pool(poolConfig(cfg));
  // An idle connection the server closed (restart, failover) reports here; without a
  // listener it would be an uncaught error. The pool drops it and the next query reconnects.
  pool.on('error', onIdleError);
  const query = async <R extends pg.QueryResultRow>(sql: string | pg.QueryConfig, params?: unknown[]) => {
    try {
      return await pool.query<R>(sql as string, params);
    } catch (e) {
      throw mapPgError(e);
    }
  };
  const transaction = async <T>(fn: (c: pg.PoolClient) => Promise<T>, opts: { rollback?: boolean } = {}): Promise<T> => {
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (e) {
      throw mapPgError(e);
    }
    let broken: Error | undefined;
    // A connection lost while checked out reports 'error' here (besides failing the query
    // in flight); unheard, it would be an uncaught exception.
    const onError = (e: Error) => (broken ??= e);
    client.on('error', onError);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          await client.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
          const out = await fn(client);
          await client.query(opts.rollback ? 'ROLLBACK' : 'COMMIT');
          return out;
        } catch (e) {
          await client.query('ROLLBACK').catch((re: Error) => (broken = re));
          if (broken || !isRetryableConflict(e) || attempt >= MAX_ATTEMPTS) throw mapPgError(e);
          // Back off a little, with jitter, so two replicas do not collide again in step.
          await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
        }
      }
    } finally {
      // A connection whose ROLLBACK failed is in an unknown state: destroy it, never reuse it.
      client.removeListener('error', onError);
      client.release(broken ?? undefined);
    }
  };
  const warm = async () => {
    // All at once, so the pool opens that many (one after another would reuse one).
    const clients = await Promise.all(Array.from({ length: warmConnections(cfg) }, () => pool.connect())).catch((e: unknown) => Promise.reject(mapPgError(e)));
    for (const c of clients) c.release();
  };
  return { pool, query, transaction, warm, close: () => pool.end() };
}
