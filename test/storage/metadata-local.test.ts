/**
 * The metadata conformance suite on the local driver (SQLite through db.ts), plus what
 * only this driver promises: one connection shared with the blob store, so while a
 * transaction is open everything else on the connection waits, and a call on the store
 * from inside the transaction is refused rather than waiting for itself.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import type { RepoName } from '../../src/registry/names.js';
import { openLocalStorage, type LocalStorage } from '../../src/storage/local/index.js';
import { MetadataDb } from '../../src/storage/db.js';
import { storagePaths } from '../../src/storage/paths.js';
import { withReadCache } from '../../src/storage/readcache.js';
import type { CandidateList, EvictionCandidate, MetadataStore } from '../../src/storage/ports.js';
import { dg, manifest, metadataConformance } from './metadata-conformance.js';

async function open(t: ExecutionContext, existing?: string): Promise<LocalStorage & { root: string }> {
  const root = existing ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-metadata-')));
  const storage = openLocalStorage(storagePaths(root));
  await storage.blobs.recover();
  t.teardown(async () => {
    await storage.metadata.close();
    if (!existing) await fs.rm(root, { recursive: true, force: true });
  });
  return { ...storage, root };
}

metadataConformance(test, 'local', async (t) => (await open(t)).metadata);
// The app's store: the same contract must hold through the read cache (src/storage/readcache.ts).
metadataConformance(test, 'local+readcache', async (t) => withReadCache((await open(t)).metadata));

const A = 'local/a' as RepoName;

test('local: a call on the store inside its own transaction is refused (it would wait for itself); the handle dies with the transaction', async (t) => {
  const { metadata } = await open(t);
  let handle!: Parameters<Parameters<typeof metadata.transaction>[0]>[0];
  const err = await t.throwsAsync(
    metadata.transaction(async (tx) => {
      handle = tx;
      await tx.recordBlob(A, dg('x'), 1, 'pushed');
      await metadata.blobSize(dg('x'));
    }),
  );
  t.regex(err!.message, /inside its own transaction/);
  t.is(await metadata.blobSize(dg('x')), undefined, 'rolled back');
  await t.throwsAsync(handle.blobSize(dg('x')), { message: /after its transaction ended/ });
  await t.throwsAsync(metadata.transaction(async () => metadata.transaction(async () => 1)), { message: /inside its own transaction/ });
  t.is(await metadata.transaction(async (tx) => tx.blobSize(dg('x'))), undefined, 'the store works on afterwards');
});

test('local: the blob store shares the connection and waits for an open transaction (never sees a dry run)', async (t) => {
  const { metadata, blobs } = await open(t);
  const data = Buffer.from('shared connection');
  const w = blobs.stage({ algorithm: 'sha256' });
  await w.append(data);
  const d = w.digest();
  await w.commit(d, { repo: A, provenance: 'pushed' });
  await metadata.putManifest(A, manifest('m', [{ digest: d, kind: 'blob' }]), ['v1'], 'pushed');
  let inside!: () => void;
  const dropped = new Promise<void>((r) => (inside = r));
  let finish!: () => void;
  const held = new Promise<void>((r) => (finish = r));
  const dry = metadata.transaction(
    async (tx) => {
      await tx.deleteBlobRow(d);
      inside();
      await held;
    },
    { dryRun: true },
  );
  await dropped;
  const stat = blobs.stat(d);
  const second = blobs.stage({ algorithm: 'sha256' });
  await second.append(Buffer.from('another blob'));
  const other = second.digest();
  const commit = second.commit(other, { repo: A, provenance: 'pushed' });
  await new Promise((r) => setTimeout(r, 20));
  finish();
  await dry;
  t.deepEqual(await stat, { size: data.length }, 'the row the dry run dropped is still there');
  await commit;
  t.is(await metadata.repoBlobSize(A, other), 12, 'a commit during the dry run is kept');
});

// ---- the read cache (src/storage/readcache.ts) ------------------------------------------

test('readcache: another connection\'s tag move and delete are served here at most ttlMs late', async (t) => {
  const ttlMs = 300;
  const one = await open(t);
  const cached = withReadCache(one.metadata, { ttlMs });
  // A second connection to the same database: `regmirror gc`, or another replica.
  const other = (await open(t, one.root)).metadata;
  await cached.putManifest(A, manifest('one', []), ['v1'], 'pushed');
  await cached.putManifest(A, manifest('two', []), [], 'pushed');
  t.is((await cached.tag(A, 'v1'))?.digest, dg('one'));
  t.truthy(await cached.manifest(A, dg('one')));

  const moved = Date.now();
  await other.putManifest(A, manifest('two', []), ['v1'], 'pushed');
  await other.deleteManifest(A, dg('one'));
  t.is((await other.tag(A, 'v1'))?.digest, dg('two'), 'the other connection sees its change');
  // Within the bound the cache may still answer the old state; past it, never.
  while (Date.now() - moved <= ttlMs) await new Promise((r) => setTimeout(r, 20));
  t.is((await cached.tag(A, 'v1'))?.digest, dg('two'), 'moved tag seen once ttlMs passed');
  t.is(await cached.manifest(A, dg('one')), undefined, 'deleted manifest gone once ttlMs passed');
});

test('readcache: a write through the cache is seen by the very next read (tag moved, deleted, manifest deleted)', async (t) => {
  // A long TTL: only invalidation can make these pass.
  const cached = withReadCache((await open(t)).metadata, { ttlMs: 3_600_000 });
  await cached.putManifest(A, manifest('one', []), ['v1'], 'pushed');
  t.is((await cached.tag(A, 'v1'))?.digest, dg('one'));
  t.is(await cached.tag(A, 'v2'), undefined);
  await cached.putManifest(A, manifest('two', []), ['v1', 'v2'], 'pushed');
  t.is((await cached.tag(A, 'v1'))?.digest, dg('two'), 'tag moved by a push');
  t.is((await cached.tag(A, 'v2'))?.digest, dg('two'), 'a tag cached as missing, then pushed');
  t.truthy(await cached.manifest(A, dg('one')));
  t.true(await cached.deleteManifest(A, dg('one')));
  t.is(await cached.manifest(A, dg('one')), undefined, 'deleted manifest');
  t.true(await cached.deleteTag(A, 'v2'));
  t.is(await cached.tag(A, 'v2'), undefined, 'deleted tag');
});

test('readcache: a read that started before a write settled is not kept', async (t) => {
  // An inner store whose tag() answers when told to: the answer predates the write.
  let answer!: (v: unknown) => void;
  let reads = 0;
  const inner = {
    tag: () => {
      reads++;
      return new Promise((r) => (answer = r));
    },
    manifest: async () => undefined,
    upstreamTag: async () => undefined,
    deleteTag: async () => true,
  } as unknown as MetadataStore;
  const cached = withReadCache(inner, { ttlMs: 3_600_000 });
  const early = cached.tag(A, 'v1');
  await cached.deleteTag(A, 'v1');
  answer({ digest: dg('old'), provenance: 'pushed', checkedAt: 0 });
  t.is((await early)?.digest, dg('old'), 'the early reader gets what it read');
  const after = cached.tag(A, 'v1');
  t.is(reads, 2, 'the next read goes to the store again');
  answer(undefined);
  t.is(await after, undefined);
  t.is(await cached.tag(A, 'v1'), undefined);
  t.is(reads, 2, 'an answer read after the write is kept');
});

test('readcache: a blob link is kept only when found; the blob store\'s own commit, an unlink, a delete and an eviction are seen by the very next read', async (t) => {
  const { metadata, blobs } = await open(t);
  // Count what reaches the store: a hit must not, a miss always must.
  let reads = 0;
  const counting = Object.create(metadata) as MetadataStore;
  counting.repoBlobSize = (repo, digest) => {
    reads++;
    return metadata.repoBlobSize(repo, digest);
  };
  const cached = withReadCache(counting, { ttlMs: 3_600_000 });
  const commit = async (text: string, provenance: 'pushed' | 'cached') => {
    const w = blobs.stage({ algorithm: 'sha256' });
    await w.append(Buffer.from(text));
    const d = w.digest();
    await w.commit(d, { repo: A, provenance });
    return d;
  };
  const data = 'linked blob';
  const w = blobs.stage({ algorithm: 'sha256' });
  await w.append(Buffer.from(data));
  const d = w.digest();
  t.is(await cached.repoBlobSize(A, d), undefined);
  t.is(await cached.repoBlobSize(A, d), undefined);
  t.is(reads, 2, '"not linked" is never kept');
  // The blob store records the commit itself, not through the cache: seen at once.
  await w.commit(d, { repo: A, provenance: 'pushed' });
  t.is(await cached.repoBlobSize(A, d), data.length);
  t.is(await cached.repoBlobSize(A, d), data.length);
  t.is(reads, 3, 'a found link is kept');
  t.true(await cached.unlinkBlob(A, d));
  t.is(await cached.repoBlobSize(A, d), undefined, 'unlinked');
  t.true(await cached.linkBlob(A, d, 'cached'));
  t.is(await cached.repoBlobSize(A, d), data.length);
  await cached.deleteBlobRow(d);
  t.is(await cached.repoBlobSize(A, d), undefined, 'row deleted (GC)');

  // A cached (pulled-through) link no manifest references: eviction removes it.
  const loose = await commit('loose cached blob', 'cached');
  t.is(await cached.repoBlobSize(A, loose), 'loose cached blob'.length);
  const candidate = (await cached.looseBlobs(Date.now() + 1)).find((c) => c.digest === loose);
  t.truthy(candidate);
  t.truthy(await cached.evictLooseBlob(candidate!.repo, loose, Date.now() + 1, () => false), 'evicted');
  t.is(await cached.repoBlobSize(A, loose), undefined, 'evicted');
});

/** A CandidateList as an array (what the Evictor reads, one at a time). */
function listed(l: CandidateList): unknown[] {
  return Array.from({ length: l.length }, (_, i) => l.at(i));
}

/** The order the Evictor used to make itself: images then loose links, stable by last access. */
function ordered(images: readonly EvictionCandidate[], loose: readonly EvictionCandidate[]): unknown[] {
  return [...images.map((c) => ({ kind: 'image', ...c })), ...loose.map((c) => ({ kind: 'blob', ...c }))].sort((a, b) => a.lastAccess - b.lastAccess);
}

test('local: whole-store scans (eviction candidates) run off the event loop, with the same answers; cached bytes (a counter) sees the rows of its own transaction', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-metadata-scan-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const paths = storagePaths(root);
  // Enough cached rows that each scan is real work: 2,000 images of 10 blobs, plus loose links.
  const raw = new MetadataDb(paths.db);
  raw.db.transaction(() => {
    raw.db.prepare("INSERT INTO repositories(id, name, created_at) VALUES (1, 'local/scan', 0)").run();
    const blob = raw.db.prepare('INSERT INTO blobs(digest, size, created_at, last_access) VALUES (?, ?, 0, ?)');
    const link = raw.db.prepare("INSERT INTO repo_blobs(repo_id, digest, provenance, created_at) VALUES (1, ?, 'cached', 0)");
    const content = raw.db.prepare("INSERT INTO manifest_content(digest, media_type, size, body) VALUES (?, 'application/vnd.oci.image.manifest.v1+json', 2, '{}')");
    const ref = raw.db.prepare("INSERT INTO manifest_refs(digest, child, kind) VALUES (?, ?, 'blob')");
    const man = raw.db.prepare("INSERT INTO manifests(repo_id, digest, provenance, created_at, last_access) VALUES (1, ?, 'cached', 0, ?)");
    for (let i = 0; i < 2000; i++) {
      const m = dg(`scan-m${i}`);
      content.run(m);
      man.run(m, i);
      for (let b = 0; b < 10; b++) {
        const d = dg(`scan-b${i}-${b}`);
        blob.run(d, 3, i);
        link.run(d);
        ref.run(m, d);
      }
    }
    for (let i = 0; i < 500; i++) {
      blob.run(dg(`scan-loose${i}`), 5, i);
      link.run(dg(`scan-loose${i}`));
    }
  })();
  // Rows written behind db.ts's back: set its maintained counters from them (as fsck --repair does).
  raw.checkCounters(true);
  const inline = { bytes: raw.cachedBytesScan(), images: raw.cachedImages(), loose: raw.looseBlobs(1_000_000) };
  raw.close();
  t.is(inline.bytes, 2000 * 10 * 3 + 500 * 5);

  const storage = openLocalStorage(paths);
  t.teardown(() => storage.metadata.close());
  const { metadata } = storage;
  // A synchronous scan resolves within the call's own microtasks: no event-loop turn can
  // run before it. Off the loop, timers and I/O keep running while it works.
  // Cached bytes is a maintained counter now (db.ts v7): a row read, no scan.
  t.is(await metadata.cachedBytes(), inline.bytes);
  for (const [name, scan, want] of [
    ['cachedImages', () => metadata.cachedImages(), inline.images],
    ['looseBlobs', () => metadata.looseBlobs(1_000_000), inline.loose],
    // Both, merged and ordered in the worker, transferred as columns (candidates.ts). The
    // loose links' access times tie with images' (0..499): images first, as the sort did.
    ['evictionCandidates', async () => listed(await metadata.evictionCandidates(1_000_000)), ordered(inline.images, inline.loose)],
  ] as const) {
    let turns = 0;
    let spin = true;
    const tick = () => {
      turns++;
      if (spin) setImmediate(tick);
    };
    setImmediate(tick);
    const got = await (scan as () => Promise<unknown>)();
    const turnsBefore = turns;
    spin = false;
    t.deepEqual(got, want, `${name}: same answer as on the main connection`);
    t.true(turnsBefore > 0, `${name}: the event loop turned while it ran`);
  }
  // A committed write is seen by the next scan (another connection, same database).
  await metadata.recordBlob('local/scan' as RepoName, dg('scan-new'), 7, 'cached');
  t.is(await metadata.cachedBytes(), inline.bytes + 7);
  // Inside a transaction the scan must see the transaction's own rows: inline.
  const inTx = await metadata.transaction(
    async (tx) => {
      await tx.recordBlob('local/scan' as RepoName, dg('scan-tx'), 11, 'cached');
      return tx.cachedBytes();
    },
    { dryRun: true },
  );
  t.is(inTx, inline.bytes + 7 + 11, 'a transaction handle sees its uncommitted rows');
  t.is(await metadata.cachedBytes(), inline.bytes + 7, 'the dry run kept nothing');
  // The same for the ordered candidates (eviction's dry run reads them in its transaction).
  const txLoose = await metadata.transaction(
    async (tx) => {
      await tx.recordBlob('local/scan' as RepoName, dg('scan-tx2'), 13, 'cached');
      return listed(await tx.evictionCandidates!(Date.now() + 60_000)).filter((c) => (c as EvictionCandidate).digest === dg('scan-tx2'));
    },
    { dryRun: true },
  );
  t.is(txLoose.length, 1, 'a transaction handle lists its uncommitted loose link');
});
