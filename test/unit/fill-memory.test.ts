/**
 * One memory budget for all fills (cache/blobfill.ts FillMemory, issue #14 item 3): three
 * concurrent fills onto a slow disk hold, together, about FILL_MEMORY of chunks (not yet
 * written plus recent windows), where a window per fill let each hold up to 4 MiB written
 * plus whatever its stage had queued (up to 32 MiB on a busy machine). The guarantees stay:
 * a reader that falls behind the window reads the staged file and gets exact bytes, every
 * blob commits under its digest, and a failed write still fails its fill.
 * A real LocalBlobStore; only the temp files' writes are slowed down (a busy disk).
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import test, { type ExecutionContext } from 'ava';
import pino from 'pino';
import { FILL_MEMORY, type BlobFill } from '../../src/cache/blobfill.js';
import { FillManager, type FillSource } from '../../src/cache/fill.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { LocalBlobStore } from '../../src/storage/blobs.js';
import { tempLocalStore } from '../helpers/localstore.js';
import type { BlobWriter, StageOptions } from '../../src/storage/ports.js';

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;
const repo = 'library/mem' as RepoName;

function blob(seed: number, size: number): { bytes: Buffer; digest: Digest } {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) bytes.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest };
}

async function setup(t: ExecutionContext) {
  const { blobs } = await tempLocalStore(t, 'fill-memory');
  return { blobs, fills: new FillManager(blobs, pino({ level: 'silent' }), Number.MAX_SAFE_INTEGER) };
}

/** The store's stage, its temp file's writes made slow (each batch `delayMs`) or failing. */
function slowStage(blobs: LocalBlobStore, delayMs: number, failAfter = Number.POSITIVE_INFINITY): (opts: StageOptions) => BlobWriter {
  return (opts) => {
    const st = blobs.stage(opts);
    const inner = st as unknown as { opening: Promise<FileHandle> };
    let written = 0;
    inner.opening = inner.opening.then(
      (fh) =>
        new Proxy(fh, {
          get(target, prop) {
            if (prop === 'writev') {
              return async (bufs: Buffer[], pos: number) => {
                await new Promise((r) => setTimeout(r, delayMs));
                if (written >= failAfter) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
                const r = await target.writev(bufs, pos);
                written += r.bytesWritten;
                return r;
              };
            }
            const v = Reflect.get(target, prop, target) as unknown;
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          },
        }),
    );
    return st;
  };
}

/** An upstream body in 64 KiB reads, one per turn of the event loop (like socket reads); `onChunk` samples. */
function source(b: { bytes: Buffer }, stage: FillSource['stage'], onChunk: () => void): FillSource {
  return {
    stage,
    async open(offset: number) {
      const body = (async function* () {
        for (let o = offset; o < b.bytes.length; o += CHUNK) {
          await new Promise<void>((r) => setImmediate(r));
          onChunk();
          // A copy, as a socket read is: the chunk's memory is the fill's to keep or drop.
          yield Buffer.from(b.bytes.subarray(o, o + CHUNK));
        }
      })();
      return { size: b.bytes.length, body };
    },
  };
}

/** Read [0, size) through the fill's reader, pausing now and then (falls behind the window). */
async function slowRead(f: BlobFill, size: number): Promise<{ digest: string; fileOpens: number }> {
  let fileOpens = 0;
  const open = f.openFile.bind(f);
  f.openFile = () => {
    fileOpens++;
    return open();
  };
  const h = createHash('sha256');
  for await (const c of f.reader(0, size - 1)) {
    h.update(c as Buffer);
    await new Promise((r) => setTimeout(r, 5));
  }
  return { digest: `sha256:${h.digest('hex')}`, fileOpens };
}

test('three concurrent fills onto a slow disk hold about one FILL_MEMORY together; a lagging reader gets exact bytes', async (t) => {
  const { blobs, fills } = await setup(t);
  const images = [blob(1, 24 * MiB), blob(2, 24 * MiB), blob(3, 24 * MiB)];
  const active: BlobFill[] = [];
  let peak = 0;
  const sample = () => {
    let held = 0;
    for (const f of active) if (f.state !== 'committed' && f.state !== 'failed') held += f.memoryBytes;
    peak = Math.max(peak, held);
  };
  const stage = slowStage(blobs, 50);
  for (const b of images) active.push(fills.fill(b.digest, repo, 'up|library/mem', source(b, stage, sample)));
  const read = slowRead(active[0]!, images[0]!.bytes.length);
  await Promise.all(active.map((f) => f.done));
  for (const [i, b] of images.entries()) {
    t.is(active[i]!.written, b.bytes.length);
    t.truthy(await blobs.stat(b.digest), 'committed under its digest');
  }
  // The budget, plus what each fill may always have pending (1 MiB) and one chunk each past a check.
  const bound = FILL_MEMORY + 3 * MiB + 6 * CHUNK;
  t.log(`peak held by the three fills: ${(peak / MiB).toFixed(1)} MiB (bound ${(bound / MiB).toFixed(1)})`);
  t.true(peak <= bound, `peak ${peak} over ${bound}`);
  t.true(peak > 8 * MiB, 'the slow disk did make the fills hold memory (the test measures something)');
  t.is(fills.memory.pending, 0, 'nothing counted as pending once all fills ended');
  t.is(fills.memory.fills, 0);
  const r = await read;
  t.is(r.digest, images[0]!.digest, 'exact bytes');
  t.true(r.fileOpens > 0, 'the reader fell behind the window and read the file');
});

test('a write failing while the fill waits for its stage fails the fill (no hang) and releases its budget', async (t) => {
  const { blobs, fills } = await setup(t);
  const b = blob(4, 32 * MiB);
  // Slow enough that the fill waits on the stage's progress, then ENOSPC.
  const f = fills.fill(b.digest, repo, 'up|library/mem', source(b, slowStage(blobs, 25, 12 * MiB), () => undefined));
  const err = await t.throwsAsync(f.done);
  t.regex(String(err?.message), /no space left/);
  t.is(fills.memory.pending, 0);
  t.is(fills.memory.fills, 0);
  t.falsy(await blobs.stat(b.digest));
});
