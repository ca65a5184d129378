/**
 * POST /api/v1/import?namespace=<prefix> | ?repository=<name>: load image archives (an OCI
 * image layout as tar, optionally gzip-compressed) into the mirror, as a raw body or as one
 * or more `multipart/form-data` file parts. HTTP only: the archive is read and judged by
 * registry/import; every target repository needs the same push rights as a manifest PUT.
 *
 * multipart is registered in this route's own plugin scope, so its content-type parser
 * never applies to /v2 (where every body must reach the handler unread).
 */
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PassThrough, type Readable } from 'node:stream';
import { RegistryError } from '../registry/errors.js';
import { type ImageResult, type ImportTarget, importArchive } from '../registry/import/importer.js';
import { type RepoName, parseRepoName } from '../registry/names.js';
import type { Deps } from './deps.js';
import { discardBody, queryOf, queryParam, sendJson } from './request.js';
import { checkWritable } from './v2.js';

const RAW_TYPES = new Set(['application/x-tar', 'application/gzip', 'application/x-gzip', 'application/octet-stream']);
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
function guarded(src: Readable): { stream: PassThrough; release(): void } {
  const stream = new PassThrough();
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

async function importOne(deps: Deps, req: FastifyRequest, src: Readable, target: ImportTarget): Promise<ImageResult[]> {
  const g = guarded(src);
  try {
    return await importArchive(deps.svc, g.stream, target, {
      authorize: async (repo: RepoName) => {
        await deps.access?.check(req, repo, 'push');
        checkWritable(deps, repo, req);
      },
    });
  } catch (e) {
    g.release();
    throw e;
  }
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
  } catch (e) {
    discardBody(req);
    throw e;
  }
  const results: ImageResult[] = [];
  if (req.isMultipart()) {
    const parts = req.parts();
    let files = 0;
    try {
      for await (const part of parts) {
        if (part.type !== 'file') continue;
        if (++files > MAX_FILE_PARTS) throw new RegistryError('BLOB_UPLOAD_INVALID', `more than ${MAX_FILE_PARTS} archives in one request`);
        results.push(...(await importOne(deps, req, part.file, target)));
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
  } else {
    const type = String(req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
    if (!RAW_TYPES.has(type)) {
      discardBody(req);
      throw new RegistryError('UNSUPPORTED', `Content-Type must be multipart/form-data, ${[...RAW_TYPES].join(', ')}`, { status: 415 });
    }
    results.push(...(await importOne(deps, req, req.raw, target)));
  }
  return sendJson(reply, { images: results });
}

export function registerImport(app: FastifyInstance, deps: Deps): void {
  void app.register(async (scope) => {
    // Files stream straight into the importer: no size cap here (limits.maxBlobBytes and
    // maxManifestBytes apply per archive entry), no buffering, no fields kept in memory.
    await scope.register(multipart, { limits: { fileSize: Number.MAX_SAFE_INTEGER, files: MAX_FILE_PARTS + 1, fields: 16, fieldSize: 4096, parts: 128 } });
    scope.post('/api/v1/import', (req, reply) => handler(deps, req, reply));
  });
}
