/**
 * Single-flight blob fills. The first miss for a digest starts one upstream download
 * into a temp file; every client (the first one included, and Range requests) reads
 * that growing file, so N concurrent pulls cost one upstream fetch and a client that
 * leaves never cancels or slows the fill (avoids distribution's #3969 and the
 * MultiWriter coupling; style.md (e) 1-2).
 *
 * Integrity: readers never receive the final byte before the digest is verified. On a
 * mismatch the temp file is deleted and every reader's stream errors, so clients see an
 * aborted transfer, never wrong bytes under a good digest.
 */
import fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { RegistryError } from '../registry/errors.js';
import { type Digest, type RepoName, digestAlgorithm } from '../registry/names.js';
import { type BlobStore, HashingCounter } from '../storage/blobs.js';
import type { StoragePaths } from '../storage/paths.js';

/** What a fill needs from the upstream: a body from `offset`, and the total size when known. */
export interface FillSource {
  open(offset: number): Promise<{ size: number | null; body: AsyncIterable<Buffer> }>;
}

const MAX_RESUMES = 3;
const READ_CHUNK = 1024 * 1024;

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export class BlobFill {
  size: number | null = null;
  written = 0;
  state: 'starting' | 'streaming' | 'committed' | 'failed' = 'starting';
  error: Error | null = null;
  readonly tempPath: string;
  /** Resolves once the size is known (upstream answered 200); rejects if it never does. */
  readonly ready: Promise<void>;
  /** Resolves when the blob is committed; rejects when the fill fails. */
  readonly done: Promise<void>;
  private tick = deferred();
  private settleReady!: (e?: Error) => void;
  private settleDone!: (e?: Error) => void;

  constructor(
    readonly digest: Digest,
    readonly finalPath: string,
    tempPath: string,
    /** Which upstream repository the bytes come from (`<upstream>|<remote name>`). */
    readonly origin: string,
  ) {
    this.tempPath = tempPath;
    this.ready = new Promise<void>((res, rej) => (this.settleReady = (e) => (e ? rej(e) : res())));
    this.done = new Promise<void>((res, rej) => (this.settleDone = (e) => (e ? rej(e) : res())));
    // Nobody may be listening yet; failures are delivered through readers and awaiters.
    this.ready.catch(() => undefined);
    this.done.catch(() => undefined);
  }

  /** A promise for the next state change (bytes written, commit, failure). */
  changed(): Promise<void> {
    return this.tick.promise;
  }

  notify(): void {
    const t = this.tick;
    this.tick = deferred();
    t.resolve();
  }

  markReady(size: number | null): void {
    this.size = size;
    this.state = 'streaming';
    this.settleReady();
    this.notify();
  }

  fail(e: Error): void {
    this.state = 'failed';
    this.error = e;
    this.settleReady(e);
    this.settleDone(e);
    this.notify();
  }

  commit(): void {
    this.state = 'committed';
    this.settleDone();
    this.notify();
  }

  /** Bytes a reader may consume now: everything but the last byte until verified. */
  readable(): number {
    if (this.state === 'committed') return this.written;
    return this.size === null ? this.written : Math.min(this.written, this.size - 1);
  }

  /** Stream bytes [start, end] (inclusive) as they land in the file. */
  reader(start: number, end: number): Readable {
    const fill = this;
    async function* gen(): AsyncGenerator<Buffer> {
      let fh: FileHandle | null = null;
      try {
        fh = await fill.openFile();
        let pos = start;
        while (pos <= end) {
          const next = fill.changed();
          const avail = Math.min(fill.readable(), end + 1);
          if (pos < avail) {
            const n = Math.min(avail - pos, READ_CHUNK);
            const buf = Buffer.allocUnsafe(n);
            const { bytesRead } = await fh.read(buf, 0, n, pos);
            if (bytesRead === 0) throw new Error('blob file shorter than recorded progress');
            pos += bytesRead;
            yield buf.subarray(0, bytesRead);
            continue;
          }
          if (fill.state === 'failed') throw fill.error ?? new Error('fill failed');
          await next;
        }
      } finally {
        await fh?.close();
      }
    }
    return Readable.from(gen(), { objectMode: false });
  }

  /**
   * The temp file, or the final file if the fill committed in the meantime. The temp file
   * is renamed (or, for a duplicate, removed) before `commit()` runs, so a reader arriving
   * in that window finds neither a temp file nor a committed state: it waits for the
   * outcome instead of failing.
   */
  private async openFile(): Promise<FileHandle> {
    try {
      return await fs.open(this.tempPath, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await this.done.catch(() => undefined);
      if (this.state === 'committed') return fs.open(this.finalPath, 'r');
      throw this.error ?? e;
    }
  }
}

export class FillManager {
  private readonly fills = new Map<Digest, BlobFill>();

  constructor(
    private readonly paths: StoragePaths,
    private readonly blobs: BlobStore,
    private readonly log: Logger,
    private readonly maxBlobBytes: number,
  ) {}

  inFlight(digest: Digest): BlobFill | undefined {
    return this.fills.get(digest);
  }

  get size(): number {
    return this.fills.size;
  }

  /**
   * Join the fill for `digest`, or start one. `expectedSize` (from a manifest descriptor)
   * is checked against the upstream's length when known.
   */
  fill(digest: Digest, repo: RepoName, origin: string, source: FillSource, expectedSize?: number): BlobFill {
    const existing = this.fills.get(digest);
    if (existing) return existing;
    const f = new BlobFill(digest, this.paths.blob(digest), this.paths.tempFile(), origin);
    this.fills.set(digest, f);
    void this.run(f, repo, source, expectedSize).finally(() => this.fills.delete(digest));
    return f;
  }

  private async run(f: BlobFill, repo: RepoName, source: FillSource, expectedSize?: number): Promise<void> {
    const hasher = new HashingCounter(digestAlgorithm(f.digest));
    const started = Date.now();
    let fh: FileHandle | null = null;
    try {
      fh = await fs.open(f.tempPath, 'w');
      let resumes = 0;
      for (;;) {
        let body: AsyncIterable<Buffer>;
        try {
          const opened = await source.open(f.written);
          body = opened.body;
          if (f.state === 'starting') {
            const size = opened.size ?? expectedSize ?? null;
            if (expectedSize !== undefined && opened.size !== null && opened.size !== expectedSize) {
              throw new RegistryError('BLOB_UNKNOWN', 'upstream blob size differs from the manifest descriptor', { status: 502 });
            }
            if (size !== null && size > this.maxBlobBytes) throw new RegistryError('SIZE_INVALID', 'blob exceeds the configured maximum size', { status: 502 });
            f.markReady(size);
          }
        } catch (e) {
          if (f.state === 'starting' || resumes >= MAX_RESUMES) throw e;
          resumes++;
          this.log.warn({ digest: f.digest, offset: f.written, err: (e as Error).message }, 'resume failed, retrying');
          continue;
        }
        try {
          for await (const chunk of body) {
            if (f.size !== null && f.written + chunk.length > f.size) throw new RegistryError('BLOB_UNKNOWN', 'upstream sent more bytes than announced', { status: 502 });
            await fh.write(chunk, 0, chunk.length, f.written);
            hasher.update(chunk);
            f.written += chunk.length;
            f.notify();
          }
          if (f.size === null || f.written === f.size) break;
          throw new Error(`upstream body ended early at ${f.written} of ${f.size} bytes`);
        } catch (e) {
          if (e instanceof RegistryError || resumes >= MAX_RESUMES || f.size === null) throw e;
          resumes++;
          this.log.warn({ digest: f.digest, offset: f.written, err: (e as Error).message }, 'upstream broke mid-blob; resuming with Range');
        }
      }
      const actual = hasher.currentDigest();
      if (actual !== f.digest) {
        throw new RegistryError('DIGEST_INVALID', 'upstream content does not match its digest', { status: 502, detail: { expected: f.digest } });
      }
      await fh.sync();
      await fh.close();
      fh = null;
      await this.blobs.commit(f.tempPath, f.digest, f.written, repo, 'cached');
      f.commit();
      this.log.info({ digest: f.digest, bytes: f.written, ms: Date.now() - started, resumes }, 'blob cached');
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') this.log.error({ digest: f.digest, bytes: f.written }, 'upstream integrity error: digest mismatch, nothing stored');
      else this.log.warn({ digest: f.digest, bytes: f.written, err: err.message }, 'blob fill failed');
      await fh?.close().catch(() => undefined);
      await fs.rm(f.tempPath, { force: true }).catch(() => undefined);
      f.fail(err);
    }
  }
}
