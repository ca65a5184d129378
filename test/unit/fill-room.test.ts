/**
 * The fill's room check (507 before any response header when a blob cannot fit) reads the
 * free space while the upstream request is in flight, not after its headers, so the check
 * costs no thread-pool round trip on the first-byte path. These tests pin what that
 * reading must still honour: bytes other fills wrote since it was taken count as used, and
 * a reading older than `roomProbeMaxAgeMs` (1 s) is not trusted (the store is asked again).
 * A real LocalBlobStore; only its free-space answers are stubbed.
 */
import { createHash } from 'node:crypto';
import test, { type ExecutionContext } from 'ava';
import pino from 'pino';
import { FillManager, type FillSource } from '../../src/cache/fill.js';
import { RegistryError } from '../../src/registry/errors.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { tempLocalStore } from '../helpers/localstore.js';

const MiB = 1024 * 1024;
const repo = 'library/room' as RepoName;

function blob(label: string, size: number): { bytes: Buffer; digest: Digest } {
  const bytes = Buffer.alloc(size, label);
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest };
}

/** A source whose response waits for `gate` (the upstream request in flight). */
function heldSource(b: { bytes: Buffer }, gate: Promise<void> = Promise.resolve()): FillSource {
  return {
    async open() {
      await gate;
      return { size: b.bytes.length, body: (async function* () { for (let o = 0; o < b.bytes.length; o += 256 * 1024) yield b.bytes.subarray(o, o + 256 * 1024); })() };
    },
  };
}

async function setup(t: ExecutionContext, free: number) {
  const { blobs } = await tempLocalStore(t, 'fill-room');
  const calls = { freeBytes: 0, ensureRoom: [] as number[] };
  // What the file system would answer; the real statfs of the temp dir is not under test.
  blobs.freeBytes = async () => {
    calls.freeBytes++;
    return free;
  };
  blobs.ensureRoom = async (bytes: number) => {
    calls.ensureRoom.push(bytes);
    if (bytes > free) throw new RegistryError('UNAVAILABLE', 'full', { status: 507 });
  };
  const fills = new FillManager(blobs, pino({ level: 'silent' }), Number.MAX_SAFE_INTEGER);
  // However slow this machine is, the readings below stay fresh unless a test says otherwise.
  fills.roomProbeMaxAgeMs = 10 * 60_000;
  return { fills, calls };
}

test('the room check uses the free space read while the upstream request was in flight', async (t) => {
  const { fills, calls } = await setup(t, 10 * MiB);
  const b = blob('a', 4 * MiB);
  let answer!: () => void;
  const f = fills.fill(b.digest, repo, 'up|library/room', heldSource(b, new Promise<void>((r) => (answer = r))));
  t.is(calls.freeBytes, 1, 'read when the fill started, before the upstream answered');
  answer();
  await f.done;
  t.deepEqual(calls.ensureRoom, [], 'no second reading after the response headers');
  t.is(f.written, b.bytes.length);
});

test('bytes other fills wrote since the reading count as used: a blob that no longer fits gets 507', async (t) => {
  const { fills, calls } = await setup(t, 10 * MiB);
  const late = blob('b', 6 * MiB);
  let answer!: () => void;
  // Its reading says 10 MiB free; its upstream answers only after another fill wrote 5 MiB.
  const f = fills.fill(late.digest, repo, 'up|library/room', heldSource(late, new Promise<void>((r) => (answer = r))));
  const other = blob('c', 5 * MiB);
  await fills.fill(other.digest, repo, 'up|library/room', heldSource(other)).done;
  answer();
  const err = await t.throwsAsync(f.ready);
  t.is((err as RegistryError).status, 507, '10 MiB free minus 5 MiB written leaves no room for 6 MiB');
  await t.throwsAsync(f.done);
  t.is(f.written, 0, 'refused before any byte was stored');
  t.deepEqual(calls.ensureRoom, [], 'decided from the reading taken at the start');
});

test('a reading older than roomProbeMaxAgeMs is not trusted: the store is asked again', async (t) => {
  const { fills, calls } = await setup(t, 10 * MiB);
  fills.roomProbeMaxAgeMs = 0; // any upstream answer comes later than that
  const b = blob('d', 2 * MiB);
  let answer!: () => void;
  const f = fills.fill(b.digest, repo, 'up|library/room', heldSource(b, new Promise<void>((r) => (answer = r))));
  await new Promise<void>((r) => setImmediate(r)); // at least one turn of the loop: the reading is older than 0 ms
  answer();
  await f.done;
  t.deepEqual(calls.ensureRoom, [b.bytes.length], 'checked again with the blob size');
});
