/**
 * Garbage collection: delete blobs no repository links and manifest content no
 * repository holds; with `evict`, first apply the cache policy (cache.maxAge,
 * cache.maxBytes) as the running server does (cache/eviction.ts). Offline (the server should not be running on the same storage) to
 * avoid racing an upload that is about to link a blob. Rows go first, then files, so a
 * crash mid-GC leaves only orphan files, which the next GC removes.
 */
import { type EvictionResult, Evictor } from '../cache/eviction.js';
import type { Config, StoreConfig } from '../config/schema.js';
import { LOCAL, openStorage, stderrLog } from '../storage/open.js';
import { storagePaths } from '../storage/paths.js';

export interface GcResult {
  linksRemoved: number;
  blobsRemoved: number;
  orphanFilesRemoved: number;
  manifestsRemoved: number;
  dryRun: boolean;
  /** Present when run with `evict`. */
  eviction?: EvictionResult;
}

export async function collectGarbage(
  config: Pick<Config, 'storage' | 'limits' | 'cache'> & { store?: StoreConfig },
  opts: { dryRun: boolean; evict?: boolean },
): Promise<GcResult> {
  const paths = storagePaths(config.storage);
  const storage = await openStorage(config.store ?? LOCAL, paths, stderrLog);
  const { metadata: meta, blobs: store } = storage;
  try {
    let eviction: EvictionResult | undefined;
    if (opts.evict) {
      const evictor = new Evictor(meta, store, config.cache);
      eviction = opts.dryRun ? await evictor.dryRun() : await evictor.run();
    }
    // Manifest content no repository holds goes first, so its references stop counting.
    const manifestsRemoved = opts.dryRun ? 0 : await meta.deleteUnreferencedManifestContent();
    const linksRemoved = opts.dryRun ? 0 : await meta.unlinkDanglingBlobs(config.limits.uploadTtlMs);
    const unreferenced = await meta.unreferencedBlobs();
    if (!opts.dryRun) {
      for (const d of unreferenced) {
        await meta.deleteBlobRow(d);
        await store.delete(d);
      }
    }
    // Content without a row: a crash between a commit's move and its row, or an eviction's
    // row deletion and its unlink.
    let orphans = 0;
    for await (const entry of store.list()) {
      if (entry.digest === null || (await meta.blobSize(entry.digest)) === undefined) {
        orphans++;
        if (!opts.dryRun) await entry.remove();
      }
    }
    return {
      linksRemoved,
      blobsRemoved: unreferenced.length,
      orphanFilesRemoved: orphans,
      manifestsRemoved,
      dryRun: opts.dryRun,
      ...(eviction ? { eviction } : {}),
    };
  } finally {
    await storage.close();
  }
}
