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
import { storagePaths } from '../../src/storage/paths.js';
import { withReadCache } from '../../src/storage/readcache.js';
import type { MetadataStore } from '../../src/storage/ports.js';
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
