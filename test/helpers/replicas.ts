/**
 * Several regmirror replicas on one shared store (issue #13): a real PostgreSQL
 * (test/helpers/postgres.ts) and a real Ceph RADOS Gateway bucket (test/helpers/radosgw.ts),
 * both started once per test file and stopped by `stopSharedServers` (test.after.always).
 * Each call of `sharedStorage` makes a fresh database and bucket, so tests stay independent.
 */
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import pg from 'pg';
import { HAVE_POSTGRES, type PostgresCluster, startPostgres } from './postgres.js';
import { type Radosgw, radosgwMissing, startRadosgw } from './radosgw.js';
import { type TestServer, tempDir } from './server.js';
import { CI } from './tools.js';
import { OCI_MANIFEST, serve } from '../integration/_support.js';
import { http, sha256 } from './http.js';
import type { Image } from '../fixtures/images.js';

/** Why shared-storage tests cannot run here (null: they can); never a reason to skip under CI=true. */
export const sharedMissing = radosgwMissing() ?? (HAVE_POSTGRES || CI ? null : 'PostgreSQL is not installed');

const cleanups: Array<() => unknown> = [];
let pgCluster: Promise<PostgresCluster> | undefined;
let gw: Promise<Radosgw> | undefined;
let n = 0;

/** Stop this file's PostgreSQL and RADOS Gateway: register with `test.after.always`. */
export async function stopSharedServers(): Promise<void> {
  for (const fn of cleanups.reverse()) await fn();
  cleanups.length = 0;
}

/** The file's PostgreSQL cluster (started on first use), e.g. to stop or restart it in a test. */
export function sharedPostgres(): Promise<PostgresCluster> {
  return (pgCluster ??= startPostgres({ teardown: (fn) => cleanups.push(fn) }));
}

/** The file's RADOS Gateway (started on first use). */
export function sharedRadosgw(): Promise<Radosgw> {
  return (gw ??= startRadosgw().then((r) => (cleanups.push(() => r.stop()), r)));
}

export interface SharedStorage {
  /** The fresh database's URL. */
  db: string;
  bucket: string;
  /** The `storage` config section of one replica whose local working directory is `dir`. */
  config(dir: string): Record<string, unknown>;
}

/** A fresh database and bucket; `s3extra` is merged into `storage.s3` (e.g. `redirect`), `pgextra` into `storage.postgres` (e.g. timeouts). */
export async function sharedStorage(s3extra: Record<string, unknown> = {}, pgextra: Record<string, unknown> = {}): Promise<SharedStorage> {
  const pgc = await sharedPostgres();
  const g = await sharedRadosgw();
  const db = await pgc.createDatabase();
  const bucket = `shared-${process.pid}-${++n}`;
  return {
    db,
    bucket,
    config: (dir) => ({
      driver: 'shared',
      path: path.join(dir, 'storage'),
      postgres: { url: db, poolSize: 4, ...pgextra },
      s3: { endpoint: g.endpoint, region: g.region, bucket, prefix: 'mirror', accessKeyId: g.accessKeyId, secretAccessKey: g.secretAccessKey, partSize: '5MiB', ...s3extra },
    }),
  };
}

/** `count` in-process servers on a fresh shared store (same config otherwise); `storage` is the last one's section. */
export async function replicas(
  t: ExecutionContext,
  count: number,
  extra: Record<string, unknown> = {},
  s3extra: Record<string, unknown> = {},
  pgextra: Record<string, unknown> = {},
): Promise<TestServer[] & { db: string; storage: Record<string, unknown> }> {
  const shared = await sharedStorage(s3extra, pgextra);
  const out: TestServer[] = [];
  let storage: Record<string, unknown> = {};
  for (let i = 0; i < count; i++) {
    storage = shared.config(await tempDir(t, 'regmirror-replica-'));
    // One after the other: the first creates the schema and the bucket (both are also safe at once).
    out.push(await serve(t, { ...extra, storage }));
  }
  return Object.assign(out, { db: shared.db, storage });
}

/** One query on the shared database (own connection): what the replicas wrote, as tests check it. */
export async function sharedQuery<R extends pg.QueryResultRow>(db: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: db });
  await c.connect();
  try {
    return (await c.query<R>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** How many of `digests` have a blob row in the shared database (a fill commits after its last byte went out). */
export async function blobRows(db: string, digests: string[]): Promise<number> {
  return (await sharedQuery<{ n: string }>(db, 'SELECT count(*) AS n FROM blobs WHERE digest = ANY($1)', [digests])).map((r) => Number(r.n))[0] ?? 0;
}

/**
 * Pull an image's manifest by `latest` and every blob through `base`, checking the manifest
 * bytes and every blob's digest (the shared-storage tests' "every client gets exact bytes").
 */
export async function pullImageVerified(t: ExecutionContext, base: string, repo: string, img: Image): Promise<void> {
  const m = await http('GET', `${base}/v2/${repo}/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
  t.is(m.status, 200, m.body.toString().slice(0, 200));
  t.true(m.body.equals(img.manifest.bytes), 'manifest bytes');
  for (const b of [img.config, ...img.layers]) {
    const r = await http('GET', `${base}/v2/${repo}/blobs/${b.digest}`);
    t.is(r.status, 200);
    t.is(sha256(r.body), b.digest, `exact bytes of ${b.digest}`);
  }
}
