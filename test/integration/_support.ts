/**
 * Shared helpers for the integration suites (not a test file: ava only runs *.test.js).
 *
 * `http` (undici) normalises URLs (`..`, `%2e%2e`) and always frames bodies itself, so
 * the suites also need:
 *  - rawRequest: exact bytes on a socket (traversal paths, repeated header lines, NUL);
 *  - streamRequest: node:http with `Transfer-Encoding: chunked` bodies written piecewise.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import httpNode from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Server } from 'node:net';
import { http, pushBlob, sha256, type Res } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { makeImage, makeLayer, randomBytes as seededBytes, type Artifact, type Blob, type Flavor, type Image, type ImageIndex } from '../fixtures/images.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const ALL_MANIFEST_TYPES = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX].join(', ');

/** Codes a registry may put in an error body (protocol.md 1.2, incl. the legacy ones). */
export const KNOWN_CODES = new Set([
  'BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID', 'UNAUTHORIZED',
  'DENIED', 'UNSUPPORTED', 'TOOMANYREQUESTS', 'MANIFEST_UNVERIFIED', 'TAG_INVALID', 'RANGE_INVALID',
  'PAGINATION_NUMBER_INVALID', 'UNAVAILABLE', 'UNKNOWN',
]);

export function sha512(b: Buffer | string): string {
  return `sha512:${createHash('sha512').update(b).digest('hex')}`;
}

/** A well-formed sha256 digest of content nobody pushed. */
export function randomDigest(seed = String(Math.random())): string {
  return sha256(`never-pushed:${seed}:${process.hrtime.bigint()}`);
}

/** Assert a JSON error envelope with the given status and code (body checked unless HEAD). */
export function assertError(t: ExecutionContext, res: Res, status: number, code: string, head = false): void {
  t.is(res.status, status, `status (body: ${res.body.toString('utf8').slice(0, 300)})`);
  if (head) {
    t.is(res.body.length, 0, 'HEAD error has no body');
    return;
  }
  t.is(res.header('content-type'), 'application/json');
  const doc = res.json<{ errors: Array<{ code: string; message?: string }> }>();
  t.true(Array.isArray(doc.errors) && doc.errors.length > 0, 'errors list present');
  t.is(doc.errors[0]!.code, code);
  t.regex(doc.errors[0]!.code, /^[A-Z_]+$/);
}

/** Push every blob (monolithic POST) into repo. */
export async function pushBlobs(base: string, repo: string, blobs: readonly Blob[]): Promise<void> {
  for (const b of blobs) {
    const d = await pushBlob(base, repo, b.bytes);
    if (d !== b.digest) throw new Error(`digest mismatch pushing ${b.digest}`);
  }
}

/** Push an image's layers + config and then its manifest under `ref` (tag or digest). */
export async function pushImage(base: string, repo: string, image: Image, ref: string = image.manifest.digest): Promise<Res> {
  await pushBlobs(base, repo, [...image.layers, image.config]);
  return putManifest(base, repo, ref, image.manifest);
}

/** Push an index's images (by digest) and then the index under `ref`. */
export async function pushIndex(base: string, repo: string, idx: ImageIndex, ref: string = idx.index.digest): Promise<Res> {
  for (const { image } of idx.images) {
    const r = await pushImage(base, repo, image);
    if (r.status !== 201) throw new Error(`push child ${image.manifest.digest}: ${r.status} ${r.body.toString()}`);
  }
  return putManifest(base, repo, ref, idx.index);
}

export async function pushArtifact(base: string, repo: string, a: Artifact, ref: string = a.manifest.digest): Promise<Res> {
  await pushBlobs(base, repo, a.blobs);
  return putManifest(base, repo, ref, a.manifest);
}

export function putManifest(base: string, repo: string, ref: string, m: Blob): Promise<Res> {
  return http('PUT', `${base}/v2/${repo}/manifests/${ref}`, { headers: { 'content-type': m.mediaType }, body: m.bytes });
}

export interface RawResponse {
  status: number;
  /** Lower-cased names; repeated headers keep every value. */
  headers: Map<string, string[]>;
  body: Buffer;
  raw: Buffer;
  header(name: string): string | undefined;
}

/**
 * Send exact bytes and read until the server closes. Callers send `Connection: close`.
 * Only for small, non-chunked responses (the body is everything after the blank line).
 */
export function rawRequest(hostPort: string, request: Buffer | string, timeoutMs = 5000): Promise<RawResponse> {
  const [host, port] = hostPort.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port: Number(port) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => sock.destroy(new Error('raw request timed out')), timeoutMs);
    sock.on('connect', () => sock.write(request));
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('end', () => sock.end());
    sock.on('close', () => {
      clearTimeout(timer);
      const raw = Buffer.concat(chunks);
      const sep = raw.indexOf('\r\n\r\n');
      if (sep < 0) return reject(new Error(`no HTTP response: ${JSON.stringify(raw.toString('latin1').slice(0, 200))}`));
      const lines = raw.subarray(0, sep).toString('latin1').split('\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
      if (!m) return reject(new Error(`bad status line: ${lines[0]}`));
      const headers = new Map<string, string[]>();
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        const k = l.slice(0, i).trim().toLowerCase();
        headers.set(k, [...(headers.get(k) ?? []), l.slice(i + 1).trim()]);
      }
      resolve({
        status: Number(m[1]),
        headers,
        body: raw.subarray(sep + 4),
        raw,
        header: (n) => headers.get(n.toLowerCase())?.join(', '),
      });
    });
  });
}

/** A GET-style raw request line + headers, `Connection: close`. */
export function rawGet(hostPort: string, method: string, target: string, extraHeaders: string[] = [], body?: Buffer): Promise<RawResponse> {
  const head = [`${method} ${target} HTTP/1.1`, `Host: ${hostPort}`, 'Connection: close', ...extraHeaders];
  if (body) head.push(`Content-Length: ${body.length}`);
  const req = Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), body ?? Buffer.alloc(0)]);
  return rawRequest(hostPort, req);
}

/**
 * A request whose body is sent with `Transfer-Encoding: chunked`, one write per chunk,
 * through node:http (no Content-Length). Resolves with the full response.
 */
export function streamRequest(
  url: string,
  method: string,
  chunks: readonly Buffer[],
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: httpNode.IncomingHttpHeaders; body: Buffer }> {
  // A keep-alive agent: with `agent: false` node sends `Connection: close`, and a server may
  // then close right after an early error response (413) while the body is still being
  // written, which node's client reports as EPIPE instead of the response.
  const agent = new httpNode.Agent({ keepAlive: true, maxSockets: 1 });
  return new Promise<{ status: number; headers: httpNode.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
    const req = httpNode.request(url, { method, headers: { ...headers, 'transfer-encoding': 'chunked' }, agent }, (res) => {
      const out: Buffer[] = [];
      const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(out) });
      res.on('data', (c: Buffer) => out.push(c));
      res.on('end', done);
      // An early response (413 while we are still writing) can be complete yet closed
      // before 'end' is emitted: node tears the exchange down when the request is cut.
      res.on('close', () => (res.complete ? done() : reject(new Error('response aborted'))));
      res.on('error', reject);
    });
    req.on('error', reject);
    let i = 0;
    const next = () => {
      if (i >= chunks.length) return req.end();
      req.write(chunks[i++]!, () => setImmediate(next));
    };
    next();
  }).finally(() => agent.destroy());
}

/** Every path (relative to root) under root, recursively. */
export async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    for (const e of await fs.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      out.push(path.relative(root, p));
      if (e.isDirectory()) await walk(p);
    }
  }
  await walk(root);
  return out.sort();
}

/** Split a multipart/byteranges body into its parts. */
export function parseMultipart(body: Buffer, boundary: string): Array<{ headers: Record<string, string>; data: Buffer }> {
  const text = body.toString('latin1');
  const delim = `--${boundary}`;
  const parts: Array<{ headers: Record<string, string>; data: Buffer }> = [];
  const segments = text.split(delim);
  // segments[0] is the preamble; the last one starts with "--" (close delimiter).
  for (const seg of segments.slice(1)) {
    if (seg.startsWith('--')) break;
    const s = seg.replace(/^\r\n/, '');
    const sep = s.indexOf('\r\n\r\n');
    const headers: Record<string, string> = {};
    for (const l of s.slice(0, sep).split('\r\n')) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const data = s.slice(sep + 4).replace(/\r\n$/, '');
    parts.push({ headers, data: Buffer.from(data, 'latin1') });
  }
  return parts;
}


/** A small but realistic 2-layer image (one gzip, one plain tar layer), distinct per seed. */
export function sampleImage(seed: string, opts: { flavor?: Flavor; arch?: string; annotations?: Record<string, string> } = {}): Image {
  const l1 = makeLayer([{ name: `etc/${seed}.txt`, content: `hello ${seed}\n` }], { flavor: opts.flavor });
  const l2 = makeLayer(
    [
      { name: 'bin/', content: '' },
      { name: `bin/${seed}`, content: seededBytes(3000, seed), mode: 0o755 },
    ],
    { flavor: opts.flavor, gzip: false },
  );
  return makeImage({ flavor: opts.flavor, arch: opts.arch, layers: [l1, l2], annotations: opts.annotations });
}

/**
 * startServer, remembered in t.context so that `noServerErrors` (an afterEach hook) can
 * fail the test if the server logged an unhandled error (a 5xx) at any point.
 */
export async function serve(t: ExecutionContext, config: Record<string, unknown> = {}): Promise<TestServer> {
  const s = await startServer(t, config);
  const ctx = t.context as { servers?: TestServer[] };
  (ctx.servers ??= []).push(s);
  return s;
}

/** afterEach hook: no server started with `serve` may have logged at error level (>= 50). */
export function noServerErrors(t: ExecutionContext): void {
  const servers = (t.context as { servers?: TestServer[] }).servers ?? [];
  const errors = servers.flatMap((s) =>
    s.logs.filter((l) => {
      try {
        return (JSON.parse(l) as { level?: number }).level! >= 50;
      } catch {
        return false;
      }
    }),
  );
  t.deepEqual(errors, [], 'the server logged errors (5xx)');
}

/** Wait (bounded) until the server holds no connections. */
export async function connectionsDrain(server: Server, timeoutMs = 5000): Promise<boolean> {
  for (const end = Date.now() + timeoutMs; Date.now() < end; ) {
    const n = await new Promise<number>((resolve) => server.getConnections((_e, c) => resolve(c)));
    if (n === 0) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}
