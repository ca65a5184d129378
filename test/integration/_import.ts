/**
 * Helpers for the import suites (not a test file): OCI image layouts and `docker save`
 * archives as tars built in memory with tar-stream's packer (so tests can also write what
 * no image tool writes: links, duplicates, traversal names), and requests to POST
 * /api/v1/import.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import type { ExecutionContext } from 'ava';
import tar from 'tar-stream';
import { http, type Res } from '../helpers/http.js';
import type { TestServer } from '../helpers/server.js';
import { OCI_INDEX, OCI_MANIFEST } from './_support.js';
import { type Blob, type Image, type ImageIndex, MediaTypes, allBlobsOf, descriptor, makeImage, makeIndex, makeLayer, randomStream, sha256 } from '../fixtures/images.js';

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

export type StreamedEntry = { name: string; content: Buffer | string } | { name: string; size: number; stream: () => NodeJS.ReadableStream };

/** A tar produced entry by entry as it is read (a large entry piped from a stream of known size): never whole in memory. */
export function streamTar(entries: StreamedEntry[]): { body: Readable; done: Promise<void> } {
  const pack = tar.pack();
  const done = (async () => {
    for (const e of entries) {
      await new Promise<void>((resolve, reject) => {
        const cb = (err?: Error | null) => (err ? reject(err) : resolve());
        if ('stream' in e) e.stream().pipe(pack.entry({ name: e.name, size: e.size }, cb) as unknown as NodeJS.WritableStream);
        else pack.entry({ name: e.name }, Buffer.from(e.content), cb);
      });
    }
    pack.finalize();
  })();
  return { body: Readable.from(pack as unknown as AsyncIterable<Buffer>), done };
}

/** `fn`'s result and the peak RSS growth (MiB) while it ran, sampled every 50 ms (after a GC when exposed). */
export async function rssGrowth<T>(fn: () => Promise<T>): Promise<{ result: T; grewMiB: number }> {
  global.gc?.();
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  try {
    const result = await fn();
    return { result, grewMiB: (peak - before) / 1024 / 1024 };
  } finally {
    clearInterval(sampler);
  }
}

const hexOf = (digest: string) => digest.slice('sha256:'.length);
const byName = (a: Entry, b: Entry) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** An image whose layers are uncompressed tars (layer digest = diff_id), as `docker save` holds them. */
export interface SavedImage {
  image: Image;
  repoTags: string[];
}

function diffIdsOf(image: Image): string[] {
  const ids = (JSON.parse(image.config.bytes.toString()) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
  image.layers.forEach((l, i) => {
    if (l.digest !== ids[i]) throw new Error('docker-save fixtures need uncompressed layers (makeLayer(..., { gzip: false }))');
  });
  return ids;
}

/** `repositories`: familiar name -> tag -> the image's top v1 id (or manifest digest hex). */
function repositoriesOf(images: Array<{ repoTags: string[]; top: string }>): string {
  const repos: Record<string, Record<string, string>> = {};
  for (const { repoTags, top } of images) {
    for (const rt of repoTags) {
      const colon = rt.lastIndexOf(':');
      (repos[rt.slice(0, colon)] ??= {})[rt.slice(colon + 1)] = top;
    }
  }
  return JSON.stringify(repos);
}

/**
 * The legacy `docker save` archive (Docker <=24, moby image/tarexport/save.go @v24.0.0):
 * per layer a `<v1id>/` directory with `VERSION`, `json` and `layer.tar`, where a layer
 * already written (same diff_id) is a symlink `../<first v1id>/layer.tar`; the config as
 * `<config-hex>.json`; `manifest.json` and `repositories`; all in lexical order (moby tars
 * its temp directory by walking it). v1 ids are stand-ins (moby hashes the v1 JSON).
 */
export function dockerSaveEntries(images: SavedImage[]): Entry[] {
  const out = new Map<string, Entry>();
  const diffIdPaths = new Map<string, string>();
  const manifest: Array<{ Config: string; RepoTags: string[] | null; Layers: string[] }> = [];
  const tops: Array<{ repoTags: string[]; top: string }> = [];
  for (const { image, repoTags } of images) {
    const ids = diffIdsOf(image);
    let parent = '';
    const layers: string[] = [];
    image.layers.forEach((l, i) => {
      const last = i === ids.length - 1;
      const v1 = hexOf(sha256(JSON.stringify({ chain: ids.slice(0, i + 1), parent, config: last ? image.config.digest : '' })));
      layers.push(`${v1}/layer.tar`);
      if (!out.has(`${v1}/`)) {
        out.set(`${v1}/`, { name: `${v1}/`, type: 'directory' });
        out.set(`${v1}/VERSION`, { name: `${v1}/VERSION`, content: '1.0' });
        out.set(`${v1}/json`, { name: `${v1}/json`, content: JSON.stringify({ id: v1, ...(parent ? { parent } : {}), created: '1970-01-01T00:00:00Z', os: 'linux' }) });
        const first = diffIdPaths.get(l.digest);
        out.set(`${v1}/layer.tar`, first ? { name: `${v1}/layer.tar`, type: 'symlink', linkname: `../${first}` } : { name: `${v1}/layer.tar`, content: l.bytes });
        if (!first) diffIdPaths.set(l.digest, `${v1}/layer.tar`);
      }
      parent = v1;
    });
    out.set(`${hexOf(image.config.digest)}.json`, { name: `${hexOf(image.config.digest)}.json`, content: image.config.bytes });
    manifest.push({ Config: `${hexOf(image.config.digest)}.json`, RepoTags: repoTags.length ? repoTags : null, Layers: layers });
    tops.push({ repoTags, top: parent });
  }
  out.set('manifest.json', { name: 'manifest.json', content: JSON.stringify(manifest) });
  out.set('repositories', { name: 'repositories', content: repositoriesOf(tops) });
  return [...out.values()].sort(byName);
}

/**
 * What Docker 25+ writes (moby @v25.0.0): an OCI layout (one index.json entry per tag, both
 * annotations; uncompressed layers) plus `manifest.json` with `blobs/sha256/<hex>` paths and
 * `repositories`, in lexical order. `indexed: false` leaves an image out of index.json (the
 * pre-25.0.3 bug for untagged images).
 */
export function docker25Entries(images: Array<SavedImage & { indexed?: boolean }>): Entry[] {
  const roots = images.flatMap(({ image, repoTags, indexed }) =>
    indexed === false ? [] : repoTags.map((rt) => ({ root: image.manifest, annotations: { [CONTAINERD_NAME]: rt.includes('/') ? rt : `docker.io/library/${rt}`, [REF_NAME]: rt.slice(rt.lastIndexOf(':') + 1) } })),
  );
  const blobs = images.flatMap(({ image }) => [image.manifest, image.config, ...image.layers]);
  const manifest = images.map(({ image, repoTags }) => {
    diffIdsOf(image);
    return { Config: `blobs/sha256/${hexOf(image.config.digest)}`, RepoTags: repoTags.length ? repoTags : null, Layers: image.layers.map((l) => `blobs/sha256/${hexOf(l.digest)}`) };
  });
  const blobEntries = layoutEntries(roots, blobs).filter((e) => e.name.startsWith('blobs/'));
  const index = { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: roots.map((r) => descriptor(r.root, { annotations: r.annotations })) };
  return [
    ...blobEntries,
    { name: 'index.json', content: JSON.stringify(index) },
    { name: 'manifest.json', content: JSON.stringify(manifest) },
    { name: 'oci-layout', content: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
    { name: 'repositories', content: repositoriesOf(images.map(({ image, repoTags }) => ({ repoTags, top: hexOf(image.manifest.digest) }))) },
  ].sort(byName);
}

/**
 * The manifest the importer builds for a docker-save image without one (README, "Air-gapped
 * import"): OCI image manifest, the config verbatim, one layer per diff_id (uncompressed,
 * or `+gzip` for a `MediaTypes.ociLayerGzip` blob).
 * Written here from the rule, not from the server's code, so a drift fails the tests.
 */
export function builtManifest(image: Image): Buffer {
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: { mediaType: MediaTypes.ociConfig, digest: image.config.digest, size: image.config.size },
    layers: image.layers.map((l) => ({ mediaType: l.mediaType === MediaTypes.ociLayerGzip ? l.mediaType : MediaTypes.ociLayer, digest: l.digest, size: l.size })),
  }));
}

export function gzip(b: Buffer): Buffer {
  return gzipSync(b);
}

/** Compressed by the system `xz` (single-threaded, so one block: what `xz file` writes). */
export function xz(b: Buffer, args: string[] = []): Buffer {
  return execFileSync('xz', ['-c', '-T1', ...args], { input: b, maxBuffer: 1 << 30 });
}

/** A bundle: a tar whose entries are the given archives (under a directory, as bmctl lays them out). */
export function bundleArchive(archives: Array<{ name: string; body: Buffer }>, extra: Entry[] = []): Promise<Buffer> {
  return packTar([{ name: 'bundle/', type: 'directory' }, ...extra, ...archives.map((a) => ({ name: `bundle/${a.name}`, content: a.body }))]);
}

export const NDJSON = 'application/x-ndjson';

export type ImportEvent = { event: 'progress' | 'image' | 'error' | 'done'; archive?: number; [k: string]: unknown };

/** The lines of an NDJSON answer, each parsed. */
export function ndjson(body: Buffer): ImportEvent[] {
  return body.toString('utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as ImportEvent);
}

export interface ImportResult {
  name: string;
  tag: string | null;
  digest: string;
  mediaType: string;
  blobs: { new: number; existing: number };
  bytes: number;
  newBytes: number;
  built?: true;
  entry?: string;
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

export const ACCEPT = [OCI_INDEX, OCI_MANIFEST].join(', ');

/** No blob file, no temp file, no repository: what a refused import must leave. */
export async function assertNothingStored(t: ExecutionContext, s: TestServer, repo: string, what: string): Promise<void> {
  const storage = path.join(s.dataDir, 'storage');
  t.deepEqual(await filesUnder(path.join(storage, 'tmp')), [], `${what}: no temp file left`);
  t.deepEqual(await filesUnder(path.join(storage, 'blobs')), [], `${what}: no blob stored`);
  // The catalog is local only (tags/list under an upstream-mapped prefix would ask upstream).
  const catalog = await http('GET', `${s.url}/v2/_catalog`);
  t.false(catalog.json<{ repositories: string[] }>().repositories.includes(repo), `${what}: no repository`);
  t.is((await http('GET', `${s.url}/healthz`)).status, 200, `${what}: server healthy`);
}

/** Every manifest and blob of `idx` is served from `repo` byte for byte, the index by `tag`. */
export async function assertServed(t: ExecutionContext, base: string, repo: string, tag: string, idx: ReturnType<typeof sampleIndex>): Promise<void> {
  const top = await http('GET', `${base}/v2/${repo}/manifests/${tag}`, { headers: { accept: ACCEPT } });
  t.is(top.status, 200);
  t.is(top.header('docker-content-digest'), idx.index.digest);
  t.true(top.body.equals(idx.index.bytes), 'index bytes unchanged');
  for (const { image } of idx.images) {
    const m = await http('GET', `${base}/v2/${repo}/manifests/${image.manifest.digest}`, { headers: { accept: ACCEPT } });
    t.is(m.status, 200);
    t.true(m.body.equals(image.manifest.bytes), 'child manifest bytes unchanged');
  }
  for (const b of allBlobsOf(idx)) {
    if (b.mediaType === MediaTypes.ociIndex || b.mediaType === MediaTypes.ociManifest) continue;
    const r = await http('GET', `${base}/v2/${repo}/blobs/${b.digest}`);
    t.is(r.status, 200, `blob ${b.digest}`);
    t.is(sha256(r.body), b.digest);
  }
}

/**
 * A one-layer OCI archive of `size` bytes of `content` (deterministic random bytes unless
 * given), streamed as it is packed (never held whole); the layer's digest is computed first
 * by streaming the same bytes.
 */
export async function bigLayerArchive(
  size: number,
  seed: string,
  refName: string,
  content: () => Readable = () => randomStream(size, seed),
): Promise<{ tar: Readable; layerDigest: string; config: Buffer; fed: Promise<void> }> {
  const h = createHash('sha256');
  for await (const c of content()) h.update(c as Buffer);
  const layerDigest = `sha256:${h.digest('hex')}`;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layerDigest] } }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: OCI_MANIFEST,
    config: { mediaType: MediaTypes.ociConfig, digest: sha256(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size }],
  }));
  const index = JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256(manifest), size: manifest.length, annotations: { [REF_NAME]: refName } }] });
  const { body, done } = streamTar([
    { name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: `blobs/sha256/${layerDigest.slice(7)}`, size, stream: content },
    { name: `blobs/sha256/${sha256(config).slice(7)}`, content: config },
    { name: `blobs/sha256/${sha256(manifest).slice(7)}`, content: manifest },
    { name: 'index.json', content: index },
  ]);
  return { tar: body, layerDigest, config, fed: done };
}
