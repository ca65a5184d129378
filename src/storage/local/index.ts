/**
 * The local storage driver, assembled: one SQLite connection (db.ts) shared by the
 * metadata port, the blob store and upload sessions, so one process owns it. Code above
 * storage/ opens it here and sees only the ports.
 */
import { LocalBlobStore } from '../blobs.js';
import { MetadataDb } from '../db.js';
import type { StoragePaths } from '../paths.js';
import { LocalUploadStore } from '../uploads.js';
import { LocalMetadataStore } from './metadata.js';

export interface LocalStorage {
  metadata: LocalMetadataStore;
  blobs: LocalBlobStore;
  /** Upload sessions over the same connection and blob store. */
  uploads(): LocalUploadStore;
}

/** Open (and migrate) the database under `paths`; close it with `metadata.close()`. */
export function openLocalStorage(paths: StoragePaths): LocalStorage {
  const db = new MetadataDb(paths.db);
  const blobs = new LocalBlobStore(paths, db);
  return {
    metadata: new LocalMetadataStore(db),
    blobs,
    uploads: () => new LocalUploadStore(paths, db, blobs),
  };
}
