/**
 * S3 driver: the part being filled, for stages (stage.ts) and upload sessions (uploads.ts).
 * Each appended chunk is copied into 1 MiB slabs and hashed (SHA-256) as it arrives; a part
 * is sent as a stream of its slabs, signed with that hash (`sendPart`). Before, a full
 * 16 MiB part was one Buffer.concat, the SDK's SigV4 signer hashed the whole Buffer body in
 * one synchronous call, and the socket took the 16 MiB in one synchronous write: together
 * tens to hundreds of ms during which the replica answered nothing, also not its peers'
 * streams of the same fill (issue #13, bench/results/ttfb-nonowner-4.md). Slabs, not one
 * part-sized buffer: a 16 MiB allocation at a fill's start made V8 collect garbage inside
 * the first-byte window (measured there), and growing one buffer means copies.
 *
 * Integrity is as before: the hash goes out as the signed `x-amz-content-sha256`, and the
 * store recomputes it over the body and refuses a mismatch (XAmzContentSHA256Mismatch).
 */
import type { PutObjectCommand, PutObjectCommandOutput, S3Client, UploadPartCommand, UploadPartCommandOutput } from '@aws-sdk/client-s3';
import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';

/** A part's bytes (in order), their total and their SHA-256 (hex). */
export interface Part {
  chunks: Buffer[];
  length: number;
  sha256: string;
}

const SLAB = 1024 * 1024;

export class PartBuffer {
  /** Bytes in the current part. */
  bytes = 0;
  private slabs: Buffer[] = [];
  /** Bytes used in the last slab. */
  private inLast = 0;
  private hash: Hash = createHash('sha256');

  constructor(private readonly partSize: number) {}

  get full(): boolean {
    return this.bytes === this.partSize;
  }

  /** Copies what fits of `chunk` from `offset` (up to a full part); returns how many bytes it took. */
  add(chunk: Buffer, offset = 0): number {
    const want = Math.min(this.partSize - this.bytes, chunk.length - offset);
    let taken = 0;
    while (taken < want) {
      let last = this.slabs[this.slabs.length - 1];
      if (!last || this.inLast === last.length) {
        // allocUnsafeSlow: its own memory (not the shared pool slab), never read before written.
        last = Buffer.allocUnsafeSlow(Math.min(SLAB, this.partSize - this.bytes));
        this.slabs.push(last);
        this.inLast = 0;
      }
      const n = Math.min(want - taken, last.length - this.inLast);
      const piece = chunk.subarray(offset + taken, offset + taken + n);
      piece.copy(last, this.inLast);
      this.hash.update(piece);
      this.inLast += n;
      this.bytes += n;
      taken += n;
    }
    return taken;
  }

  /** The bytes so far and their hash; later adds go past them, so the views stay valid while they are sent. */
  peek(): Part {
    return { chunks: this.views(), length: this.bytes, sha256: this.hash.copy().digest('hex') };
  }

  /** The bytes so far, handed off (never written again); the buffer starts a new, empty part. */
  take(): Part {
    const out = { chunks: this.views(), length: this.bytes, sha256: this.hash.digest('hex') };
    this.clear();
    return out;
  }

  /** Drop the bytes (an aborted stage): nothing else is sent from this buffer. */
  clear(): void {
    this.slabs = [];
    this.inLast = 0;
    this.bytes = 0;
    this.hash = createHash('sha256');
  }

  private views(): Buffer[] {
    const n = this.slabs.length;
    return n === 0 ? [] : [...this.slabs.slice(0, n - 1), this.slabs[n - 1]!.subarray(0, this.inLast)];
  }
}

/**
 * Send `cmd` (a PutObject or UploadPart whose Body is `part`, see `partInput`) with `part`
 * streamed from its slabs (a new stream per attempt, so the SDK's retries resend it whole)
 * and signed with its SHA-256 instead of the SDK hashing the body.
 */
export function sendPart(client: S3Client, cmd: PutObjectCommand): Promise<PutObjectCommandOutput>;
export function sendPart(client: S3Client, cmd: UploadPartCommand): Promise<UploadPartCommandOutput>;
export function sendPart(client: S3Client, cmd: PutObjectCommand | UploadPartCommand): Promise<unknown> {
  const part = (cmd.input as { Body?: unknown }).Body;
  if (!(part instanceof PartBody)) throw new Error('sendPart: the command body must be partInput()');
  // The middleware only touches the HTTP request, the same for both commands.
  const stack = cmd.middlewareStack as unknown as PutObjectCommand['middlewareStack'];
  stack.add(
    (next) => (args) => {
      // Before signing: SigV4 takes a present x-amz-content-sha256 as the payload hash.
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers) req.headers['x-amz-content-sha256'] = part.part.sha256;
      return next(args);
    },
    { step: 'build', name: 'regmirrorPayloadSha256' },
  );
  stack.add(
    (next) => (args) => {
      // After the retry step (finalizeRequest): each attempt gets a fresh stream of the slabs,
      // on a copy of the request, so the retry step still sees a body it may send again
      // (it gives up on a request whose body is a stream).
      const req = args.request as object;
      const copy = Object.assign(Object.create(Object.getPrototypeOf(req) as object) as object, req, { body: Readable.from(part.part.chunks, { objectMode: false }) });
      return next({ ...args, request: copy });
    },
    { step: 'deserialize', name: 'regmirrorPartStream' },
  );
  return client.send(cmd as PutObjectCommand);
}

/** The Body and ContentLength of a command sent with `sendPart`. */
export function partInput(part: Part): { Body: Uint8Array; ContentLength: number } {
  return { Body: new PartBody(part), ContentLength: part.length };
}

/**
 * A placeholder body carrying the part (empty: never sent, never hashed, as the payload
 * hash header is set); sendPart sends a fresh stream of the part per attempt instead.
 */
class PartBody extends Uint8Array {
  constructor(readonly part: Part) {
    super(0);
  }
}
