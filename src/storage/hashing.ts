/**
 * Hashing and write batching shared by the local driver's writers (stages, upload
 * sessions) and fsck.
 */
import { createHash, type Hash } from 'node:crypto';
import fsCb, { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Digest, DigestAlgorithm } from '../registry/names.js';

const READ_CHUNK_BYTES = 1024 * 1024;
const WRITE_BATCH_BYTES = 1024 * 1024;

/** A pass-through that hashes and counts what flows through it. */
export class HashingCounter extends Transform {
  readonly hash: Hash;
  bytes = 0;
  constructor(readonly algorithm: DigestAlgorithm, hash?: Hash) {
    super();
    this.hash = hash ?? createHash(algorithm);
  }
  clone(): HashingCounter {
    const c = new HashingCounter(this.algorithm, this.hash.copy());
    c.bytes = this.bytes;
    return c;
  }
  /** Account for bytes written elsewhere (used by upload sessions). */
  update(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }
  /** The digest so far, without ending the running hash. */
  currentDigest(): Digest {
    return `${this.algorithm}:${this.hash.copy().digest('hex')}` as Digest;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.update(chunk);
    cb(null, chunk);
  }
}

export async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export type SinkTarget =
  /** Open `path` with `flags` ('w', 'a'); the sink closes it. */
  | { path: string; flags: string }
  /** Write at `position` of an open descriptor the caller owns (and closes). */
  | { fd: number; position: number };

function writevOnce(fd: number, bufs: Buffer[], position: number | null): Promise<number> {
  return new Promise((resolve, reject) => {
    const done = (e: NodeJS.ErrnoException | null, n: number) => (e ? reject(e) : resolve(n));
    if (position === null) fsCb.writev(fd, bufs, done);
    else fsCb.writev(fd, bufs, position, done);
  });
}

/**
 * A file sink that gathers chunks by reference and writes each ~1 MiB batch with one
 * writev. Every file write is a round trip to the libuv threadpool, and waking a pool
 * thread costs about as much as copying 64 KiB (over a quarter of the event loop's time on
 * a 256 MiB push arriving in 64 KiB chunks); joining the chunks into one buffer first cost
 * a copy of every byte (a sixth of the server's CPU on an import). One batch is written at
 * a time; the stream's own buffer (4 batches) keeps the producer busy meanwhile.
 */
export function batchedFileSink(target: SinkTarget): Writable {
  let fd: number | null = 'fd' in target ? target.fd : null;
  const owned = fd === null;
  let position: number | null = 'fd' in target ? target.position : null;
  let parts: Buffer[] = [];
  let pending = 0;
  const flush = async (): Promise<void> => {
    let bufs = parts;
    parts = [];
    pending = 0;
    while (bufs.length > 0) {
      let n = await writevOnce(fd!, bufs, position);
      if (position !== null) position += n;
      // A short write (rare on regular files): continue with what is left.
      let i = 0;
      while (i < bufs.length && n >= bufs[i]!.length) n -= bufs[i++]!.length;
      bufs = bufs.slice(i);
      if (n > 0) bufs[0] = bufs[0]!.subarray(n);
    }
  };
  const add = (chunk: Buffer, cb: (e?: Error | null) => void) => {
    parts.push(chunk);
    pending += chunk.length;
    if (pending < WRITE_BATCH_BYTES) cb();
    else flush().then(() => cb(), cb);
  };
  return new Writable({
    highWaterMark: 4 * WRITE_BATCH_BYTES,
    construct(cb) {
      if (!owned) return cb();
      const { path, flags } = target as { path: string; flags: string };
      fsCb.open(path, flags, 0o666, (e, opened) => {
        fd = opened;
        cb(e);
      });
    },
    write(chunk: Buffer, _e, cb) {
      add(chunk, cb);
    },
    writev(chunks, cb) {
      for (const c of chunks.slice(0, -1)) {
        parts.push(c.chunk as Buffer);
        pending += (c.chunk as Buffer).length;
      }
      add(chunks[chunks.length - 1]!.chunk as Buffer, cb);
    },
    final(cb) {
      flush().then(() => cb(), cb);
    },
    destroy(err, cb) {
      if (!owned || fd === null) return cb(err);
      fsCb.close(fd, (e) => cb(err ?? e));
      fd = null;
    },
  });
}

export async function hashFile(file: string, algorithm: DigestAlgorithm): Promise<{ digest: Digest; size: number }> {
  const h = new HashingCounter(algorithm);
  await pipeline(createReadStream(file, { highWaterMark: READ_CHUNK_BYTES }), h, async function* (src) {
    for await (const _ of src) void _;
  });
  return { digest: `${algorithm}:${h.hash.digest('hex')}` as Digest, size: h.bytes };
}
