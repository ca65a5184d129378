/**
 * Local driver: a blob being written (BlobWriter). Bytes go to a temp file in `tmp/`,
 * hashed as they are appended; `commit` fsyncs it and hands it to the store, which renames
 * it into place and writes the row (storage/README.md, crash invariant). A crash leaves
 * only the temp file, which the next start deletes.
 *
 * Appended chunks are queued and written with one positional writev per batch, so the
 * producer (an upstream body) is read at network speed; `append` only waits when
 * MAX_QUEUED bytes are pending (backpressure).
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { RegistryError } from '../../registry/errors.js';
import type { Digest, RepoName } from '../../registry/names.js';
import { HashingCounter, batchedFileSink } from '../hashing.js';
import type { BlobLink, BlobWriter, PositionalReader, Provenance, StageOptions } from '../ports.js';
import { ensureFree } from '../space.js';
import { fileReader } from './body.js';

/** Producer reading pauses while this much is queued for the disk. */
const MAX_QUEUED = 16 * 1024 * 1024;

/** What a stage needs from its store. */
export interface StageHost {
  readonly tmpDir: string;
  blobPath(digest: Digest): string;
  /** Rename `source` into place and record it; on failure the file is back at `source`. */
  commitFile(source: string, digest: Digest, size: number, repo: RepoName, provenance: Provenance): Promise<void>;
}

export class LocalStage implements BlobWriter {
  received = 0;
  written = 0;
  onWritten: ((bytes: number) => void) | null = null;
  private readonly hasher: HashingCounter;
  /** Opened at once: a fill's upstream request is in flight meanwhile (time to first byte). */
  private readonly opening: Promise<FileHandle>;
  private closed = false;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private running: Promise<void> | null = null;
  /** Settled after the next batch reached the file (or the write failed): progress(). */
  private nextWrite: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;
  private state: 'open' | 'committing' | 'committed' | 'ended' = 'open';
  private outcome: Promise<void> | null = null;
  private committedAs: Digest | null = null;
  /** Set by seal(): what was written, and the background fsync + close of the temp file. */
  private sealed: Promise<{ digest: Digest; size: number }> | null = null;
  private durable: Promise<void> | null = null;

  constructor(
    private readonly host: StageHost,
    readonly tempPath: string,
    private readonly opts: StageOptions,
  ) {
    this.hasher = new HashingCounter(opts.algorithm);
    this.opening = fs.open(tempPath, 'w');
    this.opening.catch(() => undefined); // delivered by flush/append
  }

  async append(chunk: Buffer): Promise<void> {
    if (this.error) throw this.error;
    if (this.sealed) throw new Error('blob stage is sealed');
    this.hasher.update(chunk);
    this.received += chunk.length;
    this.queue.push(chunk);
    this.queuedBytes += chunk.length;
    this.running ??= this.drain();
    if (this.queuedBytes > MAX_QUEUED) await this.flush();
  }

  async appendStream(body: Readable): Promise<void> {
    const { expectedBytes, maxBytes = Number.POSITIVE_INFINITY } = this.opts;
    try {
      if (this.sealed) throw new Error('blob stage is sealed');
      if (expectedBytes !== undefined) {
        await ensureFree(this.host.tmpDir, expectedBytes).catch((e: unknown) => {
          body.resume(); // drained, so the connection stays usable for the error response
          throw e;
        });
      }
      const fh = await this.opening;
      const h = this.hasher;
      const limit = new Transform({
        transform(chunk: Buffer, _e, cb) {
          if (h.bytes > maxBytes) cb(new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${maxBytes} bytes`, { status: 413 }));
          else cb(null, chunk);
        },
      });
      // The raw descriptor (the stage closes the FileHandle on commit or abort).
      await pipeline(body, h, limit, batchedFileSink({ fd: fh.fd, position: this.written }));
      this.received = this.written = h.bytes;
    } catch (e) {
      await this.abort();
      throw e;
    }
  }

  get failed(): boolean {
    return this.error !== null && this.state === 'open';
  }

  /** Also surfaces a failure to create the temp file. */
  async flush(): Promise<void> {
    await this.opening;
    while (this.running) await this.running;
    if (this.error) throw this.error;
  }

  progress(): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    // Nothing being written: nothing to wait for (drain() runs whenever bytes are queued).
    if (!this.running) return Promise.resolve();
    if (!this.nextWrite) {
      let resolve!: () => void;
      let reject!: (e: Error) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      this.nextWrite = { promise, resolve, reject };
    }
    return this.nextWrite.promise;
  }

  private wake(): void {
    const w = this.nextWrite;
    this.nextWrite = null;
    if (!w) return;
    if (this.error) w.reject(this.error);
    else w.resolve();
  }

  digest(): Digest {
    return this.hasher.currentDigest();
  }

  /**
   * The temp file, or the committed file once the commit went through. The temp file is
   * renamed (or, for a duplicate, removed) before the commit resolves, so a reader arriving
   * in that window waits for the outcome instead of failing.
   */
  async reader(): Promise<PositionalReader> {
    try {
      return fileReader(await fs.open(this.tempPath, 'r'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await this.outcome?.catch(() => undefined);
      if (this.state === 'committed') return fileReader(await fs.open(this.host.blobPath(this.committedAs!), 'r'));
      throw e; // ended without a commit: ENOENT, the owner knows why
    }
  }

  seal(): Promise<{ digest: Digest; size: number }> {
    if (this.sealed) return this.sealed;
    if (this.state !== 'open') return Promise.reject(new Error('blob stage already ended'));
    this.sealed = (async () => {
      await this.flush();
      const fh = await this.opening;
      // The fsync runs while the caller goes on (an import reads the next entry); the
      // descriptor is closed with it, so a sealed stage holds no file open.
      this.durable = fh.sync().finally(() => {
        this.closed = true;
        return fh.close();
      });
      this.durable.catch(() => undefined); // delivered by commit
      return { digest: this.digest(), size: this.written };
    })();
    return this.sealed;
  }

  commit(expected: Digest, link: BlobLink): Promise<void> {
    if (this.state !== 'open') return Promise.reject(new Error('blob stage already ended'));
    this.state = 'committing';
    this.outcome = this.doCommit(expected, link);
    return this.outcome;
  }

  private async doCommit(expected: Digest, link: BlobLink): Promise<void> {
    try {
      await this.flush();
      if (this.digest() !== expected) throw new RegistryError('DIGEST_INVALID', 'content does not match its digest', { detail: { expected } });
      if (this.sealed) {
        await this.sealed;
        await this.durable;
      } else {
        const fh = await this.opening;
        await fh.sync();
        this.closed = true;
        await fh.close();
      }
      await this.host.commitFile(this.tempPath, expected, this.written, link.repo, link.provenance);
      this.committedAs = expected;
      this.state = 'committed';
    } catch (e) {
      this.error ??= e instanceof Error ? e : new Error(String(e));
      await this.discard();
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'ended') return;
    if (this.state === 'committing') {
      await this.outcome?.catch(() => undefined);
      return;
    }
    this.error ??= new Error('blob stage aborted');
    await this.discard();
  }

  private async discard(): Promise<void> {
    this.state = 'ended';
    while (this.running) await this.running.catch(() => undefined);
    await this.sealed?.catch(() => undefined);
    await this.durable?.catch(() => undefined);
    if (!this.closed) {
      this.closed = true;
      const fh = await this.opening.catch(() => null);
      await fh?.close().catch(() => undefined);
    }
    await fs.rm(this.tempPath, { force: true }).catch(() => undefined);
  }

  private async drain(): Promise<void> {
    try {
      const fh = await this.opening;
      while (this.queue.length > 0) {
        const batch = this.queue;
        const bytes = this.queuedBytes;
        this.queue = [];
        this.queuedBytes = 0;
        let done = 0;
        while (done < bytes) {
          const { bytesWritten } = await fh.writev(done === 0 ? batch : [Buffer.concat(batch).subarray(done)], this.written + done);
          done += bytesWritten;
        }
        this.written += bytes;
        this.onWritten?.(bytes);
        this.wake();
      }
    } catch (e) {
      this.error = e instanceof Error ? e : new Error(String(e));
    } finally {
      this.running = null;
      this.wake();
    }
  }
}
