/**
 * S3 driver: the part being filled, for stages (stage.ts) and upload sessions (uploads.ts).
 * Each appended chunk is copied into one part buffer and hashed (SHA-256) as it arrives,
 * so handing a full part to the SDK costs the event loop nothing more. Before, a full
 * 16 MiB part was one Buffer.concat, and the SDK's SigV4 signer hashed the whole Buffer
 * body in one synchronous call at send time: together tens of ms during which the replica
 * answered nothing, also not its peers' streams of the same fill (issue #13,
 * bench/results/ttfb-nonowner-4.md). The running hash is sent as the signed
 * `x-amz-content-sha256` (`payloadSha256` in client.ts): the signer uses it as is and the
 * store checks it against the bytes it received, so a part corrupted on the way is still
 * refused, as when the SDK hashed it.
 */
import { createHash, type Hash } from 'node:crypto';

/** A part's bytes and their SHA-256 (hex). */
export interface Part {
  body: Buffer;
  sha256: string;
}

/** First buffer of a part whose size is not known beforehand; it doubles up to the part size. */
const UNKNOWN_SIZE_START = 1024 * 1024;

export class PartBuffer {
  /** Bytes in the current part. */
  bytes = 0;
  private buf: Buffer | null = null;
  private hash: Hash = createHash('sha256');

  /** `expected`: bytes this part will probably hold (sizes the buffer; more are taken too), undefined if unknown. */
  constructor(
    private readonly partSize: number,
    private expected?: number,
  ) {}

  get full(): boolean {
    return this.bytes === this.partSize;
  }

  /** Copies what fits of `chunk` from `offset` (up to a full part); returns how many bytes it took. */
  add(chunk: Buffer, offset = 0): number {
    const take = Math.min(this.partSize - this.bytes, chunk.length - offset);
    if (take <= 0) return 0;
    const piece = offset === 0 && take === chunk.length ? chunk : chunk.subarray(offset, offset + take);
    const buf = this.room(this.bytes + take);
    piece.copy(buf, this.bytes);
    this.hash.update(piece);
    this.bytes += take;
    return take;
  }

  /** The bytes so far and their hash; later adds go past them, so the view stays valid while it is sent. */
  peek(): Part {
    return { body: this.view(), sha256: this.hash.copy().digest('hex') };
  }

  /** The bytes so far, handed off (never written again); the buffer starts a new, empty part (`expected` bytes, if known). */
  take(expected?: number): Part {
    const out = { body: this.view(), sha256: this.hash.digest('hex') };
    this.buf = null;
    this.bytes = 0;
    this.hash = createHash('sha256');
    this.expected = expected;
    return out;
  }

  /** Drop the bytes (an aborted stage): nothing else is sent from this buffer. */
  clear(): void {
    this.buf = null;
    this.bytes = 0;
    this.hash = createHash('sha256');
  }

  private view(): Buffer {
    return this.buf ? this.buf.subarray(0, this.bytes) : Buffer.alloc(0);
  }

  /**
   * A buffer of at least `need` bytes holding the part so far. Sized for the expected bytes
   * when known (a fill knows its blob's size: one allocation, no copy); otherwise grown by
   * doubling, so a small blob does not reserve a whole part.
   */
  private room(need: number): Buffer {
    if (this.buf && this.buf.length >= need) return this.buf;
    const want = this.buf ? this.buf.length * 2 : (this.expected ?? UNKNOWN_SIZE_START);
    // allocUnsafeSlow: its own memory (not the shared pool slab), never read before written.
    const next = Buffer.allocUnsafeSlow(Math.min(this.partSize, Math.max(need, want)));
    if (this.buf) this.buf.copy(next, 0, 0, this.bytes);
    this.buf = next;
    return next;
  }
}
