/**
 * Garbage collection: delete blobs no repository links and manifest content no
 * repository holds; with `evict`, first apply the cache policy (cache.maxAge,
 * cache.maxBytes) as the running server does (cache/eviction.ts). Rows go first, then
 * content, so a crash mid-GC leaves only orphan content, which the next GC removes.
 *
 * Local driver: offline (the server should not be running on the same storage), to avoid
 * racing an upload that is about to link a blob. Shared driver: online, beside running
 * replicas: GC takes the same `gc-leader` lease as their eviction (waiting for a pass in
 * progress), content goes through the deferred deletes (a row's content after
 * cache.deleteGrace, an orphan's under a claim a commit waits for; storage/README.md).
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { type EvictionResult, Evictor, GC_LEADER, deleteDue } from '../cache/eviction.js';
import type { Config, StoreConfig } from '../config/schema.js';
import { type Coordination, type DeferredDeletes, type Fence, keepRenewed } from '../storage/coordination.js';
import { LOCAL, openStorage, stderrLog } from '../storage/open.js';
import { storagePaths } from '../storage/paths.js';
import type { BlobEntry } from '../storage/ports.js';

export interface GcResult {
  linksRemoved: number;
  blobsRemoved: number;
  orphanFilesRemoved: number;
  manifestsRemoved: number;
  /** Upstream tag and referrers lists (`upstream_lists`) not refreshed for upstreamListRetentionMs. */
  upstreamListsRemoved: number;
  dryRun: boolean;
  /** Present when run with `evict`. */
  eviction?: EvictionResult;
  /** Shared driver: blob contents deleted now (rows removed at least cache.deleteGrace ago). */
  contentDeleted?: number;
  /** Shared driver: blob contents whose delete waits for the grace (the next GC or eviction pass). */
  contentPending?: number;
}

const LEASE_TTL_MS = 30_000;
/** How long GC waits for an eviction pass of a replica to end. */
const LEADER_WAIT_MS = 5 * 60_000;
/**
 * An upstream list stored for other replicas stays this long after its last fetch (at
 * least ten of the longest tags.ttl): past its TTL it only serves as a stale answer while
 * the upstream fails, and a replica that listed it keeps its own copy in memory. Without
 * this, one row per upstream repository and referrers subject ever asked for stays.
 */
const UPSTREAM_LIST_RETENTION_MS = 7 * 24 * 3600_000;
const UPSTREAM_LIST_RETENTION_TTLS = 10;

export async function collectGarbage(
  config: Pick<Config, 'storage' | 'limits' | 'cache' | 'upstreams'> & { store?: StoreConfig },
  opts: { dryRun: boolean; evict?: boolean; leaderWaitMs?: number },
): Promise<GcResult> {
  const paths = storagePaths(config.storage);
  const storage = await openStorage(config.store ?? LOCAL, paths, stderrLog);
  const { metadata: meta, blobs: store, deferredDeletes: deferred } = storage;
  const lease = deferred && !opts.dryRun ? await takeLeader(storage.coordination, opts.leaderWaitMs ?? LEADER_WAIT_MS) : null;
  try {
    // Under the lease every change checks its fencing token (a gc paused past its lease changes nothing).
    const fence = lease?.fence;
    const deletes = fence && deferred?.fenced ? deferred.fenced(fence) : deferred;
    const deferOpts = deletes ? { deferred: { deletes, graceMs: config.cache.deleteGraceMs } } : {};
    const fmeta = (fence && meta.fenced?.(fence)) || meta;
    let eviction: EvictionResult | undefined;
    if (opts.evict) {
      const evictor = new Evictor(meta, store, config.cache, { ...deferOpts, ...(fence ? { fence } : {}) });
      eviction = opts.dryRun ? await evictor.dryRun() : await evictor.run();
    }
    // Manifest content no repository holds goes first, so its references stop counting.
    const manifestsRemoved = opts.dryRun ? 0 : await fmeta.deleteUnreferencedManifestContent();
    const linksRemoved = opts.dryRun ? 0 : await fmeta.unlinkDanglingBlobs(config.limits.uploadTtlMs);
    const upstreamListsRemoved = opts.dryRun ? 0 : await meta.deleteUpstreamListsBefore(Date.now() - upstreamListRetentionMs(config.upstreams));
    const unreferenced = await meta.unreferencedBlobs();
    let blobsRemoved = unreferenced.length;
    if (!opts.dryRun) {
      for (const d of unreferenced) {
        if (!deferred) {
          await meta.deleteBlobRow(d);
          await store.delete(d);
          continue;
        }
        // Replicas run: a push may have linked it since the listing (one change with the check).
        const gone = await fmeta.transaction(async (tx) => {
          if (await tx.blobPushed(d)) return false;
          await tx.deleteBlobRow(d);
          return true;
        });
        if (!gone) blobsRemoved--;
      }
    }
    const stop = () => lease?.lost() ?? false;
    const contentDeleted = deferred && !opts.dryRun ? await deleteDue(deferOpts.deferred!, store, stop) : undefined;
    // Content without a row: a crash between a commit's write and its row, or an eviction's
    // row deletion and its unlink.
    let orphans = 0;
    for await (const entry of store.list()) {
      if (entry.digest === null || (await meta.blobSize(entry.digest)) === undefined) {
        if (opts.dryRun) orphans++;
        else if (await removeOrphan(entry, deletes)) orphans++;
      }
      if (stop()) break;
    }
    return {
      linksRemoved,
      blobsRemoved,
      orphanFilesRemoved: orphans,
      manifestsRemoved,
      upstreamListsRemoved,
      dryRun: opts.dryRun,
      ...(eviction ? { eviction } : {}),
      ...(contentDeleted !== undefined ? { contentDeleted, contentPending: await deferred!.pending() } : {}),
    };
  } finally {
    await lease?.release();
    await storage.close();
  }
}

export function upstreamListRetentionMs(upstreams: Config['upstreams']): number {
  const ttl = Math.max(0, ...[...upstreams.values()].map((u) => u.tags.ttlMs));
  return Math.max(UPSTREAM_LIST_RETENTION_MS, UPSTREAM_LIST_RETENTION_TTLS * ttl);
}

/**
 * Shared driver: an object without a row may be a commit between its write and its row,
 * or content whose row went less than the grace ago: delete it only under a claim (which
 * such a commit waits for, then writes again), and never one with a pending delete.
 */
export async function removeOrphan(entry: BlobEntry, deferred: DeferredDeletes | null): Promise<boolean> {
  if (!deferred || entry.digest === null) {
    await entry.remove();
    return true;
  }
  const token = await deferred.claimOrphan(entry.digest);
  if (token === null) return false;
  await entry.remove();
  await deferred.done(entry.digest, token);
  return true;
}

/**
 * Take the gc-leader lease (waiting while a replica's eviction pass holds it) and keep it
 * renewed; `fence` is what the changes made under it carry (also used by fsck).
 */
export async function takeLeader(
  coordination: Coordination,
  waitMs: number,
  who = 'gc',
): Promise<{ fence: Fence; lost(): boolean; release(): Promise<void> }> {
  const owner = `${who}:${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const deadline = Date.now() + waitMs;
  let grant;
  while (!(grant = await coordination.acquireLease(GC_LEADER, owner, LEASE_TTL_MS))) {
    if (Date.now() > deadline) throw new Error(`${who}: another process holds the ${GC_LEADER} lease (an eviction pass, a gc or an fsck) for over ${waitMs} ms; try again later`);
    await new Promise((r) => setTimeout(r, 500));
  }
  const held = keepRenewed(coordination, GC_LEADER, owner, LEASE_TTL_MS);
  return { fence: { name: GC_LEADER, owner, token: grant.token }, lost: held.lost, release: () => held.release().catch(() => undefined) };
}
