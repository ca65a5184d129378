/**
 * Open the storage drivers `storage.driver` chooses, as the ports (what serve, gc and
 * fsck call; issue #13):
 *
 * - `local`: SQLite + files under `storage` (one process; openLocalStorage).
 * - `shared`: metadata and leases in PostgreSQL, blobs and upload-session chunks in an
 *   S3-compatible bucket, upload-session rows in PostgreSQL (so any replica carries a
 *   session on). The local directory keeps only the token key.
 * - `postgres` (PostgreSQL metadata with local files) is refused: the local blob and
 *   upload stores write their rows through the synchronous SQLite connection, and local
 *   files are not shared between replicas anyway, so the combination gains nothing sound.
 */
import type { PostgresConfig, S3Config, StoreConfig } from '../config/schema.js';
import { type Coordination, type DeferredDeletes, LocalCoordination } from './coordination.js';
import { openLocalStorage } from './local/index.js';
import type { StoragePaths } from './paths.js';
// Types only: the shared driver's modules (pg, the AWS SDK: about 20 MiB of heap) are
// imported when `storage.driver: shared` asks for them, so a local-driver process never
// loads them (test/integration/startup-memory.test.ts).
import type { PgLog } from './pg/index.js';
import type { BlobStore, MetadataStore, UploadStore } from './ports.js';
import type { S3BlobStore, S3BlobStoreOptions } from './s3/store.js';

export interface Storage {
  metadata: MetadataStore;
  blobs: BlobStore;
  uploads(): UploadStore;
  coordination: Coordination;
  /**
   * Shared driver: a blob row's content is deleted after a grace, by whoever holds the
   * `gc-leader` lease (coordination.ts). Null (local): delete the content at once.
   */
  deferredDeletes: DeferredDeletes | null;
  /** Close everything opened here (the metadata store and the object store client). */
  close(): Promise<void>;
}

/** The default (`storage: <path>`): what gc and fsck callers without a store section mean. */
export const LOCAL: StoreConfig = { driver: 'local', postgres: null, s3: null };

/** For the offline commands (no pino logger): code and message only, as PgLog promises. */
export const stderrLog: PgLog = {
  warn: (obj, msg) => process.stderr.write(`${msg} (${obj.code ?? 'no code'}: ${obj.err})\n`),
};

export async function openStorage(store: StoreConfig, paths: StoragePaths, log: PgLog): Promise<Storage> {
  if (store.driver === 'local') {
    const s = openLocalStorage(paths);
    return { ...s, coordination: new LocalCoordination(), deferredDeletes: null, close: once(() => s.metadata.close()) };
  }
  if (store.driver === 'shared' && store.postgres && store.s3) return openSharedStorage(store.postgres, store.s3, log);
  throw new Error(`storage.driver: ${store.driver} is not available (local or shared)`);
}

/** PostgreSQL + S3 (see the top); the same shape as the local driver. */
export async function openSharedStorage(pgc: PostgresConfig, s3c: S3Config, log: PgLog): Promise<Storage> {
  const [{ openPostgresStorage }, { S3BlobStore }, { S3UploadStore }] = await Promise.all([
    import('./pg/index.js'),
    import('./s3/store.js'),
    import('./s3/uploads.js'),
  ]);
  const pg = await openPostgresStorage(pgc, log);
  let blobs: S3BlobStore;
  try {
    blobs = new S3BlobStore(s3Options(s3c), pg.metadata);
  } catch (e) {
    await pg.close().catch(() => {});
    throw e;
  }
  return {
    metadata: pg.metadata,
    blobs,
    uploads: () => new S3UploadStore(blobs, pg.uploadRows, pg.coordination),
    coordination: pg.coordination,
    deferredDeletes: pg.deferredDeletes,
    close: once(async () => {
      blobs.close();
      await pg.metadata.close();
    }),
  };
}

function s3Options(c: S3Config): S3BlobStoreOptions {
  return {
    region: c.region,
    bucket: c.bucket,
    prefix: c.prefix,
    forcePathStyle: c.forcePathStyle,
    partSize: c.partSize,
    connectTimeoutMs: c.connectTimeoutMs,
    requestTimeoutMs: c.requestTimeoutMs,
    ...(c.endpoint ? { endpoint: c.endpoint } : {}),
    ...(c.accessKeyId && c.secretAccessKey ? { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey } : {}),
  };
}

/** Closing twice (a signal during a test's teardown) closes once: pg's pool refuses a second end. */
function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () => (p ??= fn());
}
