/**
 * Blob bodies written straight to the socket, for committed files and for fills in
 * progress. Node has no sendfile for HTTP, a plain fs.ReadStream allocates a fresh buffer
 * per chunk, and a Readable per response adds a stream hop per chunk; for multi-GB layers
 * served to many clients that allocation, the GC it causes and the per-chunk overhead were
 * about half of the server's CPU (bench/README.md). Here file bytes go through two reused
 * buffers (read the next chunk while the previous one is being written; reuse a buffer only
 * after its write completed) and bytes of a fill still in memory are written as they are.
 * The second buffer only overlaps one stream's read with its write: with many streams at
 * once the others keep the machine busy, so past SECOND_BUFFER_LIMIT buffers in use a
 * response makes do with one (issue #14 item 3: 24 warm layer streams held 48 MiB).
 */
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import type { BlobFill } from '../cache/fill.js';
import { RegistryError } from '../registry/errors.js';
import type { PositionalReader } from '../storage/ports.js';

const CHUNK = 1024 * 1024;
/** Below this a normal stream is as cheap, and keeps fastify's send path. */
export const DIRECT_MIN_BYTES = 4 * CHUNK;
const POOL_MAX = 64;
/** Buffers in use by all responses beyond which none takes a second one. */
const SECOND_BUFFER_LIMIT = 16;
const pool: Buffer[] = [];
/** Buffers held by responses now (pooled ones are not counted). */
let inUse = 0;

function acquire(): Buffer {
  inUse++;
  return pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
}

/** Back to the pool, or (`reuse` false: a write may still reference it) left to the GC. */
function release(b: Buffer, reuse: boolean): void {
  inUse--;
  if (reuse && pool.length < POOL_MAX) pool.push(b);
}

/** Test hook: buffers held by responses now. */
export function sendBuffersInUse(): number {
  return inUse;
}

class ClientGone extends Error {
  constructor() {
    super('client went away');
  }
}

/** Resolves when the socket wants more (or is gone: the caller checks `destroyed`). */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * File bytes through two pooled buffers. `read` fills a buffer (at most `max` bytes) and
 * returns how many it read; a buffer goes back into use only after its write completed.
 */
class DoubleBufferedWriter {
  private readonly bufs: Buffer[] = [];
  private readonly writes: Array<Promise<boolean> | null> = [null, null];
  private i = 0;

  constructor(private readonly res: ServerResponse) {}

  async send(max: number, read: (buf: Buffer, n: number) => Promise<number>): Promise<number> {
    let i = this.i;
    // No second buffer while many are in use: the one buffer is reused once its write completed.
    if (!this.bufs[i] && this.bufs[i ^ 1] && inUse >= SECOND_BUFFER_LIMIT) i ^= 1;
    const pending = this.writes[i];
    if (pending && !(await pending)) throw new ClientGone();
    if (this.res.destroyed) throw new ClientGone();
    const buf = (this.bufs[i] ??= acquire());
    const n = await read(buf, Math.min(CHUNK, max));
    this.writes[i] = new Promise<boolean>((resolve) => this.res.write(buf.subarray(0, n), (err) => resolve(!err)));
    this.i = i ^ 1;
    return n;
  }

  /** Every write completed (or one failed). */
  async settled(): Promise<void> {
    const results = await Promise.all(this.writes);
    if (results.some((ok) => ok === false)) throw new ClientGone();
  }

  /** Give the buffers up: pooled (`reuse`) only when no write can still reference them. */
  release(reuse: boolean): void {
    for (const b of this.bufs) if (b) release(b, reuse);
    this.bufs.length = 0;
  }
}

/**
 * Take the response over from fastify (onResponse hooks still run on 'finish') and run
 * `body`; a failure aborts the connection, so the client never sees a short body as whole.
 */
async function direct(reply: FastifyReply, body: (res: ServerResponse, out: DoubleBufferedWriter) => Promise<void>): Promise<void> {
  const res = reply.raw;
  reply.hijack();
  res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
  const out = new DoubleBufferedWriter(res);
  try {
    await body(res, out);
    await out.settled();
    res.end();
    out.release(true);
  } catch (e) {
    // A write may still reference a buffer: drop them instead of pooling.
    out.release(false);
    res.destroy(e instanceof Error ? e : undefined);
  }
}

/**
 * Send [start, end] of an opened blob through its positional fast path (the caller
 * opened it before any header went out, and closes it) with the status and headers
 * already set on `reply`.
 */
export async function sendFileRange(reply: FastifyReply, file: PositionalReader, start: number, end: number): Promise<void> {
  await direct(reply, async (_res, out) => {
    for (let pos = start; pos <= end; ) {
      const n = await out.send(end + 1 - pos, (buf, max) => file.read(buf, max, pos));
      if (n === 0) throw new Error('blob file is shorter than its recorded size');
      pos += n;
    }
  });
}

/**
 * Send [start, end] of a blob while its fill is running: bytes still in the fill's memory
 * window go out as they arrived (one corked batch per wake-up), older ones from the file.
 * The last byte waits for the digest check; a failed fill aborts the connection. A reader
 * served from memory takes no send buffer (the writer acquires them on its first file read).
 */
export async function sendFillRange(reply: FastifyReply, fill: BlobFill, start: number, end: number): Promise<void> {
  await firstByte(fill, start);
  // Opened only when this reader falls behind the memory window.
  const file: { reader: PositionalReader | null } = { reader: null };
  try {
    await direct(reply, async (res, out) => {
      let pos = start;
      while (pos <= end) {
        if (res.destroyed) throw new ClientGone();
        const avail = Math.min(fill.readable(), end + 1);
        if (pos < avail) {
          const mem = fill.memorySlices(pos, avail);
          if (mem.length > 0) {
            res.cork();
            let more = true;
            for (const m of mem) {
              more = res.write(m);
              pos += m.length;
            }
            res.uncork();
            if (!more) await drained(res);
            continue;
          }
          // Fell behind the memory window: these bytes are in the file.
          const reader = (file.reader ??= await fill.openFile());
          const at = pos;
          const n = await out.send(Math.min(avail, fill.memoryStart) - pos, (buf, max) => reader.read(buf, max, at));
          if (n === 0) throw new Error('blob file shorter than recorded progress');
          pos += n;
          continue;
        }
        if (fill.state === 'failed') throw fill.error ?? new Error('fill failed');
        // Checked and subscribed in the same tick (no change can slip in between); no
        // promise is made while bytes are there to send.
        await fill.changed();
      }
    });
  } finally {
    await file.reader?.close().catch(() => undefined);
  }
}

/**
 * Wait until the fill has a byte at `start` for this reader. Node sends the status line
 * with the first body byte, so until then nothing has gone out: a fill that fails first
 * (an upstream that answered 200, then died before any byte, and could not be resumed)
 * gets a clean OCI error instead of a connection closed without a response, which
 * clients report as "socket hang up" or EOF. The wait is bounded by the fill's own
 * timeouts; the first byte still goes out as soon as it arrives.
 */
async function firstByte(fill: BlobFill, start: number): Promise<void> {
  for (;;) {
    if (fill.readable() > start) return;
    if (fill.state === 'failed') {
      if (fill.error instanceof RegistryError) throw fill.error;
      throw new RegistryError('UNAVAILABLE', 'upstream failed before sending the blob', { status: 503 });
    }
    // Checked and subscribed in the same tick: no change can slip in between.
    await fill.changed();
  }
}
