/** Small request helpers shared by the /v2 handlers (no business logic here). */
import type { FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { RegistryError } from '../registry/errors.js';

export type Query = Record<string, string | string[] | undefined>;

export function queryOf(req: FastifyRequest): Query {
  return (req.query ?? {}) as Query;
}

/** The single value of a query parameter (the first, if repeated). */
export function queryParam(q: Query, key: string): string | undefined {
  const v = q[key];
  return Array.isArray(v) ? v[0] : v;
}

export function queryParams(q: Query, key: string): string[] {
  const v = q[key];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

export function declaredLength(req: FastifyRequest): number | undefined {
  const h = req.headers['content-length'];
  if (h === undefined) return undefined;
  const n = Number(h);
  if (!Number.isSafeInteger(n) || n < 0) throw new RegistryError('SIZE_INVALID', 'invalid Content-Length');
  return n;
}

export function hasBody(req: FastifyRequest): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}

/** The raw request stream; the catch-all content-type parser leaves it unread. */
export function bodyStream(req: FastifyRequest): Readable {
  return req.raw;
}

/** Read a small body (manifests) fully, enforcing `max` while reading, not after. */
export async function readBodyCapped(req: FastifyRequest, max: number, tooLarge: () => RegistryError): Promise<Buffer> {
  const len = declaredLength(req);
  if (len !== undefined && len > max) {
    req.raw.resume();
    throw tooLarge();
  }
  const chunks: Buffer[] = [];
  let total = 0;
  let tooBig = false;
  // On overflow, leave the loop and only then drain: resume() is a no-op while the
  // iterator's 'readable' listener is attached, and a request nobody reads leaves its
  // socket paused forever (the connection never closes; server.close() hangs). The
  // default destroyOnReturn ends the same way, so keep the stream and drain it: the
  // client, still sending, then receives the 413 on a usable connection.
  for await (const chunk of req.raw.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > max) {
      tooBig = true;
      break;
    }
    chunks.push(chunk);
  }
  if (tooBig) {
    req.raw.resume();
    throw tooLarge();
  }
  if (len !== undefined && total !== len) throw new RegistryError('SIZE_INVALID', 'body shorter than Content-Length');
  return Buffer.concat(chunks, total);
}

/** Drain and discard a body we do not use (so keep-alive connections stay in sync). */
export function discardBody(req: FastifyRequest): void {
  if (hasBody(req)) req.raw.resume();
}

/**
 * Send a JSON document with an exact Content-Type. A Buffer payload stops fastify from
 * appending `; charset=utf-8`, which strict clients and conformance compare against.
 */
export function sendJson(reply: import('fastify').FastifyReply, doc: unknown, contentType = 'application/json') {
  const body = Buffer.from(JSON.stringify(doc));
  return reply.header('content-type', contentType).send(body);
}
