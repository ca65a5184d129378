/**
 * Helpers for the import suites (not a test file): OCI image layouts as tar archives built
 * in memory with tar-stream's packer (so tests can also write what no image tool writes:
 * links, duplicates, traversal names), and requests to POST /api/v1/import.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { http, type Res } from '../helpers/http.js';
import { type Blob, type ImageIndex, MediaTypes, allBlobsOf, descriptor, makeImage, makeIndex, makeLayer } from '../fixtures/images.js';

export interface Entry {
  name: string;
  content?: Buffer | string;
  type?: 'file' | 'symlink' | 'link' | 'directory';
  linkname?: string;
}

export function packTar(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    const type = e.type ?? 'file';
    if (type === 'file') pack.entry({ name: e.name, type }, Buffer.from(e.content ?? ''));
    else pack.entry({ name: e.name, type, linkname: e.linkname });
  }
  pack.finalize();
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    pack.on('data', (c: unknown) => parts.push(c as Buffer));
    pack.on('end', () => resolve(Buffer.concat(parts)));
    pack.on('error', reject);
  });
}

/** Every entry of a tar (regular files and directories; directories with an empty body), in order. */
export async function unpackTar(archive: Buffer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const ex = tar.extract();
  ex.on('entry', (h, stream, next) => {
    const parts: Buffer[] = [];
    stream.on('data', (c: unknown) => parts.push(c as Buffer));
    stream.on('end', () => {
      if (out.has(h.name)) ex.destroy(new Error(`duplicate tar entry ${h.name}`));
      out.set(h.name, Buffer.concat(parts));
      next();
    });
  });
  await new Promise<void>((resolve, reject) => {
    ex.on('finish', resolve);
    ex.on('error', reject);
    ex.end(archive);
  });
  return out;
}

export const REF_NAME = 'org.opencontainers.image.ref.name';
export const CONTAINERD_NAME = 'io.containerd.image.name';

/** A two-platform index whose images share one layer (dedupe inside one archive). */
export function sampleIndex(seed: string): ImageIndex {
  const shared = makeLayer([{ name: 'shared.txt', content: `shared ${seed}` }], { gzip: true });
  const amd = makeImage({ arch: 'amd64', layers: [shared, makeLayer([{ name: 'a.txt', content: `amd64 ${seed}` }], { gzip: true })] });
  const arm = makeImage({ arch: 'arm64', variant: 'v8', layers: [shared, makeLayer([{ name: 'b.txt', content: `arm64 ${seed}` }], { gzip: true })] });
  return makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
}

export function layoutEntries(
  roots: Array<{ root: Blob; annotations?: Record<string, string> }>,
  blobs: Blob[],
  opts: { indexFirst?: boolean } = {},
): Entry[] {
  const index = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: roots.map((r) => descriptor(r.root, r.annotations ? { annotations: r.annotations } : {})),
  };
  const seen = new Set<string>();
  const blobEntries: Entry[] = [];
  for (const b of [...blobs, ...roots.map((r) => r.root)]) {
    if (seen.has(b.digest)) continue;
    seen.add(b.digest);
    blobEntries.push({ name: `blobs/sha256/${b.digest.slice('sha256:'.length)}`, content: b.bytes });
  }
  const meta: Entry[] = [
    { name: 'oci-layout', content: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
    { name: 'index.json', content: JSON.stringify(index) },
  ];
  return opts.indexFirst ? [...meta, ...blobEntries] : [{ name: 'blobs/', type: 'directory' }, { name: 'blobs/sha256/', type: 'directory' }, ...blobEntries, ...meta];
}

/** The OCI-layout tar of one index tagged `name` (containerd style: both annotations). */
export function indexArchive(idx: ImageIndex, name: string, opts: { indexFirst?: boolean } = {}): Promise<Buffer> {
  const tag = name.slice(name.lastIndexOf(':') + 1);
  return packTar(layoutEntries([{ root: idx.index, annotations: { [CONTAINERD_NAME]: name, [REF_NAME]: tag } }], allBlobsOf(idx), opts));
}

export function gzip(b: Buffer): Buffer {
  return gzipSync(b);
}

export interface ImportResult {
  name: string;
  tag: string | null;
  digest: string;
  mediaType: string;
  blobs: { new: number; existing: number };
  bytes: number;
  newBytes: number;
}

export function importUrl(base: string, query: string): string {
  return `${base}/api/v1/import?${query}`;
}

export function importRaw(base: string, query: string, body: Buffer | NodeJS.ReadableStream, contentType = 'application/x-tar', headers: Record<string, string> = {}): Promise<Res> {
  return http('POST', importUrl(base, query), { headers: { 'content-type': contentType, ...headers }, body });
}

/** multipart/form-data with one file part per archive (a form field too, which is ignored). */
export function importMultipart(base: string, query: string, files: Buffer[], headers: Record<string, string> = {}): Promise<Res> {
  const boundary = `----regmirror-test-${Math.random().toString(16).slice(2)}`;
  const parts: Buffer[] = [Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nignored field\r\n`)];
  files.forEach((f, i) => {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="archive"; filename="image-${i}.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`));
    parts.push(f, Buffer.from('\r\n'));
  });
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return http('POST', importUrl(base, query), { headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, ...headers }, body: Buffer.concat(parts) });
}

/** Every regular file under `dir` (recursive), as paths relative to it. */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    let names: import('node:fs').Dirent[];
    try {
      names = await fs.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(d, n.name);
      if (n.isDirectory()) await walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  await walk(dir);
  return out;
}
