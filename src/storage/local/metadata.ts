/**
 * The local `MetadataStore` driver: the async port over db.ts (better-sqlite3, one
 * connection shared with the local blob and upload stores). Each method is one db.ts
 * call, so one SQLite transaction per logical change, exactly as before the port; the
 * async wrapper costs a microtask.
 *
 * Transactions. better-sqlite3 is synchronous and has one connection, so a BEGIN..COMMIT
 * around an async `fn` would let every unrelated call that runs while `fn` awaits land in
 * that transaction: its writes committed or rolled back with it (a dry run would drop a
 * concurrent push's blob row), its reads seeing uncommitted rows. So while a transaction is
 * open, the connection belongs to it: every other call (this store, and the blob store's
 * lookups and commits through `MetadataDb.whenIdle`) waits for it to end, checking again
 * in the same tick it uses the connection; transactions themselves run one at a time.
 * `fn` gets a handle bound to the transaction (ungated, dead after it ends); a call on the
 * store itself from inside `fn` would wait for itself and is refused (AsyncLocalStorage).
 * BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads, awaits,
 * then writes can fail with SQLITE_BUSY against another process (`regmirror gc`) instead
 * of waiting. Today only eviction's dry run uses a transaction; it used to hold the event
 * loop for its whole duration, so making other metadata calls wait for it costs nothing new.
 */
import type { Digest, RepoName } from '../../registry/names.js';
import type { MetadataDb } from '../db.js';
import { packCandidates, unpackCandidates } from './candidates.js';
import { Checkpointer, type CheckpointOptions } from './checkpoint.js';
import { ScanReader } from './scan.js';
import type {
  CandidateList,
  CounterCheck,
  Evicted,
  EvictionCandidate,
  ManifestMeta,
  ManifestRecord,
  MetadataOps,
  MetadataStore,
  NewManifest,
  Provenance,
  RepoKey,
  TagRecord,
  UploadRows,
  UpstreamTagVariant,
} from '../ports.js';

interface TxState {
  live: boolean;
}

function repoRow(key: RepoKey): number {
  if (typeof key !== 'number') throw new TypeError(`local metadata: not a repository key of this driver: ${String(key)}`);
  return key;
}

class LocalOps implements MetadataOps {
  constructor(
    protected readonly db: MetadataDb,
    /** Null for the store itself (gated); the transaction's state for a handle. */
    private readonly tx: TxState | null,
    /** The store's scan worker; null on a transaction handle. */
    protected readonly scans: ScanReader | null = null,
  ) {}

  /** Null when the connection may be used now (same tick); else wait and ask again. */
  protected enter(): Promise<void> | null {
    if (this.tx === null) return this.db.whenIdle();
    if (!this.tx.live) throw new Error('metadata: transaction handle used after its transaction ended');
    return null;
  }

  async repoExists(repo: RepoName): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.repoId(repo) !== undefined;
  }

  async listRepositories(after: string, limit: number): Promise<string[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.listRepositories(after, limit);
  }

  async blobSize(digest: Digest): Promise<number | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.blobSize(digest);
  }

  async repoBlobSize(repo: RepoName, digest: Digest): Promise<number | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.repoBlobSize(repo, digest);
  }

  async recordBlob(repo: RepoName, digest: Digest, size: number, provenance: Provenance): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.recordBlob(repo, digest, size, provenance);
  }

  async linkBlob(repo: RepoName, digest: Digest, provenance: Provenance): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.linkBlob(repo, digest, provenance);
  }

  async unlinkBlob(repo: RepoName, digest: Digest): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.unlinkBlob(repo, digest);
  }

  async referencedInRepo(repo: RepoName, digest: Digest): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.referencedInRepo(repo, digest);
  }

  async manifest(repo: RepoName, digest: Digest): Promise<ManifestRecord | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.manifest(repo, digest);
  }

  async hasManifest(repo: RepoName, digest: Digest): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.hasManifest(repo, digest);
  }

  async putManifest(repo: RepoName, m: NewManifest, tags: readonly string[], provenance: Provenance): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.putManifest(repo, m, tags, provenance);
  }

  async deleteManifest(repo: RepoName, digest: Digest): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.deleteManifest(repo, digest);
  }

  async tag(repo: RepoName, tag: string): Promise<TagRecord | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.tag(repo, tag);
  }

  async deleteTag(repo: RepoName, tag: string): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.deleteTag(repo, tag);
  }

  async listTags(repo: RepoName, after: string, limit: number): Promise<string[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.listTags(repo, after, limit);
  }

  async referrers(repo: RepoName, subject: Digest): Promise<ManifestMeta[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.referrers(repo, subject);
  }

  async upstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<{ digest: Digest; checkedAt: number } | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.upstreamTag(repo, tag, acceptKey);
  }

  async putCachedManifest(repo: RepoName, m: NewManifest, tag: { name: string; acceptKey: string } | null): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.putCachedManifest(repo, m, tag);
  }

  async upstreamTagVariants(tag: string, keyPrefix: string): Promise<UpstreamTagVariant[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.upstreamTagVariants(tag, keyPrefix);
  }

  async adoptCachedManifest(from: RepoKey, repo: RepoName, digest: Digest): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.adoptCachedManifest(repoRow(from), repo, digest);
  }

  async touchUpstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.touchUpstreamTag(repo, tag, acceptKey);
  }

  async deleteUpstreamTag(repo: RepoName, tag: string): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.deleteUpstreamTag(repo, tag);
  }

  async upstreamTagNames(repo: RepoName): Promise<string[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.upstreamTagNames(repo);
  }

  async upstreamList(key: string): Promise<{ body: string; fetchedAt: number } | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.upstreamList(key);
  }

  async putUpstreamList(key: string, body: string, fetchedAt: number): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.putUpstreamList(key, body, fetchedAt);
  }

  async deleteUpstreamListsBefore(before: number): Promise<number> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.deleteUpstreamListsBefore(before);
  }

  async touchAccess(
    blobs: ReadonlyMap<Digest, number>,
    manifests: ReadonlyArray<{ repo: RepoName; digest: Digest; at: number }>,
  ): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.touchAccess(blobs, manifests);
  }

  // Whole-store scans: on the store itself, in the scan worker (committed state, which is
  // what the store sees outside a transaction); on a transaction handle, inline, so they
  // see the transaction's own changes.
  // Cached bytes is a maintained counter (db.ts v7): one row read, no scan.
  async cachedBytes(): Promise<number> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.cachedBytes();
  }

  async cachedImages(): Promise<EvictionCandidate[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.scans ? this.scans.run('cachedImages', [], () => this.db.cachedImages()) : this.db.cachedImages();
  }

  async looseBlobs(before: number): Promise<EvictionCandidate[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.scans ? this.scans.run('looseBlobs', [before], () => this.db.looseBlobs(before)) : this.db.looseBlobs(before);
  }

  /** Both candidate scans, merged and ordered in the scan worker, answered compactly (candidates.ts). */
  async evictionCandidates(looseBefore: number): Promise<CandidateList> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    const inline = () => packCandidates(this.db.cachedImages(), this.db.looseBlobs(looseBefore));
    const packed = this.scans ? await this.scans.run('evictionCandidates', [looseBefore], inline) : inline();
    return unpackCandidates(packed);
  }

  async evictImage(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.evictImage(repoRow(repo), digest, notAfter, busy);
  }

  async evictLooseBlob(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.evictLooseBlob(repoRow(repo), digest, notAfter, busy);
  }

  async unlinkDanglingBlobs(pushedGraceMs: number): Promise<number> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.unlinkDanglingBlobs(pushedGraceMs);
  }

  async unreferencedBlobs(): Promise<Digest[]> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.unreferencedBlobs();
  }

  /**
   * The rows by digest, read in pages (memory stays bounded with millions of rows; the
   * connection is free between pages). A row added or removed meanwhile may or may not be
   * yielded, as with any walk of a store that changes.
   */
  async *allBlobs(): AsyncIterable<{ digest: Digest; size: number }> {
    for (let after = ''; ; ) {
      for (let w = this.enter(); w; w = this.enter()) await w;
      const page = this.db.blobsAfter(after, 1000);
      yield* page;
      if (page.length < 1000) return;
      after = page[page.length - 1]!.digest;
    }
  }

  async blobPushed(digest: Digest): Promise<boolean> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.blobPushed(digest);
  }

  async deleteBlobRow(digest: Digest): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.deleteBlobRow(digest);
  }

  async deleteUnreferencedManifestContent(): Promise<number> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.deleteUnreferencedManifestContent();
  }
}

export class LocalMetadataStore extends LocalOps implements MetadataStore, UploadRows {
  /** WAL checkpoints in the scan worker (a file database only; checkpoint.ts). */
  readonly checkpoints: Checkpointer | null;

  /** `scanWorker`: the scan worker's module (tests inject a slow one; scan.ts). */
  constructor(db: MetadataDb, scanWorker?: URL, checkpoint?: CheckpointOptions) {
    const scans = new ScanReader(db.db.memory ? null : db.db.name, scanWorker);
    super(db, null, scans);
    this.checkpoints = db.db.memory ? null : new Checkpointer(db.db, scans, checkpoint);
  }

  async transaction<T>(fn: (tx: MetadataOps) => Promise<T>, opts: { dryRun?: boolean } = {}): Promise<T> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    // From here to BEGIN in one tick: the connection is idle and now ours.
    const sqlite = this.db.db;
    sqlite.exec('BEGIN IMMEDIATE');
    const state: TxState = { live: true };
    const token = {};
    let release!: () => void;
    this.db.txEnd = new Promise<void>((resolve) => (release = resolve));
    this.db.txToken = token;
    try {
      const result = await this.db.txContext.run(token, () => fn(new LocalOps(this.db, state)));
      sqlite.exec(opts.dryRun ? 'ROLLBACK' : 'COMMIT');
      return result;
    } finally {
      // A failed fn or COMMIT (SQLITE_FULL) leaves the transaction open: undo it whole.
      if (sqlite.inTransaction) sqlite.exec('ROLLBACK');
      state.live = false;
      this.db.txEnd = null;
      this.db.txToken = null;
      // On Node 20 an enabled AsyncLocalStorage keeps promise hooks on for the whole
      // process (a cost on every request): on only while a transaction runs.
      this.db.txContext.disable();
      release();
    }
  }

  async checkCounters(repair: boolean): Promise<CounterCheck> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.checkCounters(repair);
  }

  async ping(): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.ping();
  }

  // -- upload-session rows (UploadRows: the S3 upload store over this metadata)

  async createUpload(id: string, repo: RepoName): Promise<{ createdAt: number }> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.createUpload(id, repo);
    return { createdAt: this.db.upload(id)!.createdAt };
  }

  async upload(id: string): Promise<{ repo: RepoName; createdAt: number } | undefined> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    const row = this.db.upload(id);
    return row && { repo: row.repo as RepoName, createdAt: row.createdAt };
  }

  async deleteUpload(id: string): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.db.deleteUpload(id);
  }

  async uploads(): Promise<Array<{ id: string; createdAt: number }>> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    return this.db.uploads();
  }

  async close(): Promise<void> {
    for (let w = this.enter(); w; w = this.enter()) await w;
    this.checkpoints?.stop();
    await this.scans?.close();
    this.db.close();
  }
}
