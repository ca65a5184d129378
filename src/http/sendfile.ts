/**
 * Serve a byte range of a committed blob file straight to the socket with two reused
 * buffers: read the next chunk while the previous one is being written, and reuse a
 * buffer only after its write completed. Node has no sendfile for HTTP, and a plain
 * fs.ReadStream allocates a fresh buffer per chunk; for multi-GB layers that allocation
 * and the GC it causes were about half of the server's CPU (bench/README.md).
 */
import type { FileHandle } from 'node:fs/promises';
import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyReply } from 'fastify';

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

/** Send [start, end] of the open file `fh` (the caller closes it) with the status and headers already set on `reply`. */
export async function sendFileRange(reply: FastifyReply, fh: FileHandle, start: number, end: number): Promise<void> {
  const res = reply.raw;
  reply.hijack(); // onResponse hooks (access log, metrics) still run on 'finish'
  res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
  const bufs = [acquire(), acquire()];
  const writes: Array<Promise<boolean> | null> = [null, null];
  let clean = true;
  try {
    let pos = start;
    let i = 0;
    while (pos <= end) {
      // This buffer may still be queued on the socket from two chunks ago.
      if (writes[i] && !(await writes[i])) throw new Error('client went away');
      if (res.destroyed) throw new Error('client went away');
      const buf = bufs[i]!;
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, end + 1 - pos), pos);
      if (bytesRead === 0) throw new Error('blob file is shorter than its recorded size');
      pos += bytesRead;
      writes[i] = new Promise<boolean>((resolve) => res.write(buf.subarray(0, bytesRead), (err) => resolve(!err)));
      i ^= 1;
    }
    const results = await Promise.all(writes);
    if (results.some((ok) => ok === false)) throw new Error('client went away');
    res.end();
  } catch (e) {
    clean = false;
    // A write may still reference a buffer: drop them instead of pooling.
    res.destroy(e instanceof Error ? e : undefined);
  } finally {
    if (clean) bufs.forEach(release);
  }
}
