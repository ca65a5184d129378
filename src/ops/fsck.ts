/**
 * `regmirror fsck`: re-hash every stored blob against its digest and size, so disk
 * corruption (bit rot, a truncated copy, a file deleted by hand) is found before a client
 * gets bad bytes, and list content no row records (orphans). Serving never re-hashes (that
 * would cost a full read per pull); this is the scrub to run from cron or after an unclean
 * storage event.
 *
 * `--repair` drops damaged blobs that came from an upstream (links and row in one
 * transaction, then the content): the next pull fetches them again; on shared storage it
 * also removes orphans (on local disk gc does).
 * Damaged pushed blobs cannot be restored from anywhere and are only reported.
 *
 * Local driver: offline, like gc. Shared driver: online, beside serving replicas. It holds
 * the `gc-leader` lease for the whole run (no eviction pass or gc runs meanwhile) and every
 * repair is fenced by it; what is in flight is not damage: a row is reported only if it is
 * still there after a second look, with no live `fill:` lease, and its content fails a
 * second verification; an object without a row only if it is older than `graceMs`, has no
 * pending delete marker and no live fill. Repairs take gc's deferred-delete path: a row
 * goes with a marker (its content after cache.deleteGrace), an orphan under a claim that a
 * commit of the same digest waits for. The local driver's maintained counters (cached
 * bytes, blob count and bytes) are checked against the rows too, set right with `--repair`.
 */
import { type Config, type StoreConfig } from '../config/schema.js';
import type { Digest } from '../registry/names.js';
import type { DeferredDeletes } from '../storage/coordination.js';
import { LOCAL, openStorage, stderrLog } from '../storage/open.js';
import { storagePaths } from '../storage/paths.js';
import type { CounterCheck, MetadataOps, MetadataStore } from '../storage/ports.js';
import { removeOrphan, takeLeader } from './gc.js';

export interface FsckProblem {
  digest: Digest;
  /** missing/size/digest: a row whose content is absent or wrong; orphan: content without a row. */
  problem: 'missing' | 'size' | 'digest' | 'orphan';
  /** Pushed content: cannot be refetched. */
  pushed: boolean;
  repaired: boolean;
}

export interface FsckResult {
  checked: number;
  bytes: number;
  problems: FsckProblem[];
  /** Maintained counters that disagreed with the rows (local driver); repaired with --repair. */
  counters?: CounterCheck & { repaired: boolean };
}

export interface FsckOptions {
  repair: boolean;
  /** Shared driver: objects written less than this ago are never orphans (a commit between its write and its row). */
  graceMs?: number;
  /** Shared driver: how long to wait for an eviction pass or gc holding gc-leader. */
  leaderWaitMs?: number;
}

/** Blobs verified at once: overlaps disk reads and hashing; small enough not to thrash a disk. */
const VERIFY_CONCURRENCY = 4;
/** Default orphan grace online: far longer than any commit's write-to-row step. */
export const ORPHAN_GRACE_MS = 15 * 60_000;
const LEADER_WAIT_MS = 5 * 60_000;

type Verdict = FsckProblem['problem'] | null;

export async function fsck(config: Pick<Config, 'storage'> & { store?: StoreConfig }, opts: FsckOptions): Promise<FsckResult> {
  const paths = storagePaths(config.storage);
  const storage = await openStorage(config.store ?? LOCAL, paths, stderrLog);
  const { metadata: meta, blobs: store, coordination, deferredDeletes: deferred } = storage;
  // Replicas may be serving (shared driver): hold gc-leader throughout, fence every repair by it.
  const lease = deferred ? await takeLeader(coordination, opts.leaderWaitMs ?? LEADER_WAIT_MS, 'fsck').catch(async (e: unknown) => {
    await storage.close();
    throw e;
  }) : null;
  const fmeta: Pick<MetadataStore, 'transaction'> & MetadataOps = (lease && meta.fenced?.(lease.fence)) || meta;
  const deletes: DeferredDeletes | null = lease && deferred?.fenced ? deferred.fenced(lease.fence) : deferred;
  const fillRunning = async (d: Digest) => deferred !== null && (await coordination.leaseHolder(`fill:${d}`)) !== null;
  const out: FsckResult = { checked: 0, bytes: 0, problems: [] };

  const verdict = async (digest: Digest, size: number, count: boolean): Promise<Verdict> => {
    const got = await store.verify(digest);
    if (!got) return 'missing';
    if (count) out.bytes += got.size;
    return got.size !== size ? 'size' : got.digest !== digest ? 'digest' : null;
  };
  /** Online: is it still damage on a second look (the row unchanged, no fill running, the content still bad)? */
  const confirmed = async (digest: Digest, size: number): Promise<Verdict> => {
    if ((await meta.blobSize(digest)) !== size || (await fillRunning(digest))) return null;
    return verdict(digest, size, false);
  };
  const check = async (digest: Digest, size: number): Promise<void> => {
    let problem = await verdict(digest, size, true);
    if (problem && deferred) problem = await confirmed(digest, size);
    if (!problem) return;
    const pushed = await meta.blobPushed(digest);
    let repaired = false;
    if (opts.repair && !pushed) {
      if (!deferred) {
        await meta.deleteBlobRow(digest); // links go with it (ON DELETE CASCADE)
        await store.delete(digest);
        repaired = true;
      } else {
        // One fenced change with the check (a push may have linked it since); the content
        // goes after the grace (deferred deletes), as for gc.
        repaired = await fmeta.transaction(async (tx) => {
          if (await tx.blobPushed(digest)) return false;
          await tx.deleteBlobRow(digest);
          return true;
        });
      }
    }
    out.problems.push({ digest, problem, pushed, repaired });
  };
  const leaseLost = () => {
    if (lease?.lost()) throw new Error('fsck: the gc-leader lease was lost (database unreachable or taken over); run fsck again');
  };

  try {
    // A few blobs at a time: reads and hashing overlap (the hashes run on the threadpool),
    // and the rows come in pages, so memory stays bounded however large the store.
    const running = new Set<Promise<void>>();
    let failure: { err: unknown } | null = null; // the first error (an unreadable disk) ends the run
    for await (const { digest, size } of meta.allBlobs()) {
      if (failure) break;
      leaseLost();
      out.checked++;
      const p: Promise<void> = check(digest, size)
        .catch((err: unknown) => void (failure ??= { err }))
        .finally(() => running.delete(p));
      running.add(p);
      if (running.size >= VERIFY_CONCURRENCY) await Promise.race(running);
    }
    await Promise.all(running);
    if (failure) throw (failure as { err: unknown }).err;
    // Shared driver: content no row records (a commit between its write and its row, a
    // replica killed there, a removal by hand). Not on the local driver: there a file
    // without its row is the written crash invariant's allowed state, which `gc` sweeps;
    // it is no damage (test/e2e/crash-fill.test.ts).
    const grace = opts.graceMs ?? ORPHAN_GRACE_MS;
    for await (const entry of deferred ? store.list() : []) {
      leaseLost();
      const digest = entry.digest;
      if (digest === null) continue; // not a blob name: gc removes it
      if (deferred && entry.modifiedAt !== undefined && Date.now() - entry.modifiedAt < grace) continue;
      if ((await meta.blobSize(digest)) !== undefined) continue;
      if (deferred && ((await deferred.marked(digest)) || (await fillRunning(digest)))) continue;
      const repaired = opts.repair ? await removeOrphan(entry, deletes) : false;
      out.problems.push({ digest, problem: 'orphan', pushed: false, repaired });
    }
    out.problems.sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    // After the blob walk: a --repair above changed rows (and, through them, the counters).
    const counted = await meta.checkCounters?.(opts.repair);
    if (counted && (counted.wrongFlags > 0 || counted.counters.length > 0)) out.counters = { ...counted, repaired: opts.repair };
    return out;
  } finally {
    await lease?.release();
    await storage.close();
  }
}
