/**
 * PartBuffer (src/storage/s3/partbuf.ts): the S3 driver's part being filled, in 1 MiB slabs.
 * Whatever the chunking (within a slab, across slabs, across parts), every part handed off
 * holds exactly its slice of the input and the SHA-256 of exactly those bytes
 * (the PUT is signed with it and the store refuses a mismatch), and a tail handed out by
 * peek() stays unchanged while later bytes arrive. The PUTs themselves on a real RGW:
 * test/storage/blobstore-s3.test.ts.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { type Part, PartBuffer } from '../../src/storage/s3/partbuf.js';

const PART = 3 * 1024 * 1024 + 5; // three slabs and a bit: parts that span slabs
const hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Feed `data` in chunks of `chunk` bytes the way the stage does; the parts cut, then the tail. */
function cut(data: Buffer, chunk: number, partSize: number) {
  const buf = new PartBuffer(partSize);
  const parts: { body: Buffer; sha256: string }[] = [];
  for (let i = 0; i < data.length; i += chunk) {
    const c = data.subarray(i, i + chunk);
    for (let off = buf.add(c); buf.full; off += buf.add(c, off)) parts.push(body(buf.take()));
  }
  return { parts, tail: body(buf.peek()) };
}

/** A part's slabs joined, checking the length it claims. */
function body(p: Part): { body: Buffer; sha256: string } {
  const b = Buffer.concat(p.chunks);
  if (b.length !== p.length) throw new Error(`part claims ${p.length} bytes, holds ${b.length}`);
  return { body: b, sha256: p.sha256 };
}

for (const size of [0, 1, PART - 1, PART, PART + 1, 2 * PART + 777]) {
  for (const chunk of [65_536, 999_983, PART, 3 * PART]) {
    {
      test(`size ${size}, chunks of ${chunk}: parts are the input's slices with their SHA-256`, (t) => {
        const data = randomBytes(size);
        const { parts, tail } = cut(data, chunk, PART);
        t.is(parts.length, Math.floor(size / PART));
        parts.forEach((p, i) => {
          t.true(p.body.equals(data.subarray(i * PART, (i + 1) * PART)), `part ${i + 1} bytes`);
          t.is(p.sha256, hex(p.body), `part ${i + 1} hash`);
        });
        const rest = data.subarray(parts.length * PART);
        t.true(tail.body.equals(rest), 'tail bytes');
        t.is(tail.sha256, hex(rest), 'tail hash');
      });
    }
  }
}

test('a peeked tail is unchanged by later adds, and parts never share bytes', (t) => {
  const data = randomBytes(2 * PART);
  const buf = new PartBuffer(PART);
  buf.add(data.subarray(0, 1000));
  const early = body(buf.peek());
  const copy = Buffer.from(early.body);
  const earlyViews = buf.peek();
  buf.add(data.subarray(1000, PART));
  t.true(buf.full);
  const first = buf.take();
  buf.add(data.subarray(PART, PART + 10));
  t.true(body(earlyViews).body.equals(copy), 'peeked views unchanged');
  t.is(early.sha256, hex(copy));
  t.true(body(first).body.equals(data.subarray(0, PART)), 'handed-off part unchanged by the next part');
  t.is(buf.bytes, 10);
  t.is(buf.add(data, 0), PART - 10, 'takes only up to a full part');
});
