/**
 * WAL checkpoints off the event loop (storage/local/checkpoint.ts): the serving connection
 * never checkpoints inside its own COMMIT (that copy + fsync was every eviction unit over
 * 100 ms at a million blobs); the scan worker's connection does, and the WAL stays bounded.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type Database from 'better-sqlite3';
import type { RepoName } from '../../src/registry/names.js';
import { MetadataDb } from '../../src/storage/db.js';
import { LocalMetadataStore } from '../../src/storage/local/metadata.js';
import { dg } from '../storage/metadata-conformance.js';
import { waitFor } from '../helpers/tools.js';

const LIMIT = 256 * 1024;

test('while the scan worker runs, the main connection does not checkpoint; the worker does, and a restarted WAL is cut back to the limit', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-checkpoint-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'regmirror.db');
  const db = new MetadataDb(file);
  const store = new LocalMetadataStore(db, undefined, { limitBytes: LIMIT, everyMs: 20 });
  t.teardown(() => store.close());
  t.is(db.db.pragma('wal_autocheckpoint', { simple: true }), 1000, 'no worker yet: SQLite checkpoints as usual (no worker started for it)');
  // A scan (an eviction pass's) starts the worker: from then on it checkpoints.
  await store.cachedImages();
  t.is(db.db.pragma('wal_autocheckpoint', { simple: true }), 0, 'no checkpoint inside a COMMIT on the serving connection');
  const wal = () => fs.statSync(`${file}-wal`).size;
  const repo = 'library/wal' as RepoName;
  // Many small commits, well past the limit (each blob row is a few pages of WAL).
  let n = 0;
  let largest = 0;
  const write = async (count: number) => {
    for (const end = n + count; n < end; n++) {
      await store.recordBlob(repo, dg(`wal-${n}`), n, 'cached');
      largest = Math.max(largest, wal());
    }
  };
  await write(400);
  t.true(largest > LIMIT, `the WAL grew past the limit (${largest} bytes)`);
  // Bounded in time: the worker starts on first use, then checkpoints; a later commit
  // restarts the WAL from its beginning and truncates it to the limit.
  await waitFor(
    async () => {
      await write(5);
      return wal() <= LIMIT ? true : undefined;
    },
    60_000,
    'the WAL to be checkpointed and cut back',
  );
  t.true(store.checkpoints!.runs >= 1, 'the checkpointer ran');
  t.is(db.db.pragma('wal_autocheckpoint', { simple: true }), 0);
  // Every committed row is there (a checkpoint only moves pages into the database file).
  t.is(db.blobTotals().blobs, n);
});

test('once the scan worker is gone, SQLite checkpoints on its own again', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-checkpoint-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const db = new MetadataDb(path.join(dir, 'regmirror.db'));
  const store = new LocalMetadataStore(db);
  await store.cachedImages();
  t.is(db.db.pragma('wal_autocheckpoint', { simple: true }), 0);
  // The worker goes when the store closes (as after its idle timeout): the setting must
  // follow before the connection closes.
  const set: string[] = [];
  const pragma = db.db.pragma.bind(db.db);
  db.db.pragma = ((source: string, o?: Database.PragmaOptions) => (set.push(source), pragma(source, o))) as typeof db.db.pragma;
  await store.close();
  t.deepEqual(set, ['wal_autocheckpoint = 1000']);
});

test('an in-memory database has no WAL and no checkpointer', async (t) => {
  const store = new LocalMetadataStore(new MetadataDb(':memory:'));
  t.teardown(() => store.close());
  t.is(store.checkpoints, null);
});
