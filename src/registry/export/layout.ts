/**
 * Write a planned export (plan.ts) as an OCI image layout tar (image-spec image-layout.md):
 * `oci-layout` and `index.json` first (so a streaming reader learns the images before the
 * bytes), `manifest.json` for `docker load` when every entry is a single image, then
 * `blobs/sha256/<hex>` for every manifest, config and layer, each once, read from the
 * opened files in chunks. Nothing can be missing at this point; a read failure destroys
 * the stream, so the response is cut short (never a well-formed, incomplete tar).
 */
import { PassThrough, type Readable } from 'node:stream';
import tar from 'tar-stream';
import { MT } from '../mediatypes.js';
import { type Digest, digestHex } from '../names.js';
import { type ExportPlan, chunksOf } from './plan.js';

const CHUNK_BYTES = 1024 * 1024;
/** ustar's 11 octal digits: a larger entry needs a PAX header, whose size we do not predict. */
const USTAR_MAX_SIZE = 0o77777777777;
/** A fixed mtime: the same images give the same archive bytes. */
const MTIME = new Date(0);

function blobName(d: Digest): string {
  return `blobs/${d.slice(0, d.indexOf(':'))}/${digestHex(d)}`;
}

interface Meta {
  name: string;
  body: Buffer;
}

function metadata(plan: ExportPlan): Meta[] {
  const index = { schemaVersion: 2, mediaType: MT.ociIndex, manifests: plan.entries.map((e) => e.descriptor) };
  const files: Meta[] = [
    { name: 'oci-layout', body: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
    { name: 'index.json', body: Buffer.from(JSON.stringify(index)) },
  ];
  // docker load (classic) reads only manifest.json; it takes compressed layers as well.
  if (plan.entries.every((e) => e.docker)) {
    const docker = plan.entries.map((e) => ({
      Config: blobName(e.docker!.config),
      RepoTags: e.tag ? [e.name] : [],
      Layers: e.docker!.layers.map(blobName),
    }));
    files.push({ name: 'manifest.json', body: Buffer.from(JSON.stringify(docker)) });
  }
  return files;
}

const padded = (n: number) => Math.ceil(n / 512) * 512;

/**
 * The archive's exact length (a header and padded content per entry, two zero blocks at
 * the end), so the response can carry a Content-Length and a cut is visible to any client;
 * undefined when an entry is too large for a plain ustar header.
 */
function tarLength(meta: Meta[], plan: ExportPlan, dirs: string[]): number | undefined {
  let n = 1024 + dirs.length * 512;
  for (const m of meta) n += 512 + padded(m.body.length);
  for (const b of plan.manifests.values()) n += 512 + padded(b.length);
  for (const { size } of plan.blobs.values()) {
    if (size > USTAR_MAX_SIZE) return undefined;
    n += 512 + padded(size);
  }
  return n;
}

/** Wait for `entry` to take more, or fail once the stream is abandoned. */
function drained(entry: NodeJS.WritableStream, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      entry.removeListener('drain', onDrain);
      reject(signal.reason as Error);
    };
    const onDrain = () => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    entry.once('drain', onDrain);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function feed(pack: tar.Pack, plan: ExportPlan, meta: Meta[], dirs: string[], signal: AbortSignal): Promise<void> {
  for (const m of meta) pack.entry({ name: m.name, mtime: MTIME, mode: 0o644 }, m.body);
  for (const d of dirs) pack.entry({ name: d, type: 'directory', mtime: MTIME, mode: 0o755 });
  for (const [d, body] of plan.manifests) pack.entry({ name: blobName(d), mtime: MTIME, mode: 0o644 }, body);
  for (const [d, { size, body }] of plan.blobs) {
    const entry = pack.entry({ name: blobName(d), size, mtime: MTIME, mode: 0o644 });
    // A destroyed pack destroys its entry too; that failure is the pack's, reported there.
    entry.on('error', () => undefined);
    let written = 0;
    for await (const chunk of chunksOf(body, size, CHUNK_BYTES)) {
      if (signal.aborted) throw signal.reason;
      written += chunk.length;
      if (written > size) throw new Error(`blob ${d} is longer than ${size} bytes`);
      if (!entry.write(chunk)) await drained(entry, signal);
    }
    if (written !== size) throw new Error(`blob ${d} ended at ${written} of ${size} bytes`);
    entry.end(() => undefined);
  }
  pack.finalize();
}

export interface LayoutStream {
  stream: Readable;
  /** Exact byte length of the (uncompressed) tar, when predictable. */
  length: number | undefined;
}

/**
 * The layout as a stream; the plan's files are closed when it ends, fails or is abandoned.
 * An abandoned response destroys the stream, which aborts the feed wherever it waits (a
 * feed left waiting for room would hold every blob file open, and block nothing else).
 */
export function layoutStream(plan: ExportPlan): LayoutStream {
  const meta = metadata(plan);
  const dirs = ['blobs/', 'blobs/sha256/'];
  const pack = tar.pack();
  const out = new PassThrough({ highWaterMark: CHUNK_BYTES });
  const ac = new AbortController();
  pack.on('data', (chunk: unknown) => {
    if (!out.write(chunk as Buffer)) pack.pause();
  });
  out.on('drain', () => pack.resume());
  pack.on('end', () => out.end());
  pack.on('error', (e: unknown) => out.destroy(e as Error));
  const feeding = feed(pack, plan, meta, dirs, ac.signal).catch((e: unknown) => pack.destroy(e as Error));
  out.once('close', () => {
    ac.abort(new Error('export stream closed'));
    if (!out.writableFinished) pack.destroy(new Error('export stream closed'));
    void feeding.finally(() => plan.close());
  });
  return { stream: out, length: tarLength(meta, plan, dirs) };
}
