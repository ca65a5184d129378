/**
 * Last-access bookkeeping for eviction without a SQLite write per request: reads are
 * noted in memory (the latest time per blob and per repository manifest) and written in
 * one logical change by `flush()`, which the app calls every few seconds, before each
 * eviction run and at shutdown. A crash loses at most one interval of access times,
 * which only makes eviction slightly less precise.
 */
import type { Digest, RepoName } from '../registry/names.js';
import type { MetadataOps } from './ports.js';
import { isStorageFull } from './space.js';

/** Flushed early when this many distinct entries are pending (bounded memory). */
const MAX_PENDING = 50_000;

export class AccessRecorder {
  private blobs = new Map<Digest, number>();
  private manifests = new Map<string, { repo: RepoName; digest: Digest; at: number }>();

  constructor(
    private readonly meta: Pick<MetadataOps, 'touchAccess'>,
    private readonly now: () => number = Date.now,
  ) {}

  blob(digest: Digest): void {
    this.blobs.set(digest, this.now());
    if (this.blobs.size >= MAX_PENDING) this.flushEarly();
  }

  manifest(repo: RepoName, digest: Digest): void {
    const key = `${repo}@${digest}`;
    const at = this.now();
    const e = this.manifests.get(key);
    if (e) e.at = at;
    else this.manifests.set(key, { repo, digest, at });
    if (this.manifests.size >= MAX_PENDING) this.flushEarly();
  }

  get pending(): number {
    return this.blobs.size + this.manifests.size;
  }

  /**
   * Write what was noted since the last flush (one logical change). If the write fails
   * (the disk is full) the times stay pending for the next flush, merged under any noted
   * meanwhile (those are newer).
   */
  async flush(): Promise<void> {
    if (this.pending === 0) return;
    const blobs = this.blobs;
    const manifests = this.manifests;
    this.blobs = new Map();
    this.manifests = new Map();
    try {
      await this.meta.touchAccess(blobs, [...manifests.values()]);
    } catch (e) {
      for (const [d, at] of blobs) if (!this.blobs.has(d)) this.blobs.set(d, at);
      for (const [k, m] of manifests) if (!this.manifests.has(k)) this.manifests.set(k, m);
      throw e;
    }
  }

  /**
   * The bound was reached during a request: that request must not fail because the
   * database cannot be written, so a failed write drops the pending times (memory stays
   * bounded; eviction is only less precise). The periodic flush reports failures; one
   * that is not a full disk is reported through `onError`.
   */
  private flushEarly(): void {
    this.flush().catch((e: unknown) => {
      this.blobs = new Map();
      this.manifests = new Map();
      if (!isStorageFull(e)) this.onError?.(e);
    });
  }

  /** A failed early flush that was not a full disk (the app logs it). */
  onError: ((err: unknown) => void) | null = null;
}
