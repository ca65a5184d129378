/** Row shapes both SQL drivers (db.ts on SQLite, pg/ on PostgreSQL) share, and their mapping to port records. */
import type { Digest } from '../registry/names.js';
import type { ManifestRecord } from './ports.js';

/** A `manifests` row joined with its `manifest_content` (same column names in both schemas). */
export interface ManifestRow {
  digest: string;
  media_type: string;
  size: number;
  body: Buffer;
  artifact_type: string | null;
  subject: string | null;
  annotations: string | null;
}

export function manifestFromRow(row: ManifestRow): ManifestRecord {
  return {
    digest: row.digest as Digest,
    mediaType: row.media_type,
    size: row.size,
    body: row.body,
    artifactType: row.artifact_type,
    subject: row.subject as Digest | null,
    annotations: row.annotations,
  };
}
