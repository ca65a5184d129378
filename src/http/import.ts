/**
 * POST /api/v1/import?namespace=<prefix> | ?repository=<name>: load image archives (OCI
 * image layouts or `docker save` archives as tar, plain, gzip or xz, or a bundle of them)
 * into the mirror, as a raw
 * body or as one or more `multipart/form-data` file parts. HTTP only: the archive is read
 * and judged by registry/import; every target repository needs the same push rights as a
 * manifest PUT.
 *
 * With `Accept: application/x-ndjson` the answer is a 200 stream of progress, image, error
 * and done lines (README "Import"; the protocol the CLI reads): a failing archive is an error
 * line and later file parts are still imported. Without it, one JSON document, or the
 * OCI error of the first failing archive.
 *
 * multipart is registered in this route's own plugin scope, so its content-type parser
 * never applies to /v2 (where every body must reach the handler unread).
 */
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PassThrough, type Readable, Transform } from 'node:stream';
import { RegistryError, insufficientStorage, isRegistryError } from '../registry/errors.js';
import { isStorageFull } from '../storage/space.js';
import type { BundleError } from '../registry/import/bundle.js';
import { type ImageResult, type ImportOutcome, type ImportTarget, importArchive } from '../registry/import/importer.js';
import { type RepoName, parseRepoName } from '../registry/names.js';
import type { Deps } from './deps.js';
import { discardBody, queryOf, queryParam, sendJson } from './request.js';
import { checkWritable } from './v2.js';

const RAW_TYPES = new Set(['application/x-tar', 'application/gzip', 'application/x-gzip', 'application/x-xz', 'application/octet-stream']);
const NDJSON = 'application/x-ndjson';
/** Progress lines per archive: at most one per interval. */
const PROGRESS_MS = 500;
/** More archives than this in one request is a mistake, not a bundle. */
const MAX_FILE_PARTS = 64;

function targetOf(req: FastifyRequest): ImportTarget {
  const q = queryOf(req);
  const namespace = queryParam(q, 'namespace');
  const repository = queryParam(q, 'repository');
  if ((namespace === undefined) === (repository === undefined)) {
    throw new RegistryError('NAME_INVALID', 'give exactly one of namespace=<prefix> or repository=<name>');
  }
  return namespace !== undefined ? { namespace: parseRepoName(namespace) } : { repository: parseRepoName(repository!) };
}

/**
 * `src` piped through a stream the importer may destroy on a bad archive, while `src`
 * itself stays intact: `release()` then drains the rest of it, so the error response goes
 * out on a connection that is still in sync (the pattern of readBodyCapped).
 */
function guarded(src: Readable, onBytes: (total: number) => void): { stream: Transform; release(): void } {
  let total = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes((total += chunk.length));
      cb(null, chunk);
    },
  });
  const onClose = () => {
    if (!stream.writableEnded) stream.destroy(new Error('request body ended early'));
  };
  src.once('close', onClose);
  src.once('error', (e) => stream.destroy(e));
  src.pipe(stream);
  return {
    stream,
    release() {
      src.off('close', onClose);
      src.unpipe(stream);
      src.resume();
    },
  };
}

/** Where the answer goes: one JSON document at the end, or NDJSON lines as it happens. */
interface Sink {
  progress(archive: number, bytes: number): void;
  image(archive: number, r: ImageResult): void;
  /** An archive (or a bundle's inner archive) failed; false when the request must stop (JSON mode). */
  error(archive: number, e: RegistryError, entry?: string): boolean;
}

async function importOne(deps: Deps, req: FastifyRequest, src: Readable, target: ImportTarget, sink: Sink, archive: number): Promise<ImportOutcome> {
  const g = guarded(src, (n) => sink.progress(archive, n));
  try {
    return await importArchive(deps.svc, g.stream, target, {
      authorize: async (repo: RepoName) => {
        await deps.access?.check(req, repo, 'push');
        checkWritable(deps, repo, req);
      },
      onImage: (r) => sink.image(archive, r),
      onBundleError: (e: BundleError) => sink.error(archive, e.error, e.entry),
    });
  } catch (e) {
    g.release();
    throw e;
  }
}

/** An error as the registry would answer it; anything unexpected is logged and a 500. */
function asRegistryError(req: FastifyRequest, e: unknown): RegistryError {
  if (isRegistryError(e)) return e;
  if (isStorageFull(e)) return insufficientStorage();
  req.log.error({ err: e }, 'import failed');
  return new RegistryError('UNKNOWN', 'unknown error');
}

/**
 * Every archive of the request (the raw body, or each file part) through `each`. In JSON
 * mode the first failure ends the request (thrown); in NDJSON mode it is reported and the
 * next part is read.
 */
async function eachArchive(req: FastifyRequest, reply: FastifyReply, sink: Sink, each: (src: Readable, archive: number) => Promise<void>): Promise<void> {
  if (!req.isMultipart()) return each(req.raw, 0);
  const parts = req.parts();
  let files = 0;
  try {
    for await (const part of parts) {
      if (part.type !== 'file') continue;
      if (files >= MAX_FILE_PARTS) throw new RegistryError('BLOB_UPLOAD_INVALID', `more than ${MAX_FILE_PARTS} archives in one request`);
      const archive = files++;
      try {
        await each(part.file, archive);
      } catch (e) {
        if (sink.error(archive, asRegistryError(req, e))) part.file.resume();
        else throw e;
      }
    }
  } catch (e) {
    // Read (and drop) the rest of the form, so the error reaches a client still sending.
    try {
      for await (const part of parts) if (part.type === 'file') part.file.resume();
    } catch {
      reply.header('connection', 'close');
    }
    throw e;
  }
  if (files === 0) throw new RegistryError('BLOB_UPLOAD_INVALID', 'the form has no file part');
}

async function handler(deps: Deps, req: FastifyRequest, reply: FastifyReply) {
  let target: ImportTarget;
  try {
    target = targetOf(req);
    // A named repository is checked before reading a byte; namespace targets are known
    // only from the archive and are checked before anything is stored.
    if (target.repository) {
      await deps.access?.check(req, target.repository, 'push');
      checkWritable(deps, target.repository, req);
    } else await deps.access?.checkMayPushSomewhere(req);
    if (!req.isMultipart()) {
      const type = String(req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
      if (!RAW_TYPES.has(type)) throw new RegistryError('UNSUPPORTED', `Content-Type must be multipart/form-data, ${[...RAW_TYPES].join(', ')}`, { status: 415 });
    }
  } catch (e) {
    discardBody(req);
    throw e;
  }
  if (String(req.headers.accept ?? '').toLowerCase().includes(NDJSON)) return streamed(deps, req, reply, target);
  const images: ImageResult[] = [];
  const failed: Array<{ archive: number } & BundleError> = [];
  const sink: Sink = { progress: () => undefined, image: () => undefined, error: () => false };
  await eachArchive(req, reply, sink, async (src, archive) => {
    const out = await importOne(deps, req, src, target, sink, archive);
    images.push(...out.images);
    failed.push(...out.errors.map((f) => ({ archive, ...f })));
  });
  // A bundle whose every inner archive failed answers as that failure; a partly imported
  // one is a 200 whose `errors` lists the inner archives left out.
  if (images.length === 0 && failed.length > 0) throw failed[0]!.error;
  if (failed.length === 0) return sendJson(reply, { images });
  return sendJson(reply, { images, errors: failed.map((f) => errorLine(f.archive, f.error, f.entry)) });
}

function errorLine(archive: number, e: RegistryError, entry?: string): Record<string, unknown> {
  const error: Record<string, unknown> = { code: e.code, message: e.message };
  if (e.detail !== undefined) error.detail = e.detail;
  return { archive, ...(entry !== undefined ? { entry } : {}), status: e.status, error };
}

/** The NDJSON answer: 200 at once, then one line per event, `done` last. */
async function streamed(deps: Deps, req: FastifyRequest, reply: FastifyReply, target: ImportTarget) {
  const out = new PassThrough();
  const line = (o: Record<string, unknown>) => {
    if (!out.destroyed) out.write(`${JSON.stringify(o)}\n`);
  };
  const last = new Map<number, number>();
  let images = 0;
  let failed = 0;
  let current = 0;
  const sink: Sink = {
    progress(archive, bytes) {
      const now = Date.now();
      if (now - (last.get(archive) ?? 0) < PROGRESS_MS) return;
      last.set(archive, now);
      line({ event: 'progress', archive, bytes });
    },
    image(archive, r) {
      images++;
      line({ event: 'image', archive, ...r });
    },
    error(archive, e, entry) {
      failed++;
      line({ event: 'error', ...errorLine(archive, e, entry) });
      return true;
    },
  };
  void reply.code(200).header('content-type', NDJSON).header('cache-control', 'no-store').send(out);
  try {
    await eachArchive(req, reply, sink, async (src, archive) => {
      current = archive;
      await importOne(deps, req, src, target, sink, archive);
    });
  } catch (e) {
    sink.error(current, asRegistryError(req, e));
  }
  line({ event: 'done', images, failed });
  out.end();
  return reply;
}

export function registerImport(app: FastifyInstance, deps: Deps): void {
  void app.register(async (scope) => {
    // Files stream straight into the importer: no size cap here (limits.maxBlobBytes and
    // maxManifestBytes apply per archive entry), no buffering, no fields kept in memory.
    await scope.register(multipart, { limits: { fileSize: Number.MAX_SAFE_INTEGER, files: MAX_FILE_PARTS + 1, fields: 16, fieldSize: 4096, parts: 128 } });
    scope.post('/api/v1/import', (req, reply) => handler(deps, req, reply));
  });
}
