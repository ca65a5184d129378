/**
 * Archive detection by content, never by file name (formats.md section 3): the first bytes
 * say whether the stream is a tar, or a tar wrapped in gzip or xz. Compressions nothing
 * accepts (bzip2, zstd) are named in the error, so the user knows what they sent rather
 * than getting "not a tar".
 */
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { RegistryError } from '../errors.js';
import { unxz } from './xz.js';

/** A tar header is 512 bytes; `ustar` sits at offset 257. */
const PEEK_BYTES = 512;

const MAGIC: Array<{ name: string; bytes: number[] }> = [
  { name: 'bzip2', bytes: [0x42, 0x5a, 0x68] },
  { name: 'zstd', bytes: [0x28, 0xb5, 0x2f, 0xfd] },
];

export function malformed(message: string, detail?: unknown): RegistryError {
  return new RegistryError('BLOB_UPLOAD_INVALID', message, { detail });
}

const GZIP_MAGIC = [0x1f, 0x8b];
const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

function startsWith(head: Buffer, bytes: number[]): boolean {
  return head.length >= bytes.length && bytes.every((b, i) => head[i] === b);
}

function isTarHeader(head: Buffer): boolean {
  if (head.length < PEEK_BYTES) return false;
  // `ustar\0` (POSIX) or `ustar ` (old GNU); V7 tars without magic are not produced by any
  // image tool, so they are refused rather than guessed at.
  return head.toString('latin1', 257, 262) === 'ustar';
}

/**
 * Read up to `n` bytes from the front of `src` and return them with a stream that replays
 * them followed by the rest of `src`, so nothing is buffered beyond the peek.
 */
export async function peek(src: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = src[Symbol.asyncIterator]();
  const parts: Buffer[] = [];
  let have = 0;
  let done = false;
  while (have < n) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    const chunk = r.value as Buffer;
    parts.push(chunk);
    have += chunk.length;
  }
  const head = Buffer.concat(parts, have);
  async function* replay() {
    if (head.length > 0) yield head;
    if (done) return;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value as Buffer;
  }
  return { head, stream: Readable.from(replay(), { objectMode: false }) };
}

export type Compression = 'none' | 'gzip' | 'xz';

/** What the first bytes of an entry say it is: an archive (tar, gzip or xz) or something else. */
export function archiveHead(head: Buffer): Compression | undefined {
  if (startsWith(head, GZIP_MAGIC)) return 'gzip';
  if (startsWith(head, XZ_MAGIC)) return 'xz';
  return isTarHeader(head) ? 'none' : undefined;
}

/** The tar inside a compressed stream, checked by its first header. */
async function unwrap(src: Readable, name: 'gzip' | 'xz'): Promise<Readable> {
  let decoder: Readable;
  if (name === 'xz') decoder = unxz(src);
  else {
    const gunzip = createGunzip();
    src.on('error', (e) => gunzip.destroy(e));
    decoder = src.pipe(gunzip);
  }
  const inner = await peek(decoder, PEEK_BYTES).catch((e: unknown) => {
    if (e instanceof RegistryError) throw e;
    throw malformed(`the ${name} stream is corrupt: ${(e as Error).message}`);
  });
  if (!isTarHeader(inner.head)) throw malformed(`the ${name} stream does not contain a tar archive`);
  // Past the first header a decode error (a flipped byte later on) surfaces in the tar
  // reader, which reports the archive as truncated or corrupt.
  return inner.stream;
}

/** The uncompressed tar stream inside `src`, or a 400 naming what `src` is instead. */
export async function openTar(src: Readable): Promise<{ tar: Readable; compression: Compression }> {
  const first = await peek(src, PEEK_BYTES);
  if (first.head.length === 0) throw malformed('the archive is empty');
  const kind = archiveHead(first.head);
  if (kind === 'gzip' || kind === 'xz') return { tar: await unwrap(first.stream, kind), compression: kind };
  for (const m of MAGIC) {
    if (startsWith(first.head, m.bytes)) throw malformed(`${m.name}-compressed archives are not supported (use a plain tar, gzip or xz)`);
  }
  if (kind !== 'none') throw malformed('not a tar archive (no ustar header), gzip or xz');
  return { tar: first.stream, compression: 'none' };
}
