/**
 * Last-access bookkeeping for eviction without a SQLite write per request: reads are
 * noted in memory (the latest time per blob and per repository manifest) and written in
 * one transaction by `flush()`, which the app calls every few seconds, before each
 * eviction run and at shutdown. A crash loses at most one interval of access times,
 * which only makes eviction slightly less precise.
 */
import type { Digest, RepoName } from '../registry/names.js';
import type { MetadataStore } from './db.js';

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
    if (this.blobs.size >= MAX_PENDING) this.flush();
  }

  manifest(repo: RepoName, digest: Digest): void {
    const key = `${repo}@${digest}`;
    const at = this.now();
    const e = this.manifests.get(key);
    if (e) e.at = at;
    else this.manifests.set(key, { repo, digest, at });
    if (this.manifests.size >= MAX_PENDING) this.flush();
  }

  get pending(): number {
    return this.blobs.size + this.manifests.size;
  }

  /** Write what was noted since the last flush (one transaction). */
  flush(): void {
    if (this.pending === 0) return;
    const blobs = this.blobs;
    const manifests = [...this.manifests.values()];
    this.blobs = new Map();
    this.manifests = new Map();
    this.meta.touchAccess(blobs, manifests);
  }
}
