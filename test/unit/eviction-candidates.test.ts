/**
 * Eviction candidates in compact columns (storage/local/candidates.ts): what the scan
 * worker transfers to the main thread instead of ~49,000 cloned objects at a million blobs.
 * The order is the Evictor's (oldest access first; ties: images, then each list's order).
 */
import { MessageChannel } from 'node:worker_threads';
import test from 'ava';
import { packCandidates, transferList, unpackCandidates, type PackedCandidates } from '../../src/storage/local/candidates.js';
import type { CandidateList } from '../../src/storage/ports.js';

const sha256 = (i: number) => `sha256:${i.toString(16).padStart(64, '0')}`;
const sha512 = (i: number) => `sha512:${i.toString(16).padStart(128, 'a')}`;

function all(l: CandidateList): unknown[] {
  return Array.from({ length: l.length }, (_, i) => l.at(i));
}

test('packed candidates come back in last-access order with their digests, repositories and kinds', (t) => {
  const images = [
    { repo: 3, digest: sha256(1), lastAccess: 50 },
    { repo: 1, digest: sha512(2), lastAccess: 10 },
    { repo: 2 ** 40, digest: sha256(3), lastAccess: 30 },
    { repo: 7, digest: sha256(4), lastAccess: 30 },
  ];
  const loose = [
    { repo: 9, digest: sha256(5), lastAccess: 30 },
    { repo: 4, digest: sha256(6), lastAccess: 1_764_000_000_000 },
    { repo: 5, digest: sha256(7), lastAccess: 5 },
  ];
  const got = all(unpackCandidates(packCandidates(images, loose)));
  t.deepEqual(got, [
    { kind: 'blob', repo: 5, digest: sha256(7), lastAccess: 5 },
    { kind: 'image', repo: 1, digest: sha512(2), lastAccess: 10 },
    // Ties at 30: images before loose links, each in its list's order.
    { kind: 'image', repo: 2 ** 40, digest: sha256(3), lastAccess: 30 },
    { kind: 'image', repo: 7, digest: sha256(4), lastAccess: 30 },
    { kind: 'blob', repo: 9, digest: sha256(5), lastAccess: 30 },
    { kind: 'image', repo: 3, digest: sha256(1), lastAccess: 50 },
    { kind: 'blob', repo: 4, digest: sha256(6), lastAccess: 1_764_000_000_000 },
  ]);
});

test('an empty pass packs to an empty list; reading past the end is an error, not undefined fields', (t) => {
  const l = unpackCandidates(packCandidates([], []));
  t.is(l.length, 0);
  t.throws(() => l.at(0), { instanceOf: RangeError });
  const one = unpackCandidates(packCandidates([{ repo: 1, digest: sha256(1), lastAccess: 1 }], []));
  t.throws(() => one.at(1), { instanceOf: RangeError });
  t.throws(() => one.at(-1), { instanceOf: RangeError });
});

test('the columns survive a postMessage with their buffers transferred (moved, not copied)', async (t) => {
  const images = Array.from({ length: 1000 }, (_, i) => ({ repo: i % 17, digest: sha256(i), lastAccess: (i * 7919) % 1000 }));
  const loose = Array.from({ length: 500 }, (_, i) => ({ repo: 1, digest: sha256(10_000 + i), lastAccess: i * 2 }));
  const packed = packCandidates(images, loose);
  const want = all(unpackCandidates(packCandidates(images, loose)));
  const { port1, port2 } = new MessageChannel();
  t.teardown(() => port1.close());
  const received = new Promise<PackedCandidates>((resolve) => port2.once('message', resolve));
  port1.postMessage(packed, transferList(packed));
  t.is(packed.digests.byteLength, 0, 'the sender no longer holds the digests: moved');
  t.is(packed.lastAccess.length, 0, 'nor the times');
  const got = unpackCandidates(await received);
  t.is(got.length, 1500);
  t.deepEqual(all(got), want);
  const times = all(got).map((c) => (c as { lastAccess: number }).lastAccess);
  t.true(times.every((v, i) => i === 0 || times[i - 1]! <= v), 'oldest first');
});
