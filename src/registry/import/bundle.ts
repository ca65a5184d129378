/**
 * Image bundles: a tar (plain, gzip or xz) whose entries are themselves image archives,
 * as `bmctl` ships them. Recognised by content: a regular file that is an archive (tar,
 * gzip or xz magic) comes before any blob, layer or metadata file of an image archive. Each inner archive is
 * imported in turn, streamed from the bundle (staged per inner archive, never the whole
 * bundle); files that are not archives (a README, checksums) are skipped.
 *
 * Atomic per image, not per bundle: an inner archive that fails stores nothing of its own
 * and is reported by its entry name, and the archives after it are still imported. A
 * bundle cut short (truncated, client gone) keeps the images already committed.
 */
import { Readable } from 'node:stream';
import { RegistryError, isRegistryError } from '../errors.js';
import { isStorageFull } from '../../storage/space.js';
import { archiveHead, malformed, peek } from './detect.js';
import { type ArchiveEntry, METADATA, type TarEntries, archiveKey } from './stage.js';

/** More image archives than this in one bundle is a mistake, not a bundle. */
export const MAX_BUNDLE_ARCHIVES = 1000;
/**
 * Names that belong to an image archive: OCI layout blobs, docker-save layers and configs
 * (`<id>/layer.tar`, skopeo's `<hex>.tar` and `<hex>.json`), which are tars themselves.
 */
const IMAGE_PART = /^(blobs\/|[a-f0-9]{64}(\/|\.json$|\.tar$))|(^|\/)layer\.tar$/;

/** The first bytes of an entry's body, and the entry with a body that replays them. */
async function sniff(entry: ArchiveEntry): Promise<{ head: Buffer; entry: ArchiveEntry }> {
  const { head, stream } = await peek(Readable.from(entry.body, { objectMode: false }), 512);
  return { head, entry: { header: entry.header, body: stream } };
}

function isRegular(entry: ArchiveEntry): boolean {
  return entry.header.type === 'file' || entry.header.type === 'contiguous-file';
}

/**
 * Whether `entries` is a bundle, by its first regular file that is either part of an image
 * archive (then it is not) or an archive itself (then it is). Files before that are neither
 * (a README): both readers would skip them, so they are read and dropped here; every other
 * entry looked at is put back.
 */
export async function isBundle(entries: TarEntries): Promise<boolean> {
  const skipped: ArchiveEntry[] = [];
  let found: ArchiveEntry | undefined;
  let bundle = false;
  try {
    for (let e = await entries.next(); e; e = await entries.next()) {
      if (e.header.type === 'directory') {
        skipped.push(e);
        continue;
      }
      if (isRegular(e)) {
        const key = archiveKey(e.header.name);
        if (!METADATA.has(key) && !IMAGE_PART.test(key)) {
          const s = await sniff(e);
          if (archiveHead(s.head) === undefined) {
            for await (const _ of s.entry.body) void _;
            continue;
          }
          e = s.entry;
          bundle = true;
        }
      }
      found = e;
      break;
    }
  } finally {
    if (found) entries.unshift(found);
    for (const d of skipped.reverse()) entries.unshift(d);
  }
  return bundle;
}

/**
 * A readable view of `body` that its reader may destroy without destroying `body`:
 * `finish()` then reads the rest of it, so the bundle's next entry can be reached.
 */
function detachable(body: AsyncIterable<Buffer>): { stream: Readable; finish(): Promise<void> } {
  const it = body[Symbol.asyncIterator]();
  let pending: Promise<IteratorResult<Buffer>> | undefined;
  let done = false;
  const stream = new Readable({
    read() {
      const p = it.next();
      pending = p;
      p.then(
        (r) => {
          if (r.done) {
            done = true;
            this.push(null);
          } else this.push(r.value);
        },
        (e: Error) => this.destroy(e),
      );
    },
    destroy(err, cb) {
      cb(err); // never forwarded to `body`: the bundle reader owns it
    },
  });
  return {
    stream,
    async finish() {
      stream.destroy(); // no more reads from it: only this loop reads `body` now
      if (pending) {
        const r = await pending;
        if (r.done) done = true;
      }
      while (!done) done = (await it.next()).done === true;
    },
  };
}

export interface BundleError {
  /** The inner archive's name in the bundle; absent when the bundle itself failed. */
  entry?: string;
  error: RegistryError;
}

function named(entry: string, e: RegistryError): RegistryError {
  return new RegistryError(e.code, `bundle entry ${entry}: ${e.message}`, { status: e.status, detail: { entry, ...(e.detail !== undefined ? { detail: e.detail } : {}) } });
}

/**
 * Import every inner archive of a bundle with `each`; returns the failures (the images go
 * through `each`). Storage running out ends the bundle (507); anything else is per archive.
 */
export async function importBundle(entries: TarEntries, each: (entry: string, body: Readable) => Promise<void>, onError: (e: BundleError) => void): Promise<BundleError[]> {
  const errors: BundleError[] = [];
  const fail = (err: BundleError) => {
    errors.push(err);
    onError(err);
  };
  let archives = 0;
  try {
    for (let e = await entries.next(); e; e = await entries.next()) {
      let key: string;
      try {
        key = archiveKey(e.header.name);
      } catch (err) {
        key = JSON.stringify(e.header.name.slice(0, 200));
        if (isRegular(e)) await detachable(e.body).finish();
        fail({ entry: key, error: err as RegistryError });
        continue;
      }
      const { stream, finish } = detachable(e.body);
      if (!isRegular(e)) {
        await finish();
        if (e.header.type !== 'directory') fail({ entry: key, error: malformed(`bundle entry ${key} is a ${e.header.type ?? 'special file'}; only regular files are read`) });
        continue;
      }
      const s = await sniff({ header: e.header, body: stream });
      if (archiveHead(s.head) === undefined) {
        await finish(); // not an archive: skipped
        continue;
      }
      if (++archives > MAX_BUNDLE_ARCHIVES) throw malformed(`the bundle has more than ${MAX_BUNDLE_ARCHIVES} archives`);
      try {
        await each(key, Readable.from(s.entry.body, { objectMode: false }));
      } catch (err) {
        if (isStorageFull(err) || (isRegistryError(err) && err.status === 507)) throw err;
        fail({ entry: key, error: named(key, isRegistryError(err) ? err : malformed(`the archive could not be read: ${(err as Error).message}`)) });
      }
      await finish();
    }
  } catch (err) {
    entries.destroy();
    if (isStorageFull(err) || (isRegistryError(err) && err.status === 507)) throw err;
    fail({ error: isRegistryError(err) ? err : malformed(`the bundle is truncated or corrupt: ${(err as Error).message}`) });
  }
  return errors;
}
