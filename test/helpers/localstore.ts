/**
 * A throwaway local store (SQLite metadata + blob files under a temp dir) for unit tests of
 * what runs on top of it (fills, relay stages); closed and removed when the test ends.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { LocalBlobStore } from '../../src/storage/blobs.js';
import { MetadataStore } from '../../src/storage/db.js';
import { storagePaths } from '../../src/storage/paths.js';

export async function tempLocalStore(t: ExecutionContext, name: string): Promise<{ root: string; blobs: LocalBlobStore }> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), `regmirror-${name}-`));
  const meta = new MetadataStore(storagePaths(root).db);
  t.teardown(async () => {
    meta.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  const blobs = new LocalBlobStore(storagePaths(root), meta);
  await blobs.recover();
  return { root, blobs };
}
