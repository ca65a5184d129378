/**
 * The one error handler: RegistryError -> OCI error envelope. fastify's own errors
 * (bad content type, body too large, timeouts) are mapped to the nearest OCI code;
 * anything else is UNKNOWN/500 with no internals in the body, and is logged.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERROR_CODES, type ErrorCode, RegistryError, insufficientStorage, isRegistryError } from '../registry/errors.js';
import { isStorageFull } from '../storage/space.js';

export function errorBody(code: ErrorCode, message: string, detail?: unknown): string {
  const err: Record<string, unknown> = { code, message };
  if (detail !== undefined) err.detail = detail;
  return JSON.stringify({ errors: [err] });
}

export function sendRegistryError(reply: FastifyReply, e: RegistryError): FastifyReply {
  reply.code(e.status);
  for (const [k, v] of Object.entries(e.headers)) reply.header(k, v);
  const body = Buffer.from(errorBody(e.code, e.message, e.detail));
  reply.header('content-type', 'application/json');
  if (reply.request.method === 'HEAD') return reply.header('content-length', body.length).send();
  return reply.send(body);
}

function fromFastifyError(e: FastifyError): RegistryError {
  const status = e.statusCode ?? 500;
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || status === 413) return new RegistryError('SIZE_INVALID', 'request body too large', { status: 413 });
  if (status === 408 || e.code === 'FST_ERR_REQUEST_TIMEOUT') return new RegistryError('BLOB_UPLOAD_INVALID', 'request timed out', { status: 408 });
  if (status >= 400 && status < 500) return new RegistryError('UNSUPPORTED', e.message.slice(0, 200), { status });
  return new RegistryError('UNKNOWN', ERROR_CODES.UNKNOWN.message);
}

export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    // A body stream destroyed before its end (pipeline() does that when a write step
    // fails, e.g. a blob over limits.maxBlobBytes) detaches from its socket: nothing will
    // read the rest, so node keeps the connection open, paused, until the idle timeout,
    // and server.close() waits for it. Close it once the error has been sent.
    if (req.raw.destroyed && !req.raw.complete) reply.header('connection', 'close');
    if (isRegistryError(err)) return sendRegistryError(reply, err);
    if (isStorageFull(err)) {
      // ENOSPC or SQLITE_FULL from a write not mapped where it happened: nothing was
      // committed (every write rolls back or is discarded), so the client may simply retry.
      req.log.warn({ err: (err as Error).message }, 'insufficient storage: request refused');
      return sendRegistryError(reply, insufficientStorage());
    }
    if (clientWentAway(err, req)) {
      // The client closed the connection mid-body: nobody reads this answer, and it is no
      // server fault (a request body aborted while the server was between two steps).
      req.log.info({ err: (err as Error).message }, 'client aborted the request body');
      return sendRegistryError(reply, new RegistryError('BLOB_UPLOAD_INVALID', 'request body aborted by the client'));
    }
    const fe = err as FastifyError;
    const mapped = fromFastifyError(fe);
    // The route pattern (never the URL: it may carry upload state) says where it came from.
    if (mapped.status >= 500) req.log.error({ err, method: req.method, route: req.routeOptions?.url ?? null }, 'unhandled error');
    else req.log.debug({ err }, 'request error');
    return sendRegistryError(reply, mapped);
  });
}

/** Paths outside every route: 404 NAME_UNKNOWN; an unread body is drained, not left to stall the socket. */
export function installNotFoundHandler(app: FastifyInstance): void {
  app.setNotFoundHandler((req, reply) => {
    if (req.headers['content-length'] || req.headers['transfer-encoding']) req.raw.resume();
    reply.code(404).header('content-type', 'application/json').send(JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: 'no such endpoint' }] }));
  });
}

/**
 * node's `aborted` (ECONNRESET, raised on the request when its connection closes before
 * the response), or a premature close of the request body once the socket is gone.
 */
function clientWentAway(err: unknown, req: FastifyRequest): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (e?.code === 'ECONNRESET' && e.message === 'aborted') return true;
  return e?.code === 'ERR_STREAM_PREMATURE_CLOSE' && (req.raw.destroyed || req.raw.socket?.destroyed === true);
}
