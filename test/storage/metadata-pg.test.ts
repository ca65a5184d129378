/**
 * The PostgreSQL metadata driver on a real, throwaway PostgreSQL (test/helpers/postgres.ts):
 * the port's operations give what the local driver (db.ts) gives for the same scenario;
 * what only a shared database has to show: migrations with several replicas starting at
 * once, leases across pools, eviction racing a commit on another replica, and the
 * database going away and coming back under traffic.
 */
import test from 'ava';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RegistryError } from '../../src/registry/errors.js';
import type { RepoName } from '../../src/registry/names.js';
import { MetadataStore as SqliteDb } from '../../src/storage/db.js';
import { PgCoordination } from '../../src/storage/pg/leases.js';
import { openPostgresStorage } from '../../src/storage/pg/index.js';
import { PgMetadataStore } from '../../src/storage/pg/metadata.js';
import { MIGRATIONS, MIGRATION_LOCK, migrate } from '../../src/storage/pg/migrations.js';
import { type PgPoolHandle, createPool } from '../../src/storage/pg/pool.js';
import type { PostgresConfig } from '../../src/config/schema.js';
import type { MetadataOps } from '../../src/storage/ports.js';
import { leaseContract } from './coordination-conformance.js';
import { sqliteOps, scenario } from './_metadata-scenario.js';
import { dg, manifest, metadataConformance } from './metadata-conformance.js';
import { HAVE_POSTGRES, type PostgresCluster, startPostgres } from '../helpers/postgres.js';
import { CI, sleep, waitFor } from '../helpers/tools.js';

const pgTest = HAVE_POSTGRES || CI ? test : test.skip;

// One cluster for the file (each test its own database); the restart test starts its own.
const cleanups: Array<() => unknown> = [];
let shared: Promise<PostgresCluster> | undefined;
const cluster = () => (shared ??= startPostgres({ teardown: (fn) => cleanups.push(fn) }));
test.after.always(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

// The port's conformance suite (the meta branch's, unchanged): each test on a new database.
if (HAVE_POSTGRES || CI) {
  metadataConformance(test, 'postgres', async (t) => {
    const store = await PgMetadataStore.open(await pool(t, await (await cluster()).createDatabase()));
    return store;
  });
} else {
  test.skip('postgres: metadata conformance suite (no PostgreSQL installed)', () => {});
}

function pgConfig(url: string, over: Partial<PostgresConfig> = {}): PostgresConfig {
  return { url, host: null, port: 5432, database: null, user: null, password: null, poolSize: 4, statementTimeoutMs: 30_000, connectTimeoutMs: 5_000, ssl: null, ...over };
}

async function pool(t: { teardown(fn: () => unknown): void }, url: string, over: Partial<PostgresConfig> = {}): Promise<PgPoolHandle> {
  const p = createPool(pgConfig(url, over));
  t.teardown(() => p.close().catch(() => {}));
  return p;
}

const digest = dg;
const repo = (s: string) => s as RepoName;


// Serial: it sets the process-wide Date.now, which other tests' time limits read (ava runs
// serial tests before the concurrent ones).
(HAVE_POSTGRES || CI ? test.serial : test.skip)('the port on PostgreSQL answers a whole scenario (push, pull-through, adoption, access, eviction, GC) exactly as the local driver does', async (t) => {
  const url = await (await cluster()).createDatabase();
  const p = await pool(t, url);
  const store = await PgMetadataStore.open(p);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-metapg-'));
  const sqlite = new SqliteDb(path.join(dir, 'regmirror.db'));
  t.teardown(async () => {
    sqlite.db.close();
    await fs.rm(dir, { recursive: true, force: true });
  });
  const local = sqliteOps(sqlite);
  // Both drivers stamp rows with Date.now(): one controlled clock makes their answers comparable.
  const realNow = Date.now;
  let clock = 1_800_000_000_000;
  Date.now = () => clock;
  let fromPg: unknown[];
  let fromLocal: unknown[];
  try {
    fromLocal = await scenario(local, local.repoName, (ms) => (clock += ms));
    clock = 1_800_000_000_000;
    const pgName = async (key: unknown) => (await p.query<{ name: string }>('SELECT name FROM repositories WHERE id = $1', [key])).rows[0]!.name;
    fromPg = await scenario(store, pgName, (ms) => (clock += ms));
  } finally {
    Date.now = realNow;
  }
  t.is(fromPg.length, fromLocal.length);
  for (let i = 0; i < fromLocal.length; i++) t.deepEqual(fromPg[i], fromLocal[i], JSON.stringify((fromLocal[i] as unknown[])[0]));
  // And the scenario is not vacuous: it saw the content, then evicted what it should.
  const get = (k: string) => (fromPg.find((e) => (e as unknown[])[0] === k) as unknown[])[1];
  t.deepEqual(get('listTags team/app'), ['a', 'v1', 'v2']);
  t.is((get('referrers') as unknown[]).length, 1);
  t.is((get('variants') as unknown[]).length, 2);
  t.true((get('cachedBytes') as number) > 0);
  t.like(get('evictImage library/app'), { manifests: 2 });
  t.is(get('evictImage stale library/app'), null);
});

pgTest('transactions: one logical change; a throw or a dry run leaves nothing; the store itself is refused inside fn; a handle dies with its transaction', async (t) => {
  const url = await (await cluster()).createDatabase();
  const store = await PgMetadataStore.open(await pool(t, url));
  const [d1, d2] = [digest('tx1'), digest('tx2')];
  const seen = await store.transaction(async (tx) => {
    await tx.recordBlob(repo('a/b'), d1, 1, 'pushed');
    return tx.blobSize(d1);
  }, { dryRun: true });
  t.is(seen, 1, 'visible inside the transaction');
  t.is(await store.blobSize(d1), undefined, 'dry run rolled back');
  await t.throwsAsync(
    store.transaction(async (tx) => {
      await tx.recordBlob(repo('a/b'), d2, 2, 'pushed');
      throw new Error('boom');
    }),
    { message: 'boom' },
  );
  t.is(await store.blobSize(d2), undefined, 'a throw rolls back');
  await t.throwsAsync(store.transaction(async () => store.blobSize(d1)), { message: /use its tx handle/ });
  let leaked: MetadataOps | undefined;
  await store.transaction(async (tx) => {
    leaked = tx;
    await tx.recordBlob(repo('a/b'), d2, 2, 'cached');
  });
  t.is(await store.repoBlobSize(repo('a/b'), d2), 2, 'committed');
  await t.throwsAsync(leaked!.blobSize(d2), { message: /after its transaction ended/ });
});

pgTest('migrations: 3 replicas starting at once migrate once; a restart applies nothing; a failing migration leaves the previous version whole; a newer schema is refused', async (t) => {
  const url = await (await cluster()).createDatabase();
  const pools = await Promise.all([1, 2, 3].map(() => pool(t, url)));
  const applied = await Promise.all(pools.map((p) => migrate(p)));
  const all = MIGRATIONS.map((m) => m.version);
  t.deepEqual(applied.filter((a) => a.length > 0), [all], 'exactly one starter applied every version');
  t.deepEqual(await migrate(pools[0]!), [], 'idempotent');
  const versions = async () => (await pools[0]!.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
  t.deepEqual(await versions(), all);
  const broken = [...MIGRATIONS, { version: 90, name: 'ok part', sql: 'CREATE TABLE t90 (x int)' }, { version: 91, name: 'fails', sql: 'CREATE TABLE t91 (x int); SELECT nonsense_function()' }];
  await t.throwsAsync(migrate(pools[1]!, broken), { message: /nonsense_function/ });
  t.deepEqual(await versions(), [...all, 90], 'the failed migration left no version row');
  t.is((await pools[1]!.query("SELECT 1 FROM pg_tables WHERE tablename = 't91'")).rowCount, 0, 'nor any of its tables');
  await t.throwsAsync(migrate(pools[2]!), { message: /schema version 90; this regmirror knows up to 3: upgrade regmirror/ });
});

pgTest('leases across two pools: one holder at a time, renewal only by the holder, takeover after expiry with a bigger token, release', async (t) => {
  const url = await (await cluster()).createDatabase();
  const [pa, pb] = [await pool(t, url), await pool(t, url)];
  await migrate(pa);
  // The database's clock decides expiry: wait (bounded) until it says the lease is gone.
  const lapse = (name: string) => waitFor(async () => ((await new PgCoordination(pb).leaseHolder(name)) === null ? true : undefined), 30_000, 'the lease to expire');
  await leaseContract(t, new PgCoordination(pa), new PgCoordination(pb), async (name) => void (await lapse(name)));
});

pgTest('eviction on replica A while replica B commits a link to the same blob: B\'s committed link keeps its blob row', async (t) => {
  const url = await (await cluster()).createDatabase();
  const watch = await pool(t, url);
  const a = await PgMetadataStore.open(await pool(t, url));
  const b = await PgMetadataStore.open(await pool(t, url));
  const blob = digest('race-blob');
  const img = manifest('race', [{ digest: blob, kind: 'blob' }]);
  await a.recordBlob(repo('library/x'), blob, 10, 'cached');
  await a.putCachedManifest(repo('library/x'), img, null);
  const key = (await a.cachedImages()).find((c) => c.digest === img.digest)!.repo;
  let evicting: Promise<unknown> | undefined;
  // B's link is written but not committed when A decides; A must not commit a decision
  // made without it (READ COMMITTED would: A's delete waits for B, then cascades B's link away).
  await b.transaction(async (tx) => {
    await tx.recordBlob(repo('other/y'), blob, 10, 'cached');
    evicting = a.evictImage(key, img.digest, Date.now() + 1000, () => false).catch((e: unknown) => e);
    await waitFor(
      async () => ((await watch.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")).rowCount ? true : undefined),
      60_000,
      "A's eviction to wait for B's transaction",
    );
  });
  const evicted = await evicting;
  t.false(evicted instanceof Error, String(evicted));
  t.is(await b.repoBlobSize(repo('other/y'), blob), 10, "B's committed link is there");
  t.is(await a.blobSize(blob), 10, 'and its blob row');
  t.like(evicted, { manifests: 1, blobs: [] }, 'A evicted the image but kept the blob B links');
  t.false(await a.hasManifest(repo('library/x'), img.digest));
});

pgTest('the database restarted under traffic: calls fail with 503 while it is down, then succeed again on the same store', async (t) => {
  const pgc = await startPostgres(t);
  const url = await pgc.createDatabase('restart');
  const warnings: string[] = [];
  const opened = await openPostgresStorage(pgConfig(url, { connectTimeoutMs: 2_000, poolSize: 4 }), { warn: (o, msg) => warnings.push(`${msg} ${JSON.stringify(o)}`) });
  t.teardown(() => opened.close().catch(() => {}));
  const store = opened.metadata;
  const before = digest('before-restart');
  await store.recordBlob(repo('a/b'), before, 7, 'pushed');
  const errors: unknown[] = [];
  let ok = 0;
  let stop = false;
  // Traffic: reads and writes, bounded in count and time, until told to stop.
  const traffic = (async () => {
    const deadline = Date.now() + 120_000;
    for (let i = 0; !stop && i < 100_000 && Date.now() < deadline; i++) {
      try {
        await (i % 3 === 0 ? store.recordBlob(repo('a/b'), digest(`t${i}`), i, 'cached') : store.repoBlobSize(repo('a/b'), before));
        ok++;
      } catch (e) {
        errors.push(e);
        await sleep(20);
      }
    }
  })();
  const explain = (e: unknown) => {
    t.log(`ok=${ok}, errors: ${errors.slice(-3).map((x) => `${String(x)} ${String((x as { cause?: unknown }).cause ?? '')}`).join('; ')}`, pgc.output().slice(-2000));
    throw e;
  };
  await waitFor(() => (ok > 20 ? true : undefined), 60_000, 'traffic before the crash').catch(explain);
  // Four connections in the pool, most of them idle when the server goes: those report
  // through the pool's error event, which must be logged, not crash the process.
  await Promise.all([1, 2, 3, 4].map(() => store.ping()));
  await pgc.kill();
  const down = await store.ping().then(() => null, (e: unknown) => e);
  t.true(down instanceof RegistryError, `ping while down: ${String(down)}`);
  t.like(down, { code: 'UNAVAILABLE', status: 503 });
  await waitFor(() => (errors.length > 0 ? true : undefined), 60_000, 'traffic to notice').catch(explain);
  await pgc.start().catch(explain);
  const okAtRestart = ok;
  await waitFor(() => (ok > okAtRestart + 20 ? true : undefined), 60_000, 'traffic to recover').catch(explain);
  stop = true;
  await traffic;
  t.true(errors.length > 0);
  for (const e of errors) {
    t.true(e instanceof RegistryError && e.status === 503 && e.code === 'UNAVAILABLE', `a clear 503, not: ${String(e)}`);
    t.false(String((e as Error).message).includes('postgres://'), 'no connection string in errors');
  }
  t.is(await store.blobSize(before), 7, 'committed before the crash: still there');
  t.true(warnings.length > 0, 'lost idle connections are logged');
  for (const w of warnings) t.regex(w, /^metadata database: an idle connection was lost/);
  t.false(warnings.some((w) => w.includes('postgres://')), 'no connection string logged');
  await t.notThrowsAsync(store.ping());
});

pgTest('no database at all: opening the store fails fast with 503, not a hang', async (t) => {
  const p = await pool(t, 'postgres://postgres@127.0.0.1:1/none', { connectTimeoutMs: 1_000 });
  const started = Date.now();
  const e = await t.throwsAsync(PgMetadataStore.open(p));
  t.like(e, { code: 'UNAVAILABLE', status: 503 });
  t.true(Date.now() - started < 30_000);
});

pgTest('too slow is 503 too: a statement over statementTimeout, no free pooled connection within connectTimeout; both recover; migrations wait longer than a statement may', async (t) => {
  const url = await (await cluster()).createDatabase();
  const admin = await pool(t, url);
  // Short enough for a quick test, long enough that a loaded machine still connects and
  // answers a plain query in time (a lock wait and a taken pool never end by themselves).
  const fast = { poolSize: 1, statementTimeoutMs: 2_000, connectTimeoutMs: 5_000 };
  const slowPool = await pool(t, url, fast);
  // Another replica holds the migration lock for longer than this one's statement timeout.
  let unlockMigrations!: () => void;
  const migrationsHeld = new Promise<void>((r) => (unlockMigrations = r));
  let locked!: () => void;
  const lockTaken = new Promise<void>((r) => (locked = r));
  const holder = admin.transaction(async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK.toString()]);
    locked();
    await migrationsHeld;
  });
  await lockTaken;
  const opening = PgMetadataStore.open(slowPool);
  let settled = false;
  opening.then(() => (settled = true), () => (settled = true));
  await sleep(2 * fast.statementTimeoutMs); // two statement timeouts later the migration still waits
  t.false(settled, 'still waiting for the other replica, not failed');
  unlockMigrations();
  await holder;
  const store = await opening;
  const d = digest('slow');
  await store.recordBlob(repo('a/b'), d, 5, 'pushed');

  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let tableLocked!: () => void;
  const tableLock = new Promise<void>((r) => (tableLocked = r));
  const locker = admin.transaction(async (c) => {
    await c.query('LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE');
    tableLocked();
    await held;
  });
  await tableLock;
  let started = Date.now();
  t.like(await store.blobSize(d).catch((e: unknown) => e), { code: 'UNAVAILABLE', status: 503 }, 'statement timeout');
  t.true(Date.now() - started < fast.statementTimeoutMs + 30_000);
  release();
  await locker;
  t.is(await store.blobSize(d), 5, 'the same store answers again');

  let end!: () => void;
  const busy = new Promise<void>((r) => (end = r));
  const tx = store.transaction(async (x) => {
    await x.blobSize(d);
    await busy; // the only pooled connection stays taken
  });
  started = Date.now();
  t.like(await store.blobSize(d).catch((e: unknown) => e), { code: 'UNAVAILABLE', status: 503 }, 'no connection within connectTimeout');
  t.true(Date.now() - started < fast.connectTimeoutMs + 30_000);
  end();
  await tx;
  t.is(await store.blobSize(d), 5);
});
