/**
 * Local driver of the upload-session port (ports.ts `UploadStore`; distribution-spec
 * "Pushing blobs"). A session is a row in `uploads` plus a data file under `uploads/<id>`
 * that appends extend. The row and the file are the whole session: the file's size is the
 * offset, so a session survives a restart and another store over the same storage (a new
 * process) carries it on. The running hash kept in memory is only a shortcut: it is used
 * while it covers exactly the stored bytes (sessions only grow, so equal length means the
 * same bytes), and `finish` re-hashes the file otherwise.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import type { LocalBlobStore } from './blobs.js';
import type { MetadataStore } from './db.js';
import { HashingCounter, batchedFileSink, fsyncFile, hashFile } from './hashing.js';
import type { StoragePaths } from './paths.js';
import { UPLOAD_ID_RE } from './paths.js';
import type { AppendOptions, UploadState, UploadStore } from './ports.js';
import { ensureFree, isStorageFull } from './space.js';
import { RegistryError, insufficientStorage } from '../registry/errors.js';
import { type Digest, type DigestAlgorithm, type RepoName, digestAlgorithm } from '../registry/names.js';
import { uploadRangeHeader as rangeHeader } from '../registry/range.js';

/** What this process knows beyond the stored state; losing it costs a re-hash, nothing else. */
interface LiveState {
  /** Covers the first `hasher.bytes` bytes of the data file; null: re-hash at finish. */
  hasher: HashingCounter | null;
  /** An append or finish is running (one writer at a time, in this process). */
  busy: boolean;
}

export class LocalUploadStore implements UploadStore {
  private readonly live = new Map<string, LiveState>();

  constructor(
    private readonly paths: StoragePaths,
    private readonly meta: MetadataStore,
    private readonly blobs: LocalBlobStore,
  ) {}

  /** Reconcile sessions with files (after a restart) and drop expired ones. */
  async sweep(maxAgeMs: number): Promise<number> {
    await fs.mkdir(this.paths.uploadsDir, { recursive: true });
    const now = Date.now();
    const rows = this.meta.uploads();
    const known = new Set(rows.map((r) => r.id));
    let removed = 0;
    for (const r of rows) {
      const expired = now - r.createdAt > maxAgeMs && !this.live.get(r.id)?.busy;
      const missing = !(await exists(this.paths.upload(r.id)));
      if (expired || missing) {
        await this.remove(r.id);
        removed++;
      }
    }
    for (const f of await fs.readdir(this.paths.uploadsDir)) {
      if (!UPLOAD_ID_RE.test(f) || !known.has(f)) await fs.rm(`${this.paths.uploadsDir}/${f}`, { force: true, recursive: true });
    }
    return removed;
  }

  async start(repo: RepoName, algorithm: DigestAlgorithm = 'sha256'): Promise<UploadState> {
    const id = randomUUID();
    const createdAt = Date.now();
    await fs.writeFile(this.paths.upload(id), '');
    try {
      this.meta.createUpload(id, repo);
    } catch (e) {
      await fs.rm(this.paths.upload(id), { force: true }); // no session without its row (SQLITE_FULL)
      throw e;
    }
    this.live.set(id, { hasher: new HashingCounter(algorithm), busy: false });
    return { id, repo, offset: 0, createdAt };
  }

  async status(id: string): Promise<UploadState | null> {
    if (!UPLOAD_ID_RE.test(id)) return null;
    const row = this.meta.upload(id);
    if (!row) return null;
    const offset = await this.storedSize(id);
    return offset === null ? null : { id, repo: row.repo as RepoName, offset, createdAt: row.createdAt };
  }

  async append(id: string, body: Readable, opts: AppendOptions): Promise<number> {
    // Checked and claimed without an await in between (one writer at a time).
    let state: LiveState;
    try {
      state = this.claim(id);
    } catch (e) {
      body.resume();
      throw await this.withRange(id, e);
    }
    try {
      const base = await this.storedSize(id);
      if (base === null) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
      if (opts.offset !== undefined && opts.offset !== base) {
        throw new RegistryError('RANGE_INVALID', `chunk must start at offset ${base}`, { status: 416, headers: rangeHeader(base) });
      }
      // Known length: refuse before reading a byte what cannot fit (see space.ts).
      if (opts.length !== undefined) await ensureFree(this.paths.uploadsDir, opts.length, rangeHeader(base));
      return await this.write(id, state, base, body, opts);
    } catch (e) {
      body.resume(); // drained, so the connection stays usable for the error response
      throw e;
    } finally {
      state.busy = false;
    }
  }

  /** Append `body` at `base`; on any failure the file goes back to `base` (all or nothing). */
  private async write(id: string, state: LiveState, base: number, body: Readable, opts: AppendOptions): Promise<number> {
    // Hash into a copy, adopted only if the whole chunk lands, so a rollback keeps the
    // running hash valid; one that does not cover the stored bytes is dropped.
    const hasher = state.hasher && state.hasher.bytes === base ? state.hasher.clone() : null;
    let written = 0;
    const { maxBytes } = opts;
    const counter = new Transform({
      transform(chunk: Buffer, _e, cb) {
        written += chunk.length;
        if (base + written > maxBytes) return cb(new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${maxBytes} bytes`, { status: 413 }));
        hasher?.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(body, counter, batchedFileSink({ path: this.paths.upload(id), flags: 'a' }));
      if (opts.length !== undefined && written !== opts.length) {
        throw new RegistryError('SIZE_INVALID', `expected ${opts.length} bytes, received ${written}`);
      }
      state.hasher = hasher;
      return base + written;
    } catch (e) {
      // Roll the file back to the last good offset so the session stays usable (also on
      // ENOSPC: the chunk is not counted, and the client may resend it from `base`).
      await fs.truncate(this.paths.upload(id), base).catch(() => undefined);
      if (isStorageFull(e)) throw insufficientStorage(rangeHeader(base));
      throw e instanceof RegistryError ? e : new RegistryError('BLOB_UPLOAD_INVALID', 'upload interrupted', { detail: { offset: base } });
    }
  }

  async finish(id: string, digest: Digest): Promise<{ size: number }> {
    // Claimed without an await: two PUTs closing the same session would otherwise both
    // hash the file and the second rename would fail with ENOENT after the first moved it.
    const state = this.claim(id);
    try {
      const size = await this.storedSize(id);
      if (size === null) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
      const file = this.paths.upload(id);
      const alg = digestAlgorithm(digest);
      const h = state.hasher;
      const actual = h && h.algorithm === alg && h.bytes === size ? h.currentDigest() : (await hashFile(file, alg)).digest;
      if (actual !== digest) {
        await this.remove(id);
        throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { detail: { expected: digest } });
      }
      const repo = this.meta.upload(id)?.repo as RepoName | undefined;
      if (repo === undefined) throw new RegistryError('BLOB_UPLOAD_UNKNOWN'); // cancelled meanwhile
      await fsyncFile(file);
      try {
        await this.blobs.commit(file, digest, size, repo, 'pushed');
      } catch (e) {
        // The data file is back in place (see LocalBlobStore.commit): the session is
        // intact and the same PUT succeeds once there is space again.
        throw isStorageFull(e) ? insufficientStorage(rangeHeader(size)) : e;
      }
      this.live.delete(id);
      try {
        this.meta.deleteUpload(id);
      } catch (e) {
        // The blob is committed; a row left behind (SQLITE_FULL) has no data file any more,
        // so the session is unknown and the next sweep drops the row.
        if (!isStorageFull(e)) throw e;
      }
      return { size };
    } catch (e) {
      throw await this.withRange(id, e);
    } finally {
      state.busy = false;
    }
  }

  async cancel(id: string): Promise<void> {
    if (!UPLOAD_ID_RE.test(id) || !this.meta.upload(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    await this.remove(id);
  }

  /** The session's live state, marked busy; throws unless it exists and nobody writes to it. */
  private claim(id: string): LiveState {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    let s = this.live.get(id);
    if (s?.busy) throw new RegistryError('BLOB_UPLOAD_INVALID', 'another request is writing to this upload', { status: 416 });
    // Closed by a concurrent PUT or DELETE: appending would re-create the file as an
    // orphan and answer 202 for bytes that can never be committed.
    if (!this.meta.upload(id)) {
      this.live.delete(id);
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    }
    if (!s) {
      s = { hasher: null, busy: false };
      this.live.set(id, s);
    }
    s.busy = true;
    return s;
  }

  /** A 416 refusal without its Range header gets the session's stored offset. */
  private async withRange(id: string, e: unknown): Promise<unknown> {
    if (!(e instanceof RegistryError) || e.status !== 416 || e.headers.Range !== undefined) return e;
    const size = (await this.storedSize(id).catch(() => null)) ?? 0;
    return new RegistryError(e.code, e.message, { status: 416, detail: e.detail, headers: { ...e.headers, ...rangeHeader(size) } });
  }

  private async storedSize(id: string): Promise<number | null> {
    try {
      return (await fs.stat(this.paths.upload(id))).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  private async remove(id: string): Promise<void> {
    this.meta.deleteUpload(id);
    this.live.delete(id);
    await fs.rm(this.paths.upload(id), { force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
