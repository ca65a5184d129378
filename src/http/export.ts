/**
 * Export images as an OCI image layout tar (optionally gzip):
 *
 *   GET  /api/v1/export?image=<repo>:<tag>|<repo>@<digest>&image=...[&ns=<registry>]
 *        [&platform=os/arch[/variant]...][&compress=gzip]
 *   POST /api/v1/export  {"images": [...], "ns"?: "...", "platforms"?: [...], "compress"?: "gzip"}
 *        (the same, for lists too long for a URL)
 *
 * Images are repository paths on this mirror, as in /v2/<repo> (`ns` as containerd's
 * `?ns=`). Each needs pull rights. HTTP only: registry/export plans (pulling through what
 * is not held here) and writes the archive; every error is a status before the body.
 */
import { createGzip } from 'node:zlib';
import { pipeline } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { RegistryError } from '../registry/errors.js';
import { type ExportRequest, parseExportImage, parsePlatform, planExport } from '../registry/export/plan.js';
import { layoutStream } from '../registry/export/layout.js';
import type { Deps } from './deps.js';
import { discardBody, queryOf, queryParam, queryParams, readBodyCapped } from './request.js';

const MAX_REQUEST_BYTES = 1024 * 1024;
const MAX_IMAGES = 1000;

interface Parsed {
  request: ExportRequest;
  gzip: boolean;
}

function bad(message: string): RegistryError {
  return new RegistryError('UNSUPPORTED', message, { status: 400 });
}

function parse(images: unknown, ns: unknown, platforms: unknown, compress: unknown): Parsed {
  const strings = (v: unknown, what: string): string[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw bad(`${what} must be a list of strings`);
    return v as string[];
  };
  const list = strings(images, 'images');
  if (list.length === 0) throw bad('name at least one image (image=<repo>:<tag> or <repo>@<digest>)');
  if (list.length > MAX_IMAGES) throw bad(`more than ${MAX_IMAGES} images in one export`);
  if (ns !== undefined && typeof ns !== 'string') throw bad('ns must be a string');
  if (compress !== undefined && compress !== 'gzip' && compress !== 'none') throw bad('compress must be gzip or none');
  return {
    request: { images: list.map((i) => parseExportImage(i, ns || undefined)), platforms: strings(platforms, 'platforms').map(parsePlatform) },
    gzip: compress === 'gzip',
  };
}

async function parseRequest(req: FastifyRequest): Promise<Parsed> {
  if (req.method === 'GET') {
    const q = queryOf(req);
    return parse(queryParams(q, 'image'), queryParam(q, 'ns'), queryParams(q, 'platform'), queryParam(q, 'compress'));
  }
  const body = await readBodyCapped(req, MAX_REQUEST_BYTES, () => new RegistryError('SIZE_INVALID', `request exceeds ${MAX_REQUEST_BYTES} bytes`, { status: 413 }));
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw bad('the request body is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('the request body must be a JSON object');
  const d = doc as Record<string, unknown>;
  return parse(d.images, d.ns, d.platforms, d.compress);
}

async function handler(deps: Deps, req: FastifyRequest, reply: FastifyReply) {
  let parsed: Parsed;
  try {
    parsed = await parseRequest(req);
  } catch (e) {
    discardBody(req);
    throw e;
  }
  // Planning may pull gigabytes through before the first byte: the idle timeout (which
  // would cut the silent connection) applies again once the body flows.
  const socket = req.raw.socket;
  const idle = socket.timeout ?? 0;
  socket.setTimeout(0);
  let plan: Awaited<ReturnType<typeof planExport>>;
  try {
    plan = await planExport(deps.pull, deps.svc, parsed.request, {
      authorize: async (repo) => {
        await deps.access?.check(req, repo, 'pull');
      },
    });
  } finally {
    if (!socket.destroyed) socket.setTimeout(idle);
  }
  const { stream, length } = layoutStream(plan);
  reply.header('cache-control', 'no-store');
  if (parsed.gzip) {
    // Chunked: a failure mid-body ends the response without its last chunk (an error, not EOF).
    const gz = pipeline(stream, createGzip(), () => undefined);
    return reply.header('content-type', 'application/gzip').header('content-disposition', 'attachment; filename="images.tar.gz"').send(gz);
  }
  reply.header('content-type', 'application/x-tar').header('content-disposition', 'attachment; filename="images.tar"');
  // Exact length: a cut-short body is visible to every client as a short read.
  if (length !== undefined) reply.header('content-length', length);
  return reply.send(stream);
}

export function registerExport(app: FastifyInstance, deps: Deps): void {
  app.get('/api/v1/export', (req, reply) => handler(deps, req, reply));
  app.post('/api/v1/export', (req, reply) => handler(deps, req, reply));
}
