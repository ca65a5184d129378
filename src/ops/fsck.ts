/**
 * `regmirror fsck`: re-hash every stored blob against its digest and size, so disk
 * corruption (bit rot, a truncated copy, a file deleted by hand) is found before a client
 * gets bad bytes. Serving never re-hashes (that would cost a full read per pull); this is
 * the scrub to run from cron or after an unclean storage event.
 *
 * `--repair` drops damaged blobs that came from an upstream (links and row in one
 * transaction, then the file): the next pull fetches them again. Damaged pushed blobs
 * cannot be restored from anywhere and are only reported. Offline, like gc. The local
 * driver's maintained counters (cached bytes, blob count and bytes) are checked against the
 * rows too, and set right with `--repair`.
 */
import type { Config, StoreConfig } from '../config/schema.js';
import type { Digest } from '../registry/names.js';
import type { CounterCheck } from '../storage/ports.js';
import { LOCAL, openStorage, stderrLog } from '../storage/open.js';
import { storagePaths } from '../storage/paths.js';

export interface FsckProblem {
  digest: Digest;
  problem: 'missing' | 'size' | 'digest';
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

/** Blobs verified at once: overlaps disk reads and hashing; small enough not to thrash a disk. */
const VERIFY_CONCURRENCY = 4;

export async function fsck(config: Pick<Config, 'storage'> & { store?: StoreConfig }, opts: { repair: boolean }): Promise<FsckResult> {
  const paths = storagePaths(config.storage);
  const storage = await openStorage(config.store ?? LOCAL, paths, stderrLog);
  const { metadata: meta, blobs: store } = storage;
  const out: FsckResult = { checked: 0, bytes: 0, problems: [] };
  const check = async (digest: Digest, size: number): Promise<void> => {
    let problem: FsckProblem['problem'] | null = null;
    const got = await store.verify(digest);
    if (!got) problem = 'missing';
    else {
      out.bytes += got.size;
      if (got.size !== size) problem = 'size';
      else if (got.digest !== digest) problem = 'digest';
    }
    if (!problem) return;
    const pushed = await meta.blobPushed(digest);
    const repaired = opts.repair && !pushed;
    if (repaired) {
      await meta.deleteBlobRow(digest); // links go with it (ON DELETE CASCADE)
      await store.delete(digest);
    }
    out.problems.push({ digest, problem, pushed, repaired });
  };
  try {
    // A few blobs at a time: reads and hashing overlap (the hashes run on the threadpool),
    // and the rows come in pages, so memory stays bounded however large the store.
    const running = new Set<Promise<void>>();
    let failure: { err: unknown } | null = null; // the first error (an unreadable disk) ends the run
    for await (const { digest, size } of meta.allBlobs()) {
      if (failure) break;
      out.checked++;
      const p: Promise<void> = check(digest, size)
        .catch((err: unknown) => void (failure ??= { err }))
        .finally(() => running.delete(p));
      running.add(p);
      if (running.size >= VERIFY_CONCURRENCY) await Promise.race(running);
    }
    await Promise.all(running);
    if (failure) throw (failure as { err: unknown }).err;
    out.problems.sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    // After the blob walk: a --repair above changed rows (and, through them, the counters).
    const counted = await meta.checkCounters?.(opts.repair);
    if (counted && (counted.wrongFlags > 0 || counted.counters.length > 0)) out.counters = { ...counted, repaired: opts.repair };
    return out;
  } finally {
    await storage.close();
  }
}
