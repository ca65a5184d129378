/**
 * The local driver's maintained counters (db.ts v7): after any sequence of the writes that
 * change blob links or what pushed content reaches (pull-through fills, pushes, tags moved
 * and deleted, manifest deletes, eviction, gc), the cached-bytes counter equals the count
 * from the rows, and the blob count and bytes equal the table's; the migration computes
 * them for a store written before it; fsck's check finds and repairs a counter that drifted.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import Database from 'better-sqlite3';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { MetadataDb, type NewManifest } from '../../src/storage/db.js';

const d = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}` as Digest;
const never = () => false;

function tempDb(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-counters-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'regmirror.db');
}

function manifest(name: string, refs: NewManifest['refs']): NewManifest {
  const body = Buffer.from(name);
  return { digest: d(name), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: body.length, artifactType: null, subject: null, annotations: null, body, refs };
}

/** The counters as stored vs as the rows say. */
function assertCounters(t: ExecutionContext, db: MetadataDb, step: string): number {
  const rows = db.db.prepare<[], { n: number; bytes: number }>('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM blobs').get()!;
  t.is(db.cachedBytes(), db.cachedBytesScan(), `cached bytes after ${step}`);
  t.deepEqual(db.blobTotals(), { blobs: rows.n, bytes: rows.bytes }, `blob totals after ${step}`);
  return db.cachedBytes();
}

/**
 * Deterministic pseudo-random steps over a few repositories, images and shared layers.
 * Pushed images have layers of their own, so cached layers stay countable and pushed
 * indexes over cached images (and deleting them) move layers in and out of KEEP.
 * Returns how many steps changed the cached bytes without adding or removing a blob row.
 */
function randomOps(db: MetadataDb, t: ExecutionContext, seed: number, steps: number): number {
  let s = seed;
  // mulberry32: an LCG's low bits repeat with a short period and made the steps degenerate.
  const rnd = (n: number) => {
    s = (s + 0x6d2b79f5) | 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) % n;
  };
  const repos = ['lib/a', 'lib/b', 'lib/c'] as RepoName[];
  const layer = (i: number) => d(`layer-${i}`);
  const image = (i: number) => manifest(`image-${i}`, [0, 1, 2].map((k) => ({ digest: layer((i * 2 + k) % 24), kind: 'blob' as const })));
  const pushedImage = (i: number) => manifest(`pushed-${i}`, [0, 1].map((k) => ({ digest: d(`pushed-layer-${i}-${k}`), kind: 'blob' as const })));
  const index = (i: number) => manifest(`index-${i}`, [{ digest: image(i).digest, kind: 'manifest' as const }, { digest: image(i + 1).digest, kind: 'manifest' as const }]);
  let cached = 0;
  let rowsSeen = 0;
  let linkOrKeepChanges = 0;
  const pushedIndexes: Array<[RepoName, number]> = [];
  for (let step = 0; step < steps; step++) {
    const repo = repos[rnd(repos.length)]!;
    const i = rnd(8);
    const op = rnd(10);
    let name: string;
    switch (op) {
      case 0: // a pull-through fill of an image (manifest, then its blobs)
        name = 'cache image';
        db.putCachedManifest(repo, image(i), { name: `v${i}`, acceptKey: 'k' });
        for (const r of image(i).refs) db.recordBlob(repo, r.digest, 100 + rnd(50), 'cached');
        break;
      case 1: // a cached index over two cached images
        name = 'cache index';
        for (const k of [i, i + 1]) db.putCachedManifest(repo, image(k), null);
        db.putCachedManifest(repo, index(i), { name: `idx${i}`, acceptKey: 'k' });
        break;
      case 2: // a push: blobs, then the manifest with a tag (moves the tag if it existed)
        name = 'push';
        for (const r of pushedImage(i).refs) db.recordBlob(repo, r.digest, 100, 'pushed');
        db.putManifest(repo, pushedImage(i), [`t${rnd(3)}`], 'pushed');
        break;
      case 3: // a pushed index over cached images: their layers join KEEP
        name = 'push index';
        db.putManifest(repo, index(i), [`t${rnd(3)}`], 'pushed');
        pushedIndexes.push([repo, i]);
        break;
      case 4:
        name = 'delete tag';
        db.deleteTag(repo, `t${rnd(3)}`);
        break;
      case 5:
        name = 'delete manifest';
        if (pushedIndexes.length > 0 && rnd(2) === 0) {
          // Undo a pushed index: its images' layers may leave KEEP.
          const [r, k] = pushedIndexes.splice(rnd(pushedIndexes.length), 1)[0]!;
          db.deleteManifest(r, index(k).digest);
        } else db.deleteManifest(repo, [image(i), index(i), pushedImage(i)][rnd(3)]!.digest);
        break;
      case 6:
        name = 'evict image';
        db.evictImage(db.repoId(repo) ?? -1, (rnd(2) ? image(i) : index(i)).digest, Date.now() + 1000, never);
        break;
      case 7: {
        name = 'link / unlink / evict loose';
        const b = layer(rnd(24));
        const k = rnd(3);
        if (k === 0) db.linkBlob(repo, b, rnd(4) ? 'cached' : 'pushed');
        else if (k === 1) db.unlinkBlob(repo, b);
        else db.evictLooseBlob(db.repoId(repo) ?? -1, b, Date.now() + 1000, never);
        break;
      }
      case 8:
        name = 'gc';
        if (rnd(3) > 0) break; // rarer: it empties the store of what no manifest holds
        db.unlinkDanglingBlobs(0);
        for (const b of db.unreferencedBlobs()) db.deleteBlobRow(b);
        db.deleteUnreferencedManifestContent();
        break;
      default:
        name = 'loose cached blob';
        db.recordBlob(repo, d(`loose-${i}`), 77, 'cached');
    }
    const rowsBefore = rowsSeen;
    const before = cached;
    cached = assertCounters(t, db, `step ${step} (${name})`);
    rowsSeen = db.blobTotals().blobs;
    if (cached !== before && rowsSeen === rowsBefore) linkOrKeepChanges++;
  }
  return linkOrKeepChanges;
}

for (const seed of [1, 2, 3, 4]) {
  test(`cached bytes and blob totals stay equal to the rows through random writes (seed ${seed})`, (t) => {
    const db = new MetadataDb(tempDb(t));
    t.teardown(() => db.close());
    const changes = randomOps(db, t, seed, 300);
    // Not a vacuous run: links and KEEP moved the count many times, not only row inserts.
    t.true(changes >= 3, `${changes} steps changed cached bytes without a row added or removed`);
  });
}

test('an eviction dry run (rolled back) leaves the counters as they were', (t) => {
  const db = new MetadataDb(tempDb(t));
  t.teardown(() => db.close());
  const repo = 'lib/a' as RepoName;
  const m = manifest('one', [{ digest: d('l1'), kind: 'blob' }]);
  db.putCachedManifest(repo, m, null);
  db.recordBlob(repo, d('l1'), 500, 'cached');
  t.is(db.cachedBytes(), 500);
  db.db.exec('BEGIN');
  db.evictImage(db.repoId(repo)!, m.digest, Date.now() + 1000, never);
  t.is(db.cachedBytes(), 0, 'inside the transaction the unit is counted');
  db.db.exec('ROLLBACK');
  t.is(db.cachedBytes(), 500);
  assertCounters(t, db, 'rollback');
});

test('the v7 migration computes the counters of a store written before it', (t) => {
  const file = tempDb(t);
  const db = new MetadataDb(file);
  randomOps(db, t, 9, 60);
  db.recordBlob('lib/z' as RepoName, d('extra'), 123, 'cached');
  const expected = { cached: db.cachedBytesScan(), totals: db.blobTotals() };
  t.true(expected.cached > 0, 'the scenario left cached bytes to count');
  db.close();
  // Back to v6: drop what v7 added, as a database from before it looks.
  const raw = new Database(file);
  raw.exec('DROP TRIGGER blobs_count_insert; DROP TRIGGER blobs_count_delete; DROP TRIGGER blobs_count_update; DROP TABLE counters; ALTER TABLE blobs DROP COLUMN counted');
  raw.pragma('user_version = 6');
  raw.close();
  const again = new MetadataDb(file);
  t.teardown(() => again.close());
  t.is(again.cachedBytes(), expected.cached);
  t.deepEqual(again.blobTotals(), expected.totals);
  t.deepEqual(again.checkCounters(false), { wrongFlags: 0, counters: [] });
});

test('checkCounters finds a drifted counter and a wrong flag, and repairs both in one go', (t) => {
  const db = new MetadataDb(tempDb(t));
  t.teardown(() => db.close());
  const repo = 'lib/a' as RepoName;
  db.recordBlob(repo, d('a'), 300, 'cached');
  db.recordBlob(repo, d('b'), 200, 'pushed');
  t.is(db.cachedBytes(), 300);
  // Drift as a bug or a hand edit would leave it: a wrong flag (moves the counter too) and a wrong total.
  db.db.prepare('UPDATE blobs SET counted = 1 WHERE digest = ?').run(d('b'));
  db.db.prepare("UPDATE counters SET value = value + 5 WHERE name = 'blobs'").run();
  const found = db.checkCounters(false);
  t.is(found.wrongFlags, 1);
  t.deepEqual(found.counters, [
    { name: 'blobs', stored: 7, actual: 2 },
    { name: 'cached_bytes', stored: 500, actual: 300 },
  ]);
  t.is(db.cachedBytes(), 500, 'a check alone changes nothing');
  const repaired = db.checkCounters(true);
  t.is(repaired.wrongFlags, 1);
  t.deepEqual(db.checkCounters(false), { wrongFlags: 0, counters: [] });
  t.is(db.cachedBytes(), 300);
  assertCounters(t, db, 'repair');
});
