/**
 * The seam between the registry and where bytes and metadata live (issue #12). Everything
 * above `storage/` should reach storage through these ports; a driver (today only
 * `local`: files + SQLite) implements them. Named for what the registry needs, not for
 * files: no path, file handle or SQL crosses this line.
 *
 * Status: `BlobStore` and `UploadStore` are implemented by the local driver
 * (src/storage/blobs.ts, src/storage/uploads.ts) and checked by
 * test/storage/blobstore-conformance.ts. `MetadataStore` below is a DESIGN
 * DRAFT for the next slice: nothing implements or uses it yet (src/storage/db.ts is still
 * called directly and synchronously).
 */
import type { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm, RepoName } from '../registry/names.js';

export type Provenance = 'pushed' | 'cached';

/** A stored manifest: its exact bytes and the fields the registry answers from. */
export interface ManifestRecord {
  digest: Digest;
  mediaType: string;
  size: number;
  artifactType: string | null;
  subject: Digest | null;
  annotations: string | null;
  body: Buffer;
}

// ---- blob store ---------------------------------------------------------------------

/** Positional reads into the caller's buffer; how `sendfile` serves without a copy per chunk. */
export interface PositionalReader {
  /** Read up to `length` bytes at `position` into `buf` (from 0); 0 means end of content. */
  read(buf: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/**
 * An opened, committed blob. Opening pins the content: a delete after `open` does not
 * change what this body reads (see `BlobStore.delete`). Close it when done (a response's
 * 'close').
 */
export interface BlobBody {
  /** Bytes [start, end] (inclusive, both within [0, size)) as a stream; may be called repeatedly. */
  stream(start: number, end: number): Readable;
  /**
   * The fast path, when the driver has one (local: positional reads on the open file):
   * serving code asks for it and falls back to `stream` when null. Shares the body's
   * lifetime (closing the body closes it).
   */
  positional(): PositionalReader | null;
  close(): Promise<void>;
}

/** What a commit records with the content: the repository link and where it came from. */
export interface BlobLink {
  repo: RepoName;
  provenance: Provenance;
}

export interface StageOptions {
  algorithm: DigestAlgorithm;
  /** Writes past this many bytes fail with SIZE_INVALID (413). */
  maxBytes?: number;
  /** Known size: refused up front with 507 when it cannot fit (see space.ts). */
  expectedBytes?: number;
}

/**
 * A blob being written. Content becomes visible (stat/open/list) only through `commit`,
 * all at once; until then readers of the store never see it. Exactly one of commit or
 * abort ends it; a stage abandoned by a crash is invisible and removed by `recover`.
 */
export interface BlobWriter {
  /** Bytes accepted (hashed) so far. */
  readonly received: number;
  /** Bytes written to the stage so far (<= received). */
  readonly written: number;
  /** A write to the stage failed: every later append, flush and commit throws it (not worth a retry). */
  readonly failed: boolean;
  /** Queue chunks at the end (hashed now, written in batches); resolves once there is room for more. */
  append(chunk: Buffer): Promise<void>;
  /** Append a whole stream (size limit from StageOptions), and wait until it is written. */
  appendStream(body: Readable): Promise<void>;
  /** Wait until everything appended is written; rejects with the write error (e.g. ENOSPC). */
  flush(): Promise<void>;
  /** The digest of everything appended so far. */
  digest(): Digest;
  /**
   * Read back what was written, while the stage is open and after it committed (it then
   * reads the committed blob): readers of a fill in progress. A reader asked for between
   * the content moving into place and `commit` resolving waits for the outcome.
   */
  reader(): Promise<PositionalReader>;
  /**
   * Declare the content complete (no append after it) and start making it durable in the
   * background (local: fsync of the temp file, then its descriptor is closed), so that the
   * caller can do other work meanwhile (an import streams the next archive entry). `commit`
   * waits for that durability before the content becomes visible. Optional: `commit` seals
   * by itself. Resolves with what was written once it is all written (rejects with the
   * write error); a sealed writer still serves `reader()` and must still be committed or
   * aborted.
   */
  seal(): Promise<{ digest: Digest; size: number }>;
  /** Called with the written byte count after each batch reached the stage (fill readers). */
  onWritten: ((bytes: number) => void) | null;
  /**
   * Make the content durable and visible as `expected`, recorded for `link`. Refused with
   * DIGEST_INVALID when the content does not hash to `expected` (nothing is left behind).
   * Idempotent across writers: a digest already stored is only linked, this stage dropped.
   * On any failure the stage is removed and nothing becomes visible.
   */
  commit(expected: Digest, link: BlobLink): Promise<void>;
  /** Drop the stage; nothing becomes visible. Safe to call after a failed commit. */
  abort(): Promise<void>;
}

/** One piece of content the store holds, for GC and fsck. */
export interface BlobEntry {
  /** Null for content held under a name that is no digest (always garbage). */
  digest: Digest | null;
  /** Remove this content whatever the metadata says (GC of orphans). */
  remove(): Promise<void>;
}

export interface BlobStore {
  /** Create what the store needs and remove stages abandoned by a crash. */
  recover(): Promise<void>;
  /** Size of a committed blob, or null when it is not visible. */
  stat(digest: Digest): Promise<{ size: number } | null>;
  /**
   * Open a committed blob for reading, or null when its content is gone (never stored,
   * deleted, or removed between a lookup and this call). The caller looked the blob up
   * first (metadata: visibility, size), so a driver need not repeat that lookup here: the
   * local driver opens the file without reading its row (a SQLite read lock per GET).
   * Ranges are chosen per read (`BlobBody.stream`), so one open serves a multi-range
   * response from the same content.
   */
  open(digest: Digest): Promise<BlobBody | null>;
  /** Start writing a blob (see BlobWriter). */
  stage(opts: StageOptions): BlobWriter;
  /** Throw 507 unless `bytes` more fit (a known-size write, before its first byte). */
  ensureRoom(bytes: number): Promise<void>;
  /**
   * Remove content whose metadata row is already gone (eviction, GC). A body opened
   * before the delete reads the complete, correct bytes to its end (local: the unlinked
   * file lives until closed); a driver that cannot promise that must fail such a read
   * with an error, never return other or short bytes as complete. `open` after the
   * delete returns null. A commit of the same digest started during the delete waits for
   * it, so the new content is never removed by it.
   */
  delete(digest: Digest): Promise<void>;
  /** Every piece of content held, committed or orphaned (no stages), in no particular order. */
  list(): AsyncIterable<BlobEntry>;
  /**
   * Hash the stored content of `digest` (fsck). Null when the content is missing;
   * otherwise what it actually is, which may differ from the recorded digest and size.
   */
  verify(digest: Digest): Promise<{ digest: Digest; size: number } | null>;
  /**
   * Optional (object stores): a URL from which a client can GET the committed blob itself
   * for `expiresIn` seconds, presigned (distribution's `redirect`); the caller looked the
   * blob up first. Absent: serve it through `open`.
   */
  redirectUrl?(digest: Digest, expiresIn: number): Promise<string>;
}

// ---- upload sessions ---------------------------------------------------------------------

/**
 * An open upload session as the store holds it. Everything here is persisted (local: the
 * `uploads` row and the size of `uploads/<id>`), so any process over the same storage sees
 * the same session: no field depends on the process that started it.
 */
export interface UploadState {
  /** Opaque, unguessable and URL-safe (`[A-Za-z0-9._-]`, at most 128 characters). */
  id: string;
  repo: RepoName;
  /** Bytes accepted so far: the offset the next chunk must start at. */
  offset: number;
  /** Milliseconds since the epoch; what `sweep` expires by. */
  createdAt: number;
}

export interface AppendOptions {
  /**
   * Where the chunk must start (the client's Content-Range start): refused with
   * RANGE_INVALID (416, `Range: 0-<offset-1>` of the session) unless it equals the
   * session's offset, before a byte is read. Absent: append at the current end (a streamed
   * PATCH without Content-Range).
   */
  offset?: number;
  /** Exact byte count the chunk must have (Content-Length / Content-Range), else SIZE_INVALID. */
  length?: number;
  /** The session may not grow past this many bytes: SIZE_INVALID (413). */
  maxBytes: number;
}

/**
 * Upload sessions (distribution-spec chunked and streamed pushes), implemented by each
 * driver next to its BlobStore (`finish` commits into it). What every driver promises:
 *
 * * Resumable anywhere: a session started by one process can be appended to, inspected,
 *   finished or cancelled by another process over the same storage (another replica, or
 *   this one after a restart). All session state is in the store; a driver may keep
 *   caches in memory (local: the running hash) only as optimisations it can check against
 *   the stored state (a running hash is not serialisable in Node: a driver without one
 *   that matches the stored offset re-hashes the stored bytes at `finish`, or keeps a
 *   persisted hash checkpoint).
 * * A chunk is all or nothing: an append that fails for any reason (wrong length, size
 *   limit, the client going away, a full disk) leaves the session at its previous offset,
 *   usable; the client may send the chunk again from there. A full disk is 507 with the
 *   session's `Range`.
 * * One writer at a time: an append or finish while another append or finish of the same
 *   session is running is refused with BLOB_UPLOAD_INVALID (416) and changes nothing.
 *   A driver serving several processes enforces that across them (e.g. a lease row with
 *   an expiry); the local driver serves one process and enforces it in memory.
 * * `finish` verifies every stored byte against the digest before anything becomes
 *   visible. A mismatch is DIGEST_INVALID and removes the session and its bytes (nothing
 *   is left, nothing visible). On success the blob is committed (BlobStore commit rules:
 *   durable first, deduplicated, linked to the session's repository as `pushed`) and the
 *   session is gone. A failure to store (full disk) keeps the session finishable.
 * * Ended sessions (finished, cancelled, expired, or never started) are unknown: `status`
 *   returns null, and append/finish/cancel throw BLOB_UPLOAD_UNKNOWN. So does an id that
 *   is not one the driver could have issued (never an error from the storage layer).
 */
export interface UploadStore {
  /** Open a session for `repo`; `algorithm` is a hint for the running hash (sha256 by default). */
  start(repo: RepoName, algorithm?: DigestAlgorithm): Promise<UploadState>;
  /** The session as stored now, or null when it is unknown. */
  status(id: string): Promise<UploadState | null>;
  /** Append `body` (see AppendOptions and the promises above); resolves with the new offset. */
  append(id: string, body: Readable, opts: AppendOptions): Promise<number>;
  /** Verify and commit the session's bytes as `digest` (see above); resolves with the blob size. */
  finish(id: string, digest: Digest): Promise<{ size: number }>;
  /** End the session and drop its bytes. */
  cancel(id: string): Promise<void>;
  /**
   * Remove sessions created more than `maxAgeMs` ago that nobody is writing to, and
   * whatever the driver holds for sessions that no longer exist (local: data files without
   * a row, rows without a data file). Resolves with the number of sessions removed.
   */
  sweep(maxAgeMs: number): Promise<number>;
}

// ---- metadata store: DESIGN DRAFT (next slice; not implemented, not used) ------------
//
// The async, named operations that src/storage/db.ts offers synchronously today, grouped
// as the registry uses them. The local driver will wrap db.ts (one SQLite transaction per
// call, as now); a shared-storage driver implements the same calls. `transaction` runs
// several calls as one logical change. Types reuse db.ts's shapes where they exist.

export type ManifestMetaDraft = Omit<ManifestRecord, 'subject' | 'body'>;
export interface NewManifestDraft extends ManifestRecord {
  refs: Array<{ digest: Digest; kind: 'blob' | 'manifest' }>;
}
export interface TagRecordDraft {
  digest: Digest;
  provenance: Provenance;
  checkedAt: number;
}
/** Opaque to callers: a driver's key for a repository (local: the row id). */
export type RepoKey = number | string;
export interface EvictedDraft {
  manifests: number;
  /** Blob rows deleted: the caller removes their content afterwards (BlobStore.delete). */
  blobs: Array<{ digest: Digest; size: number }>;
}

/** DESIGN DRAFT, see above. */
export interface MetadataStoreDraft {
  // repositories
  repoExists(repo: RepoName): Promise<boolean>;
  listRepositories(after: string, limit: number): Promise<string[]>;
  // blobs and links (the row is the truth of visibility: BlobStore content without one is an orphan)
  blobSize(digest: Digest): Promise<number | undefined>;
  repoBlobSize(repo: RepoName, digest: Digest): Promise<number | undefined>;
  recordBlob(repo: RepoName, digest: Digest, size: number, provenance: Provenance): Promise<void>;
  linkBlob(repo: RepoName, digest: Digest, provenance: Provenance): Promise<void>;
  unlinkBlob(repo: RepoName, digest: Digest): Promise<boolean>;
  referencedInRepo(repo: RepoName, digest: Digest): Promise<boolean>;
  // manifests and tags
  manifest(repo: RepoName, digest: Digest): Promise<ManifestRecord | undefined>;
  hasManifest(repo: RepoName, digest: Digest): Promise<boolean>;
  putManifest(repo: RepoName, m: NewManifestDraft, tags: readonly string[], provenance: Provenance): Promise<void>;
  deleteManifest(repo: RepoName, digest: Digest): Promise<boolean>;
  tag(repo: RepoName, tag: string): Promise<TagRecordDraft | undefined>;
  deleteTag(repo: RepoName, tag: string): Promise<boolean>;
  listTags(repo: RepoName, after: string, limit: number): Promise<string[]>;
  referrers(repo: RepoName, subject: Digest): Promise<ManifestMetaDraft[]>;
  // pull-through cache of upstream tags
  upstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<{ digest: Digest; checkedAt: number } | undefined>;
  putCachedManifest(repo: RepoName, m: NewManifestDraft, tag: { name: string; acceptKey: string } | null): Promise<void>;
  upstreamTagVariants(tag: string, keyPrefix: string): Promise<Array<{ repo: RepoKey; digest: Digest; checkedAt: number; mediaType: string }>>;
  adoptCachedManifest(from: RepoKey, repo: RepoName, digest: Digest): Promise<void>;
  touchUpstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<void>;
  deleteUpstreamTag(repo: RepoName, tag: string): Promise<void>;
  upstreamTagNames(repo: RepoName): Promise<string[]>;
  // upload sessions
  createUpload(id: string, repo: RepoName): Promise<void>;
  upload(id: string): Promise<{ repo: string; createdAt: number } | undefined>;
  deleteUpload(id: string): Promise<void>;
  uploads(): Promise<Array<{ id: string; createdAt: number }>>;
  // access times (batched by the caller, one transaction per batch)
  touchAccess(blobs: ReadonlyMap<Digest, number>, manifests: ReadonlyArray<{ repo: RepoName; digest: Digest; at: number }>): Promise<void>;
  // eviction
  cachedBytes(): Promise<number>;
  cachedImages(): Promise<Array<{ repo: RepoKey; digest: Digest; lastAccess: number }>>;
  looseBlobs(before: number): Promise<Array<{ repo: RepoKey; digest: Digest; lastAccess: number }>>;
  evictImage(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<EvictedDraft | null>;
  evictLooseBlob(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<EvictedDraft | null>;
  // GC and fsck
  unlinkDanglingBlobs(pushedGraceMs: number): Promise<number>;
  unreferencedBlobs(): Promise<Digest[]>;
  allBlobs(): AsyncIterable<{ digest: Digest; size: number }>;
  blobPushed(digest: Digest): Promise<boolean>;
  deleteBlobRow(digest: Digest): Promise<void>;
  deleteUnreferencedManifestContent(): Promise<number>;
  /**
   * Run `fn` as one logical change: all of its calls commit together or none does
   * (SQLite: one transaction; `tx` is the same interface bound to it). A rollback-only
   * run (`dryRun`) serves eviction's dry run.
   */
  transaction<T>(fn: (tx: MetadataStoreDraft) => Promise<T>, opts?: { dryRun?: boolean }): Promise<T>;
  /** Status page and /metrics: one consistent snapshot instead of inline SQL in app.ts. */
  stats(): Promise<{ repositories: number; manifests: number; blobs: number; blobBytes: number; cachedBytes: number }>;
  close(): Promise<void>;
}
