/**
 * S3 driver: a blob being written (BlobWriter). Appended bytes are hashed at once and cut
 * into parts of `partSize` (copied into a part buffer and hashed for the PUT's signature as
 * they arrive: partbuf.ts); each full part is PUT as its own stage object
 * `<prefix>stages/<stage id>/<part no>` while the next one fills, so memory stays at about
 * two parts (append waits while a part is in flight). Stage objects, unlike the parts of
 * a multipart upload, can be read back: that is what `reader()` (fill readers that fell
 * behind the fill's memory window) needs. `flush` also PUTs the partial tail (overwritten
 * when that part is full). The store's commit assembles the parts into the blob's key
 * server-side (see store.ts); a blob that never left memory is PUT there directly.
 */
import { DeleteObjectsCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { RegistryError } from '../../registry/errors.js';
import type { Digest } from '../../registry/names.js';
import { HashingCounter } from '../hashing.js';
import type { BlobLink, BlobWriter, PositionalReader, StageOptions } from '../ports.js';
import { type ObjectRef, gone, readInto } from './body.js';
import { MAX_PARTS, storeError } from './client.js';
import { type Part, PartBuffer, partInput, sendPart } from './partbuf.js';

/**
 * An object holding a piece of content (or its `range`, `bytes=a-b`: at most 5 GiB).
 * `etag`: copy it only while unchanged (stores that honour CopySourceIfMatch; Ceph 16 does
 * not); `md5` (hex): what the copied bytes must hash to, checked against the part's ETag
 * before the copy is completed.
 */
export interface SourceObject {
  key: string;
  size: number;
  etag?: string;
  range?: string;
  md5?: string;
}

/**
 * Content to commit: the concatenation of `sources` (every one but the last at least
 * MIN_PART_SIZE, at most MAX_PARTS of them), or all of it in `inline`.
 */
export interface StagedContent {
  sources: SourceObject[];
  size: number;
  inline: Part | null;
}

/** What a stage needs from its store. */
export interface S3StageHost {
  readonly client: S3Client;
  readonly bucket: string;
  readonly partSize: number;
  stageKey(id: string, part: number): string;
  blobKey(digest: Digest): string;
  ensureRoom(bytes: number): Promise<void>;
  /** Make the content visible as `digest` and record it (store.ts); the stage removes its objects afterwards. */
  commitStaged(content: StagedContent, digest: Digest, link: BlobLink): Promise<void>;
}

export class S3Stage implements BlobWriter {
  received = 0;
  written = 0;
  onWritten: ((bytes: number) => void) | null = null;
  readonly id = randomUUID();
  private readonly hasher: HashingCounter;
  /** The part being filled (number `part`), in memory; `flushedCur` of its bytes are in its stage object. */
  private readonly cur: PartBuffer;
  private part = 1;
  private flushedCur = 0;
  /** The full part being PUT (at most one at a time: the memory bound). */
  private uploading: Promise<void> | null = null;
  private error: Error | null = null;
  private state: 'open' | 'committing' | 'committed' | 'ended' = 'open';
  private outcome: Promise<void> | null = null;
  private committedAs: Digest | null = null;
  private sealed: Promise<{ digest: Digest; size: number }> | null = null;
  /** Highest part number PUT (or being PUT) as a stage object: what cleanup removes. */
  private maxPut = 0;

  constructor(
    private readonly host: S3StageHost,
    private readonly opts: StageOptions,
  ) {
    this.hasher = new HashingCounter(opts.algorithm);
    this.cur = new PartBuffer(host.partSize);
  }

  get failed(): boolean {
    return this.error !== null && this.state === 'open';
  }

  async append(chunk: Buffer): Promise<void> {
    if (this.error) throw this.error;
    if (this.state !== 'open') throw new Error('blob stage already ended');
    if (this.sealed) throw new Error('blob stage is sealed');
    this.hasher.update(chunk);
    this.received += chunk.length;
    // Copied into the part as it arrives (no concatenation of a whole part later); the rest
    // of a chunk that completes a part goes into the next one once the previous PUT is done.
    for (let off = this.cur.add(chunk); ; off += this.cur.add(chunk, off)) {
      if (!this.cur.full) return;
      const n = this.part++;
      const counted = this.flushedCur;
      this.flushedCur = 0;
      const full = this.cur.take();
      if (this.part > MAX_PARTS) {
        this.error = new RegistryError('SIZE_INVALID', `blob exceeds ${MAX_PARTS} parts of ${this.host.partSize} bytes`, { status: 413 });
        throw this.error;
      }
      await this.settle();
      this.uploading = this.putPart(n, full, counted).finally(() => (this.uploading = null));
    }
  }

  async appendStream(body: Readable): Promise<void> {
    const { expectedBytes, maxBytes = Number.POSITIVE_INFINITY } = this.opts;
    try {
      if (expectedBytes !== undefined) await this.host.ensureRoom(expectedBytes);
      for await (const c of body) {
        const chunk = c as Buffer;
        if (this.received + chunk.length > maxBytes) {
          throw new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${maxBytes} bytes`, { status: 413 });
        }
        await this.append(chunk);
      }
      await this.flush();
    } catch (e) {
      if (!body.destroyed) body.resume(); // drained, so the connection stays usable for the error response
      await this.abort();
      throw e;
    }
  }

  /** Everything appended is in stage objects (the partial tail too); rejects with the write error. */
  async flush(): Promise<void> {
    await this.settle();
    if (this.error) throw this.error;
    if (this.cur.bytes > this.flushedCur) {
      const tail = this.cur.peek();
      await this.putPart(this.part, tail, this.flushedCur);
      if (this.error) throw this.error;
      this.flushedCur = tail.length;
    }
  }

  /** No append after this; resolves once everything is in stage objects (the same promise each time). */
  seal(): Promise<{ digest: Digest; size: number }> {
    if (this.sealed) return this.sealed;
    if (this.state !== 'open') return Promise.reject(new Error('blob stage already ended'));
    this.sealed = this.flush().then(() => ({ digest: this.digest(), size: this.received }));
    return this.sealed;
  }

  digest(): Digest {
    return this.hasher.currentDigest();
  }

  /** Reads the stage objects while open, the committed blob after; waits out a commit in progress. */
  async reader(): Promise<PositionalReader> {
    if (this.state === 'ended') throw gone('blob stage');
    return { read: (buf, length, position) => this.readAt(buf, length, position), close: async () => undefined };
  }

  commit(expected: Digest, link: BlobLink): Promise<void> {
    if (this.state !== 'open') return Promise.reject(new Error('blob stage already ended'));
    this.state = 'committing';
    this.outcome = this.doCommit(expected, link);
    return this.outcome;
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

  // ---- internals -----------------------------------------------------------------------

  private async settle(): Promise<void> {
    while (this.uploading) await this.uploading;
  }

  private async doCommit(expected: Digest, link: BlobLink): Promise<void> {
    try {
      await this.settle();
      if (this.error) throw this.error;
      if (this.digest() !== expected) throw new RegistryError('DIGEST_INVALID', 'content does not match its digest', { detail: { expected } });
      let content: StagedContent;
      if (this.part === 1 && this.flushedCur === 0) {
        // Never left memory (at most one part): one PUT to the blob's key, no stage object.
        content = { sources: [], size: this.received, inline: this.cur.peek() };
      } else {
        await this.flush();
        const size = this.host.partSize;
        const parts = Math.ceil(this.received / size);
        const sources = Array.from({ length: parts }, (_, i) => ({ key: this.host.stageKey(this.id, i + 1), size: Math.min(size, this.received - i * size) }));
        content = { sources, size: this.received, inline: null };
      }
      await this.host.commitStaged(content, expected, link);
      this.committedAs = expected;
      this.state = 'committed';
      this.cur.clear();
      await this.removeObjects();
    } catch (e) {
      this.error ??= e instanceof Error ? e : new Error(String(e));
      await this.discard();
      throw e;
    }
  }

  private async putPart(n: number, part: Part, counted: number): Promise<void> {
    this.maxPut = Math.max(this.maxPut, n);
    try {
      await sendPart(this.host.client, new PutObjectCommand({ Bucket: this.host.bucket, Key: this.host.stageKey(this.id, n), ...partInput(part) }));
      const added = part.length - counted;
      this.written += added;
      if (added > 0) this.onWritten?.(added);
    } catch (e) {
      this.error ??= storeError(e, 'PUT of a blob part');
    }
  }

  private async readAt(buf: Buffer, length: number, position: number): Promise<number> {
    if (this.state === 'committing') await this.outcome?.catch(() => undefined);
    if (this.state === 'committed') {
      const o: ObjectRef = { client: this.host.client, bucket: this.host.bucket, key: this.host.blobKey(this.committedAs!) };
      const n = await readInto(o, buf, length, position, this.received);
      if (n === null) throw gone('committed blob');
      return n;
    }
    if (this.state === 'ended') throw gone('blob stage');
    if (position >= this.written) return 0;
    const size = this.host.partSize;
    const part = Math.floor(position / size) + 1;
    const within = position - (part - 1) * size;
    const o: ObjectRef = { client: this.host.client, bucket: this.host.bucket, key: this.host.stageKey(this.id, part) };
    // Only bytes counted in `written` (a part being re-PUT still holds at least those).
    const n = await readInto(o, buf, Math.min(length, size - within, this.written - position), within, size);
    if (n !== null) return n;
    // The commit removed the stage objects meanwhile: read the outcome.
    if (this.state === 'open') throw gone('blob stage part');
    return this.readAt(buf, length, position);
  }

  private async discard(): Promise<void> {
    this.state = 'ended';
    this.cur.clear();
    await this.settle();
    await this.removeObjects();
  }

  /** Best effort: what stays behind is removed by `recover` once stale. */
  private async removeObjects(): Promise<void> {
    const last = this.maxPut;
    if (last < 1) return;
    const keys = Array.from({ length: last }, (_, i) => ({ Key: this.host.stageKey(this.id, i + 1) }));
    for (let i = 0; i < keys.length; i += 1000) {
      await this.host.client.send(new DeleteObjectsCommand({ Bucket: this.host.bucket, Delete: { Objects: keys.slice(i, i + 1000), Quiet: true } })).catch(() => undefined);
    }
  }
}
