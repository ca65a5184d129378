/**
 * Last-access bookkeeping for eviction without a SQLite write per request: reads are
 * noted in memory (the latest time per blob and per repository manifest) and written in
 * one transaction by `flush()`, which the app calls every few seconds, before each
 * eviction run and at shutdown. A crash loses at most one interval of access times,
 * which only makes eviction slightly less precise.
 */
import type { Digest, RepoName } from '../registry/names.js';
import type { MetadataStore } from './db.js';
import { isStorageFull } from './space.js';

/** Flushed early when this many distinct entries are pending (bounded memory). */
const MAX_PENDING = 50_000;

export class AccessRecorder {
  private blobs = new Map<Digest, number>();
  private manifests = new Map<string, { repo: RepoName; digest: Digest; at: number }>();

  constructor(
    private readonly meta: MetadataStore,
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
   * Write what was noted since the last flush (one transaction). If the write fails (the
   * disk is full) the times stay pending for the next flush; nothing runs in between, as
   * this is synchronous.
   */
  flush(): void {
    if (this.pending === 0) return;
    this.meta.touchAccess(this.blobs, [...this.manifests.values()]);
    this.blobs = new Map();
    this.manifests = new Map();
  }

  /**
   * The bound was reached during a request: that request must not fail because the
   * database cannot be written, so a failed write drops the pending times (memory stays
   * bounded; eviction is only less precise). The periodic flush reports failures.
   */
  private flushEarly(): void {
    try {
      this.flush();
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      this.blobs = new Map();
      this.manifests = new Map();
    }
  }
}
