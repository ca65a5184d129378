/** GET | HEAD | DELETE /v2/<name>/blobs/<digest>, with single and multi-range support. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { type Digest, type RepoName, parseDigest } from '../registry/names.js';
import { type ByteRange, parseRangeHeader } from '../registry/range.js';
import { upstreamLabel } from '../registry/pullthrough.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam } from './request.js';
import { DIRECT_MIN_BYTES, sendFileRange, sendFillRange } from './sendfile.js';
import { SMALL_BLOB_MAX_BYTES } from './smallblobs.js';

/**
 * Look the blob up and, for a GET served from storage, open it before any header is
 * sent. Eviction deletes the blob after the lookup may have found it, so a blob that
 * cannot be opened any more is gone: asking again fetches from the upstream (or answers a
 * clean 404 for local-only content). Once open, a delete does not disturb the transfer
 * (BlobStore.delete).
 */
async function lookupAndOpen({ pull, smallBlobs }: Deps, repo: RepoName, ns: string | undefined, digest: Digest, head: boolean, multiRange: boolean) {
  for (let attempt = 0; ; attempt++) {
    const blob = await pull.getBlob(repo, ns, digest, head, { multiRange });
    if (blob.redirect) return { blob, body: null, bytes: undefined };
    if (head || !blob.body || blob.size === 0) return { blob, body: null, bytes: undefined };
    // Found in storage just now (the lookup above): small content may come from memory.
    const small = smallBlobs && blob.size <= SMALL_BLOB_MAX_BYTES;
    const kept = small ? smallBlobs.get(digest, blob.size) : undefined;
    if (kept) return { blob, body: null, bytes: kept };
    const body = await blob.body();
    if (body && small) {
      const bytes = await smallBlobs.load(digest, body, blob.size).finally(() => body.close().catch(() => undefined));
      if (bytes) return { blob, body: null, bytes };
      // Not kept (no positional reads, or not the recorded length): served from the file as before.
      const again = await blob.body();
      if (again) return { blob, body: again, bytes: undefined };
    } else if (body) return { blob, body, bytes: undefined };
    if (attempt > 0) throw new RegistryError('UNAVAILABLE', 'blob was removed while being served; retry', { status: 503 });
  }
}

/** Count a blob body once it went out complete ('finish' never fires for an aborted one). */
function countServed(deps: Deps, reply: FastifyReply, source: 'disk' | 'fill', bytes: number, upstream: string): void {
  const served = deps.onBlobServed;
  if (served && bytes > 0) reply.raw.once('finish', () => served(source, bytes, upstream));
}

export async function getBlob(deps: Deps, repo: RepoName, rawDigest: string, req: FastifyRequest, reply: FastifyReply) {
  const { pull } = deps;
  const digest = parseDigest(rawDigest);
  const head = req.method === 'HEAD';
  const ns = queryParam(queryOf(req), 'ns');
  const multiRange = (req.headers.range ?? '').includes(',');
  const { blob, body, bytes } = await lookupAndOpen(deps, repo, ns, digest, head, multiRange);
  // storage.s3.redirect: the client fetches the bytes (and any Range) from the store itself.
  if (blob.redirect) return reply.code(307).header('location', blob.redirect).header('docker-content-digest', digest).send();
  // 'close' follows every response (finished, failed or aborted); close the body then.
  if (body) reply.raw.once('close', () => void body.close().catch(() => undefined));
  // The store's fast path (local: positional reads on the open file), when it has one.
  const fast = body?.positional() ?? null;
  const { size } = blob;
  const source = blob.fill ? 'fill' : 'disk';
  const upstream = upstreamLabel(pull.resolve(repo, ns));
  const open = (start: number, end: number): Readable => {
    if (bytes) return Readable.from([bytes.subarray(start, end + 1)]);
    if (body) return body.stream(start, end);
    if (!blob.open) throw new Error('blob answer has no body');
    return blob.open(start, end);
  };
  reply.headers(blob.headers);
  reply
    .header('docker-content-digest', digest)
    .header('accept-ranges', 'bytes')
    .header('etag', `"${digest}"`)
    .header('cache-control', 'max-age=31536000, immutable');
  const ranges = parseRangeHeader(req.headers.range, size);
  if (ranges === 'unsatisfiable') {
    throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { status: 416, headers: { 'Content-Range': `bytes */${size}` } });
  }
  if (ranges === null) {
    reply.header('content-type', 'application/octet-stream').header('content-length', size);
    if (head || size === 0) return reply.send();
    countServed(deps, reply, source, size, upstream);
    if (blob.fill) return sendFillRange(reply, blob.fill, 0, size - 1);
    if (bytes) return reply.send(bytes);
    if (fast && size >= DIRECT_MIN_BYTES) return sendFileRange(reply, fast, 0, size - 1);
    return reply.send(open(0, size - 1));
  }
  if (ranges.length === 1) {
    const r = ranges[0]!;
    reply
      .code(206)
      .header('content-type', 'application/octet-stream')
      .header('content-range', `bytes ${r.start}-${r.end}/${size}`)
      .header('content-length', r.end - r.start + 1);
    if (head) return reply.send();
    countServed(deps, reply, source, r.end - r.start + 1, upstream);
    if (blob.fill) return sendFillRange(reply, blob.fill, r.start, r.end);
    if (bytes) return reply.send(bytes.subarray(r.start, r.end + 1));
    if (fast && r.end - r.start + 1 >= DIRECT_MIN_BYTES) return sendFileRange(reply, fast, r.start, r.end);
    return reply.send(open(r.start, r.end));
  }
  return sendMultipart(open, size, ranges, req, reply);
}

/** multipart/byteranges (RFC 9110 §14.6), used by zstd:chunked partial pulls. */
function sendMultipart(open: (start: number, end: number) => Readable, size: number, ranges: ByteRange[], req: FastifyRequest, reply: FastifyReply) {
  const boundary = randomBytes(16).toString('hex');
  const heads = ranges.map(
    (r, i) => `${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`,
  );
  const tail = `\r\n--${boundary}--\r\n`;
  const length = heads.reduce((n, h) => n + Buffer.byteLength(h), 0) + ranges.reduce((n, r) => n + r.end - r.start + 1, 0) + tail.length;
  reply.code(206).header('content-type', `multipart/byteranges; boundary=${boundary}`).header('content-length', length);
  if (req.method === 'HEAD') return reply.send();
  async function* parts() {
    for (let i = 0; i < ranges.length; i++) {
      yield Buffer.from(heads[i]!);
      const r = ranges[i]!;
      for await (const chunk of open(r.start, r.end)) yield chunk as Buffer;
    }
    yield Buffer.from(tail);
  }
  return reply.send(Readable.from(parts()));
}

export async function deleteBlob({ svc }: Deps, repo: RepoName, rawDigest: string, _req: FastifyRequest, reply: FastifyReply) {
  await svc.deleteBlob(repo, parseDigest(rawDigest));
  return reply.code(202).send();
}
