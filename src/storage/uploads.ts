/**
 * Upload sessions (distribution-spec "Pushing blobs"). A session is a row in `uploads`
 * plus a data file under `uploads/<id>` that PATCH appends to. The file's size is the
 * truth for the session offset, so a session survives a restart; the running hash lives
 * in memory and is rebuilt from the file when missing or when another algorithm is asked.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { BlobStore, HashingCounter, batchedFileSink, fsyncFile, hashFile } from './blobs.js';
import type { MetadataStore } from './db.js';
import type { StoragePaths } from './paths.js';
import { UPLOAD_ID_RE } from './paths.js';
import { ensureFree, isStorageFull } from './space.js';
import { RegistryError, insufficientStorage } from '../registry/errors.js';
import { type Digest, type DigestAlgorithm, type RepoName, digestAlgorithm } from '../registry/names.js';

interface LiveState {
  hasher: HashingCounter | null; // null: hash state lost (restart, failed write): rehash at finish
  busy: boolean;
  /** Offset after the last completed append; fresher than a stat taken before it finished. */
  size: number | null;
}

export interface UploadSession {
  id: string;
  repo: RepoName;
  size: number;
}

export class UploadManager {
  private readonly live = new Map<string, LiveState>();

  constructor(
    private readonly paths: StoragePaths,
    private readonly meta: MetadataStore,
    private readonly blobs: BlobStore,
    private readonly maxBlobBytes: number,
  ) {}

  /** Reconcile sessions with files after a restart and drop expired ones. */
  async sweep(maxAgeMs: number): Promise<number> {
    const now = Date.now();
    const rows = this.meta.uploads();
    const known = new Set(rows.map((r) => r.id));
    let removed = 0;
    for (const r of rows) {
      const expired = now - r.createdAt > maxAgeMs && !this.live.get(r.id)?.busy;
      const missing = !(await exists(this.paths.upload(r.id)));
      if (expired || missing) {
        await this.cancelById(r.id);
        removed++;
      }
    }
    for (const f of await fs.readdir(this.paths.uploadsDir)) {
      if (!UPLOAD_ID_RE.test(f) || !known.has(f)) await fs.rm(`${this.paths.uploadsDir}/${f}`, { force: true, recursive: true });
    }
    return removed;
  }

  async start(repo: RepoName, algorithm: DigestAlgorithm = 'sha256'): Promise<UploadSession> {
    const id = randomUUID();
    await fs.writeFile(this.paths.upload(id), '');
    try {
      this.meta.createUpload(id, repo);
    } catch (e) {
      await fs.rm(this.paths.upload(id), { force: true }); // no session without its row (SQLITE_FULL)
      throw e;
    }
    this.live.set(id, { hasher: new HashingCounter(algorithm), busy: false, size: 0 });
    return { id, repo, size: 0 };
  }

  async get(repo: RepoName, id: string): Promise<UploadSession> {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    const row = this.meta.upload(id);
    if (!row || row.repo !== repo) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    try {
      const st = await fs.stat(this.paths.upload(id));
      return { id, repo, size: st.size };
    } catch {
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    }
  }

  /**
   * Append a chunk. `range` (from Content-Range) must start at the current size; the
   * declared length, when given, must equal what arrives, or the chunk is rolled back.
   */
  async append(
    session: UploadSession,
    body: Readable,
    range: { start: number; end: number } | undefined,
    declaredLength: number | undefined,
  ): Promise<number> {
    const state = this.stateOf(session.id);
    if (state.busy) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', 'another request is writing to this upload', { status: 416, headers: rangeHeader(session.size) });
    }
    if (!this.meta.upload(session.id)) {
      // Closed by a concurrent PUT or DELETE since get(): appending would re-create the
      // file as an orphan and answer 202 for bytes that can never be committed.
      body.resume();
      this.live.delete(session.id);
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    }
    // get() stat'ed the file before any append that finished since: trust the live offset.
    if (state.size !== null) session.size = state.size;
    if (range && range.start !== session.size) {
      body.resume();
      throw new RegistryError('RANGE_INVALID', `chunk must start at offset ${session.size}`, { status: 416, headers: rangeHeader(session.size) });
    }
    const expected = range ? range.end - range.start + 1 : declaredLength;
    if (range && declaredLength !== undefined && declaredLength !== expected) {
      body.resume();
      throw new RegistryError('SIZE_INVALID', 'Content-Length does not match Content-Range');
    }
    state.busy = true;
    try {
      // Known length: refuse before reading a byte what cannot fit (see space.ts).
      if (expected !== undefined) await ensureFree(this.paths.uploadsDir, expected, rangeHeader(session.size));
    } catch (e) {
      state.busy = false;
      body.resume();
      throw e;
    }
    // Hash into a copy and adopt it only if the whole chunk lands, so a rollback keeps
    // the session's running hash valid.
    const hasher = state.hasher ? state.hasher.clone() : null;
    let written = 0;
    const maxBytes = this.maxBlobBytes;
    const base = session.size;
    const counter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        written += chunk.length;
        if (base + written > maxBytes) return cb(new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${maxBytes} bytes`, { status: 413 }));
        hasher?.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(body, counter, batchedFileSink({ path: this.paths.upload(session.id), flags: 'a' }));
      if (expected !== undefined && written !== expected) {
        throw new RegistryError('SIZE_INVALID', `expected ${expected} bytes, received ${written}`);
      }
      state.hasher = hasher;
      state.size = base + written;
      return base + written;
    } catch (e) {
      // Roll the file back to the last good offset so the session stays usable (also on
      // ENOSPC: the chunk is not counted, and the client may resend it from `base`).
      await fs.truncate(this.paths.upload(session.id), base).catch(() => undefined);
      if (isStorageFull(e)) throw insufficientStorage(rangeHeader(base));
      throw e instanceof RegistryError ? e : new RegistryError('BLOB_UPLOAD_INVALID', 'upload interrupted', { detail: { offset: base } });
    } finally {
      state.busy = false;
    }
  }

  /** Verify the whole upload against `digest` and commit it as a blob of the session's repo. */
  async finish(session: UploadSession, digest: Digest): Promise<number> {
    // One writer at a time, checked and claimed without an await in between: two PUTs
    // closing the same session would otherwise both hash the file and the second rename
    // would fail with ENOENT (a 500) after the first moved it into the content store.
    if (!this.meta.upload(session.id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    const state = this.stateOf(session.id);
    if (state.busy) {
      throw new RegistryError('BLOB_UPLOAD_INVALID', 'another request is writing to this upload', { status: 416, headers: rangeHeader(session.size) });
    }
    state.busy = true;
    try {
      const file = this.paths.upload(session.id);
      const alg = digestAlgorithm(digest);
      let actual: Digest;
      let size: number;
      const h = state.hasher;
      if (h && h.algorithm === alg && h.bytes === session.size) {
        actual = h.currentDigest();
        size = h.bytes;
      } else {
        ({ digest: actual, size } = await hashFile(file, alg));
      }
      if (actual !== digest) {
        await this.cancelById(session.id);
        throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { detail: { expected: digest } });
      }
      await fsyncFile(file);
      try {
        await this.blobs.commit(file, digest, size, session.repo, 'pushed');
      } catch (e) {
        // The data file is back in place (see BlobStore.commit): the session is intact and
        // the same PUT succeeds once there is space again.
        throw isStorageFull(e) ? insufficientStorage(rangeHeader(session.size)) : e;
      }
      this.live.delete(session.id);
      try {
        this.meta.deleteUpload(session.id);
      } catch (e) {
        // The blob is committed; a row left behind (SQLITE_FULL) has no data file any more,
        // so the session answers BLOB_UPLOAD_UNKNOWN and the next sweep drops the row.
        if (!isStorageFull(e)) throw e;
      }
      return size;
    } finally {
      state.busy = false;
    }
  }

  async cancel(session: UploadSession): Promise<void> {
    await this.cancelById(session.id);
  }

  private async cancelById(id: string): Promise<void> {
    this.meta.deleteUpload(id);
    this.live.delete(id);
    await fs.rm(this.paths.upload(id), { force: true });
  }

  private stateOf(id: string): LiveState {
    let s = this.live.get(id);
    if (!s) {
      s = { hasher: null, busy: false, size: null };
      this.live.set(id, s);
    }
    return s;
  }
}


/** The `Range` header of upload responses: `0-<last byte>` (distribution sends 0-0 when empty). */
export function rangeHeader(size: number): Record<string, string> {
  return { Range: `0-${Math.max(0, size - 1)}` };
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
