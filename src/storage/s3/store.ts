/**
 * The S3-compatible driver of the blob store port (ports.ts), for several replicas on one
 * bucket (issue #13). Tested against Ceph's RADOS Gateway (test/storage/blobstore-s3.test.ts).
 *
 * Layout, under the configured prefix:
 *   blobs/<alg>/<hex>            committed, verified content (immutable; same bytes whoever wrote it)
 *   stages/<stage id>/<part no>  parts of a blob being written (stage.ts)
 *
 * Design:
 * - Visibility. S3 has no rename, but it has atomic object creation: a PUT, a copy, or the
 *   completion of a multipart upload makes an object appear whole at its key or not at
 *   all. The blob's key is only ever written after the content was hashed and matched its
 *   digest, so whatever is at `blobs/...` is complete, right content. As in the local
 *   driver, the metadata row is the registry's truth of visibility (`stat`); it is written
 *   after the object is in place. An object without a row (a crash in between) is never
 *   looked up, `list` hands it to GC, and a later commit of that digest overwrites it with
 *   the same bytes.
 * - Stage and commit. A stage PUTs full parts as stage objects while hashing (about two
 *   parts in memory; stage.ts says why parts are objects and not multipart parts: they can
 *   be read back by fill readers). Commit checks the digest, then assembles server-side:
 *   one part is copied (CopyObject), several are joined with a multipart upload of
 *   UploadPartCopy (no byte crosses the network twice), and the stage objects are removed.
 *   A blob that never filled a part goes to its key in one PUT.
 * - Dedupe and races. A digest with a row is only linked (one metadata change that checks the row). Within one process a commit
 *   waits for a delete of the same digest in progress (as in the local driver). Across
 *   replicas, deletes are deferred and claimed in PostgreSQL (pg/tombstones.ts): a commit meeting a
 *   claimed delete waits for it and writes the content again.
 * - Reads. `open` HEADs the object (null when gone) and serves ranged GETs; each range is
 *   checked for length. A body opened before a delete: RGW and S3 keep serving a GET that
 *   already started; a GET started after the object is gone fails with an error (ENOENT),
 *   never short data (the port's rule for drivers that cannot pin content).
 * - Crash. A stage abandoned by a crash leaves stage objects, and a commit cut short a
 *   multipart upload; `recover` removes both once older than `staleStageMs` (younger ones
 *   may belong to a live replica).
 * - Room. S3 has no cheap free-space answer: `ensureRoom` accepts; a bucket quota the store
 *   enforces (QuotaExceeded) is reported as 507 like a full disk.
 * - Errors. Every store failure is a 503 UNAVAILABLE naming the operation, never carrying
 *   the SDK's request (credentials) (client.ts).
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { Readable } from 'node:stream';
import { RegistryError } from '../../registry/errors.js';
import { type Digest, digestAlgorithm, isDigest } from '../../registry/names.js';
import { ContentBeingDeleted, DELETE_CLAIM_TTL_MS } from '../coordination.js';
import { HashingCounter } from '../hashing.js';
import type { BlobEntry, BlobLink, BlobStore, MetadataOps, StageOptions } from '../ports.js';
import { S3BlobBody } from './body.js';
import { DEFAULT_PART_SIZE, MAX_COPY_BYTES, MIN_PART_SIZE, type S3BlobStoreOptions, isNotFound, makeClient, storeError } from './client.js';
import { type SourceObject, S3Stage, type S3StageHost, type StagedContent } from './stage.js';

import { partInput, sendPart } from './partbuf.js';
export type { S3BlobStoreOptions } from './client.js';

/** The metadata this driver needs: the blob rows of either metadata driver (async port calls). */
export type BlobIndex = Pick<MetadataOps, 'blobSize' | 'linkBlob' | 'recordBlob'>;

const DAY_MS = 24 * 60 * 60 * 1000;
/** UploadPartCopy requests in flight per commit. */
const COPY_CONCURRENCY = 4;

export class S3BlobStore implements BlobStore, S3StageHost {
  readonly client: S3Client;
  readonly bucket: string;
  readonly partSize: number;
  private readonly prefix: string;
  private readonly staleStageMs: number;
  private readonly listPageSize: number | undefined;
  /** Object deletes in progress, by digest (rows already gone). */
  private readonly deleting = new Map<Digest, Promise<void>>();

  constructor(
    opts: S3BlobStoreOptions,
    private readonly index: BlobIndex,
  ) {
    this.partSize = opts.partSize ?? DEFAULT_PART_SIZE;
    if (!Number.isInteger(this.partSize) || this.partSize < MIN_PART_SIZE || this.partSize > MAX_COPY_BYTES) throw new Error(`S3 partSize must be an integer from ${MIN_PART_SIZE} to ${MAX_COPY_BYTES}`);
    const p = (opts.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.prefix = p ? `${p}/` : '';
    this.bucket = opts.bucket;
    this.staleStageMs = opts.staleStageMs ?? DAY_MS;
    this.listPageSize = opts.listPageSize;
    this.client = makeClient(opts);
  }

  /** `rest` under the store's prefix (upload sessions live under `uploads/`, see uploads.ts). */
  key(rest: string): string {
    return `${this.prefix}${rest}`;
  }

  blobKey(digest: Digest): string {
    return `${this.prefix}blobs/${digest.replace(':', '/')}`;
  }

  stageKey(id: string, part: number): string {
    return `${this.prefix}stages/${id}/${String(part).padStart(5, '0')}`;
  }

  /** Create the bucket when missing; remove stale stages and multipart uploads (see the top). */
  async recover(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket })).catch(async (e: unknown) => {
        if (!isNotFound(e)) throw e;
        await this.client.send(new CreateBucketCommand({ Bucket: this.bucket }));
      });
      const cutoff = Date.now() - this.staleStageMs;
      const stale = (d: Date | undefined) => this.staleStageMs <= 0 || (d !== undefined && d.getTime() < cutoff);
      let keys: string[] = [];
      for await (const o of this.objects(`${this.prefix}stages/`)) {
        if (stale(o.LastModified)) keys.push(o.Key);
        if (keys.length === 1000) keys = await this.deleteKeys(keys);
      }
      await this.deleteKeys(keys);
      let KeyMarker: string | undefined;
      let UploadIdMarker: string | undefined;
      for (let more = true; more; ) {
        const r = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: `${this.prefix}blobs/`, KeyMarker, UploadIdMarker }));
        for (const u of r.Uploads ?? []) {
          if (u.Key && u.UploadId && stale(u.Initiated)) await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
        }
        more = r.IsTruncated === true;
        KeyMarker = r.NextKeyMarker;
        UploadIdMarker = r.NextUploadIdMarker;
      }
    } catch (e) {
      throw storeError(e, 'recover');
    }
  }

  // ---- the port ----------------------------------------------------------------------

  /** Liveness (/healthz): the bucket answers. */
  async ping(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (e) {
      throw storeError(e, 'ping');
    }
  }

  async stat(digest: Digest): Promise<{ size: number } | null> {
    const size = await this.index.blobSize(digest);
    return size === undefined ? null : { size };
  }

  async open(digest: Digest): Promise<S3BlobBody | null> {
    const key = this.blobKey(digest);
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return new S3BlobBody({ client: this.client, bucket: this.bucket, key }, head.ContentLength ?? 0);
    } catch (e) {
      if (isNotFound(e)) return null;
      throw storeError(e, 'HEAD');
    }
  }

  stage(opts: StageOptions): S3Stage {
    return new S3Stage(this, opts);
  }

  async ensureRoom(_bytes: number): Promise<void> {
    // See the top ("Room").
  }

  /** Registered before its first await, so a commit of the same digest waits for it. */
  delete(digest: Digest): Promise<void> {
    const p = this.client
      .send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }))
      .then(() => undefined, (e: unknown) => Promise.reject(storeError(e, 'DELETE')))
      .finally(() => {
        if (this.deleting.get(digest) === p) this.deleting.delete(digest);
      });
    this.deleting.set(digest, p);
    return p;
  }

  async *list(): AsyncIterable<BlobEntry> {
    const root = `${this.prefix}blobs/`;
    try {
      for await (const o of this.objects(root)) {
        const d = o.Key.slice(root.length).replace('/', ':');
        const key = o.Key;
        yield {
          digest: isDigest(d) ? d : null,
          ...(o.LastModified ? { modifiedAt: o.LastModified.getTime() } : {}),
          remove: () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })).then(() => undefined, (e: unknown) => Promise.reject(storeError(e, 'DELETE'))),
        };
      }
    } catch (e) {
      throw storeError(e, 'LIST');
    }
  }

  async verify(digest: Digest): Promise<{ digest: Digest; size: number } | null> {
    const h = new HashingCounter(digestAlgorithm(digest));
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }));
      for await (const c of res.Body as Readable) h.update(c as Buffer);
    } catch (e) {
      if (isNotFound(e)) return null;
      throw storeError(e, 'GET');
    }
    return { digest: h.currentDigest(), size: h.bytes };
  }

  /**
   * A presigned GET of a committed blob, valid `expiresIn` seconds, for clients that can
   * reach the store themselves (distribution's `redirect` option). Signed locally: it
   * does not check that the blob exists (the caller looked it up).
   */
  redirectUrl(digest: Digest, expiresIn: number): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }), { expiresIn });
  }

  // ---- commit (S3StageHost) ------------------------------------------------------------

  /**
   * Another replica deleting this digest's content right now (its row already gone,
   * coordination.ts DeferredDeletes) makes the row refuse (ContentBeingDeleted): wait for
   * that delete, then write the content again, so the delete never removes what this
   * commit recorded. Bounded by the claim's lifetime.
   */
  async commitStaged(c: StagedContent, digest: Digest, link: BlobLink): Promise<void> {
    const deadline = Date.now() + DELETE_CLAIM_TTL_MS + 10_000;
    for (let wait = 50; ; wait = Math.min(wait * 2, 5000)) {
      try {
        return await this.commitOnce(c, digest, link);
      } catch (e) {
        if (!(e instanceof ContentBeingDeleted)) throw e;
        if (Date.now() > deadline) throw new RegistryError('UNAVAILABLE', 'blob content is being deleted by another replica; retry shortly', { status: 503, headers: { 'retry-after': '5' } });
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private async commitOnce(c: StagedContent, digest: Digest, link: BlobLink): Promise<void> {
    for (let pending = this.deleting.get(digest); pending; pending = this.deleting.get(digest)) await pending.catch(() => undefined);
    // Already stored: only link. linkBlob checks the row inside its own change, so a row
    // evicted since any earlier lookup is never re-created without its object: false means
    // gone, and the content is written again below.
    if (await this.index.linkBlob(link.repo, digest, link.provenance)) return;
    const key = this.blobKey(digest);
    try {
      if (c.inline) {
        await sendPart(this.client, new PutObjectCommand({ Bucket: this.bucket, Key: key, ...partInput(c.inline) }));
      } else if (c.sources.length === 1 && !c.sources[0]!.md5 && !c.sources[0]!.range) {
        const [src] = c.sources as [SourceObject];
        await this.client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: key, CopySource: this.copySource(src), CopySourceIfMatch: src.etag }));
      } else {
        await this.assemble(c, key);
      }
    } catch (e) {
      throw storeError(e, 'commit');
    }
    await this.index.recordBlob(link.repo, digest, c.size, link.provenance);
  }

  /** Join the sources into `key` with one multipart upload of server-side copies; aborted on any failure. */
  private async assemble(c: StagedContent, key: string): Promise<void> {
    const { UploadId } = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }));
    try {
      const etags: string[] = [];
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < c.sources.length; i = next++) {
          const src = c.sources[i]!;
          const r = await this.client.send(
            new UploadPartCopyCommand({ Bucket: this.bucket, Key: key, UploadId, PartNumber: i + 1, CopySource: this.copySource(src), CopySourceIfMatch: src.etag, CopySourceRange: src.range }),
          );
          etags[i] = r.CopyPartResult?.ETag ?? '';
          // A part's ETag is the MD5 of the bytes copied: anything else was not what was hashed.
          if (src.md5 && etags[i]!.replace(/"/g, '') !== src.md5) throw Object.assign(new Error('copied part differs'), { name: 'CopiedPartChanged' });
        }
      };
      await Promise.all(Array.from({ length: Math.min(COPY_CONCURRENCY, c.sources.length) }, worker));
      // Ceph 16 answers CompleteMultipartUpload with an empty ETag (a known bug): nothing here uses it.
      await this.client.send(
        new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId, MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) } }),
      );
    } catch (e) {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId })).catch(() => undefined);
      throw e;
    }
  }

  private copySource(src: SourceObject): string {
    return `${this.bucket}/${src.key}`;
  }

  // ---- helpers -------------------------------------------------------------------------

  private async *objects(prefix: string): AsyncIterable<{ Key: string; LastModified?: Date }> {
    let ContinuationToken: string | undefined;
    do {
      const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken, MaxKeys: this.listPageSize }));
      for (const o of r.Contents ?? []) if (o.Key) yield { Key: o.Key, ...(o.LastModified ? { LastModified: o.LastModified } : {}) };
      ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  /** Delete up to 1000 keys in one request; returns a fresh batch. */
  private async deleteKeys(keys: string[]): Promise<string[]> {
    if (keys.length > 0) await this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } }));
    return [];
  }

  /** Release the client's sockets. */
  close(): void {
    this.client.destroy();
  }
}
