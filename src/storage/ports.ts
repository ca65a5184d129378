/**
 * The seam between the registry and where bytes and metadata live (issue #12). Everything
 * above `storage/` reaches storage through these ports, opened by storage/open.ts for the
 * configured `storage.driver`. Named for what the registry needs, not for files: no path,
 * file handle or SQL crosses this line. One file on purpose (over ~400 lines): the whole
 * contract a driver signs, read in one place.
 *
 * Drivers: `local` (blobs.ts + local/ files, uploads.ts, local/metadata.ts over db.ts's
 * SQLite) and `shared` (s3/ object store for blobs and upload sessions, pg/ PostgreSQL for
 * metadata, upload rows and leases). Contracts: test/storage/blobstore-conformance.ts,
 * uploadstore-conformance.ts and metadata-conformance.ts, run against every driver.
 */
import type { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm, RepoName } from '../registry/names.js';
import type { Fence } from './coordination.js';

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
  /**
   * Resolves when the write in progress reached the stage (at once if none is), rejects with
   * the write error. Only for stages that write without waiting for more appends (local):
   * fills pause on it while all fills together hold too many bytes not yet written.
   */
  progress?(): Promise<void>;
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
  /** When the content was last written (ms since the epoch), where the store says (object stores): online fsck's grace. */
  modifiedAt?: number;
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
   * Optional: the bytes that fit now (a snapshot; Infinity when unknown). A fill reads it
   * while its upstream request is in flight, so the room check after the response headers
   * costs no file-system round trip on the first-byte path (FillManager.ensureSpace).
   */
  freeBytes?(): Promise<number>;
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
  /** Optional (remote stores): liveness for /healthz, rejecting (503) when the store cannot answer. Absent: local disk, always there. */
  ping?(): Promise<void>;
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

/**
 * The upload-session rows a driver keeps in its metadata store when the session bytes live
 * elsewhere (the S3 upload store: rows in the shared metadata store, chunks in the bucket).
 * Offered by both metadata drivers next to `MetadataStore`; each call is one change.
 */
export interface UploadRows {
  /** Record a new session for `repo` (creating the repository row); resolves with its creation time. */
  createUpload(id: string, repo: RepoName): Promise<{ createdAt: number }>;
  upload(id: string): Promise<{ repo: RepoName; createdAt: number } | undefined>;
  deleteUpload(id: string): Promise<void>;
  uploads(): Promise<Array<{ id: string; createdAt: number }>>;
}

// ---- metadata store ----------------------------------------------------------------
//
// Everything the registry knows about repositories, links, manifests, tags, the upstream
// tag cache, access times and what eviction and GC may remove. Every method is one
// logical change (local driver: one SQLite transaction, as db.ts always did), so callers
// rarely need `transaction`. The row is the truth of visibility: BlobStore content
// without a blob row is an orphan.

/** A manifest as listed (referrers): ManifestRecord without the bytes and the subject. */
export type ManifestMeta = Omit<ManifestRecord, 'subject' | 'body'>;

/** A manifest to store, with what it references (blobs and child manifests). */
export interface NewManifest extends ManifestRecord {
  refs: Array<{ digest: Digest; kind: 'blob' | 'manifest' }>;
}

/** A tag pushed to this registry (upstream-resolved tags live in the upstream tag cache). */
export interface TagRecord {
  digest: Digest;
  provenance: Provenance;
  checkedAt: number;
}

/** Opaque to callers: a driver's key for a repository (local: the row id). Only passed back. */
export type RepoKey = number | string;

/** An eviction candidate: a cached image (root manifest) or a loose cached blob link. */
export interface EvictionCandidate {
  repo: RepoKey;
  digest: Digest;
  /** Latest access in ms (an image: its manifest or any child manifest in the repository). */
  lastAccess: number;
}

/**
 * A pass's candidates in eviction order (oldest access first), read one at a time: a
 * driver may keep them compact and make each object only when the pass reaches it.
 */
export interface CandidateList {
  readonly length: number;
  at(i: number): EvictionCandidate & { kind: 'image' | 'blob' };
}

export interface Evicted {
  manifests: number;
  /** Blob rows deleted: the caller removes their content afterwards (BlobStore.delete). */
  blobs: Array<{ digest: Digest; size: number }>;
}

/** One upstream-resolved variant of a tag (see upstreamTagVariants). */
export interface UpstreamTagVariant {
  repo: RepoKey;
  digest: Digest;
  checkedAt: number;
  mediaType: string;
}

/** The named operations; inside `transaction` the same calls, bound to it. */
export interface MetadataOps {
  // -- repositories
  /** Whether the repository is known (anything was ever pushed, cached or uploaded there). */
  repoExists(repo: RepoName): Promise<boolean>;
  /** Catalog: names > `after` holding a manifest or a tag, sorted, at most `limit`. */
  listRepositories(after: string, limit: number): Promise<string[]>;

  // -- blobs and repository links
  /** Size of a stored blob (any repository), or undefined. */
  blobSize(digest: Digest): Promise<number | undefined>;
  /** Size of a blob linked to `repo`, or undefined: a blob is only visible where linked. */
  repoBlobSize(repo: RepoName, digest: Digest): Promise<number | undefined>;
  /** Record committed content (already durable in the BlobStore) and link it to `repo`. */
  recordBlob(repo: RepoName, digest: Digest, size: number, provenance: Provenance): Promise<void>;
  /**
   * Link a stored blob to `repo`; a pushed link wins over a cached one, never the reverse.
   * False, with nothing written, when the blob is not stored (e.g. evicted since the
   * caller looked it up: lookups and this call are separate round trips).
   */
  linkBlob(repo: RepoName, digest: Digest, provenance: Provenance): Promise<boolean>;
  /** Remove the link; false when there was none. */
  unlinkBlob(repo: RepoName, digest: Digest): Promise<boolean>;
  /** Whether a manifest held by `repo` references `digest` (an upstream-verified link). */
  referencedInRepo(repo: RepoName, digest: Digest): Promise<boolean>;

  // -- manifests and tags
  manifest(repo: RepoName, digest: Digest): Promise<ManifestRecord | undefined>;
  hasManifest(repo: RepoName, digest: Digest): Promise<boolean>;
  /** Store a manifest, its references and `tags` (pushed tags): one logical change. */
  putManifest(repo: RepoName, m: NewManifest, tags: readonly string[], provenance: Provenance): Promise<void>;
  /** Remove a manifest from `repo` with every tag pointing at it; false when not held. */
  deleteManifest(repo: RepoName, digest: Digest): Promise<boolean>;
  tag(repo: RepoName, tag: string): Promise<TagRecord | undefined>;
  deleteTag(repo: RepoName, tag: string): Promise<boolean>;
  /** Pushed tag names > `after`, sorted, at most `limit`. */
  listTags(repo: RepoName, after: string, limit: number): Promise<string[]>;
  /** Manifests held by `repo` whose subject is `subject`, sorted by digest. */
  referrers(repo: RepoName, subject: Digest): Promise<ManifestMeta[]>;

  // -- pull-through cache of upstream tags (per Accept class `acceptKey`)
  upstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<{ digest: Digest; checkedAt: number } | undefined>;
  /** Record a manifest fetched from upstream (cached) and, for a by-tag fetch, what the tag resolved to. */
  putCachedManifest(repo: RepoName, m: NewManifest, tag: { name: string; acceptKey: string } | null): Promise<void>;
  /**
   * Every Accept variant of `tag` whose acceptKey starts with `keyPrefix` (one upstream
   * repository), under any local repository that holds the manifest, newest first, at most 100.
   */
  upstreamTagVariants(tag: string, keyPrefix: string): Promise<UpstreamTagVariant[]>;
  /**
   * Link a cached manifest held by repository `from` (a variant's key) into `repo`, with
   * the child manifests `from` holds under it. A no-op when `from` is `repo` itself.
   */
  adoptCachedManifest(from: RepoKey, repo: RepoName, digest: Digest): Promise<void>;
  /** The upstream still answers this digest: set the check time to now. */
  touchUpstreamTag(repo: RepoName, tag: string, acceptKey: string): Promise<void>;
  /** The upstream deleted the tag: forget every Accept variant of it. */
  deleteUpstreamTag(repo: RepoName, tag: string): Promise<void>;
  upstreamTagNames(repo: RepoName): Promise<string[]>;
  /**
   * An upstream list cached for every replica (tag lists, referrers lists; `key` names the
   * list, `body` is its JSON as the caller wrote it), or undefined. The shared driver's
   * replicas read each other's here; one process keeps its lists in memory instead.
   */
  upstreamList(key: string): Promise<{ body: string; fetchedAt: number } | undefined>;
  /** Store the list `key`, unless the stored one was fetched later than `fetchedAt` (kept). */
  putUpstreamList(key: string, body: string, fetchedAt: number): Promise<void>;
  /** Remove the lists fetched before `before` (ms epoch; gc); how many. */
  deleteUpstreamListsBefore(before: number): Promise<number>;

  // -- access times (batched by the caller: one logical change per batch; times only move forward)
  touchAccess(blobs: ReadonlyMap<Digest, number>, manifests: ReadonlyArray<{ repo: RepoName; digest: Digest; at: number }>): Promise<void>;

  // -- eviction (content reachable from anything pushed is never a candidate nor evicted)
  /** Bytes of blobs that came from an upstream and nothing pushed needs (what cache.maxBytes bounds). */
  cachedBytes(): Promise<number>;
  /** Cached images: cached manifests no other manifest of their repository references. */
  cachedImages(): Promise<EvictionCandidate[]>;
  /** Cached blob links no manifest of their repository references, idle since before `before`. */
  looseBlobs(before: number): Promise<EvictionCandidate[]>;
  /**
   * Optional: cachedImages() and looseBlobs(before) in one list ordered by last access
   * (ties: images first). A driver whose scans run off the serving thread (local) answers
   * it compactly; without it the Evictor sorts the two lists itself.
   */
  evictionCandidates?(looseBefore: number): Promise<CandidateList>;
  /**
   * Evict one cached image as one logical change: its upstream tag rows, its manifest
   * links (with child manifests nothing else in the repository references), its blob
   * links, blob rows nobody links any more unless `busy` claims them (an in-flight fill;
   * called synchronously), manifest content no repository holds. Null when the image
   * changed since it was chosen (accessed after `notAfter`, pushed, now referenced).
   */
  evictImage(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null>;
  /** Evict a loose cached blob link (and the blob row, if nothing else needs it); null as above. */
  evictLooseBlob(repo: RepoKey, digest: Digest, notAfter: number, busy: (d: Digest) => boolean): Promise<Evicted | null>;

  // -- GC and fsck
  /** Drop links no manifest of their repository references: cached always, pushed once older than the grace. */
  unlinkDanglingBlobs(pushedGraceMs: number): Promise<number>;
  /** Blobs no repository links. */
  unreferencedBlobs(): Promise<Digest[]>;
  /** Every blob row, sorted by digest (fsck). */
  allBlobs(): AsyncIterable<{ digest: Digest; size: number }>;
  /** Whether some repository holds this blob as pushed content (nothing upstream can restore it). */
  blobPushed(digest: Digest): Promise<boolean>;
  /** Drop a blob row and its links; the caller deletes the content afterwards (row first). */
  deleteBlobRow(digest: Digest): Promise<void>;
  /** Drop manifest content no repository holds; returns how many. */
  deleteUnreferencedManifestContent(): Promise<number>;
}

/**
 * The metadata port. Drivers: local (src/storage/local/metadata.ts); a shared-storage
 * driver implements the same contract (test/storage/metadata-conformance.ts).
 */
/** What a counter check found: rows whose counted flag was wrong, counters that differed from the rows. */
export interface CounterCheck {
  wrongFlags: number;
  counters: Array<{ name: string; stored: number; actual: number }>;
}

export interface MetadataStore extends MetadataOps {
  /**
   * Run `fn` as one logical change: the calls it makes on `tx` commit together, or none
   * does when it throws (the error is rethrown). With `dryRun` the change is always rolled
   * back and `fn`'s result returned (eviction's dry run). Transactions run one at a time,
   * and no other call on this store observes one in progress: calls made meanwhile wait
   * until it ends (local driver; one SQLite connection, see there). So inside `fn` use only
   * `tx`: a call on the store itself would wait for `fn` forever and is refused with an
   * error instead. Keep `fn` short and free of network I/O; most changes need no
   * transaction, as each method above is one logical change already.
   */
  transaction<T>(fn: (tx: MetadataOps) => Promise<T>, opts?: { dryRun?: boolean }): Promise<T>;
  /**
   * fsck, drivers that maintain counters (local: cached bytes, blob count and bytes): check
   * them against the rows (whole-store scans) and, with `repair`, fix them in one
   * transaction. Absent where counts are computed from the rows each time.
   */
  checkCounters?(repair: boolean): Promise<CounterCheck>;
  /** Liveness (/healthz): rejects when the store cannot answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
  /**
   * Shared drivers: the same operations, each change (and each `transaction`) first checking
   * in its own transaction that `fence` still holds, else refused with FencedOut
   * (coordination.ts). Absent for one process (the local driver: no other leader can exist).
   */
  fenced?(fence: Fence): FencedMetadata;
}

/** MetadataStore.fenced's view: the operations and `transaction`, under a lease. */
export type FencedMetadata = MetadataOps & Pick<MetadataStore, 'transaction'>;
