/**
 * Eviction of pulled-through content: everything not accessed for `maxAgeMs`, then least
 * recently used images until the cached blob bytes fit `maxBytes`. Only content that came
 * from an upstream is eligible; whatever pushed content reaches (a pushed manifest, a tag,
 * a pushed blob link, in any repository) stays. A later pull simply fetches it again.
 *
 * The unit is an image (a cached manifest no other manifest of its repository references,
 * with its child manifests and blob links), so a tag is never left pointing at half an
 * image; cached blobs linked without any manifest are a unit of their own. Each unit is one
 * logical metadata change that re-checks the candidate (MetadataStore.evictImage); blob files
 * are unlinked after it commits (rows first, then files: a crash leaves only orphan files).
 *
 * With several replicas (storage.driver shared) a pass runs only on the replica holding
 * the `gc-leader` lease (renewed during the pass, released after; a leader that dies stops
 * renewing and another takes over once it expired), and blob content is not deleted by the
 * unit but after a grace, from the markers the driver wrote with the rows
 * (coordination.ts DeferredDeletes; the invariant is in storage/README.md).
 */
import type { Logger } from 'pino';
import type { CacheConfig } from '../config/schema.js';
import type { Digest } from '../registry/names.js';
import { type Coordination, DELETE_ISSUE_MS, type DeferredDeletes, type Fence, FencedOut, keepRenewed } from '../storage/coordination.js';
import type { BlobStore, CandidateList, Evicted, MetadataOps, MetadataStore, RepoKey } from '../storage/ports.js';

/**
 * Loose cached blobs younger than this are left alone: a push into a pull-through
 * namespace links the blobs it completes from upstream just before its manifest.
 */
const LOOSE_GRACE_MS = 10 * 60_000;

/** The lease eviction and GC run under when replicas share storage (also taken by `regmirror gc`). */
export const GC_LEADER = 'gc-leader';
const LEADER_TTL_MS = 30_000;
/** Deferred deletes claimed per query, and queries per pass (the rest waits for the next pass). */
const DELETE_BATCH = 100;
const DELETE_BATCHES = 50;
/**
 * Units run back to back for at most this long, then the pass yields to the event loop
 * (setImmediate: I/O first). A unit's own awaits resolve at once on the local driver (its
 * calls are synchronous SQLite), so without this a pass held every request for as long as
 * its units took together (bench/evict-stalls.mjs).
 */
const SLICE_MS = 10;

export interface EvictionResult {
  images: number;
  manifests: number;
  blobs: number;
  bytes: number;
  /** Cached blob bytes after the run. */
  cachedBytes: number;
  dryRun: boolean;
  /** Set when the pass did nothing because another replica holds the `gc-leader` lease. */
  /** not-leader: another replica holds the lease; stopped: shutdown during a whole-store scan. */
  /** fenced: the lease was taken over mid-pass and the database refused a change (fencing). */
  skipped?: 'not-leader' | 'stopped' | 'fenced';
  /** Deferred deletes: blob contents removed this pass (rows evicted at least the grace ago). */
  contentDeleted?: number;
}

interface Candidate {
  kind: 'image' | 'blob';
  repo: RepoKey;
  digest: Digest;
  lastAccess: number;
}

export interface EvictorOptions {
  /** Digests that must stay (blob fills in flight). */
  busy?: (digest: Digest) => boolean;
  /** Write pending access times first, so the order is current. */
  flush?: () => Promise<void>;
  log?: Logger;
  now?: () => number;
  /** Several replicas: a pass runs only while `owner` holds GC_LEADER (see the top). */
  leader?: { coordination: Coordination; owner: string; ttlMs?: number };
  /** A lease the caller already holds (`regmirror gc`): the pass's changes are fenced by it. */
  fence?: Fence;
  /** Shared driver: content goes `graceMs` after its row, through these markers, not per unit. */
  deferred?: { deletes: DeferredDeletes; graceMs: number };
}

export class Evictor {
  /** Called after each run that evicted something; metrics. */
  onEvicted: ((r: EvictionResult) => void) | null = null;
  /** Called after every pass, also one skipped for want of the lease; metrics. */
  onPass: ((r: EvictionResult) => void) | null = null;
  private running: Promise<EvictionResult> | null = null;
  private stopped = false;
  private stopNow: () => void = () => undefined;
  private readonly stopping = new Promise<void>((resolve) => (this.stopNow = resolve));
  private readonly busy: (digest: Digest) => boolean;
  private readonly now: () => number;

  constructor(
    private readonly meta: MetadataStore,
    private readonly blobs: Pick<BlobStore, 'delete'>,
    private readonly policy: Pick<CacheConfig, 'maxBytes' | 'maxAgeMs'>,
    private readonly opts: EvictorOptions = {},
  ) {
    this.busy = opts.busy ?? (() => false);
    this.now = opts.now ?? Date.now;
  }

  get enabled(): boolean {
    return this.policy.maxBytes !== null || this.policy.maxAgeMs !== null;
  }

  /** One eviction pass (ages measured at `at`, default now); a call while one runs joins it. */
  run(at?: number): Promise<EvictionResult> {
    this.running ??= this.doRun(at)
      .catch((e: unknown) => {
        if (e instanceof Stopped) return { ...this.emptyResult(false), skipped: 'stopped' as const };
        throw e;
      })
      .then((r) => (this.onPass?.(r), r))
      .finally(() => (this.running = null));
    return this.running;
  }

  /** Shutdown: a pass in progress stops after its current unit; wait for it. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopNow();
    await this.running?.catch(() => undefined);
  }

  /**
   * A whole-store scan of the pass (a minute at a million blobs), given up on stop():
   * shutdown does not wait for it; closing the store ends it (storage/local/scan.ts).
   * Nothing is evicted during one, so giving up loses no count.
   */
  private scan<T>(p: Promise<T>): Promise<T> {
    p.catch(() => undefined); // abandoned: the store's close rejects it
    return Promise.race([
      p,
      this.stopping.then((): never => {
        throw new Stopped();
      }),
    ]);
  }

  /** What a pass would evict now, without changing anything (all in a rolled-back transaction). */
  async dryRun(): Promise<EvictionResult> {
    await this.opts.flush?.();
    const result = this.emptyResult(true);
    await this.meta.transaction(
      async (tx) => {
        for await (const ev of this.evictions(tx, this.now())) this.add(result, ev);
      },
      { dryRun: true },
    );
    result.cachedBytes = (await this.meta.cachedBytes()) - result.bytes;
    return result;
  }

  private async doRun(at: number | undefined): Promise<EvictionResult> {
    const lead = this.opts.leader;
    if (!lead) return this.pass(at, () => false, this.opts.fence);
    const ttl = lead.ttlMs ?? LEADER_TTL_MS;
    const grant = await lead.coordination.acquireLease(GC_LEADER, lead.owner, ttl);
    if (!grant) {
      this.opts.log?.debug('cache eviction: another replica holds the gc-leader lease');
      return { ...this.emptyResult(false), skipped: 'not-leader' };
    }
    const held = keepRenewed(lead.coordination, GC_LEADER, lead.owner, ttl);
    const fence = { name: GC_LEADER, owner: lead.owner, token: grant.token };
    try {
      const result = await this.pass(at, held.lost, fence);
      if (held.lost()) this.opts.log?.warn('cache eviction: the gc-leader lease was lost mid-pass; stopped after the current unit');
      return result;
    } catch (e) {
      // A change after another replica took the lease over (e.g. this process was paused):
      // the database refused it, nothing was changed by it; the new leader does the work.
      if (!(e instanceof FencedOut)) throw e;
      this.opts.log?.warn({ fencingToken: grant.token }, 'cache eviction: the gc-leader lease was taken over; the database refused this pass\'s change (fencing)');
      return { ...this.emptyResult(false), skipped: 'fenced' };
    } finally {
      await held.release().catch(() => undefined);
    }
  }

  private async pass(at: number | undefined, lost: () => boolean, fence?: Fence): Promise<EvictionResult> {
    const started = this.now();
    const token = fence?.token;
    await this.opts.flush?.();
    const result = this.emptyResult(false);
    let cachedAfter: number | null = null;
    // Under the lease, every deleting/marking change checks the fencing token in its transaction.
    const meta = (fence && this.meta.fenced?.(fence)) || this.meta;
    const plain = this.opts.deferred;
    const deferred = plain && fence && plain.deletes.fenced ? { ...plain, deletes: plain.deletes.fenced(fence) } : plain;
    if (this.enabled) {
      const passes = this.evictions(meta, at ?? started, (bytes) => (cachedAfter = bytes));
      for await (const ev of passes) {
        this.add(result, ev);
        // Between units the server keeps serving; every unit re-checks its candidate.
        // Every delete is registered before the first await (a commit of the digest waits for it).
        if (!deferred) {
          await Promise.all(ev.blobs.map((b) => this.blobs.delete(b.digest))).catch((err: unknown) => {
            this.opts.log?.warn({ err }, 'eviction: removing blob files failed (gc removes orphans)');
          });
        }
        if (this.stopped || lost()) break;
      }
    }
    if (deferred) result.contentDeleted = await deleteDue(deferred, this.blobs, () => this.stopped || lost(), this.opts.log);
    // The pass's own count (its scan at the start minus what it evicted) when it has one:
    // scanning every blob row again costs as much as the pass (bench/scale.mjs).
    result.cachedBytes = cachedAfter ?? (await this.scan(this.meta.cachedBytes()));
    this.opts.log?.info(
      {
        images: result.images,
        manifests: result.manifests,
        blobs: result.blobs,
        bytes: result.bytes,
        cachedBytes: result.cachedBytes,
        ...(deferred ? { contentDeleted: result.contentDeleted } : {}),
        ...(token !== undefined ? { leader: this.opts.leader?.owner, fencingToken: token, startedAt: started } : {}),
        ms: this.now() - started,
      },
      'cache eviction',
    );
    if (result.manifests > 0 || result.blobs > 0) this.onEvicted?.(result);
    return result;
  }

  private emptyResult(dryRun: boolean): EvictionResult {
    return { images: 0, manifests: 0, blobs: 0, bytes: 0, cachedBytes: 0, dryRun };
  }

  private add(result: EvictionResult, ev: Evicted & { kind: Candidate['kind'] }): void {
    if (ev.kind === 'image') result.images++;
    result.manifests += ev.manifests;
    result.blobs += ev.blobs.length;
    result.bytes += ev.blobs.reduce((n, b) => n + b.size, 0);
  }

  /** Evict candidates in order of last access while either limit is exceeded; each unit one logical change. */
  private async *evictions(
    meta: MetadataOps,
    now: number,
    onCached: (bytes: number) => void = () => undefined,
  ): AsyncGenerator<Evicted & { kind: Candidate['kind'] }> {
    const { maxBytes, maxAgeMs } = this.policy;
    let cached = await this.scan(meta.cachedBytes());
    onCached(cached);
    const overBudget = () => maxBytes !== null && cached > maxBytes;
    if (!overBudget() && maxAgeMs === null) return;
    let slice = performance.now();
    const list = await this.candidates(meta, now);
    for (let i = 0; i < list.length; i++) {
      const c = list.at(i);
      // Between units only: the consumer registered the previous unit's deletes before asking for this one.
      if (performance.now() - slice > SLICE_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        slice = performance.now();
      }
      const tooOld = maxAgeMs !== null && c.lastAccess < now - maxAgeMs;
      // Sorted oldest first: once neither limit applies, none applies to the rest.
      if (!tooOld && !overBudget()) return;
      const ev =
        c.kind === 'image'
          ? await meta.evictImage(c.repo, c.digest, c.lastAccess, this.busy)
          : await meta.evictLooseBlob(c.repo, c.digest, c.lastAccess, this.busy);
      if (!ev) continue;
      cached -= ev.blobs.reduce((n, b) => n + b.size, 0);
      onCached(cached);
      yield { ...ev, kind: c.kind };
    }
  }

  /**
   * Oldest first. A driver that can answers the whole list compactly, ordered off this
   * thread (local: the scan worker); mapping and sorting ~49,000 candidate objects here
   * held the event loop ~200 ms at a million blobs (bench/results/scale/).
   */
  private async candidates(meta: MetadataOps, now: number): Promise<CandidateList> {
    if (meta.evictionCandidates) return this.scan(meta.evictionCandidates(now - LOOSE_GRACE_MS));
    const images: Candidate[] = (await this.scan(meta.cachedImages())).map((i) => ({ kind: 'image', ...i }));
    const loose: Candidate[] = (await this.scan(meta.looseBlobs(now - LOOSE_GRACE_MS))).map((b) => ({ kind: 'blob', ...b }));
    const all = [...images, ...loose].sort((a, b) => a.lastAccess - b.lastAccess);
    return { length: all.length, at: (i) => all[i]! };
  }
}

/** A pass given up during a whole-store scan at shutdown (Evictor.stop). */
class Stopped extends Error {}

/**
 * Delete the contents whose deferred delete is due (claimed in the driver first); bounded
 * per call, the rest waits for the next one. A failed delete keeps its claim, which
 * expires and is taken again later; so does one not issued within DELETE_ISSUE_MS of its
 * claim (the claim must outlive every DELETE made under it). Returns how many contents went.
 */
export async function deleteDue(deferred: NonNullable<EvictorOptions['deferred']>, blobs: Pick<BlobStore, 'delete'>, stop: () => boolean, log?: Logger): Promise<number> {
  let n = 0;
  for (let batch = 0; batch < DELETE_BATCHES && !stop(); batch++) {
    const claimedAt = Date.now();
    const due = await deferred.deletes.claimDue(deferred.graceMs, DELETE_BATCH);
    for (const { digest, token } of due) {
      // Late for this claim (a slow store): leave the rest to expire and be claimed again.
      if (Date.now() - claimedAt > DELETE_ISSUE_MS) return n;
      try {
        await blobs.delete(digest);
        await deferred.deletes.done(digest, token);
        n++;
      } catch (err) {
        log?.warn({ err, digest }, 'eviction: deleting blob content failed (retried after the claim expires)');
      }
    }
    if (due.length < DELETE_BATCH) break;
  }
  return n;
}
