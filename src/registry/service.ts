/**
 * RegistryService: the registry's operations on local storage, independent of HTTP.
 * Handlers call it with parsed, branded values; it enforces the spec's rules (manifest
 * references must exist, blobs are visible only where linked, tags vs digests).
 */
import { Readable } from 'node:stream';
import { RegistryError } from './errors.js';
import { type ParsedManifest, parseManifest } from './manifests.js';
import { acceptsMediaType } from './mediatypes.js';
import { type Digest, type Reference, type RepoName, digestAlgorithm } from './names.js';
import { createHash } from 'node:crypto';
import type { ManifestMeta, ManifestRecord, MetadataStore, Provenance } from '../storage/ports.js';
import type { BlobStore, UploadStore } from '../storage/ports.js';
import { UploadService } from './uploads.js';

export interface Limits {
  maxManifestBytes: number;
  maxBlobBytes: number;
}

export interface PutManifestResult {
  digest: Digest;
  subject: Digest | null;
}

export function digestOf(bytes: Buffer, alg: 'sha256' | 'sha512' = 'sha256'): Digest {
  return `${alg}:${createHash(alg).update(bytes).digest('hex')}` as Digest;
}

export class RegistryService {
  /** Blob pushes: mounts, monolithic uploads and upload sessions. */
  readonly pushes: UploadService;

  constructor(
    readonly meta: MetadataStore,
    readonly blobs: BlobStore,
    readonly uploads: UploadStore,
    readonly limits: Limits,
  ) {
    this.pushes = new UploadService(this);
  }

  /** Resolve a reference to a stored manifest in `repo`, honouring Accept for tags. */
  async getManifest(repo: RepoName, ref: Reference, accept: readonly string[]): Promise<ManifestRecord> {
    const digest = ref.kind === 'digest' ? ref.digest : (await this.meta.tag(repo, ref.tag))?.digest;
    const m = digest && (await this.meta.manifest(repo, digest));
    if (!m) {
      if (!(await this.meta.repoExists(repo))) throw new RegistryError('NAME_UNKNOWN', undefined, { detail: { name: repo } });
      throw new RegistryError('MANIFEST_UNKNOWN', undefined, { detail: { reference: ref.kind === 'tag' ? ref.tag : ref.digest } });
    }
    // By digest the content is fixed: always serve it. By tag, respect Accept.
    if (ref.kind === 'tag' && !acceptsMediaType(accept, m.mediaType)) {
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest is ${m.mediaType}, which the client does not accept`);
    }
    return m;
  }

  async putManifest(
    repo: RepoName,
    ref: Reference,
    contentType: string,
    body: Buffer,
    parsed: ParsedManifest = parseManifest(body, contentType),
    provenance: Provenance = 'pushed',
    /** More tags for the same manifest (`?tag=`), written in the same transaction. */
    extraTags: readonly string[] = [],
  ): Promise<PutManifestResult> {
    const digest = ref.kind === 'digest' ? digestOf(body, digestAlgorithm(ref.digest)) : digestOf(body);
    if (ref.kind === 'digest' && digest !== ref.digest) {
      throw new RegistryError('DIGEST_INVALID', 'manifest body does not match the digest in the URL', { detail: { expected: ref.digest } });
    }
    const missing: string[] = [];
    for (const d of parsed.requiredBlobs) {
      if ((await this.meta.repoBlobSize(repo, d.digest)) === undefined) missing.push(d.digest);
    }
    for (const d of parsed.requiredManifests) {
      if (!(await this.meta.hasManifest(repo, d.digest))) missing.push(d.digest);
    }
    if (missing.length > 0) {
      throw new RegistryError('MANIFEST_BLOB_UNKNOWN', undefined, { detail: { digests: missing.slice(0, 20) } });
    }
    await this.meta.putManifest(
      repo,
      {
        digest,
        mediaType: parsed.mediaType,
        size: body.length,
        artifactType: parsed.artifactType,
        subject: parsed.subject,
        annotations: parsed.annotations ? JSON.stringify(parsed.annotations) : null,
        body,
        refs: [
          ...parsed.allBlobs.map((d) => ({ digest: d.digest, kind: 'blob' as const })),
          ...parsed.requiredManifests.map((d) => ({ digest: d.digest, kind: 'manifest' as const })),
        ],
      },
      [...(ref.kind === 'tag' ? [ref.tag] : []), ...extraTags],
      provenance,
    );
    return { digest, subject: parsed.subject };
  }

  async deleteManifest(repo: RepoName, ref: Reference): Promise<void> {
    if (!(await this.meta.repoExists(repo))) throw new RegistryError('NAME_UNKNOWN', undefined, { detail: { name: repo } });
    const ok = ref.kind === 'tag' ? await this.meta.deleteTag(repo, ref.tag) : await this.meta.deleteManifest(repo, ref.digest);
    if (!ok) throw new RegistryError('MANIFEST_UNKNOWN');
  }

  /** Bytes [start, end] of a committed blob (all of it by default), through the blob store port. */
  openBlob(digest: Digest, start = 0, end?: number): Readable {
    const blobs = this.blobs;
    return Readable.from(
      (async function* () {
        const body = await blobs.open(digest);
        if (!body) throw new RegistryError('BLOB_UNKNOWN', undefined, { detail: { digest } });
        try {
          // A row gone meanwhile (evicted; its content outlives it for the grace) is an
          // error, never an empty body passing for the whole blob.
          const size = end === undefined ? (await blobs.stat(digest))?.size : end + 1;
          if (size === undefined) throw new RegistryError('BLOB_UNKNOWN', undefined, { detail: { digest } });
          const last = size - 1;
          if (last >= start) yield* body.stream(start, last);
        } finally {
          await body.close();
        }
      })(),
      { objectMode: false },
    );
  }

  async deleteBlob(repo: RepoName, digest: Digest): Promise<void> {
    if (!(await this.meta.unlinkBlob(repo, digest))) throw new RegistryError('BLOB_UNKNOWN', undefined, { detail: { digest } });
  }

  /** Cross-repository mount: only from a repository that links the blob. */
  async mountBlob(repo: RepoName, digest: Digest, from: RepoName): Promise<boolean> {
    if ((await this.meta.repoBlobSize(from, digest)) === undefined) return false;
    // False when the blob went away since the lookup (evicted): the client uploads it instead.
    return this.meta.linkBlob(repo, digest, 'pushed');
  }

  async listTags(repo: RepoName, last: string, n: number): Promise<string[]> {
    if (!(await this.meta.repoExists(repo))) throw new RegistryError('NAME_UNKNOWN', undefined, { detail: { name: repo } });
    return this.meta.listTags(repo, last, n);
  }

  catalog(last: string, n: number): Promise<string[]> {
    return this.meta.listRepositories(last, n);
  }

  async referrers(repo: RepoName, subject: Digest, artifactType: string | undefined): Promise<ManifestMeta[]> {
    const all = await this.meta.referrers(repo, subject);
    return artifactType === undefined ? all : all.filter((m) => m.artifactType === artifactType);
  }
}
