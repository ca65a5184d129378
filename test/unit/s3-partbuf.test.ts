/**
 * PartBuffer (src/storage/s3/partbuf.ts): the S3 driver's part being filled. Whatever the
 * chunking and whatever size was announced (none, exact, too small, too large), every part
 * handed off holds exactly its slice of the input and the SHA-256 of exactly those bytes
 * (the PUT is signed with it and the store refuses a mismatch), and a tail handed out by
 * peek() stays unchanged while later bytes arrive. The PUTs themselves on a real RGW:
 * test/storage/blobstore-s3.test.ts.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { PartBuffer } from '../../src/storage/s3/partbuf.js';

const PART = 64 * 1024;
const hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Feed `data` in chunks of `chunk` bytes the way the stage does; the parts cut, then the tail. */
function cut(data: Buffer, chunk: number, expected: number | undefined) {
  const buf = new PartBuffer(PART, expected);
  const parts: { body: Buffer; sha256: string }[] = [];
  let done = 0;
  for (let i = 0; i < data.length; i += chunk) {
    const c = data.subarray(i, i + chunk);
    for (let off = buf.add(c); buf.full; off += buf.add(c, off)) {
      done += PART;
      parts.push(buf.take(expected === undefined ? undefined : Math.max(0, expected - done)));
    }
  }
  return { parts, tail: buf.peek() };
}

for (const size of [0, 1, PART - 1, PART, PART + 1, 3 * PART + 777]) {
  for (const chunk of [1000, PART, 3 * PART]) {
    for (const expected of new Set([undefined, size, Math.floor(size / 3), size * 2])) {
      test(`size ${size}, chunks of ${chunk}, expected ${expected}: parts are the input's slices with their SHA-256`, (t) => {
        const data = randomBytes(size);
        const { parts, tail } = cut(data, chunk, expected);
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

test('a peeked tail is unchanged by later adds, growth of the buffer included, and its parts never share bytes', (t) => {
  const data = randomBytes(2 * PART);
  const buf = new PartBuffer(PART, 100); // fewer bytes announced than come: the buffer grows (copies)
  buf.add(data.subarray(0, 1000));
  const early = buf.peek();
  const copy = Buffer.from(early.body);
  buf.add(data.subarray(1000, PART));
  t.true(buf.full);
  const first = buf.take();
  buf.add(data.subarray(PART, PART + 10));
  t.true(early.body.equals(copy), 'peeked view unchanged');
  t.is(early.sha256, hex(copy));
  t.true(first.body.equals(data.subarray(0, PART)), 'handed-off part unchanged by the next part');
  t.is(buf.bytes, 10);
  t.is(buf.add(data, 0), PART - 10, 'takes only up to a full part');
});
