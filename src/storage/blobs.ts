/**
 * Content-addressed blob files. Bytes are written to a temp file while being hashed,
 * fsynced, and renamed into `blobs/<alg>/<xx>/<hex>` only when the digest matches; the
 * metadata row is written after the rename (see paths.ts for the crash invariant).
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, type ReadStream, type WriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { MetadataStore, Provenance } from './db.js';
import type { StoragePaths } from './paths.js';
import { ensureFree } from './space.js';
import { RegistryError } from '../registry/errors.js';
import { type Digest, type DigestAlgorithm, type RepoName } from '../registry/names.js';

const READ_CHUNK_BYTES = 1024 * 1024;
const WRITE_BATCH_BYTES = 1024 * 1024;

export interface WrittenBlob {
  tempPath: string;
  size: number;
  digest: Digest;
}

/** A pass-through that hashes and counts what flows through it. */
export class HashingCounter extends Transform {
  readonly hash: Hash;
  bytes = 0;
  constructor(readonly algorithm: DigestAlgorithm, hash?: Hash) {
    super();
    this.hash = hash ?? createHash(algorithm);
  }
  clone(): HashingCounter {
    const c = new HashingCounter(this.algorithm, this.hash.copy());
    c.bytes = this.bytes;
    return c;
  }
  /** Account for bytes written elsewhere (used by upload sessions). */
  update(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }
  /** The digest so far, without ending the running hash. */
  currentDigest(): Digest {
    return `${this.algorithm}:${this.hash.copy().digest('hex')}` as Digest;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.update(chunk);
    cb(null, chunk);
  }
}

export async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Joins small chunks into ~1 MiB before a file write stream. Every file write is a round
 * trip to the libuv threadpool, and waking a pool thread costs about as much as copying
 * 64 KiB (over a quarter of the event loop's time on a 256 MiB push arriving in 64 KiB
 * chunks); one concat copy is far cheaper than the wake-ups it saves.
 */
export function coalesce(): Transform {
  let parts: Buffer[] = [];
  let n = 0;
  const take = () => {
    const out = Buffer.concat(parts, n);
    parts = [];
    n = 0;
    return out;
  };
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      parts.push(chunk);
      n += chunk.length;
      if (n >= WRITE_BATCH_BYTES) cb(null, take());
      else cb();
    },
    flush(cb) {
      if (n > 0) cb(null, take());
      else cb();
    },
  });
}

/** A file write stream for coalesced chunks: a few batches may queue (written with writev). */
export function batchedWriteStream(file: string, flags = 'w'): WriteStream {
  return createWriteStream(file, { flags, highWaterMark: 4 * WRITE_BATCH_BYTES });
}

export async function hashFile(file: string, algorithm: DigestAlgorithm): Promise<{ digest: Digest; size: number }> {
  const h = new HashingCounter(algorithm);
  await pipeline(createReadStream(file, { highWaterMark: READ_CHUNK_BYTES }), h, async function* (src) {
    for await (const _ of src) void _;
  });
  return { digest: `${algorithm}:${h.hash.digest('hex')}` as Digest, size: h.bytes };
}

export class BlobStore {
  /** File unlinks in progress, by digest (rows already gone). */
  private readonly deleting = new Map<Digest, Promise<void>>();
  /** Commits between their rename and their row, by digest. */
  private readonly committing = new Map<Digest, number>();

  constructor(
    private readonly paths: StoragePaths,
    private readonly meta: MetadataStore,
  ) {}

  /** Wipe temp files left by a crash; create the tree. */
  async init(): Promise<void> {
    await fs.rm(this.paths.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.paths.tmpDir, { recursive: true });
    await fs.mkdir(this.paths.blobsDir, { recursive: true });
    await fs.mkdir(this.paths.uploadsDir, { recursive: true });
  }

  path(digest: Digest): string {
    return this.paths.blob(digest);
  }

  open(digest: Digest, start?: number, end?: number): ReadStream {
    // 1 MiB reads: a quarter of the syscalls and stream callbacks of the 64 KiB default,
    // which dominates CPU when serving multi-GB layers.
    return createReadStream(this.paths.blob(digest), { highWaterMark: READ_CHUNK_BYTES, ...(start === undefined ? {} : { start, end }) });
  }

  /**
   * Stream `body` into a temp file, hashing with the algorithm of `expected` (or sha256),
   * and fsync it. The caller commits or discards the result.
   */
  async writeTemp(body: Readable, algorithm: DigestAlgorithm, maxBytes: number, expectedBytes?: number): Promise<WrittenBlob> {
    if (expectedBytes !== undefined) {
      await ensureFree(this.paths.tmpDir, expectedBytes).catch((e: unknown) => {
        body.resume(); // drained, so the connection stays usable for the error response
        throw e;
      });
    }
    const tempPath = this.paths.tempFile();
    const h = new HashingCounter(algorithm);
    const limit = new Transform({
      transform(chunk: Buffer, _e, cb) {
        if (h.bytes > maxBytes) cb(new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${maxBytes} bytes`, { status: 413 }));
        else cb(null, chunk);
      },
    });
    try {
      await pipeline(body, h, limit, coalesce(), batchedWriteStream(tempPath));
      await fsyncFile(tempPath);
    } catch (e) {
      await fs.rm(tempPath, { force: true });
      throw e;
    }
    return { tempPath, size: h.bytes, digest: `${algorithm}:${h.hash.digest('hex')}` as Digest };
  }

  /**
   * Move a verified, fsynced file into the content store and record it for `repo`.
   * Rename is atomic; the directory is fsynced so the rename survives a power cut
   * before the DB row that depends on it is written.
   *
   * If recording fails (SQLITE_FULL: the disk is full), the file goes back to
   * `sourcePath`, so the caller still owns it (an upload session stays finishable, a temp
   * file is discarded) and the store holds no file without a row.
   */
  async commit(sourcePath: string, digest: Digest, size: number, repo: RepoName, provenance: Provenance): Promise<void> {
    // An eviction that already dropped this digest's row may still be unlinking its file:
    // renaming ours into place first would let that unlink delete the new copy.
    for (let pending = this.deleting.get(digest); pending; pending = this.deleting.get(digest)) await pending.catch(() => undefined);
    if (this.meta.blobSize(digest) !== undefined) {
      // Already stored (dedupe): the existing file is verified content. Link it in the same
      // tick as the check, so an eviction cannot drop the row in between; then drop ours.
      this.meta.recordBlob(repo, digest, size, provenance);
      await fs.rm(sourcePath, { force: true });
      return;
    }
    const target = this.paths.blob(digest);
    this.committing.set(digest, (this.committing.get(digest) ?? 0) + 1);
    let moved = false;
    try {
      await fs.mkdir(path.dirname(target), { recursive: true });
      await fs.rename(sourcePath, target);
      moved = true;
      await fsyncDir(path.dirname(target));
      this.meta.recordBlob(repo, digest, size, provenance);
    } catch (e) {
      // Only while no other commit of this digest is between its rename and its row: that
      // one may have replaced our file with its own, which must stay.
      if (moved && this.committing.get(digest) === 1 && this.meta.blobSize(digest) === undefined) {
        await fs.rename(target, sourcePath).catch(() => undefined);
      }
      throw e;
    } finally {
      const n = this.committing.get(digest)! - 1;
      if (n === 0) this.committing.delete(digest);
      else this.committing.set(digest, n);
    }
  }

  async discard(tempPath: string): Promise<void> {
    await fs.rm(tempPath, { force: true });
  }

  /** Remove an unreferenced blob: row first, then file (a crash leaves only an orphan file). */
  async remove(digest: Digest): Promise<void> {
    this.meta.deleteBlobRow(digest);
    await this.removeFiles([digest]);
  }

  /**
   * Unlink the files of blobs whose rows are already deleted. Registered before the first
   * await, so a commit of the same digest waits for it (see commit). Readers that already
   * opened a file keep reading it: an unlinked file lives until its last descriptor closes.
   */
  removeFiles(digests: readonly Digest[]): Promise<void> {
    const all = digests.map((d) => {
      const p = fs.rm(this.paths.blob(d), { force: true }).finally(() => {
        if (this.deleting.get(d) === p) this.deleting.delete(d);
      });
      this.deleting.set(d, p);
      return p;
    });
    return Promise.all(all).then(() => undefined);
  }
}
