/**
 * The local driver of the blob store port (ports.ts): content-addressed files under
 * `blobs/<alg>/<xx>/<hex>`, visible once their row is in SQLite. Bytes are written to a
 * temp file while being hashed, fsynced, and renamed into place only when the digest
 * matches; the metadata row is written after the rename (storage/README.md, crash
 * invariant).
 *
 * Besides the port, the file-level `commit` of a path serves the local upload-session
 * driver (storage/uploads.ts: a finished session's data file is renamed into place);
 * code above storage/ uses the port only.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { MetadataDb, Provenance } from './db.js';
import { hashFile } from './hashing.js';
import { LocalBlobBody } from './local/body.js';
import { LocalStage, type StageHost } from './local/stage.js';
import type { StoragePaths } from './paths.js';
import type { BlobEntry, BlobStore as BlobStorePort, StageOptions } from './ports.js';
import { ensureFree, freeBytes } from './space.js';
import { type Digest, type RepoName, digestAlgorithm, isDigest } from '../registry/names.js';

export { HashingCounter, batchedFileSink, fsyncFile, hashFile } from './hashing.js';

/** Digest algorithms with a directory under blobs/ (what list() walks). */
const ALGORITHMS = ['sha256', 'sha512'] as const;

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class LocalBlobStore implements BlobStorePort {
  /** File unlinks in progress, by digest (rows already gone). */
  private readonly deleting = new Map<Digest, Promise<void>>();
  /** Commits between their rename and their row, by digest. */
  private readonly committing = new Map<Digest, number>();
  /** What stages see of this store. */
  private readonly host: StageHost;

  constructor(
    private readonly paths: StoragePaths,
    private readonly meta: MetadataDb,
  ) {
    this.host = {
      tmpDir: paths.tmpDir,
      blobPath: (d) => paths.blob(d),
      commitFile: (src, d, size, repo, prov) => this.commit(src, d, size, repo, prov),
    };
  }

  /** Wipe temp files left by a crash (abandoned stages); create the tree. */
  async recover(): Promise<void> {
    await fs.rm(this.paths.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.paths.tmpDir, { recursive: true });
    await fs.mkdir(this.paths.blobsDir, { recursive: true });
    await fs.mkdir(this.paths.uploadsDir, { recursive: true });
  }

  // ---- the port ----------------------------------------------------------------------

  async stat(digest: Digest): Promise<{ size: number } | null> {
    // The connection is shared with the metadata port: never read into its open transaction.
    for (let w = this.meta.whenIdle(); w; w = this.meta.whenIdle()) await w;
    const size = this.meta.blobSize(digest);
    return size === undefined ? null : { size };
  }

  /**
   * The caller found the row (which decides visibility; a file without one is a crash
   * leftover, never looked up); not reading it again keeps a GET at one SQLite lookup.
   * Eviction deletes the row before the file, so a file gone by now means the blob is gone.
   */
  async open(digest: Digest): Promise<LocalBlobBody | null> {
    try {
      return new LocalBlobBody(await fs.open(this.paths.blob(digest), 'r'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  stage(opts: StageOptions): LocalStage {
    return new LocalStage(this.host, this.paths.tempFile(), opts);
  }

  ensureRoom(bytes: number): Promise<void> {
    return ensureFree(this.paths.tmpDir, bytes);
  }

  freeBytes(): Promise<number> {
    return freeBytes(this.paths.tmpDir);
  }

  delete(digest: Digest): Promise<void> {
    return this.removeFiles([digest]);
  }

  async *list(): AsyncIterable<BlobEntry> {
    for (const alg of ALGORITHMS) {
      const algDir = path.join(this.paths.blobsDir, alg);
      for (const p of await fs.readdir(algDir).catch(() => [] as string[])) {
        for (const hex of await fs.readdir(path.join(algDir, p)).catch(() => [] as string[])) {
          const d = `${alg}:${hex}`;
          const file = path.join(algDir, p, hex);
          yield { digest: isDigest(d) ? d : null, remove: () => fs.rm(file, { force: true }) };
        }
      }
    }
  }

  async verify(digest: Digest): Promise<{ digest: Digest; size: number } | null> {
    try {
      return await hashFile(this.paths.blob(digest), digestAlgorithm(digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  // ---- file level (local driver internals, see the top) --------------------------------

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
    // Both waits (and the metadata transaction gate, see MetadataDb.whenIdle) end in the tick of the check.
    for (let w = this.deleting.get(digest) ?? this.meta.whenIdle(); w; w = this.deleting.get(digest) ?? this.meta.whenIdle()) {
      await w.catch(() => undefined);
    }
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
      for (let w = this.meta.whenIdle(); w; w = this.meta.whenIdle()) await w;
      this.meta.recordBlob(repo, digest, size, provenance);
    } catch (e) {
      // Only while no other commit of this digest is between its rename and its row: that
      // one may have replaced our file with its own, which must stay.
      for (let w = this.meta.whenIdle(); w; w = this.meta.whenIdle()) await w.catch(() => undefined);
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

  /** Remove an unreferenced blob: row first, then file (a crash leaves only an orphan file). */
  async remove(digest: Digest): Promise<void> {
    for (let w = this.meta.whenIdle(); w; w = this.meta.whenIdle()) await w;
    this.meta.deleteBlobRow(digest);
    await this.removeFiles([digest]);
  }

  /**
   * Unlink the files of blobs whose rows are already deleted. Registered before the first
   * await, so a commit of the same digest waits for it (see commit). The rows were dropped
   * by an async metadata call a few microtasks before this: a commit that checked in
   * between found neither row nor delete and is now committing its own copy (`committing`),
   * so that digest is left alone (its rename replaces the old file; should it fail, the old
   * file is an orphan for gc). Readers that already opened a file keep reading it: an
   * unlinked file lives until its last descriptor closes.
   */
  removeFiles(digests: readonly Digest[]): Promise<void> {
    const all = digests.map((d) => {
      if (this.committing.has(d)) return Promise.resolve();
      // unlink, not rm({ force }): rm first validates with an lstat and its rimraf path,
      // ~55 us of event-loop CPU per file (550 ms for 10,000 blobs of one eviction pass at
      // 1M blobs, bench/results/scale/session8-evict2.md). A file already gone is no error.
      const p = unlinkIfPresent(this.paths.blob(d)).finally(() => {
        if (this.deleting.get(d) === p) this.deleting.delete(d);
      });
      this.deleting.set(d, p);
      return p;
    });
    return Promise.all(all).then(() => undefined);
  }
}

function unlinkIfPresent(file: string): Promise<void> {
  return fs.unlink(file).catch((e: unknown) => {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  });
}

/** The local driver under its old name (app.ts constructs it so). */
export { LocalBlobStore as BlobStore };
