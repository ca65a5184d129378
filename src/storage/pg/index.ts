/**
 * Open the PostgreSQL side of the shared storage: one pool for metadata and leases, the
 * schema brought up to date (several replicas may start at once), and the two ports on
 * top. What app.ts will call for `storage.driver: postgres|shared`.
 */
import type { PostgresConfig } from '../../config/schema.js';
import { PgCoordination } from './leases.js';
import { PgMetadataStore } from './metadata.js';
import { createPool } from './pool.js';
import { PgDeferredDeletes } from './tombstones.js';
import { PgUploadRows } from './uploads.js';

export interface PostgresStorage {
  metadata: PgMetadataStore;
  coordination: PgCoordination;
  /** Blob content deleted after a grace (tombstones.ts). */
  deferredDeletes: PgDeferredDeletes;
  /** Upload-session rows for the S3 upload store (same pool). */
  uploadRows: PgUploadRows;
  /** Ends the pool (the metadata store's close does the same). */
  close(): Promise<void>;
}

/** Only code and message: pg's errors carry no connection string or password. */
export interface PgLog {
  warn(obj: { code?: string; err: string }, msg: string): void;
}

export async function openPostgresStorage(cfg: PostgresConfig, log: PgLog): Promise<PostgresStorage> {
  const db = createPool(cfg, (e) => log.warn({ code: (e as { code?: string }).code, err: e.message }, 'metadata database: an idle connection was lost (reconnects on next use)'));
  try {
    const metadata = await PgMetadataStore.open(db);
    await db.warm();
    return { metadata, coordination: new PgCoordination(db), deferredDeletes: new PgDeferredDeletes(db), uploadRows: new PgUploadRows(db), close: () => db.close() };
  } catch (e) {
    await db.close().catch(() => {});
    throw e;
  }
}
