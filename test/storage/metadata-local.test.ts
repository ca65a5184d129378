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
import { dg, manifest, metadataConformance } from './metadata-conformance.js';

async function open(t: ExecutionContext): Promise<LocalStorage> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-metadata-'));
  const storage = openLocalStorage(storagePaths(root));
  await storage.blobs.recover();
  t.teardown(async () => {
    await storage.metadata.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  return storage;
}

metadataConformance(test, 'local', async (t) => (await open(t)).metadata);

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
