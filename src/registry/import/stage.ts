/**
 * Reads a tar stream into a staging area: every regular file is streamed into a blob
 * store stage (hashed as it is written, made durable in the background) and known by its sha256, a
 * `blobs/sha256/<hex>` entry checked against its name (docker-save layers are named by
 * v1 id or diff_id, so content is the only key that fits every layout); the few small
 * metadata files are kept in memory under a cap; links are recorded, never followed on
 * disk. Nothing is interpreted until the end of the archive, because tools write entries in
 * any order (containerd sorts names, so `index.json` comes after `blobs/`; skopeo writes
 * `manifest.json` last; formats.md section 3).
 *
 * tar-stream does the tar parsing (PAX/GNU long names and sizes, base-256 numbers, header
 * checksums): a hand-written parser is where the classic tar bugs live.
 */
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { RegistryError, isRegistryError } from '../errors.js';
import type { Digest } from '../names.js';
import type { BlobStore, BlobWriter, PositionalReader } from '../../storage/ports.js';
import { isStorageFull } from '../../storage/space.js';
import { malformed } from './detect.js';

/** Files other than blobs that the importer reads: small JSON documents. */
export const METADATA = new Set(['oci-layout', 'index.json', 'manifest.json', 'repositories']);
/** Bounds a hostile archive of millions of empty entries (each costs a header parse and a temp file). */
export const MAX_ENTRIES = 100_000;
const BLOB_RE = /^blobs\/sha256\/([a-f0-9]{64})$/;
/** Link chains longer than this are refused (and a loop is one). */
export const MAX_LINK_DEPTH = 16;

/** Reads of the staged content in 1 MiB steps (configs, manifests, layers to gunzip). */
const READ_BYTES = 1024 * 1024;

export interface StagedBlob {
  digest: Digest;
  size: number;
  /**
   * The stage, sealed as soon as its entry was read, so the store makes it durable (local:
   * fsync) while the next entries stream in (an fsync per blob in line cost a third of an
   * import's wall time); committed by the importer, or aborted by `Staging.discard`.
   */
  writer: BlobWriter;
  /** `length` bytes from `position` (fewer at the end). */
  read(position: number, length: number): Promise<Buffer>;
  /** The whole content as a stream. */
  stream(): Readable;
}

function stagedBlob(writer: BlobWriter, digest: Digest, size: number): StagedBlob {
  /** Fill `buf` from `position` (fewer bytes at the end of the content). */
  const fill = async (r: PositionalReader, position: number, length: number): Promise<Buffer> => {
    const buf = Buffer.alloc(Math.max(0, Math.min(length, size - position)));
    for (let n = 0; n < buf.length; ) {
      const got = await r.read(buf.subarray(n), buf.length - n, position + n);
      if (got === 0) throw new Error(`staged blob ${digest} ended at ${position + n} of ${size} bytes`);
      n += got;
    }
    return buf;
  };
  return {
    digest,
    size,
    writer,
    read: async (position, length) => {
      const r = await writer.reader();
      try {
        return await fill(r, position, length);
      } finally {
        await r.close();
      }
    },
    stream: () =>
      Readable.from(
        (async function* () {
          const r = await writer.reader();
          try {
            for (let pos = 0; pos < size; pos += READ_BYTES) yield await fill(r, pos, READ_BYTES);
          } finally {
            await r.close();
          }
        })(),
        { objectMode: false },
      ),
  };
}

export interface Staging {
  /** Every staged regular file by content digest (identical files staged once). */
  blobs: Map<Digest, StagedBlob>;
  /** Archive name of every staged regular file -> its digest. */
  paths: Map<string, Digest>;
  /** Symlinks and hard links: archive name -> the archive name they point at (checked inside). */
  links: Map<string, string>;
  /** Small metadata files by archive name. */
  files: Map<string, Buffer>;
  /** Abort every stage not committed yet. */
  discard(): Promise<void>;
}

export interface StageLimits {
  maxBlobBytes: number;
  maxManifestBytes: number;
}

/**
 * An archive name as a key: `./` prefixes and trailing slashes dropped; absolute names,
 * `..` components, backslashes and NUL refused (they are traversal attempts, never what an
 * image tool writes).
 */
export function archiveKey(raw: string): string {
  if (raw.includes('\0')) throw malformed('archive entry name contains NUL');
  if (raw.includes('\\')) throw malformed('archive entry name contains a backslash', { name: raw.slice(0, 200) });
  if (raw.startsWith('/')) throw malformed('archive entry has an absolute path', { name: raw.slice(0, 200) });
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw malformed('archive entry escapes the archive (..)', { name: raw.slice(0, 200) });
  return parts.join('/');
}

/**
 * Where a link entry points, as an archive key. A symlink's target is relative to the
 * link's directory, a hard link's to the archive root (tar semantics); an absolute target
 * or one climbing above the archive is refused, never resolved against the filesystem.
 */
function linkTarget(key: string, type: 'symlink' | 'link', linkname: string): string {
  const what = type === 'symlink' ? 'symlink' : 'hard link';
  const outside = () => malformed(`archive entry ${key} is a ${what} pointing outside the archive`, { name: key, target: linkname.slice(0, 200) });
  if (linkname.includes('\0') || linkname.includes('\\') || linkname.startsWith('/') || linkname === '') throw outside();
  const joined = path.posix.normalize(type === 'symlink' ? path.posix.join(path.posix.dirname(key), linkname) : linkname);
  if (joined === '..' || joined.startsWith('../') || joined.startsWith('/')) throw outside();
  return archiveKey(joined);
}

/**
 * The staged file an archive name denotes, following links inside the archive (at most
 * MAX_LINK_DEPTH hops, so a loop ends as an error). Undefined when nothing by that name
 * was staged (a missing file, or a link to one).
 */
export function resolveFile(staging: Staging, name: string): StagedBlob | undefined {
  let key = archiveKey(name);
  for (let hops = 0; ; hops++) {
    const digest = staging.paths.get(key);
    if (digest !== undefined) return staging.blobs.get(digest);
    const next = staging.links.get(key);
    if (next === undefined) return undefined;
    if (hops >= MAX_LINK_DEPTH) throw malformed(`archive entry ${archiveKey(name)} is a link loop or a chain of more than ${MAX_LINK_DEPTH} links`, { name: archiveKey(name) });
    key = next;
  }
}

async function readCapped(stream: AsyncIterable<Buffer>, max: number, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream) {
    n += chunk.length;
    if (n > max) throw new RegistryError('MANIFEST_INVALID', `${name} exceeds ${max} bytes`, { status: 413 });
    parts.push(chunk);
  }
  return Buffer.concat(parts, n);
}

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) void _;
}

/** One archive entry: its header and the body to read (the entry itself, or a replay of it). */
export interface ArchiveEntry {
  header: tar.Header;
  body: AsyncIterable<Buffer>;
}

/** The entries of a tar stream, one at a time, with a way to put back what was peeked at. */
export interface TarEntries {
  /** The next entry, or undefined at the end; every entry's body must be read to its end. */
  next(): Promise<ArchiveEntry | undefined>;
  unshift(entry: ArchiveEntry): void;
  /** Stop reading (the input is destroyed; its owner keeps the request readable). */
  destroy(): void;
}

export function tarEntries(tarStream: Readable): TarEntries {
  const extract = tar.extract();
  // tar-stream's streams are streamx streams: piped by hand (node's pipeline does not know
  // them), errors forwarded.
  tarStream.on('error', (e) => extract.destroy(e));
  tarStream.pipe(extract);
  const it = extract[Symbol.asyncIterator]();
  const back: ArchiveEntry[] = [];
  let count = 0;
  return {
    async next() {
      const b = back.pop();
      if (b) return b;
      const r = await it.next();
      if (r.done) return undefined;
      if (++count > MAX_ENTRIES) throw malformed(`the archive has more than ${MAX_ENTRIES} entries`);
      return { header: r.value.header, body: r.value as unknown as AsyncIterable<Buffer> };
    },
    unshift(entry) {
      back.push(entry);
    },
    destroy() {
      extract.destroy();
      tarStream.destroy();
    },
  };
}

/** Stream every entry into staging; on any error, nothing staged is left behind. */
export async function stageArchive(entries: TarEntries, store: BlobStore, limits: StageLimits): Promise<Staging> {
  const blobs = new Map<Digest, StagedBlob>();
  const paths = new Map<string, Digest>();
  const links = new Map<string, string>();
  const files = new Map<string, Buffer>();
  const seen = new Set<string>();
  const discard = async () => {
    const all = [...blobs.values()];
    blobs.clear();
    await Promise.all(all.map((b) => b.writer.abort())); // a no-op for committed ones
  };
  try {
    for (let entry = await entries.next(); entry; entry = await entries.next()) {
      const { header, body } = entry;
      const key = archiveKey(header.name);
      if (header.type === 'directory') {
        await drain(body);
        continue;
      }
      if (seen.has(key)) throw malformed(`archive has a duplicate entry ${key}`, { name: key });
      seen.add(key);
      if (header.type === 'symlink' || header.type === 'link') {
        // Legitimate in docker-save archives (a repeated layer's `<v1id>/layer.tar`); metadata
        // is read only from a regular file under its own name, so a link cannot stand in for it.
        const target = linkTarget(key, header.type, header.linkname ?? '');
        if (METADATA.has(key) || METADATA.has(target) || BLOB_RE.test(key)) throw malformed(`archive entry ${key} is a ${header.type}; metadata and blobs must be regular files under their own names`, { name: key });
        links.set(key, target);
        await drain(body);
        continue;
      }
      if (header.type !== 'file' && header.type !== 'contiguous-file') {
        throw malformed(`archive entry ${key} is a ${header.type ?? 'special file'}; only regular files, directories and links are accepted`, { name: key });
      }
      const size = header.size ?? 0;
      if (METADATA.has(key)) {
        if (size > limits.maxManifestBytes) throw new RegistryError('MANIFEST_INVALID', `${key} exceeds ${limits.maxManifestBytes} bytes`, { status: 413 });
        files.set(key, await readCapped(body, limits.maxManifestBytes, key));
        continue;
      }
      if (size > limits.maxBlobBytes) throw new RegistryError('SIZE_INVALID', `archive entry ${key} exceeds the maximum blob size of ${limits.maxBlobBytes} bytes`, { status: 413 });
      const writer = store.stage({ algorithm: 'sha256', maxBytes: limits.maxBlobBytes });
      await writer.appendStream(Readable.from(body, { objectMode: false })); // a failure drops the stage
      let written: { digest: Digest; size: number };
      try {
        written = await writer.seal(); // durability starts now, in the background
        const blob = BLOB_RE.exec(key);
        if (blob && written.digest !== `sha256:${blob[1]}`) {
          throw new RegistryError('DIGEST_INVALID', `archive entry ${key} does not hash to its name`, { detail: { expected: `sha256:${blob[1]}`, actual: written.digest } });
        }
      } catch (e) {
        await writer.abort();
        throw e;
      }
      paths.set(key, written.digest);
      if (blobs.has(written.digest)) await writer.abort();
      else blobs.set(written.digest, stagedBlob(writer, written.digest, written.size));
    }
  } catch (e) {
    entries.destroy();
    await discard();
    if (isRegistryError(e) || isStorageFull(e)) throw e;
    throw malformed(`the archive is truncated or corrupt: ${(e as Error).message}`);
  }
  return { blobs, paths, links, files, discard };
}
