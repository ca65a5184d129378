/**
 * S3 driver of the upload-session port (ports.ts `UploadStore`). A session is its metadata
 * row (`uploads`: repository, creation time; shared by all replicas) plus its chunks, one
 * object per accepted append at `<prefix>uploads/<id>/<start offset, 16 digits>`. The
 * objects are the whole byte state: the offset is where the contiguous chunks end, so any
 * replica carries a session on from the store alone.
 *
 * - All or nothing: a chunk is streamed into its object with a multipart upload (about two
 *   parts in memory; one PUT when it fits in a part), completed only after the length and
 *   size checks passed, so it appears whole or not at all; a failed append aborts the
 *   multipart upload and the offset stays where it was.
 * - Finish hashes every stored byte against the digest before anything is visible. When
 *   the chunks can be multipart parts (all but the last >= 5 MiB: e.g. one streamed PATCH)
 *   they are hashed and then copied server-side into the blob's key, each copy conditional
 *   on the ETag seen when hashing began (a chunk changed meanwhile fails the copy, never
 *   commits unverified bytes); otherwise they are streamed through a blob stage, whose
 *   commit checks the digest. DIGEST_INVALID drops the session, a store failure (503)
 *   keeps it finishable. No running hash is trusted across requests (Node cannot persist
 *   one), so nothing needs checking against it.
 * - One writer at a time: in this process by a set; across replicas, when given a
 *   `Coordination` (the shared driver: PostgreSQL leases), by a lease `upload:<id>` taken
 *   for each append and finish (renewed while it runs, released after): another replica's
 *   request meanwhile gets 416. A lease that may have lapsed (no renewal confirmed within
 *   the TTL of the last one sent: the database unreachable, or another replica took it)
 *   stops the chunk at once: the body is cut, the multipart upload aborted, the client
 *   gets 503 and the offset stays where it was, so another replica's writes are never
 *   raced.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { createHash, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { RegistryError } from '../../registry/errors.js';
import { type Digest, type DigestAlgorithm, type RepoName, digestAlgorithm } from '../../registry/names.js';
import { uploadRangeHeader as rangeHeader } from '../../registry/range.js';
import { UPLOAD_ID_RE } from '../paths.js';
import { HashingCounter } from '../hashing.js';
import type { AppendOptions, BlobLink, UploadRows, UploadState, UploadStore } from '../ports.js';
import { type ObjectRef, rangeStream } from './body.js';
import { MAX_COPY_BYTES, MAX_PARTS, MIN_PART_SIZE, storeError } from './client.js';
import { type Part, PartBuffer, partInput, sendPart } from './partbuf.js';
import type { Coordination } from '../coordination.js';
import { type Claim, dropClaim, keepLease } from './lease.js';
import type { SourceObject } from './stage.js';
import type { S3BlobStore } from './store.js';

/** A writer's lease on a session (see the top); renewed every third of it while the request runs. */
const LEASE_TTL_MS = 60_000;

interface Chunk extends SourceObject {
  start: number;
}

export class S3UploadStore implements UploadStore {
  /** Sessions an append or finish of this process is running on. */
  private readonly busy = new Set<string>();
  /** Upkeep of the session leases this process holds. */
  private readonly claims = new Map<string, Claim>();
  private readonly owner = randomUUID();
  private readonly leaseTtlMs: number;

  constructor(
    private readonly store: S3BlobStore,
    private readonly meta: UploadRows,
    /** Leases across processes (shared driver); absent: one process, the busy set is enough. */
    private readonly leases?: Coordination,
    opts: { leaseTtlMs?: number } = {},
  ) {
    this.leaseTtlMs = opts.leaseTtlMs ?? LEASE_TTL_MS;
  }

  async start(repo: RepoName, _algorithm: DigestAlgorithm = 'sha256'): Promise<UploadState> {
    const id = randomUUID();
    const { createdAt } = await this.meta.createUpload(id, repo);
    return { id, repo, offset: 0, createdAt };
  }

  async status(id: string): Promise<UploadState | null> {
    if (!UPLOAD_ID_RE.test(id)) return null;
    const row = await this.meta.upload(id);
    if (!row) return null;
    return { id, repo: row.repo as RepoName, offset: end(await this.chunks(id)), createdAt: row.createdAt };
  }

  async append(id: string, body: Readable, opts: AppendOptions): Promise<number> {
    try {
      await this.claim(id);
    } catch (e) {
      body.resume();
      throw await this.withRange(id, e);
    }
    try {
      const base = end(await this.chunks(id));
      if (opts.offset !== undefined && opts.offset !== base) {
        throw new RegistryError('RANGE_INVALID', `chunk must start at offset ${base}`, { status: 416, headers: rangeHeader(base) });
      }
      return base + (await this.putChunk(this.chunkKey(id, base), body, base, opts, this.claims.get(id)?.lost.signal));
    } catch (e) {
      body.resume(); // drained, so the connection stays usable for the error response
      throw e instanceof RegistryError ? e : new RegistryError('BLOB_UPLOAD_INVALID', 'upload interrupted');
    } finally {
      await this.release(id);
    }
  }

  async finish(id: string, digest: Digest): Promise<{ size: number }> {
    await this.claim(id); // concurrent finishes (this process) get 416
    try {
      const chunks = await this.chunks(id);
      const repo = (await this.meta.upload(id))?.repo;
      if (repo === undefined) throw new RegistryError('BLOB_UPLOAD_UNKNOWN'); // cancelled meanwhile
      const link = { repo, provenance: 'pushed' as const };
      // Chunks that can be parts (S3's minimum for all but the last) are hashed and then
      // copied server-side, each only while unchanged since it was listed (ETag); other
      // sessions (small chunks) are streamed through a stage.
      const pieces = copyPieces(chunks);
      const copyable = chunks.length > 0 && pieces.length <= MAX_PARTS && chunks.every((c, i) => i === chunks.length - 1 || c.size >= MIN_PART_SIZE);
      let size: number;
      try {
        size = copyable ? await this.commitChunks(pieces, digest, link) : await this.restage(chunks, digest, link);
      } catch (e) {
        if ((e as { code?: string }).code === 'DIGEST_INVALID') await this.remove(id);
        throw e;
      }
      await this.meta.deleteUpload(id);
      await this.deleteChunks(id);
      return { size };
    } catch (e) {
      throw await this.withRange(id, e);
    } finally {
      await this.release(id);
    }
  }

  async cancel(id: string): Promise<void> {
    if (!UPLOAD_ID_RE.test(id) || !(await this.meta.upload(id))) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    await this.remove(id);
  }

  /** Expired sessions nobody here writes to, chunks and multipart uploads of sessions that no longer exist. */
  async sweep(maxAgeMs: number): Promise<number> {
    const now = Date.now();
    let removed = 0;
    for (const r of await this.meta.uploads()) {
      if (now - r.createdAt > maxAgeMs && !this.busy.has(r.id)) {
        await this.remove(r.id);
        removed++;
      }
    }
    const root = this.store.key('uploads/');
    const orphan = async (key: string) => {
      const id = key.slice(root.length).split('/')[0] ?? '';
      return !this.busy.has(id) && !(await this.meta.upload(id)); // checked right before removing: a session started meanwhile has a row
    };
    try {
      const stray: string[] = [];
      let token: string | undefined;
      do {
        const r = await this.store.client.send(new ListObjectsV2Command({ Bucket: this.store.bucket, Prefix: root, ContinuationToken: token }));
        for (const o of r.Contents ?? []) if (o.Key && (await orphan(o.Key))) stray.push(o.Key);
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
      await this.deleteKeys(stray);
      let KeyMarker: string | undefined;
      let UploadIdMarker: string | undefined;
      for (let more = true; more; ) {
        const mpu = await this.store.client.send(new ListMultipartUploadsCommand({ Bucket: this.store.bucket, Prefix: root, KeyMarker, UploadIdMarker }));
        for (const u of mpu.Uploads ?? []) {
          if (u.Key && u.UploadId && (await orphan(u.Key))) {
            await this.store.client.send(new AbortMultipartUploadCommand({ Bucket: this.store.bucket, Key: u.Key, UploadId: u.UploadId }));
          }
        }
        more = mpu.IsTruncated === true;
        KeyMarker = mpu.NextKeyMarker;
        UploadIdMarker = mpu.NextUploadIdMarker;
      }
    } catch (e) {
      throw storeError(e, 'upload sweep');
    }
    return removed;
  }

  // ---- internals -----------------------------------------------------------------------

  /** Hash the pieces (and each one's MD5, which its copy must match), then copy them into the blob's key. */
  private async commitChunks(pieces: Array<SourceObject & { start: number }>, digest: Digest, link: BlobLink): Promise<number> {
    const h = new HashingCounter(digestAlgorithm(digest));
    const sources: SourceObject[] = [];
    for (const { start, ...p } of pieces) {
      const md5 = createHash('md5');
      for await (const b of rangeStream(this.object(p.key), start, start + p.size - 1)) {
        h.update(b as Buffer);
        md5.update(b as Buffer);
      }
      sources.push({ ...p, md5: md5.digest('hex') });
    }
    if (h.currentDigest() !== digest) throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { detail: { expected: digest } });
    await this.store.commitStaged({ sources, size: h.bytes, inline: null }, digest, link);
    return h.bytes;
  }

  /** Stream the chunks, in order, into a blob stage, whose commit checks the digest. */
  private async restage(chunks: Chunk[], digest: Digest, link: BlobLink): Promise<number> {
    const w = this.store.stage({ algorithm: digestAlgorithm(digest) });
    try {
      for (const c of chunks) for await (const b of rangeStream(this.object(c.key), 0, c.size - 1)) await w.append(b as Buffer);
      await w.commit(digest, link);
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w.received;
  }

  private object(key: string): ObjectRef {
    return { client: this.store.client, bucket: this.store.bucket, key };
  }

  private chunkKey(id: string, start: number): string {
    return this.store.key(`uploads/${id}/${String(start).padStart(16, '0')}`);
  }

  /** The session's chunks from offset 0 on, as far as they are contiguous. */
  private async chunks(id: string): Promise<Chunk[]> {
    const prefix = this.store.key(`uploads/${id}/`);
    const all: Chunk[] = [];
    try {
      let token: string | undefined;
      do {
        const r = await this.store.client.send(new ListObjectsV2Command({ Bucket: this.store.bucket, Prefix: prefix, ContinuationToken: token }));
        for (const o of r.Contents ?? []) if (o.Key) all.push({ key: o.Key, start: Number(o.Key.slice(prefix.length)), size: o.Size ?? 0, ...(o.ETag ? { etag: o.ETag } : {}) });
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (e) {
      throw storeError(e, 'upload LIST');
    }
    all.sort((a, b) => a.start - b.start);
    const out: Chunk[] = [];
    for (const c of all) if (c.start === end(out)) out.push(c);
    return out;
  }

  /**
   * Stream `body` into `key` as one object that appears only when the chunk is accepted
   * whole; resolves with its length (0: no object).
   */
  private async putChunk(key: string, body: Readable, base: number, opts: AppendOptions, lost?: AbortSignal): Promise<number> {
    const { client, bucket, partSize } = this.store;
    // The lease lapsing cuts the body: the loop below throws the signal's reason even while
    // the client is silent, and the catch aborts the multipart upload.
    const cut = () => body.destroy(lost!.reason as Error);
    if (lost?.aborted) cut();
    lost?.addEventListener('abort', cut, { once: true });
    // Store failures are 503s; a failing body (the client went away) stays what it is.
    const send = <T>(p: Promise<T>): Promise<T> => p.catch((e: unknown) => Promise.reject(storeError(e, 'upload PUT')));
    // Copied and hashed as it arrives (partbuf.ts): no whole-part concatenation or hashing later.
    const part = new PartBuffer(partSize);
    let total = 0;
    let uploadId: string | undefined;
    const etags: string[] = [];
    let inflight: Promise<unknown> = Promise.resolve();
    const upload = async (p: Part) => {
      uploadId ??= (await send(client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key })))).UploadId;
      await inflight; // one part in flight: the memory bound
      const n = etags.length + 1;
      etags.push('');
      const put = send(sendPart(client, new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: n, ...partInput(p) })));
      put.catch(() => undefined); // awaited before the next part or the completion
      inflight = put.then((r) => (etags[n - 1] = r.ETag ?? ''));
    };
    try {
      for await (const c of body) {
        const chunk = c as Buffer;
        total += chunk.length;
        if (base + total > opts.maxBytes) throw new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${opts.maxBytes} bytes`, { status: 413 });
        if (opts.length !== undefined && total > opts.length) throw new RegistryError('SIZE_INVALID', `expected ${opts.length} bytes, received more`);
        for (let off = part.add(chunk); part.full; off += part.add(chunk, off)) await upload(part.take());
      }
      if (opts.length !== undefined && total !== opts.length) throw new RegistryError('SIZE_INVALID', `expected ${opts.length} bytes, received ${total}`);
      if (uploadId === undefined) {
        if (total > 0) await send(sendPart(client, new PutObjectCommand({ Bucket: bucket, Key: key, ...partInput(part.take()) })));
        return total;
      }
      if (part.bytes > 0) await upload(part.take());
      await inflight;
      await send(client.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) } })));
      return total;
    } catch (e) {
      if (uploadId !== undefined) {
        await inflight.catch(() => undefined);
        await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
      }
      throw e;
    } finally {
      lost?.removeEventListener('abort', cut);
    }
  }

  /** Marks the session busy; throws unless it exists and nobody here writes to it. */
  private async claim(id: string): Promise<void> {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    if (this.busy.has(id)) throw new RegistryError('BLOB_UPLOAD_INVALID', 'another request is writing to this upload', { status: 416 });
    this.busy.add(id); // before the row lookup's await, so a second request meanwhile gets 416
    try {
      if (!(await this.meta.upload(id))) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
      if (this.leases) {
        const name = `upload:${id}`;
        const sentAt = Date.now();
        if (!(await this.leases.acquireLease(name, this.owner, this.leaseTtlMs))) {
          throw new RegistryError('BLOB_UPLOAD_INVALID', 'another replica is writing to this upload', { status: 416 });
        }
        this.claims.set(id, keepLease(this.leases, name, this.owner, this.leaseTtlMs, sentAt));
      }
    } catch (e) {
      this.busy.delete(id);
      throw e;
    }
  }

  /**
   * Ends a claim: the lease (best effort: it expires anyway), then the busy mark, in that
   * order so that a later claim here is never released by this one.
   */
  private async release(id: string): Promise<void> {
    const claim = this.claims.get(id);
    if (claim !== undefined) {
      dropClaim(claim);
      this.claims.delete(id);
      await this.leases!.releaseLease(`upload:${id}`, this.owner).catch(() => undefined);
    }
    this.busy.delete(id);
  }

  /** A 416 refusal without its Range header gets the session's stored offset. */
  private async withRange(id: string, e: unknown): Promise<unknown> {
    if (!(e instanceof RegistryError) || e.status !== 416 || e.headers.Range !== undefined) return e;
    const size = UPLOAD_ID_RE.test(id) ? end(await this.chunks(id).catch(() => [])) : 0;
    return new RegistryError(e.code, e.message, { status: 416, detail: e.detail, headers: { ...e.headers, ...rangeHeader(size) } });
  }

  private async remove(id: string): Promise<void> {
    await this.meta.deleteUpload(id);
    await this.deleteChunks(id);
  }

  /** Best effort once the row is gone: what stays is an orphan `sweep` removes. */
  private async deleteChunks(id: string): Promise<void> {
    const keys = await this.chunks(id).then((cs) => cs.map((c) => c.key)).catch(() => []);
    await this.deleteKeys(keys).catch(() => undefined);
  }

  private async deleteKeys(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      await this.store.client.send(new DeleteObjectsCommand({ Bucket: this.store.bucket, Delete: { Objects: keys.slice(i, i + 1000).map((Key) => ({ Key })), Quiet: true } }));
    }
  }
}

/** The chunks as copy sources: one each, or equal ranges of one over S3's 5 GiB copy limit. */
function copyPieces(chunks: readonly Chunk[]): Array<SourceObject & { start: number }> {
  const out: Array<SourceObject & { start: number }> = [];
  for (const c of chunks) {
    const n = Math.ceil(c.size / MAX_COPY_BYTES);
    const step = Math.ceil(c.size / n);
    for (let i = 0; i < n; i++) {
      const a = i * step;
      const b = Math.min(c.size, a + step);
      out.push({ key: c.key, size: b - a, start: a, ...(c.etag ? { etag: c.etag } : {}), ...(n > 1 ? { range: `bytes=${a}-${b - 1}` } : {}) });
    }
  }
  return out;
}

function end(chunks: readonly Chunk[]): number {
  const last = chunks[chunks.length - 1];
  return last ? last.start + last.size : 0;
}
