/**
 * Pre-warm a running mirror before a rollout: pull images through it over HTTP exactly as
 * containerd would (`?ns=<registry>`, manifests by tag, then every child manifest, config
 * and layer), draining the bodies. Going through the server (not its storage) means the
 * same routing, credentials, single-flight fills and digest checks as a real pull, and it
 * works while the mirror serves traffic.
 */
import { request } from 'undici';
import type { Dispatcher } from 'undici';
import { MANIFEST_TYPES, bareMediaType, isIndexType } from '../registry/mediatypes.js';
import { type Descriptor, parseManifest } from '../registry/manifests.js';
import { isDigest } from '../registry/names.js';

const ACCEPT = MANIFEST_TYPES.join(', ');
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface ImageRef {
  /** Registry host as containerd names it (`docker.io`, `gcr.io`, `myreg:5000`). */
  registry: string;
  repository: string;
  /** Tag or digest. */
  reference: string;
}

/**
 * Docker-style reference normalization: `alpine` -> docker.io/library/alpine:latest. The
 * first component is a registry when it has a dot or a port, or is `localhost`.
 */
export function parseImageRef(raw: string): ImageRef {
  const s = raw.trim();
  let name = s;
  let reference = 'latest';
  const at = s.indexOf('@');
  if (at >= 0) {
    name = s.slice(0, at);
    reference = s.slice(at + 1);
    if (!isDigest(reference)) throw new Error(`${raw}: not a digest after @`);
  } else {
    const colon = s.lastIndexOf(':');
    if (colon > s.lastIndexOf('/')) {
      name = s.slice(0, colon);
      reference = s.slice(colon + 1);
    }
  }
  const parts = name.split('/');
  let registry = 'docker.io';
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
  }
  if (registry === 'docker.io' && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (!repository || !/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(repository)) {
    throw new Error(`${raw}: not a valid image reference`);
  }
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(reference) && !isDigest(reference)) throw new Error(`${raw}: bad tag`);
  return { registry, repository, reference };
}

export interface PrefetchOptions {
  /** The mirror's base URL (`http://127.0.0.1:5000`). */
  mirror: string;
  /** Only these platforms of an index (`linux/amd64`, `linux/arm64/v8`); all when empty. */
  platforms?: readonly string[];
  /** Blobs fetched at once per image. */
  parallel?: number;
  /** `user:password` for a mirror with Basic auth. */
  user?: string;
  dispatcher?: Dispatcher;
  signal?: AbortSignal;
}

export interface PrefetchResult {
  image: string;
  digest: string | null;
  manifests: number;
  blobs: number;
  bytes: number;
  ms: number;
  error: string | null;
}

interface IndexEntry {
  digest: string;
  platform?: { os?: string; architecture?: string; variant?: string };
}

function platformMatches(d: IndexEntry, wanted: readonly string[]): boolean {
  if (wanted.length === 0) return true;
  const p = d.platform;
  if (!p) return false;
  return wanted.some((w) => {
    const [os, arch, variant] = w.split('/');
    return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant);
  });
}

class Puller {
  private readonly headers: Record<string, string>;

  constructor(
    private readonly opts: PrefetchOptions,
    private readonly ref: ImageRef,
  ) {
    this.headers = { 'user-agent': 'regmirror-prefetch' };
    if (opts.user) this.headers.authorization = `Basic ${Buffer.from(opts.user).toString('base64')}`;
  }

  private url(kind: 'manifests' | 'blobs', reference: string): string {
    return `${this.opts.mirror.replace(/\/+$/, '')}/v2/${this.ref.repository}/${kind}/${reference}?ns=${encodeURIComponent(this.ref.registry)}`;
  }

  async manifest(reference: string): Promise<{ digest: string; mediaType: string; body: Buffer }> {
    const res = await request(this.url('manifests', reference), { headers: { ...this.headers, accept: ACCEPT }, dispatcher: this.opts.dispatcher, signal: this.opts.signal });
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of res.body as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > MAX_MANIFEST_BYTES) {
        res.body.destroy();
        throw new Error(`manifest ${reference}: larger than ${MAX_MANIFEST_BYTES} bytes`);
      }
      chunks.push(c);
    }
    const body = Buffer.concat(chunks);
    if (res.statusCode !== 200) throw new Error(`manifest ${reference}: HTTP ${res.statusCode} ${body.toString('utf8').slice(0, 200)}`);
    const digest = String(res.headers['docker-content-digest'] ?? '');
    return { digest, mediaType: bareMediaType(String(res.headers['content-type'] ?? '')), body };
  }

  /** GET and drain; returns the bytes received (the mirror verified the digest). */
  async blob(d: Descriptor): Promise<number> {
    const res = await request(this.url('blobs', d.digest), { headers: this.headers, dispatcher: this.opts.dispatcher, signal: this.opts.signal });
    let n = 0;
    for await (const c of res.body as AsyncIterable<Buffer>) n += c.length;
    if (res.statusCode !== 200) throw new Error(`blob ${d.digest}: HTTP ${res.statusCode}`);
    if (n !== d.size) throw new Error(`blob ${d.digest}: got ${n} bytes, the manifest says ${d.size}`);
    return n;
  }
}

async function inPool<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(n, items.length)) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  });
  await Promise.all(workers);
}

/** Pull one image through the mirror. Never throws: the error is in the result. */
export async function prefetchImage(raw: string, opts: PrefetchOptions): Promise<PrefetchResult> {
  const started = Date.now();
  const out: PrefetchResult = { image: raw, digest: null, manifests: 0, blobs: 0, bytes: 0, ms: 0, error: null };
  try {
    const ref = parseImageRef(raw);
    const puller = new Puller(opts, ref);
    const top = await puller.manifest(ref.reference);
    out.digest = top.digest || null;
    out.manifests++;
    // Image manifests to take blobs from: the top one, or the index's (matching) children.
    const images: Array<{ body: Buffer; mediaType: string }> = [];
    if (isIndexType(top.mediaType)) {
      parseManifest(top.body, top.mediaType); // validates; platforms are read below
      const doc = JSON.parse(top.body.toString('utf8')) as { manifests: IndexEntry[] };
      for (const child of doc.manifests.filter((c) => platformMatches(c, opts.platforms ?? []))) {
        const m = await puller.manifest(child.digest);
        out.manifests++;
        if (!isIndexType(m.mediaType)) images.push(m);
      }
    } else {
      images.push(top);
    }
    const blobs = new Map<string, Descriptor>();
    for (const m of images) {
      // Config and distributable layers (foreign layers live at their `urls`, not here).
      for (const d of parseManifest(m.body, m.mediaType).requiredBlobs) if (!blobs.has(d.digest)) blobs.set(d.digest, d);
    }
    await inPool([...blobs.values()], opts.parallel ?? 3, async (d) => {
      const n = await puller.blob(d); // not `out.bytes += await ...`: that reads out.bytes before the await
      out.bytes += n;
      out.blobs++;
    });
  } catch (e) {
    out.error = e instanceof Error ? e.message : String(e);
  }
  out.ms = Date.now() - started;
  return out;
}
