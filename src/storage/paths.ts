/**
 * Every on-disk path regmirror uses, and the only code that builds them.
 *
 *   <root>/
 *     regmirror.db            SQLite: repositories, manifests (bytes included), tags,
 *                             blob index, repository links, upload sessions
 *     blobs/<alg>/<2 hex>/<hex>   committed, verified blob content (immutable)
 *     uploads/<uuid>          data of an open upload session (appended by PATCH)
 *     tmp/<random>            blob fills and monolithic uploads being written
 *
 * Crash invariant (see storage/README in docs): a `blobs` row in the DB implies a
 * complete, verified file at blobPath(); a file with no row is garbage that a later
 * commit of the same digest replaces and GC removes. `tmp/` is wiped at start-up.
 * Names, digests and upload ids reach this module only as parsed, branded values, so
 * nothing here can escape the root.
 */
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { type Digest, digestAlgorithm, digestHex } from '../registry/names.js';

export interface StoragePaths {
  readonly root: string;
  readonly db: string;
  readonly blobsDir: string;
  readonly uploadsDir: string;
  readonly tmpDir: string;
  blob(digest: Digest): string;
  upload(id: string): string;
  tempFile(): string;
}

export function storagePaths(root: string): StoragePaths {
  const abs = path.resolve(root);
  const blobsDir = path.join(abs, 'blobs');
  const uploadsDir = path.join(abs, 'uploads');
  const tmpDir = path.join(abs, 'tmp');
  return {
    root: abs,
    db: path.join(abs, 'regmirror.db'),
    blobsDir,
    uploadsDir,
    tmpDir,
    blob(digest) {
      const hex = digestHex(digest);
      return path.join(blobsDir, digestAlgorithm(digest), hex.slice(0, 2), hex);
    },
    upload(id) {
      if (!UPLOAD_ID_RE.test(id)) throw new Error(`invalid upload id reached storage: ${id.slice(0, 64)}`);
      return path.join(uploadsDir, id);
    },
    tempFile() {
      return path.join(tmpDir, randomBytes(12).toString('hex'));
    },
  };
}

export const UPLOAD_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
