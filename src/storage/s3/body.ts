/**
 * S3 driver: reading objects. A committed blob is served with ranged GETs straight from
 * the store (no local copy, so no positional fast path); every range is checked for
 * length, so a read cut short (the object deleted and reclaimed mid-read, a dropped
 * connection) fails with an error instead of passing for the whole range.
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Readable } from 'node:stream';
import type { BlobBody, PositionalReader } from '../ports.js';
import { isNotFound, storeError } from './client.js';

export interface ObjectRef {
  client: S3Client;
  bucket: string;
  key: string;
}

/** An error with code ENOENT: what stage readers report for content that is gone. */
export function gone(what: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${what} is gone from the object store`), { code: 'ENOENT' });
}

/** The response body of a GET of [start, end] (inclusive), or null when the object is not there. */
async function get(o: ObjectRef, start: number, end: number): Promise<Readable | null> {
  try {
    const res = await o.client.send(new GetObjectCommand({ Bucket: o.bucket, Key: o.key, Range: `bytes=${start}-${end}` }));
    return res.Body as Readable;
  } catch (e) {
    if (isNotFound(e)) return null;
    throw storeError(e, 'GET');
  }
}

/** Bytes [start, end] of the object as a stream; fails unless exactly that many arrive. */
export function rangeStream(o: ObjectRef, start: number, end: number): Readable {
  const expected = end - start + 1;
  async function* gen(): AsyncGenerator<Buffer> {
    const body = await get(o, start, end);
    if (!body) throw gone('blob content');
    let n = 0;
    try {
      for await (const c of body) {
        n += (c as Buffer).length;
        if (n > expected) throw new Error(`object store sent more than the ${expected} bytes asked for`);
        yield c as Buffer;
      }
    } catch (e) {
      throw storeError(e, 'GET');
    }
    if (n !== expected) throw storeError(Object.assign(new Error('short read'), { code: `SHORT_READ ${n}/${expected}` }), 'GET');
  }
  return Readable.from(gen(), { objectMode: false });
}

/** Read up to `length` bytes at `position` into `buf`; 0 at or past the end; null when the object is not there. */
export async function readInto(o: ObjectRef, buf: Buffer, length: number, position: number, size: number): Promise<number | null> {
  const end = Math.min(position + length, size) - 1;
  if (end < position) return 0;
  const body = await get(o, position, end);
  if (!body) return null;
  let n = 0;
  try {
    for await (const c of body) {
      const chunk = c as Buffer;
      if (n + chunk.length > length) throw new Error('object store sent more than asked for');
      chunk.copy(buf, n);
      n += chunk.length;
    }
  } catch (e) {
    throw storeError(e, 'GET');
  }
  return n;
}

export class S3BlobBody implements BlobBody {
  constructor(
    private readonly o: ObjectRef,
    readonly size: number,
  ) {}

  stream(start: number, end: number): Readable {
    return rangeStream(this.o, start, end);
  }

  positional(): PositionalReader | null {
    return null;
  }

  async close(): Promise<void> {
    // Nothing held: each stream is its own request, ended or destroyed by its consumer.
  }
}
