/**
 * The stage of a fill under cluster coordination (cache/clusterfill.ts), chosen when the
 * fill's source opens:
 *
 * - `store` (this replica fetches from the upstream: it holds the fill lease): the store's
 *   own stage, exactly as without coordination; it commits the blob.
 * - `relay` (the bytes come from the owning replica's fill, or from the committed blob):
 *   nothing goes to the object store. The bytes are hashed and spooled to a local file
 *   (readers that fall behind the fill's memory window read it back), and the commit only
 *   waits for the owner's commit of the same digest. Before this, every relaying replica
 *   also PUT the whole blob to the bucket (one extra write of the blob per replica).
 *
 * Fallback: when the owner dies mid-fill this replica may take the lease and resume from
 * the upstream (`mustStore`), or the owner may end without committing while this replica
 * waits; either way this replica then uploads the spooled file (prefix included) through
 * the store's stage and commits it, so the blob is never lost with its owner.
 */
import { createReadStream } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { RegistryError } from '../registry/errors.js';
import type { Digest } from '../registry/names.js';
import { HashingCounter } from '../storage/hashing.js';
import type { BlobLink, BlobStore, BlobWriter, PositionalReader, StageOptions } from '../storage/ports.js';

/** What the relay's commit needs from the coordination (clusterfill.ts). */
export interface RelayHost {
  /**
   * Wait until `digest` is committed by its owner (`stored`), or until this replica holds
   * the fill lease because the owner ended without committing (`store`: commit it here).
   */
  awaitOwnerCommit(digest: Digest): Promise<'stored' | 'store'>;
}

export class ClusterStage implements BlobWriter {
  private inner: BlobWriter | null = null;
  private spool: Spool | null = null;
  /** Relaying, but this replica now holds the lease (the owner died): it commits the blob. */
  mustStore = false;
  private written_ = 0;
  private onWritten_: ((bytes: number) => void) | null = null;
  private ended = false;
  private committedDigest: Digest | null = null;

  constructor(
    private readonly blobs: BlobStore,
    private readonly opts: StageOptions,
    private readonly spoolDir: string,
    private readonly host: RelayHost,
  ) {}

  get mode(): 'unset' | 'store' | 'relay' {
    return this.inner ? 'store' : this.spool ? 'relay' : 'unset';
  }

  /** This replica fetches from the upstream from the start: the store's stage, as without coordination. */
  useStore(): void {
    if (this.mode !== 'unset') return;
    this.inner = this.blobs.stage(this.opts);
    this.inner.onWritten = this.onWritten_;
  }

  /** The bytes come from a peer or the store: spool locally, commit nothing to the store. */
  useRelay(): void {
    if (this.mode !== 'unset') return;
    this.spool = new Spool(path.join(this.spoolDir, `${randomUUID()}.part`), this.opts, (n) => {
      this.written_ += n;
      this.onWritten_?.(n);
    });
  }

  private get active(): BlobWriter | Spool {
    const a = this.inner ?? this.spool;
    if (!a) throw new Error('cluster stage used before its source opened');
    return a;
  }

  get received(): number {
    return this.inner?.received ?? this.spool?.received ?? 0;
  }
  get written(): number {
    return this.inner ? this.inner.written : this.written_;
  }
  get failed(): boolean {
    return this.inner?.failed ?? this.spool?.failed ?? false;
  }
  get onWritten(): ((bytes: number) => void) | null {
    return this.onWritten_;
  }
  set onWritten(fn: ((bytes: number) => void) | null) {
    this.onWritten_ = fn;
    if (this.inner) this.inner.onWritten = fn;
  }
  append(chunk: Buffer): Promise<void> {
    return this.active.append(chunk);
  }
  appendStream(_body: Readable): Promise<void> {
    return Promise.reject(new Error('a fill stage takes chunks'));
  }
  flush(): Promise<void> {
    return this.active.flush();
  }
  digest(): Digest {
    return this.active.digest();
  }
  seal(): Promise<{ digest: Digest; size: number }> {
    if (this.inner) return this.inner.seal();
    return this.active.flush().then(() => ({ digest: this.active.digest(), size: this.received }));
  }

  async reader(): Promise<PositionalReader> {
    if (this.inner) return this.inner.reader();
    // After the commit the spool is gone: read the committed blob from the store.
    if (this.committedDigest) return storeReader(this.blobs, this.committedDigest);
    if (!this.spool || this.ended) throw Object.assign(new Error('relay spool gone'), { code: 'ENOENT' });
    try {
      return await this.spool.reader();
    } catch (e) {
      // Unlinked by a commit that finished meanwhile: the store has the blob now.
      if (this.committedDigest) return storeReader(this.blobs, this.committedDigest);
      throw e;
    }
  }

  async commit(expected: Digest, link: BlobLink): Promise<void> {
    if (this.inner) return this.inner.commit(expected, link);
    const spool = this.spool;
    if (!spool || this.ended) throw new Error('blob stage already ended');
    try {
      await spool.flush();
      if (spool.digest() !== expected) throw new RegistryError('DIGEST_INVALID', 'content does not match its digest', { status: 502, detail: { expected } });
      const outcome = this.mustStore ? 'store' : await this.host.awaitOwnerCommit(expected);
      if (outcome === 'store') {
        // The owner is gone: this replica has every byte locally; the store's stage hashes
        // them again and commits (the spooled file is read sequentially, never whole).
        const w = this.blobs.stage({ ...this.opts, expectedBytes: spool.received });
        try {
          await w.appendStream(createReadStream(spool.file));
          await w.commit(expected, link);
        } catch (e) {
          await w.abort().catch(() => undefined);
          throw e;
        }
      }
      this.committedDigest = expected;
    } finally {
      this.ended = true;
      await spool.remove();
    }
  }

  async abort(): Promise<void> {
    if (this.inner) return this.inner.abort();
    this.ended = true;
    await this.spool?.remove();
  }
}

/** A local append-only file: hashed as appended, written in order, read back positionally. */
class Spool {
  received = 0;
  failed = false;
  private error: unknown = null;
  private readonly hash: HashingCounter;
  private fh: Promise<FileHandle>;
  private chain: Promise<void> = Promise.resolve();
  private removed = false;

  constructor(
    readonly file: string,
    opts: StageOptions,
    private readonly onWritten: (n: number) => void,
  ) {
    this.hash = new HashingCounter(opts.algorithm);
    // Exclusive create with owner-only rights: a fresh random name, never someone else's file.
    this.fh = fs.open(file, 'wx+', 0o600).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
      // The directory is made at start (ClusterFills.recover); again if it was removed since.
      await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      return fs.open(file, 'wx+', 0o600);
    });
    this.fh.catch(() => undefined);
  }

  append(chunk: Buffer): Promise<void> {
    if (this.failed) return Promise.reject(this.error);
    this.hash.update(chunk);
    const pos = this.received;
    this.received += chunk.length;
    // Writes go in order (one after another): `written` is then a prefix of the file.
    this.chain = this.chain.then(async () => {
      if (this.failed) return;
      try {
        const fh = await this.fh;
        let off = 0;
        while (off < chunk.length) off += (await fh.write(chunk, off, chunk.length - off, pos + off)).bytesWritten;
        this.onWritten(chunk.length);
      } catch (e) {
        this.failed = true;
        this.error = e;
      }
    });
    return this.chain.then(() => (this.failed ? Promise.reject(this.error) : undefined));
  }

  async flush(): Promise<void> {
    // The fill's first flush comes before a relay's first byte can go out: do not put the
    // file's creation on that path (time to first byte); a failure to create it fails the
    // first write instead, and so the fill.
    if (this.received === 0) return;
    await this.fh;
    await this.chain;
    if (this.failed) throw this.error;
  }

  digest(): Digest {
    return this.hash.currentDigest();
  }

  async reader(): Promise<PositionalReader> {
    const fh = await fs.open(this.file, 'r');
    return { read: async (buf, length, position) => (await fh.read(buf, 0, length, position)).bytesRead, close: () => fh.close() };
  }

  /** Close and unlink; readers that opened the file keep reading it (POSIX). */
  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    await this.chain;
    await (await this.fh.catch(() => null))?.close().catch(() => undefined);
    await fs.rm(this.file, { force: true });
  }
}

/** A committed blob as positional reads (the S3 body has no positional path: one ranged GET per read). */
async function storeReader(blobs: BlobStore, digest: Digest): Promise<PositionalReader> {
  const body = await blobs.open(digest);
  if (!body) throw new RegistryError('BLOB_UNKNOWN', 'blob vanished after its commit', { detail: { digest } });
  const fast = body.positional();
  if (fast) return { read: (b, n, p) => fast.read(b, n, p), close: () => body.close() };
  const st = await blobs.stat(digest);
  const size = st?.size ?? 0;
  return {
    read: async (buf, length, position) => {
      if (position >= size) return 0;
      let n = 0;
      for await (const c of body.stream(position, Math.min(size, position + length) - 1)) {
        (c as Buffer).copy(buf, n);
        n += (c as Buffer).length;
      }
      return n;
    },
    close: () => body.close(),
  };
}
