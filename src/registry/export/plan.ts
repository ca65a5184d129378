/**
 * Decide what an export contains, before a byte of it is written: resolve each image
 * through the pull-through layer (so an image not held here is fetched, verified and
 * stored exactly as a client pull would), walk its manifests, choose platforms, make
 * every blob local and open it. A failure here is a clean error status; once a plan
 * exists, writing the archive (layout.ts) needs nothing but the open files.
 *
 * Platform filter (`platforms` non-empty): an index keeps only the children whose
 * `platform` matches. One match: that child manifest itself becomes the index.json
 * entry (its digest unchanged, what `pull --platform` resolves to). Several: a new index
 * with only those entries (same media type and annotations; a new digest, since the
 * original index names children the archive does not hold), or the original index when
 * every child matches. A single-platform image is
 * kept when its config's os/architecture(/variant) matches.
 */
import { RegistryError } from '../errors.js';
import { type Descriptor, parseManifest } from '../manifests.js';
import { MANIFEST_TYPES, isIndexType } from '../mediatypes.js';
import { type Digest, type Reference, type RepoName, parseDigest, parseReference, parseRepoName } from '../names.js';
import type { PullThrough } from '../pullthrough.js';
import { type RegistryService, digestOf } from '../service.js';
import type { BlobBody } from '../../storage/ports.js';

export const REF_NAME = 'org.opencontainers.image.ref.name';
export const CONTAINERD_NAME = 'io.containerd.image.name';
/** Nested indexes deeper than this are refused (as on import). */
const MAX_DEPTH = 8;
/** Blobs made local at once per export (each may be an upstream fill). */
const PARALLEL_BLOBS = 3;
/** Config blobs read to check a single-platform image's platform. */
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ExportImage {
  repo: RepoName;
  ref: Reference;
  /** containerd's `?ns=` for the whole request (which upstream a miss goes to). */
  ns?: string;
}

export interface ExportRequest {
  images: ExportImage[];
  platforms: Platform[];
}

/** One index.json entry. */
export interface LayoutEntry {
  descriptor: Descriptor & { platform?: Platform };
  /** `repo:tag` (with the `ns` registry first, when given), or `repo@digest`. */
  name: string;
  tag: string | null;
  /** For manifest.json (docker load): set when the entry is a single image manifest. */
  docker?: { config: Digest; layers: Digest[] };
}

export interface ExportPlan {
  entries: LayoutEntry[];
  /** Every manifest body written under blobs/ (stored ones and any new filtered index). */
  manifests: Map<Digest, Buffer>;
  /** Every config and layer blob, opened: eviction after planning cannot take it away. */
  blobs: Map<Digest, { size: number; body: BlobBody }>;
  close(): Promise<void>;
}

export interface PlanOptions {
  /** Throws (401/403) unless the caller may pull `repo`; called for every image before any is resolved. */
  authorize(repo: RepoName): Promise<void>;
}

/** `os/arch[/variant]`, as docker and containerd spell it. */
export function parsePlatform(raw: string): Platform {
  const [os, architecture, variant, extra] = raw.trim().split('/');
  if (!os || !architecture || extra !== undefined || variant === '') {
    throw new RegistryError('UNSUPPORTED', `platform ${JSON.stringify(raw.slice(0, 100))} is not os/arch[/variant]`, { status: 400 });
  }
  return variant ? { os, architecture, variant } : { os, architecture };
}

/** `<repo>:<tag>`, `<repo>@<digest>` or `<repo>` (`latest`): a repository path on this mirror. */
export function parseExportImage(raw: string, ns?: string): ExportImage {
  const at = raw.indexOf('@');
  let name = raw;
  let ref = 'latest';
  if (at >= 0) {
    name = raw.slice(0, at);
    ref = raw.slice(at + 1);
    parseDigest(ref); // DIGEST_INVALID, not a tag error
  } else {
    const colon = raw.lastIndexOf(':');
    if (colon > raw.lastIndexOf('/')) {
      name = raw.slice(0, colon);
      ref = raw.slice(colon + 1);
    }
  }
  return { repo: parseRepoName(name), ref: parseReference(ref), ...(ns ? { ns } : {}) };
}

function matches(p: Partial<Platform> | undefined, wanted: readonly Platform[]): boolean {
  if (!p) return false;
  return wanted.some((w) => p.os === w.os && p.architecture === w.architecture && (w.variant === undefined || p.variant === w.variant));
}

function show(platforms: readonly Platform[]): string {
  return platforms.map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/')).join(', ');
}

/** The raw index entries (parseManifest drops `platform`); the body was validated already. */
function indexEntries(body: Buffer): { doc: Record<string, unknown>; manifests: Array<Record<string, unknown>> } {
  const doc = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
  return { doc, manifests: doc.manifests as Array<Record<string, unknown>> };
}

class Planner {
  readonly manifests = new Map<Digest, Buffer>();
  readonly blobSizes = new Map<Digest, { size: number; image: ExportImage }>();

  constructor(private readonly pull: PullThrough) {}

  /** A manifest by digest or tag through the pull-through layer, kept for the archive. */
  async manifest(img: ExportImage, ref: Reference, keep = true) {
    const { record } = await this.pull.getManifest(img.repo, img.ns, ref, MANIFEST_TYPES);
    if (keep) this.manifests.set(record.digest, record.body);
    return record;
  }

  /** Fetch `digest`'s whole tree (children, configs, layers) into the plan. */
  async walk(img: ExportImage, digest: Digest, mediaType: string, body: Buffer, depth: number): Promise<{ config: Digest; layers: Digest[] } | undefined> {
    if (depth > MAX_DEPTH) throw new RegistryError('MANIFEST_INVALID', `image indexes are nested more than ${MAX_DEPTH} deep`);
    const parsed = parseManifest(body, mediaType);
    for (const b of parsed.requiredBlobs) if (!this.blobSizes.has(b.digest)) this.blobSizes.set(b.digest, { size: b.size, image: img });
    for (const c of parsed.requiredManifests) {
      if (this.manifests.has(c.digest)) continue;
      const child = await this.manifest(img, { kind: 'digest', digest: c.digest });
      await this.walk(img, child.digest, child.mediaType, child.body, depth + 1);
    }
    if (isIndexType(mediaType)) return undefined;
    // Foreign layers are not in the archive: manifest.json would name missing files.
    const layers = parsed.allBlobs.slice(1);
    if (layers.length !== parsed.requiredBlobs.length - 1) return undefined;
    return { config: parsed.requiredBlobs[0]!.digest, layers: layers.map((l) => l.digest) };
  }
}

function nameOf(img: ExportImage): { name: string; tag: string | null } {
  const repo = img.ns ? `${img.ns}/${img.repo}` : img.repo;
  return img.ref.kind === 'tag' ? { name: `${repo}:${img.ref.tag}`, tag: img.ref.tag } : { name: `${repo}@${img.ref.digest}`, tag: null };
}

async function planImage(p: Planner, img: ExportImage, platforms: readonly Platform[]): Promise<LayoutEntry> {
  // A filtered index is not written: the archive does not hold all its children.
  const top = await p.manifest(img, img.ref, platforms.length === 0);
  const { name, tag } = nameOf(img);
  const annotations: Record<string, string> = { [CONTAINERD_NAME]: name, ...(tag ? { [REF_NAME]: tag } : {}) };
  const entry = (d: Descriptor & { platform?: Platform }, docker?: LayoutEntry['docker']): LayoutEntry => ({
    descriptor: { mediaType: d.mediaType, digest: d.digest, size: d.size, ...(d.platform ? { platform: d.platform } : {}), annotations },
    name,
    tag,
    docker,
  });
  if (!isIndexType(top.mediaType) || platforms.length === 0) {
    p.manifests.set(top.digest, top.body);
    const docker = await p.walk(img, top.digest, top.mediaType, top.body, 0);
    return entry({ mediaType: top.mediaType, digest: top.digest, size: top.size }, docker);
  }
  parseManifest(top.body, top.mediaType); // validates the shape read below
  const { doc, manifests } = indexEntries(top.body);
  const chosen = manifests.filter((m) => matches(m.platform as Partial<Platform> | undefined, platforms));
  if (chosen.length === 0) {
    throw new RegistryError('MANIFEST_UNKNOWN', `${name} has no manifest for ${show(platforms)}`, { detail: { image: name, platforms: show(platforms) } });
  }
  if (chosen.length === 1) {
    const c = chosen[0]!;
    const child = await p.manifest(img, { kind: 'digest', digest: c.digest as Digest });
    const docker = await p.walk(img, child.digest, child.mediaType, child.body, 1);
    return entry({ mediaType: child.mediaType, digest: child.digest, size: child.size, platform: c.platform as Platform }, docker);
  }
  if (chosen.length === manifests.length) {
    p.manifests.set(top.digest, top.body);
    await p.walk(img, top.digest, top.mediaType, top.body, 0);
    return entry({ mediaType: top.mediaType, digest: top.digest, size: top.size });
  }
  const body = Buffer.from(JSON.stringify({ ...doc, manifests: chosen }));
  const digest = digestOf(body);
  p.manifests.set(digest, body);
  await p.walk(img, digest, top.mediaType, body, 0);
  return entry({ mediaType: top.mediaType, digest, size: body.length });
}

async function inPool<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0;
  let failed = false;
  const worker = async () => {
    while (i < items.length && !failed) {
      try {
        await fn(items[i++]!);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
}

/**
 * Make `digest` local (a fill from the upstream if needed, waited for to the commit) and
 * open it. A file removed between the lookup and the open (eviction) is looked up again.
 */
async function openBlob(pull: PullThrough, svc: RegistryService, img: ExportImage, digest: Digest): Promise<BlobBody> {
  for (let attempt = 0; ; attempt++) {
    const blob = await pull.getBlob(img.repo, img.ns, digest, false);
    if (blob.fill) await blob.fill.done;
    const body = blob.body && !blob.fill ? await blob.body() : await svc.blobs.open(digest);
    if (body) return body;
    if (attempt > 0) throw new RegistryError('UNAVAILABLE', `blob ${digest} was removed while the export was prepared; try again`, { detail: { digest } });
  }
}

/** Every byte of `body` (`size` long) in order: the driver's fast path when it has one, else its stream. */
export async function* chunksOf(body: BlobBody, size: number, chunkBytes = 1024 * 1024): AsyncGenerator<Buffer> {
  const reader = body.positional();
  if (!reader) {
    if (size > 0) yield* body.stream(0, size - 1) as AsyncIterable<Buffer>;
    return;
  }
  for (let pos = 0; pos < size; ) {
    const buf = Buffer.allocUnsafe(Math.min(chunkBytes, size - pos));
    const n = await reader.read(buf, buf.length, pos);
    if (n === 0) throw new Error(`blob ended at ${pos} of ${size} bytes`);
    pos += n;
    yield buf.subarray(0, n);
  }
}

/** Whether the stored content is exactly `size` bytes (a short or long file is damage fsck reports). */
async function storedLengthIs(body: BlobBody, size: number): Promise<boolean> {
  const reader = body.positional();
  if (!reader) return true; // a driver without positional reads is checked as the tar is written
  const probe = Buffer.allocUnsafe(1);
  if (size > 0 && (await reader.read(probe, 1, size - 1)) !== 1) return false;
  return (await reader.read(probe, 1, size)) === 0;
}

async function configMatches(body: BlobBody, size: number, platforms: readonly Platform[]): Promise<boolean> {
  if (size > MAX_CONFIG_BYTES) return false;
  const parts: Buffer[] = [];
  for await (const c of chunksOf(body, size)) parts.push(c);
  try {
    return matches(JSON.parse(Buffer.concat(parts).toString('utf8')) as Partial<Platform>, platforms);
  } catch {
    return false;
  }
}

export async function planExport(pull: PullThrough, svc: RegistryService, req: ExportRequest, opts: PlanOptions): Promise<ExportPlan> {
  if (req.images.length === 0) throw new RegistryError('NAME_INVALID', 'no image to export', { status: 400 });
  const p = new Planner(pull);
  const entries: LayoutEntry[] = [];
  // Every right first: a later refusal must not follow upstream pulls made for earlier images.
  for (const repo of new Set(req.images.map((i) => i.repo))) await opts.authorize(repo);
  for (const img of req.images) entries.push(await planImage(p, img, req.platforms));
  const opened = new Map<Digest, { size: number; body: BlobBody }>();
  const close = async () => {
    await Promise.all([...opened.values()].map((b) => b.body.close().catch(() => undefined)));
  };
  // In plan order, not completion order: the same images always give the same archive bytes.
  const blobs = new Map<Digest, { size: number; body: BlobBody }>();
  try {
    await inPool([...p.blobSizes.entries()], PARALLEL_BLOBS, async ([digest, { size, image }]) => {
      const body = await openBlob(pull, svc, image, digest);
      opened.set(digest, { size, body });
      // Damaged storage is the server's fault (fsck finds it), but it must not become a cut archive.
      if (!(await storedLengthIs(body, size))) throw new RegistryError('UNKNOWN', `stored blob ${digest} is not the ${size} bytes its manifest says; run regmirror fsck`, { status: 500 });
    });
    for (const d of p.blobSizes.keys()) blobs.set(d, opened.get(d)!);
    if (req.platforms.length > 0) {
      for (const e of entries) {
        const cfg = e.docker && !e.descriptor.platform ? blobs.get(e.docker.config) : undefined;
        if (cfg && !(await configMatches(cfg.body, cfg.size, req.platforms))) {
          throw new RegistryError('MANIFEST_UNKNOWN', `${e.name} is not an image for ${show(req.platforms)}`, { detail: { image: e.name, platforms: show(req.platforms) } });
        }
      }
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { entries, manifests: p.manifests, blobs, close };
}
