/**
 * Bytes of small blobs (config blobs, small layers) kept in memory by digest, so a GET of
 * one costs no file open/read/close (three threadpool round trips, most of such a
 * request's CPU). Content is immutable per digest and the bytes are hashed once when
 * loaded (a damaged file is never kept: it is served as before, from the file, and
 * `regmirror fsck` finds it), so bytes kept here are right for as long as the digest is
 * served. Whether it may be served is still decided per request by the repository link
 * lookup (never kept here; the metadata read cache keeps it only under its rule, see
 * storage/readcache.ts), so a deleted, unlinked or evicted blob is never answered from memory.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { type Digest, digestAlgorithm, digestHex } from '../registry/names.js';
import type { BlobBody } from '../storage/ports.js';

/** Blobs up to this size are kept; larger ones are streamed (sendfile.ts). */
export const SMALL_BLOB_MAX_BYTES = 64 * 1024;

export class SmallBlobCache {
  private readonly lru: LRUCache<Digest, Buffer>;

  constructor(maxBytes = 16 * 1024 * 1024) {
    this.lru = new LRUCache<Digest, Buffer>({ maxSize: maxBytes, sizeCalculation: (b) => b.length + 64 });
  }

  /** The cached bytes, when they are the `size` bytes the metadata says. */
  get(digest: Digest, size: number): Buffer | undefined {
    const b = this.lru.get(digest);
    return b && b.length === size ? b : undefined;
  }

  /** The cached bytes of `digest`, whatever the size (the caller compares it with the store's). */
  peek(digest: Digest): Buffer | undefined {
    return this.lru.get(digest);
  }

  /**
   * Read a small opened body whole and keep it; undefined (nothing kept) when the driver
   * has no positional reads, or the content is not `size` bytes that hash to `digest`.
   */
  async load(digest: Digest, body: BlobBody, size: number): Promise<Buffer | undefined> {
    const r = body.positional();
    if (!r || size > SMALL_BLOB_MAX_BYTES) return undefined;
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = await r.read(buf.subarray(got), size - got, got);
      if (n === 0) return undefined;
      got += n;
    }
    // One byte more would mean the content is longer than recorded: do not keep it.
    if ((await r.read(Buffer.allocUnsafe(1), 1, size)) !== 0) return undefined;
    if (createHash(digestAlgorithm(digest)).update(buf).digest('hex') !== digestHex(digest)) return undefined;
    this.lru.set(digest, buf);
    return buf;
  }

  delete(digest: Digest): void {
    this.lru.delete(digest);
  }
}
