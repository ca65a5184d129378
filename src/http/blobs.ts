/** GET | HEAD | DELETE /v2/<name>/blobs/<digest>, with single and multi-range support. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { type RepoName, parseDigest } from '../registry/names.js';
import { type ByteRange, parseRangeHeader } from '../registry/range.js';
import type { BlobAnswer } from '../registry/pullthrough.js';
import type { Deps } from './deps.js';
import { queryOf, queryParam } from './request.js';
import { DIRECT_MIN_BYTES, sendFileRange, sendFillRange } from './sendfile.js';

export async function getBlob({ pull }: Deps, repo: RepoName, rawDigest: string, req: FastifyRequest, reply: FastifyReply) {
  const digest = parseDigest(rawDigest);
  const head = req.method === 'HEAD';
  const blob = await pull.getBlob(repo, queryParam(queryOf(req), 'ns'), digest, head);
  const { size } = blob;
  const open = (start: number, end: number) => {
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
    if (blob.fill) return sendFillRange(reply, blob.fill, 0, size - 1);
    if (blob.file && size >= DIRECT_MIN_BYTES) return sendFileRange(reply, blob.file, 0, size - 1);
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
    if (blob.fill) return sendFillRange(reply, blob.fill, r.start, r.end);
    if (blob.file && r.end - r.start + 1 >= DIRECT_MIN_BYTES) return sendFileRange(reply, blob.file, r.start, r.end);
    return reply.send(open(r.start, r.end));
  }
  return sendMultipart(blob, size, ranges, req, reply);
}

/** multipart/byteranges (RFC 9110 §14.6), used by zstd:chunked partial pulls. */
function sendMultipart(blob: BlobAnswer, size: number, ranges: ByteRange[], req: FastifyRequest, reply: FastifyReply) {
  const boundary = randomBytes(16).toString('hex');
  const heads = ranges.map(
    (r, i) => `${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`,
  );
  const tail = `\r\n--${boundary}--\r\n`;
  const length = heads.reduce((n, h) => n + Buffer.byteLength(h), 0) + ranges.reduce((n, r) => n + r.end - r.start + 1, 0) + tail.length;
  reply.code(206).header('content-type', `multipart/byteranges; boundary=${boundary}`).header('content-length', length);
  if (req.method === 'HEAD' || !blob.open) return reply.send();
  const open = blob.open;
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
  svc.deleteBlob(repo, parseDigest(rawDigest));
  return reply.code(202).send();
}
