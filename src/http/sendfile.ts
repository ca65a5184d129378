/**
 * Blob bodies written straight to the socket, for committed files and for fills in
 * progress. Node has no sendfile for HTTP, a plain fs.ReadStream allocates a fresh buffer
 * per chunk, and a Readable per response adds a stream hop per chunk; for multi-GB layers
 * served to many clients that allocation, the GC it causes and the per-chunk overhead were
 * about half of the server's CPU (bench/README.md). Here file bytes go through two reused
 * buffers (read the next chunk while the previous one is being written; reuse a buffer only
 * after its write completed) and bytes of a fill still in memory are written as they are.
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
const pool: Buffer[] = [];

function acquire(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
}

function release(b: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(b);
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
    const pending = this.writes[this.i];
    if (pending && !(await pending)) throw new ClientGone();
    if (this.res.destroyed) throw new ClientGone();
    const buf = (this.bufs[this.i] ??= acquire());
    const n = await read(buf, Math.min(CHUNK, max));
    this.writes[this.i] = new Promise<boolean>((resolve) => this.res.write(buf.subarray(0, n), (err) => resolve(!err)));
    this.i ^= 1;
    return n;
  }

  /** Every write completed (or one failed). */
  async settled(): Promise<void> {
    const results = await Promise.all(this.writes);
    if (results.some((ok) => ok === false)) throw new ClientGone();
  }

  /** Pool the buffers; only when no write can still reference them. */
  release(): void {
    this.bufs.forEach(release);
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
    out.release();
  } catch (e) {
    // A write may still reference a buffer: drop them instead of pooling.
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
 * The last byte waits for the digest check; a failed fill aborts the connection.
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
        const next = fill.changed();
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
        await next;
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
